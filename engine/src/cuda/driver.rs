//! The real-GPU backend (feature `cuda`): the CUDA driver API through cudarc's dynamically loaded
//! bindings, so the engine builds and runs without a CUDA install and reports a missing driver as an
//! error instead of failing to start.
//!
//! One `Driver` per device ordinal holds the primary context, the modules loaded from the embedded PTX
//! (by source module, on first use) and a caching allocator (freed buffers are kept by size and reused,
//! so the sampler's repeated shapes do not call cuMemAlloc every step). Launches go to the default
//! stream and are synchronised (correctness first: errors surface at the op that caused them).

use crate::Device;
use crate::error::{Error, Result};
use cudarc::driver::sys;
use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) struct Driver {
    ordinal: usize,
    ctx: sys::CUcontext,
    /// The PTX architecture used for this device (`sm_90` or `sm_80`).
    arch: &'static str,
    modules: Mutex<HashMap<String, sys::CUmodule>>,
    functions: Mutex<HashMap<String, usize>>,
    /// Free device buffers by byte size.
    cache: Mutex<HashMap<usize, Vec<u64>>>,
}

// SAFETY: the driver API is thread-safe; every call first makes the context current on the calling
// thread, and the raw handles are only used through those calls.
unsafe impl Send for Driver {}
unsafe impl Sync for Driver {}

fn check(what: &str, ordinal: usize, r: sys::CUresult) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut s: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuGetErrorString writes a pointer to a static string (or leaves it null).
    let msg = unsafe {
        sys::cuGetErrorString(r, &mut s);
        if s.is_null() {
            format!("{r:?}")
        } else {
            std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned()
        }
    };
    Err(Error::Unsupported {
        op: "cuda",
        device: Device::Cuda(ordinal),
        msg: format!("{what}: {msg}"),
    })
}

fn unavailable(ordinal: usize, msg: impl Into<String>) -> Error {
    Error::Unsupported {
        op: "cuda",
        device: Device::Cuda(ordinal),
        msg: msg.into(),
    }
}

type Slot = std::result::Result<Arc<Driver>, String>;

/// The driver of device `ordinal`, initialised on first use.
pub(crate) fn driver(ordinal: usize) -> Result<Arc<Driver>> {
    static DRIVERS: OnceLock<Mutex<HashMap<usize, Slot>>> = OnceLock::new();
    let mut map = DRIVERS.get_or_init(Default::default).lock().unwrap();
    let slot = map.entry(ordinal).or_insert_with(|| {
        Driver::open(ordinal).map(Arc::new).map_err(|e| match e {
            Error::Unsupported { msg, .. } => msg,
            e => e.to_string(),
        })
    });
    slot.clone().map_err(|msg| unavailable(ordinal, msg))
}

