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
    /// List the tensors of a safetensors file or PyTorch checkpoint and name the model they make, or
    /// describe a pre-tokenized dataset.
    ///
    /// Prints every tensor (name, dtype, shape, elements), the parameter count, the safetensors metadata,
    /// and the detected kind — NVG generator or tokenizer — with its configuration. For a .nvgtok dataset:
    /// its header (grid, codes, classes, tokenizer fingerprint, child order) and the records per class.
    Inspect {
        /// A .safetensors file, a PyTorch (Lightning) .ckpt or a .nvgtok dataset.
        file: PathBuf,
    },
    /// Convert an official PyTorch Lightning checkpoint (.ckpt) or one of our training checkpoints to
    /// inference weights (safetensors).
    ///
    /// The checkpoint is read by a restricted unpickler that understands only tensors and containers and
    /// refuses everything else, so converting never executes code from the file. Generator checkpoints
    /// (d16.ckpt, ...) and tokenizer checkpoints (ae.ckpt) are recognised automatically; only what
    /// inference needs is kept (no AE copy, DINOv2 or REPA projector in generators; no losses or usage
    /// counters in tokenizers), under the official names without prefix. A .safetensors input is an
    /// `nvg train` checkpoint (its optimiser state is left out), an `nvg train-tokenizer` export or an
    /// earlier conversion; with --dtype bf16 this is how models/emoji was made.
    Convert {
        /// The PyTorch checkpoint (.ckpt) or a .safetensors checkpoint of `nvg train`/`nvg train-tokenizer`.
        #[arg(long)]
        input: PathBuf,
        /// The safetensors file to write (atomically).
        #[arg(long)]
        output: PathBuf,
        /// Take the EMA weights (`ema_model.*`): what the paper's samples use.
        #[arg(long)]
        ema: bool,
        /// Store floating-point tensors as f32, bf16 or f16 (default: as in the input). The models compute
        /// in f32 whatever the storage.
        #[arg(long, value_parser = parse_storage_dtype)]
        dtype: Option<nvg_engine::DType>,
    },
    /// Generate class-conditional images (the main job): resumable, shardable, deterministic per image.
    ///
    /// Every image is a pure function of (seed, class, index) — the same at any --batch, in any shard, on
    /// any thread count — and is written atomically as OUT/CCCC_IIIII.png (class, index). Re-running the
    /// same command skips the images that exist, so an interrupted job resumes where it stopped. The
    /// defaults are the official README sampling settings (CFG 1-3.5, structure CFG 1-2.5, top-p 1-0.5,
    /// 25 flow steps). OUT/job.json records the settings; a re-run with other settings is refused.
    /// Without --generator/--tokenizer it uses the built-in emoji model (models/emoji: 9 categories of
    /// 64×64 emoji; `nvg generate --per-class 8 --structure-from models/emoji/structures.nvgtok --out
    /// samples/ --grid grid.png` paints them on real emoji's structure maps, the README main job).
    Generate(nvg_tools::generate::GenerateOptions),
    /// Train an NVG generator on a pre-tokenized dataset (from `nvg tokenize`).
    ///
    /// Every step runs the teacher-forced forward of all content stages and structure-flow instances of
    /// each image (official losses; REPA off), backward, global-norm clipping at 1.0, AdamW (0.9, 0.95,
    /// weight decay 0.05 on matrices) at the official warmup → hold → linear-decay schedule, and the EMA
    /// update. It logs each stage's losses, images/s and tokens/s (every step to OUT/log.jsonl) and
    /// writes OUT/last.safetensors atomically every --checkpoint-every steps: weights, EMA weights,
    /// optimiser state, step and data order. `--resume` continues exactly where it stopped; the
    /// checkpoint loads in `nvg generate --generator OUT/last.safetensors [--ema]`.
    Train(nvg_tools::train::TrainOptions),
    /// Train a small NVG VQ tokenizer on an ImageFolder (e.g. the emoji set of tools/fetch-emoji.sh).
    ///
    /// Each step encodes a batch, clusters the features into structure maps, quantises them stage by
    /// stage and decodes the straight-through latent; the loss is mean |x − x̂| + mean (x − x̂)² plus the
    /// codebook and 0.25-weighted commitment terms averaged over the stages (NVG-SPEC §2.10 without the
    /// LPIPS and GAN terms). AdamW (0.9, 0.95, no weight decay), clip 1.0, warmup then linear decay.
    /// Logs every step to OUT/log.jsonl with the held-out PSNR every --eval-every steps; writes
    /// OUT/last.safetensors (checkpoint) and OUT/tokenizer.safetensors (weights for `nvg tokenize` and
    /// `nvg generate`) atomically; `--resume` continues exactly.
    TrainTokenizer(nvg_tools::train_tokenizer::TrainTokenizerOptions),
    /// Turn an image folder into a pre-tokenized dataset for `nvg train`: every image is preprocessed as
    /// the official code does (shorter side to 1.125× the resolution, Lanczos-4, then a crop), encoded,
    /// clustered into its 9 structure maps and quantised; the file keeps class, structure and codes.
    Tokenize {
        /// ImageFolder: one sub-folder per class (sorted names become class ids 0, 1, ...) of
        /// .png/.jpg/.jpeg files.
        #[arg(long)]
        images: PathBuf,
        /// Tokenizer weights (.safetensors, official VQAE key names).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Dataset file to write (written atomically; OUT.classes.json maps class ids to folder names and
        /// OUT.skipped.txt lists unreadable images, if any).
        #[arg(long)]
        out: PathBuf,
        /// Crops per image: 1 takes the centre crop; N > 1 takes N random crops (seeded by --seed).
        #[arg(long, default_value_t = 1)]
        crops: usize,
        /// Image side after preprocessing (256 for the official tokenizer's 16×16 grid).
        #[arg(long, default_value_t = 256)]
        resolution: usize,
        /// Only the first N images (in folder order).
        #[arg(long)]
        limit: Option<usize>,
        /// Seed of the random crops.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Images encoded together.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Resize each image as a whole to --resolution² (kept as is when already that size) instead of
        /// the official resize to 1.125× and crop: for small square datasets such as the emoji set.
        #[arg(long)]
        whole: bool,
        /// Which child of every split of a structure map is named 2p (bit 0). The clusters are the same
        /// either way; outside-first (our extension, not the official tokenizer's) makes bit 0 mean
        /// "the part farther out from the centre", which the structure flow learns far sooner on small
        /// data (docs/emoji-demo.md).
        #[arg(long, value_enum, default_value = "merge")]
        child_order: nvg_tools::tokenize::ChildOrderArg,
        /// Data augmentation: also write every crop mirrored left to right, as the record after it
        /// (twice the records; the emoji demo's generator phase f trained on such a dataset).
        #[arg(long)]
        mirror: bool,
    },
    /// Encode → quantise → decode one image and write the reconstruction as PNG; with --stages, a strip of
    /// the image decoded after every granularity stage above that stage's structure map (one colour per
    /// cluster) — the picture that explains NVG.
    Reconstruct {
        /// Tokenizer weights (.safetensors).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Input image (PNG or JPEG).
        #[arg(long)]
        image: PathBuf,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
        /// Draw every stage (decoded image over structure map) instead of the final reconstruction.
        #[arg(long)]
        stages: bool,
        /// Image side after preprocessing (the official resize to 1.125× and centre crop).
        #[arg(long, default_value_t = 256)]
        resolution: usize,
        /// Resize the image as a whole to --resolution² instead of resizing and cropping (as
        /// `nvg tokenize --whole` does: for small square images such as the emoji set).
        #[arg(long)]
        whole: bool,
    },
    /// Quality measurement: train the evaluation classifier on real images, then score generated images
    /// (accuracy of the intended class; Fréchet distance to real images in the classifier's features).
    #[command(subcommand)]
    Eval(nvg_tools::eval::EvalCommand),
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
    /// Images/s of `nvg tokenize` with an official-size tokenizer (synthetic weights) on synthetic images,
    /// split into encoder, clustering and quantisation time, and the decoder's time per image.
    Tokenizer {
        /// Number of images to tokenize.
        #[arg(long, default_value_t = 8)]
        images: usize,
        /// Worker threads (default: all CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Also write the report (Markdown) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The CUDA kernels on a device (`cuda`, `cuda:N`, or `cuda-emu`), timed next to the CPU backend
    /// in the same process, each result checked against the CPU's.
    Device {
        /// cuda, cuda:N or cuda-emu.
        #[arg(long, default_value = "cuda")]
        device: String,
        /// Shape scale: 1 is small (fine for cuda-emu), 8 is d16-like.
        #[arg(long, default_value_t = 8)]
        scale: usize,
        /// Timed repetitions; the best is reported.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Also write the report (Markdown) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Training throughput: full optimiser steps (teacher-forced forward of all stages, backward,
    /// clipping, AdamW, EMA) of a model with the official initialisation on made-up tokenized images,
    /// split into forward, backward and optimiser time; images/s, tokens/s, GFLOP/s and memory per image.
    Train {
        /// Generator size: d16, d20, d24 or depth=N.
        #[arg(long, default_value = "depth=4")]
        config: String,
        /// Images per step.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Timed steps (after one warm-up step); the median is reported.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Worker threads (default: all CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Also write the report (Markdown) to this file.
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

fn main() {
    nvg_tools::malloc::keep_freed_memory();
    // Errors print as a readable chain ("error: what: why"), never as a backtrace.
    if let Err(e) = nvg_tools::pool::run_in_pool(run) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Prints a benchmark report and, with `--out`, writes it atomically.
fn emit_report(report: &str, out: Option<&std::path::Path>) -> Result<()> {
    print!("{report}");
    if let Some(path) = out {
        nvg_engine::io::atomic_write(path, |f| std::io::Write::write_all(f, report.as_bytes()))?;
    }
    Ok(())
}

fn run() -> Result<()> {
    use nvg::image::Crop;
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { file } => print!("{}", nvg_tools::inspect::inspect(&file)?),
        Command::Train(opts) => nvg_tools::train::run(&opts)?,
        Command::TrainTokenizer(opts) => nvg_tools::train_tokenizer::run(&opts)?,
        Command::Eval(cmd) => nvg_tools::eval::run(&cmd)?,
        Command::Generate(opts) => {
            let r = nvg_tools::generate::run(&opts)?;
            println!(
                "{} new images ({} already there) of the {} in this shard ({} in the job) in {:.1} s → {}",
                r.generated,
                r.skipped_existing,
                r.shard_images,
                r.job_images,
                r.seconds,
                opts.out.display()
            );
        }
        Command::Convert {
            input,
            output,
            ema,
            dtype,
        } => {
            let mut c = nvg::checkpoint::convert(&input, ema)?;
            if let Some(dtype) = dtype {
                c.cast_floats(dtype)?;
            }
            let params: usize = c.tensors.values().map(|t| t.numel()).sum();
            let meta = std::collections::HashMap::from([
                ("nvg.kind".to_string(), c.kind.name().to_string()),
                ("nvg.weights".to_string(), if ema { "ema" } else { "raw" }.to_string()),
                (
                    "nvg.source".to_string(),
                    input.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                ),
            ]);
            nvg_engine::io::safetensors::save(&output, c.tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))?;
            println!(
                "{}: NVG {} ({} weights): kept {} tensors ({:.2} M parameters), left out {} → {}",
                input.display(),
                c.kind.name(),
                if ema { "EMA" } else { "raw" },
                c.tensors.len(),
                params as f64 / 1e6,
                c.dropped,
                output.display()
            );
        }
        Command::Tokenize {
            images,
            tokenizer,
            out,
            crops,
            resolution,
            limit,
            seed,
            batch,
            whole,
            child_order,
            mirror,
        } => {
            let opts = nvg_tools::tokenize::TokenizeOptions {
                images,
                tokenizer,
                out,
                crops,
                resolution,
                limit,
                seed,
                batch,
                whole,
                child_order: child_order.into(),
                mirror,
            };
            let r = nvg_tools::tokenize::tokenize(&opts)?;
            println!(
                "{} records from {} images of {} classes in {:.1} s ({:.2} images/s; encoder {:.1} s, clustering {:.1} s, quantisation {:.1} s)",
                r.records,
                r.images,
                r.classes.len(),
                r.seconds,
                r.images as f64 / r.seconds,
                r.encode_seconds,
                r.cluster_seconds,
                r.quantize_seconds
            );
            if !r.skipped.is_empty() {
                println!(
                    "skipped {} unreadable image(s) (listed in {}.skipped.txt):",
                    r.skipped.len(),
                    opts.out.display()
                );
                for (p, e) in r.skipped.iter().take(10) {
                    println!("  {}: {e}", p.display());
                }
                if r.skipped.len() > 10 {
                    println!("  ... and {} more", r.skipped.len() - 10);
                }
            }
        }
        Command::Reconstruct {
            tokenizer,
            image,
            out,
            stages,
            resolution,
            whole,
        } => {
            let crop = if whole { Crop::Whole } else { Crop::Center };
            println!(
                "{}",
                nvg_tools::reconstruct::reconstruct(&tokenizer, &image, &out, stages, resolution, crop)?
            );
        }
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
        Command::Bench(BenchCommand::Tokenizer { images, threads, out }) => {
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if threads == 0 || images == 0 {
                anyhow::bail!("--threads and --images must be at least 1");
            }
            let report = nvg_tools::bench::tokenizer_bench(images, threads)?;
            emit_report(&report, out.as_deref())?;
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
            emit_report(&report, out.as_deref())?;
        }
        Command::Bench(BenchCommand::Device {
            device,
            scale,
            iters,
            out,
        }) => {
            if scale == 0 || iters == 0 {
                anyhow::bail!("--scale and --iters must be at least 1");
            }
            let report = nvg_tools::bench::device_bench(nvg_tools::bench::parse_device(&device)?, scale, iters)?;
            emit_report(&report, out.as_deref())?;
        }
        Command::Bench(BenchCommand::Train {
            config,
            batch,
            steps,
            threads,
            out,
        }) => {
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if threads == 0 || steps == 0 || batch == 0 {
                anyhow::bail!("--threads, --steps and --batch must be at least 1");
            }
            let report = nvg_tools::bench::train_bench(&nvg_tools::bench::TrainBenchOptions {
                config,
                batch,
                steps,
                threads,
            })?;
            emit_report(&report, out.as_deref())?;
        }
    }
    Ok(())
}

/// Parses `--dtype` of `nvg convert`.
fn parse_storage_dtype(s: &str) -> Result<nvg_engine::DType> {
    use nvg_engine::DType;
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        _ => anyhow::bail!("--dtype `{s}`: expected f32, bf16 or f16"),
    }
}
