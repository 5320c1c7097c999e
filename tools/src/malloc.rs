//! Process-wide allocator tuning for the `nvg` program.
//!
//! Tensors are large, short-lived buffers. With glibc's defaults every allocation above a dynamic
//! threshold is a fresh `mmap` that the kernel zero-fills page by page on first touch, and freed heap
//! memory is trimmed back to the system — so a training step spent ~17% of its time in page faults
//! (measured with `perf` on `nvg bench train`). Raising the mmap and trim thresholds keeps freed
//! buffers (up to glibc's 32 MiB mmap-threshold cap) in the heap for reuse. Resident memory then stays
//! near its peak instead of shrinking between steps, which suits a compute job.
//!
//! The program runs its command on a rayon worker (`pool.rs`), so the buffers are allocated by worker
//! threads, and glibc gives each thread an arena of its own, built from mmap'd heaps of at most 64 MiB
//! that did not keep freed buffers the way the tuned main heap does: page faults, page clearing and TLB
//! shoot-downs came back (34 % of `nvg train`'s samples in the kernel, against 11 % before). One arena
//! for the whole process keeps every buffer in the tuned heap (its lock is shared by the workers; the
//! steps measured 1.10× faster with both changes, docs/benchmarks.md).

/// Applies the tuning (glibc only; a no-op elsewhere or when `NVG_KEEP_MALLOC_DEFAULTS` is set).
pub fn keep_freed_memory() {
    if std::env::var_os("NVG_KEEP_MALLOC_DEFAULTS").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
        // exists.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_ARENA_MAX, 1);
        }
    }
}