impl Driver {
    fn open(ordinal: usize) -> Result<Driver> {
        // SAFETY: is_culib_present only tries to load the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(unavailable(
                ordinal,
                "no CUDA driver (libcuda) on this machine; Device::CudaEmu runs the kernels on the CPU",
            ));
        }
        if !nvg_kernels::kernels_built() {
            return Err(unavailable(
                ordinal,
                "kernels not built: this binary was compiled without nvcc (run tools/install-nvcc.sh and rebuild)",
            ));
        }
        // SAFETY: plain driver calls with valid out-pointers.
        unsafe {
            check("cuInit", ordinal, sys::cuInit(0))?;
            let mut count = 0;
            check("cuDeviceGetCount", ordinal, sys::cuDeviceGetCount(&mut count))?;
            if ordinal >= count as usize {
                return Err(unavailable(ordinal, format!("the machine has {count} CUDA devices")));
            }
            let mut dev = 0;
            check("cuDeviceGet", ordinal, sys::cuDeviceGet(&mut dev, ordinal as i32))?;
            let mut major = 0;
            check(
                "cuDeviceGetAttribute",
                ordinal,
                sys::cuDeviceGetAttribute(
                    &mut major,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    dev,
                ),
            )?;
            if major < 8 {
                return Err(unavailable(
                    ordinal,
                    format!("compute capability {major}.x: the kernels need 8.0 or newer"),
                ));
            }
            let mut ctx = std::ptr::null_mut();
            check(
                "cuDevicePrimaryCtxRetain",
                ordinal,
                sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
            )?;
            Ok(Driver {
                ordinal,
                ctx,
                arch: if major >= 9 { "sm_90" } else { "sm_80" },
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                cache: Mutex::new(HashMap::new()),
            })
        }
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: the context is alive for the driver's lifetime.
        check("cuCtxSetCurrent", self.ordinal, unsafe {
            sys::cuCtxSetCurrent(self.ctx)
        })
    }

    /// `bytes` of device memory (from the cache when a buffer of that size is free).
    pub(crate) fn alloc(&self, bytes: usize) -> Result<u64> {
        let bytes = bytes.max(1);
        if let Some(p) = self.cache.lock().unwrap().get_mut(&bytes).and_then(Vec::pop) {
            return Ok(p);
        }
        self.bind()?;
        let mut p = 0;
        // SAFETY: valid out-pointer.
        check("cuMemAlloc", self.ordinal, unsafe { sys::cuMemAlloc_v2(&mut p, bytes) })?;
        Ok(p)
    }

    /// Returns a buffer to the cache.
    pub(crate) fn free(&self, ptr: u64, bytes: usize) {
        self.cache.lock().unwrap().entry(bytes.max(1)).or_default().push(ptr);
    }

    pub(crate) fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds at least src.len() bytes (allocated for it).
        check("cuMemcpyHtoD", self.ordinal, unsafe {
            sys::cuMemcpyHtoD_v2(dst, src.as_ptr() as *const c_void, src.len())
        })
    }

    pub(crate) fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: src holds at least dst.len() bytes.
        check("cuMemcpyDtoH", self.ordinal, unsafe {
            sys::cuMemcpyDtoH_v2(dst.as_mut_ptr() as *mut c_void, src, dst.len())
        })
    }

    fn function(&self, module: &str, name: &str) -> Result<sys::CUfunction> {
        let key = format!("{module}/{name}");
        if let Some(&f) = self.functions.lock().unwrap().get(&key) {
            return Ok(f as sys::CUfunction);
        }
        let mut modules = self.modules.lock().unwrap();
        let m = match modules.get(module) {
            Some(&m) => m,
            None => {
                let ptx = nvg_kernels::ptx(module, self.arch)
                    .ok_or_else(|| unavailable(self.ordinal, format!("no PTX module {module} for {}", self.arch)))?;
                let src = CString::new(ptx).map_err(|_| unavailable(self.ordinal, "PTX with a NUL byte"))?;
                let mut m = std::ptr::null_mut();
                // SAFETY: src is NUL-terminated PTX text.
                check("cuModuleLoadData", self.ordinal, unsafe {
                    sys::cuModuleLoadData(&mut m, src.as_ptr() as *const c_void)
                })?;
                modules.insert(module.to_string(), m);
                m
            }
        };
        let cname = CString::new(name).map_err(|_| unavailable(self.ordinal, "kernel name with a NUL byte"))?;
        let mut f = std::ptr::null_mut();
        // SAFETY: m is a loaded module, cname NUL-terminated.
        check("cuModuleGetFunction", self.ordinal, unsafe {
            sys::cuModuleGetFunction(&mut f, m, cname.as_ptr())
        })?;
        self.functions.lock().unwrap().insert(key, f as usize);
        Ok(f)
    }

    /// Launches and waits for the kernel.
    ///
    /// # Safety
    /// `params` must match the kernel's parameters and address memory of this device.
    pub(crate) unsafe fn launch(
        &self,
        module: &str,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let f = self.function(module, name)?;
        self.bind()?;
        // SAFETY: forwarded to the caller's contract.
        unsafe {
            check(
                name,
                self.ordinal,
                sys::cuLaunchKernel(
                    f,
                    grid[0],
                    grid[1],
                    grid[2],
                    block[0],
                    block[1],
                    block[2],
                    shared_bytes,
                    std::ptr::null_mut(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                ),
            )?;
            check(name, self.ordinal, sys::cuCtxSynchronize())
        }
    }
}
