//! Kernel launches: arguments marshalled as the driver API takes them (one pointer per parameter,
//! pointing at its value), a launch configuration, and dispatch to the device. Each launch is an NVTX
//! range named after the kernel (feature `nvtx`).

use crate::Device;
use crate::error::{Error, Result};
use std::ffi::c_void;

/// One kernel parameter.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// A device address (`const float*`, ...); 0 is a null pointer.
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
    /// The kernels' `Broadcast` struct: rank, dims[8], sa[8], sb[8] (all i64 but rank).
    Broadcast(BroadcastArg),
}

/// `struct Broadcast { int rank; long long dims[8], sa[8], sb[8]; }` (C layout: 4 bytes of padding
/// after `rank`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BroadcastArg {
    pub rank: i32,
    pub dims: [i64; 8],
    pub sa: [i64; 8],
    pub sb: [i64; 8],
}

/// Grid and block sizes and dynamic shared memory.
#[derive(Debug, Clone, Copy)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D grid-stride launch over `n` elements with 256-thread blocks (at most 1024 blocks).
    pub fn for_elements(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid: [n.div_ceil(256).clamp(1, 1024) as u32, 1, 1],
            block: [256, 1, 1],
            shared_bytes: 0,
        }
    }

    /// One block of `threads` per row.
    pub fn per_row(rows: usize, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid: [rows.max(1) as u32, 1, 1],
            block: [threads, 1, 1],
            shared_bytes: 0,
        }
    }
}

/// Launches kernel `name` (from source module `module`) on `device`.
///
/// # Safety
/// `args` must match the kernel's parameters, and every pointer must address device memory of
/// `device` large enough for the kernel's accesses.
pub unsafe fn launch(device: Device, module: &str, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    // Every device op reaches its kernels through here: one NVTX range per launch, named after the
    // kernel (feature `nvtx`; launches are synchronous, so the range spans the kernel's run).
    let _range = crate::nvtx::range(name);
    // Values live here while the kernel runs; `params` points at them.
    let mut values: Vec<Box<dyn std::any::Any>> = Vec::with_capacity(args.len());
    let mut params: Vec<*mut c_void> = Vec::with_capacity(args.len());
    for a in args {
        let b: Box<dyn std::any::Any> = match *a {
            Arg::Ptr(p) => Box::new(p),
            Arg::I32(v) => Box::new(v),
            Arg::I64(v) => Box::new(v),
            Arg::F32(v) => Box::new(v),
            Arg::Broadcast(v) => Box::new(v),
        };
        values.push(b);
        let last = values.last_mut().unwrap();
        let ptr: *mut c_void = match *a {
            Arg::Ptr(_) | Arg::I64(_) => last
                .downcast_mut::<u64>()
                .map(|v| v as *mut u64 as *mut c_void)
                .or_else(|| last.downcast_mut::<i64>().map(|v| v as *mut i64 as *mut c_void)),
            Arg::I32(_) => last.downcast_mut::<i32>().map(|v| v as *mut i32 as *mut c_void),
            Arg::F32(_) => last.downcast_mut::<f32>().map(|v| v as *mut f32 as *mut c_void),
            Arg::Broadcast(_) => last
                .downcast_mut::<BroadcastArg>()
                .map(|v| v as *mut BroadcastArg as *mut c_void),
        }
        .expect("boxed as its own type");
        params.push(ptr);
    }
    match device {
        Device::CudaEmu => {
            let _ = module; // the emulation library holds every module's kernels in one registry
            // SAFETY: the caller guarantees that `args` match the kernel and address valid memory.
            unsafe { nvg_kernels::emu::launch(name, cfg.grid, cfg.block, cfg.shared_bytes, &mut params) }.map_err(|e| {
                Error::Unsupported {
                    op: "launch",
                    device,
                    msg: e.to_string(),
                }
            })
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => {
            let driver = super::driver::driver(i)?;
            // SAFETY: the caller guarantees that `args` match the kernel and address device memory.
            unsafe { driver.launch(module, name, cfg.grid, cfg.block, cfg.shared_bytes, &mut params) }
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(super::unavailable("launch", device)),
        Device::Cpu => Err(Error::arg(
            "launch",
            format!("kernel {name}: the CPU runs no CUDA kernels"),
        )),
    }
}
