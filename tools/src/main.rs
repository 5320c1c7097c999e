//! `nvg`: the nvg-rs command-line program.

use anyhow::Result;
use clap::{Parser, Subcommand};
use nvg_tools::bench::{EngineBenchOptions, ModelBenchOptions, engine_bench, render_table};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "nvg",
    version,
    about = "Next Visual Granularity (NVG) image generation on the nvg-rs engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tensors of a safetensors file: names, dtypes, shapes, parameter count, metadata.
    Inspect {
        /// The .safetensors file.
        file: PathBuf,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// GFLOP/s of the engine's CPU kernels at NVG's hot shapes (linear, attention, conv), each next to
    /// a PyTorch / NumPy reference timed on the same machine with the same thread count, the two sides
    /// alternating round by round. Needs python3 with numpy (and torch for the attention and conv
    /// references); without them only nvg-rs is timed.
    Engine {
        /// Worker threads for nvg-rs and for the reference (default: all CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Alternating rounds per case; the median is reported.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Least timed runs per round and side (more for short cases, so a round lasts >= 50 ms); each round
        /// keeps its best.
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Python interpreter that runs tools/bench_reference.py.
        #[arg(long, env = "NVG_BENCH_PYTHON", default_value = "python3")]
        python: PathBuf,
        /// Skip the reference and time nvg-rs alone.
        #[arg(long)]
        no_reference: bool,
        /// Only run cases whose name contains this text (e.g. "linear").
        #[arg(long)]
        filter: Option<String>,
        /// Also write the result table (Markdown) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Throughput of the NVG generator on the CPU: the content and structure forwards of a full-size
    /// model with synthetic weights (one image with classifier-free guidance, i.e. 2 rows), next to the
    /// engine's GEMMs at the same shapes (how much of the matmul speed survives in the whole model), and
    /// optionally one whole sample with the official README settings.
    Model {
        /// Generator size: d16, d20, d24 or depth=N.
        #[arg(long, default_value = "d16")]
        config: String,
        /// Worker threads (default: all CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed repetitions of each forward; the best is reported.
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Also time one whole sample (9 stages, 7×25 flow steps, CFG): minutes on a CPU.
        #[arg(long)]
        full_sample: bool,
        /// Also write the report (Markdown) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { file } => print!("{}", nvg_tools::inspect::inspect(&file)?),
        Command::Bench(BenchCommand::Engine {
            threads,
            rounds,
            iters,
            python,
            no_reference,
            filter,
            out,
        }) => {
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if threads == 0 || rounds == 0 || iters == 0 {
                anyhow::bail!("--threads, --rounds and --iters must be at least 1");
            }
            let opts = EngineBenchOptions {
                threads,
                rounds,
                iters,
                python: (!no_reference).then_some(python),
                filter,
            };
            let report = engine_bench(&opts)?;
            let table = render_table(&report, &opts);
            print!("{table}");
            if let Some(path) = out {
                nvg_engine::io::atomic_write(&path, |f| std::io::Write::write_all(f, table.as_bytes()))?;
            }
        }
        Command::Bench(BenchCommand::Model {
            config,
            threads,
            iters,
            full_sample,
            out,
        }) => {
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if threads == 0 || iters == 0 {
                anyhow::bail!("--threads and --iters must be at least 1");
            }
            let report = nvg_tools::bench::model_bench(&ModelBenchOptions {
                config,
                threads,
                iters,
                full_sample,
            })?;
            print!("{report}");
            if let Some(path) = out {
                nvg_engine::io::atomic_write(&path, |f| std::io::Write::write_all(f, report.as_bytes()))?;
            }
        }
    }
    Ok(())
}
