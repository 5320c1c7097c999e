//! The CUDA kernels of nvg-rs, built by `build.rs` from `cuda/*.cu` in two forms:
//!
//! - `PTX_MODULES`: PTX for sm_90 and sm_80 (empty when no nvcc was found at build time), loaded by the
//!   CUDA backend;
//! - `emu::launch`: the same kernels compiled for the host and run by a fiber scheduler (one fiber per
//!   CUDA thread, see `emu/cuda_emu.h`), which the engine's `CudaEmu` device launches exactly as it would
//!   launch them on a GPU.

use std::ffi::{CString, c_void};

/// One kernel source file compiled for one architecture.
#[derive(Debug, Clone, Copy)]
pub struct PtxModule {
    /// The source file's stem (`cuda/<name>.cu`).
    pub name: &'static str,
    /// `sm_90` or `sm_80`.
    pub arch: &'static str,
    pub ptx: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/ptx_modules.rs"));

/// Whether this build carries PTX.
pub fn kernels_built() -> bool {
    !PTX_MODULES.is_empty()
}

/// The PTX of module `name` for `arch`.
pub fn ptx(name: &str, arch: &str) -> Option<&'static str> {
    PTX_MODULES
        .iter()
        .find(|m| m.name == name && m.arch == arch)
        .map(|m| m.ptx)
}

/// The host emulation of the kernels.
pub mod emu {
    use super::*;

    unsafe extern "C" {
        fn nvg_emu_launch(
            name: *const std::ffi::c_char,
            grid: *const u32,
            block: *const u32,
            smem_bytes: u32,
            args: *mut *mut c_void,
        ) -> i32;
    }

    /// Why an emulated launch failed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum LaunchError {
        UnknownKernel(String),
        BadConfig(String),
        Deadlock(String),
    }

    impl std::fmt::Display for LaunchError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                LaunchError::UnknownKernel(k) => write!(f, "no kernel named {k} in the emulation library"),
                LaunchError::BadConfig(k) => write!(f, "{k}: invalid launch configuration"),
                LaunchError::Deadlock(k) => write!(
                    f,
                    "{k}: threads of a block wait at a barrier that cannot complete (divergent __syncthreads or warp collective)"
                ),
            }
        }
    }

    /// Runs kernel `name` over `grid` × `block` with `smem_bytes` of dynamic shared memory. `args`
    /// holds one pointer per kernel parameter, pointing at the parameter's value (device pointers are
    /// host addresses here) — the same layout `cuLaunchKernel` takes.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and types, and every pointer
    /// argument must point to memory valid for the accesses the kernel makes.
    pub unsafe fn launch(
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        smem_bytes: u32,
        args: &mut [*mut c_void],
    ) -> Result<(), LaunchError> {
        let cname = CString::new(name).map_err(|_| LaunchError::UnknownKernel(name.to_string()))?;
        // SAFETY: forwarded to the caller's contract; the runtime reads grid/block (3 values each).
        let status = unsafe {
            nvg_emu_launch(
                cname.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                smem_bytes,
                args.as_mut_ptr(),
            )
        };
        match status {
            0 => Ok(()),
            1 => Err(LaunchError::UnknownKernel(name.to_string())),
            2 => Err(LaunchError::BadConfig(name.to_string())),
            _ => Err(LaunchError::Deadlock(name.to_string())),
        }
    }
}

/// NVTX ranges (feature `nvtx`): `nvtxRangePushA` / `nvtxRangePop` of the NVTX3 API through the C shim
/// `host/nvtx.c`. The engine wraps them in `nvg_engine::nvtx`; use that.
#[cfg(feature = "nvtx")]
pub mod nvtx {
    use std::ffi::{CStr, c_char};

    unsafe extern "C" {
        fn nvg_nvtx_push(name: *const c_char) -> i32;
        fn nvg_nvtx_pop() -> i32;
    }

    /// Starts a range named `name` on the calling thread: the 0-based nesting level when a tool
    /// (Nsight Systems) is attached, a negative value otherwise (`NVTX_NO_PUSH_POP_TRACKING`, -2).
    #[inline]
    pub fn push(name: &CStr) -> i32 {
        // SAFETY: `name` is NUL-terminated and valid for the call (a tool copies what it keeps).
        unsafe { nvg_nvtx_push(name.as_ptr()) }
    }

    /// Ends the calling thread's innermost range: its level under a tool, negative otherwise.
    #[inline]
    pub fn pop() -> i32 {
        // SAFETY: no arguments; NVTX tolerates a pop without a push (it reports an error value).
        unsafe { nvg_nvtx_pop() }
    }
}
