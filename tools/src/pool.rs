//! Where the `nvg` program runs its command: on a worker of rayon's global pool, not on the main thread.
//!
//! The engine parallelises its ops with rayon. Called from a thread outside the pool, every parallel
//! op is injected into the pool's queue while the caller blocks on a latch: two futex wake-ups and a
//! context switch per op, thousands of times per training step, and a third thread contending for the
//! cores. Called from a worker, the op splits with `join` on that worker's own deque and the other
//! workers steal from it. `perf record` of `nvg train` (depth 4, batch 32, 2 vCPUs) before this
//! change: 11 % of the samples in the kernel, mostly futex wake/wait and scheduling (docs/benchmarks.md).
//!
//! The command must not block on another thread that itself waits for the pool: with one worker
//! (`RAYON_NUM_THREADS=1`) nothing would run that thread's parallel ops. The training loader's thread
//! therefore has a pool of its own (`nvg/src/trainer/loader.rs`, test `tests/train_loader_one_worker.rs`).
//!
//! Workers get the main thread's usual stack size, as a precaution: dropping a long autograd graph
//! recurses once per node, and rayon's workers otherwise get Rust's 2 MiB default.

/// Stack size of the pool's workers (the main thread's usual 8 MiB).
const WORKER_STACK: usize = 8 << 20;

/// Runs `command` on a worker of the global pool (built here with `RAYON_NUM_THREADS` or one thread per
/// core), or on the calling thread when `NVG_RUN_ON_MAIN_THREAD` is set (for A/B timing).
pub fn run_in_pool<R: Send>(command: impl FnOnce() -> R + Send) -> R {
    if std::env::var_os("NVG_RUN_ON_MAIN_THREAD").is_some() {
        return command();
    }
    run_on_worker(command)
}

/// Runs `command` on a worker of the global pool, building the pool first if need be.
fn run_on_worker<R: Send>(command: impl FnOnce() -> R + Send) -> R {
    // An error means the global pool already exists (a library caller built it); use it as it is.
    let _ = rayon::ThreadPoolBuilder::new().stack_size(WORKER_STACK).build_global();
    rayon::scope(|_| command())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn the_command_runs_on_a_pool_worker_and_its_value_comes_back() {
        let (worker, sum) = run_on_worker(|| {
            let sum: u64 = (0..10_000u64).into_par_iter().map(|x| x * x).sum();
            (rayon::current_thread_index(), sum)
        });
        assert!(worker.is_some(), "the command ran outside the pool");
        assert_eq!(sum, (0..10_000u64).map(|x| x * x).sum::<u64>());
        assert!(
            rayon::current_thread_index().is_none(),
            "the test thread itself is not a worker"
        );
    }
}
