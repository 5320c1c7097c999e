//! The host emulation's execution model: barriers and shared memory, warp shuffles and ballots, dynamic
//! shared memory, several blocks, and the errors (unknown kernel, bad configuration, a divergent barrier
//! that would hang a GPU).

use nvg_kernels::emu::{LaunchError, launch};
use std::ffi::c_void;

fn ptr<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

/// Runs `name` with `args` (each a u64 or i32 value boxed in place).
fn run(name: &str, grid: u32, block: u32, smem: u32, args: &mut [u64]) -> Result<(), LaunchError> {
    let mut params: Vec<*mut c_void> = args.iter_mut().map(|a| a as *mut u64 as *mut c_void).collect();
    // SAFETY: every test passes pointers to buffers sized for the launch and ints in the low 32 bits
    // (little-endian), matching the kernels' parameter lists.
    unsafe { launch(name, [grid, 1, 1], [block, 1, 1], smem, &mut params) }
}

#[test]
fn barriers_and_shared_memory_across_blocks() {
    let (blocks, n) = (3usize, 100usize);
    let mut input: Vec<f32> = (0..blocks * n).map(|i| i as f32).collect();
    let mut out = vec![0.0f32; blocks * n];
    run(
        "nvg_selftest_reverse",
        blocks as u32,
        128,
        0,
        &mut [ptr(&mut input), ptr(&mut out), n as u64],
    )
    .unwrap();
    for b in 0..blocks {
        for i in 0..n {
            assert_eq!(out[b * n + i], input[b * n + n - 1 - i]);
        }
    }
}

#[test]
fn warp_shuffles_and_ballots() {
    let threads = 96usize; // three warps
    let mut input: Vec<f32> = (0..threads)
        .map(|i| if i % 3 == 0 { -(i as f32) } else { i as f32 * 0.5 })
        .collect();
    let (mut sum, mut swapped, mut ballot) = (vec![0.0f32; threads], vec![0.0f32; threads], vec![0u32; 3]);
    run(
        "nvg_selftest_warp",
        1,
        threads as u32,
        0,
        &mut [ptr(&mut input), ptr(&mut sum), ptr(&mut swapped), ptr(&mut ballot)],
    )
    .unwrap();
    for w in 0..3 {
        let lanes = &input[w * 32..(w + 1) * 32];
        let total: f32 = lanes.iter().sum();
        let mut bits = 0u32;
        for (l, &v) in lanes.iter().enumerate() {
            assert!((sum[w * 32 + l] - total).abs() <= 1e-3, "warp {w} lane {l}");
            assert_eq!(swapped[w * 32 + l], lanes[l ^ 1]);
            if v > 0.0 {
                bits |= 1 << l;
            }
        }
        assert_eq!(ballot[w], bits, "ballot of warp {w}");
    }
}

#[test]
fn dynamic_shared_memory() {
    let (blocks, threads) = (2usize, 64usize);
    let mut input: Vec<f32> = (0..blocks * threads).map(|i| (i % 7) as f32).collect();
    let mut out = vec![0.0f32; blocks];
    run(
        "nvg_selftest_dynamic_smem",
        blocks as u32,
        threads as u32,
        (threads * 4) as u32,
        &mut [ptr(&mut input), ptr(&mut out)],
    )
    .unwrap();
    for b in 0..blocks {
        assert_eq!(out[b], input[b * threads..(b + 1) * threads].iter().sum::<f32>());
    }
}

#[test]
fn launch_errors_are_reported() {
    let mut out = vec![0.0f32; 64];
    assert_eq!(
        run("nvg_selftest_divergent_barrier", 1, 64, 0, &mut [ptr(&mut out)]),
        Err(LaunchError::Deadlock("nvg_selftest_divergent_barrier".into()))
    );
    assert_eq!(
        run("no_such_kernel", 1, 32, 0, &mut []),
        Err(LaunchError::UnknownKernel("no_such_kernel".into()))
    );
    assert_eq!(
        run("nvg_selftest_reverse", 1, 2048, 0, &mut [0, 0, 0]),
        Err(LaunchError::BadConfig("nvg_selftest_reverse".into()))
    );
}

#[test]
fn ptx_is_embedded_when_nvcc_was_found() {
    if !nvg_kernels::kernels_built() {
        eprintln!("no PTX in this build (nvcc not found at build time; run tools/install-nvcc.sh)");
        return;
    }
    for module in [
        "attention",
        "elementwise",
        "gemm",
        "image",
        "index",
        "rope",
        "rows",
        "selftest",
    ] {
        for arch in ["sm_90", "sm_80"] {
            let ptx = nvg_kernels::ptx(module, arch).unwrap_or_else(|| panic!("no PTX for {module} {arch}"));
            assert!(ptx.contains(&format!(".target {arch}")), "{module} {arch}");
        }
    }
    let gemm = nvg_kernels::ptx("gemm", "sm_90").unwrap();
    assert!(gemm.contains(".entry nvg_gemm_f32") && gemm.contains(".entry nvg_gemm_bf16tc_f32"));
    assert!(
        gemm.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
        "the tensor-core path uses mma.sync"
    );
}

#[test]
fn launches_on_several_os_threads_get_their_own_shared_memory() {
    // Parallel tests and multi-threaded callers launch kernels concurrently; each launch's __shared__
    // arrays must be its own (they were once process-wide statics, and concurrent blocks overwrote each
    // other's tiles).
    let workers: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                let n = 1000usize;
                for round in 0..50 {
                    let mut input: Vec<f32> = (0..n).map(|i| (w * 100_000 + round * 1000 + i) as f32).collect();
                    let mut out = vec![0.0f32; n];
                    run(
                        "nvg_selftest_reverse",
                        1,
                        1024,
                        0,
                        &mut [ptr(&mut input), ptr(&mut out), n as u64],
                    )
                    .unwrap();
                    for i in 0..n {
                        assert_eq!(out[i], input[n - 1 - i], "worker {w} round {round} element {i}");
                    }
                }
            })
        })
        .collect();
    for h in workers {
        h.join().unwrap();
    }
}
