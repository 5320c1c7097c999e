//! `cargo bench --bench engine`: the engine benchmark of `nvg bench engine` (see docs/benchmarks.md).
//! Environment: NVG_BENCH_PYTHON (interpreter for the reference, default python3; "none" skips it),
//! NVG_BENCH_THREADS, NVG_BENCH_ROUNDS, NVG_BENCH_FILTER.

use nvg_tools::bench::{EngineBenchOptions, engine_bench, render_table};
use std::path::PathBuf;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; any other argument is taken as a case filter.
    let arg_filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let python = std::env::var("NVG_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let opts = EngineBenchOptions {
        threads: env_usize(
            "NVG_BENCH_THREADS",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
        rounds: env_usize("NVG_BENCH_ROUNDS", 7),
        iters: 3,
        python: (python != "none").then(|| PathBuf::from(python)),
        filter: std::env::var("NVG_BENCH_FILTER").ok().or(arg_filter),
    };
    let report = engine_bench(&opts)?;
    print!("{}", render_table(&report, &opts));
    Ok(())
}
