//! `nvg train`: an NVG generator from a pre-tokenized dataset, with logs, atomic checkpoints and exact
//! resume (see `nvg::trainer::session`).

use anyhow::{Context, Result, bail, ensure};
use nvg::config::GeneratorConfig;
use nvg::dataset::Dataset;
use nvg::model::infer_config;
use nvg::tokenizer::Tokenizer;
use nvg::trainer::objective::DropPath;
use nvg::trainer::session::{StepLog, TrainSettings, TrainState, checkpoint_path, checkpoint_settings, train};
use nvg::weights::{WeightMap, WeightSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// Options of `nvg train` (each flag documented once, here; clap builds `--help` from it).
#[derive(Debug, Clone, clap::Args)]
pub struct TrainOptions {
    /// Pre-tokenized dataset (.nvgtok from `nvg tokenize`).
    #[arg(long)]
    pub data: PathBuf,
    /// The tokenizer the dataset was made with (its fingerprint is checked).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Model size: d16, d20, d24 or depth=N (even N from 2 to 48; width 64·N) [default: the depth of the --resume
    /// checkpoint or the --init model, else d16].
    #[arg(long)]
    pub config: Option<String>,
    /// Add learned absolute position embeddings to the image tokens of both branches (our extension,
    /// not in the official models: it lets the structure flow learn position-dependent splits far
    /// sooner; see docs/emoji-demo.md). With --init from a model without them, they start from the
    /// usual N(0, 0.02) draw. A --resume checkpoint or --init model that has them keeps them without
    /// this flag.
    #[arg(long)]
    pub position_embedding: bool,
    /// Images per micro-batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Peak learning rate [default: the official 1e-4 × batch·accum / 256].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Linear warmup steps from 0.005·lr [default: min(1000, steps/10)].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Optimiser steps of the run (or give --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Epochs of the run (or give --steps).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Output directory (checkpoint and log).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from OUT/last.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Start from these generator weights instead of the official random initialisation.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// With --init from a model of other classes: for each class of the data (in id order), the
    /// --init model's class whose embeddings it starts from, e.g. `0,0,1,1,1` for data whose classes 0-1
    /// refine the model's class 0 and 2-4 its class 1 (the emoji subcategories and their categories).
    #[arg(long, value_delimiter = ',')]
    pub init_classes: Option<Vec<usize>>,
    /// Seed of the initialisation, data order, class dropout, flow noise and DropPath.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Print the losses every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Turn DropPath off (on by default with the official per-block rates).
    #[arg(long, conflicts_with = "drop_path")]
    pub no_drop_path: bool,
    /// DropPath rate of the last block, the others rising linearly to it from 0 at the first (like the
    /// official rates, whose top is 0.1·depth/24: 0.017 at depth 4). A small model that over-fits
    /// may want more, e.g. 0.1–0.3. Must be in [0, 1); 0 is --no-drop-path.
    #[arg(long, value_name = "RATE", allow_negative_numbers = true)]
    pub drop_path: Option<f32>,
    /// Even out the classes' shares of each epoch: class c is drawn in proportion to n_c^(1−S), where
    /// n_c is its record count — 0 keeps the data's own mix (official), 1 draws every class equally
    /// often, 0.5 in proportion to √n_c. An epoch still has one draw per record; records of the
    /// classes made larger are repeated within it, those of the classes made smaller are a fresh
    /// random subset every epoch.
    #[arg(long, default_value_t = 0.0, value_name = "S", allow_negative_numbers = true)]
    pub class_balance: f32,
    /// EMA decay.
    #[arg(long, default_value_t = 0.9999)]
    pub ema_decay: f64,
    /// Stop after N steps of this invocation (with a checkpoint), e.g. to fit a job's time limit;
    /// run again with --resume to continue.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Stop (with a checkpoint) after the first step that ends M minutes or more after training
    /// started, e.g. to fit a GPU lease or a job slot; run again with --resume to continue.
    #[arg(long, value_name = "M")]
    pub stop_after_minutes: Option<f64>,
    /// Where the forward, backward and optimiser run: cpu, cuda (GPU 0), cuda:N (a build with
    /// --features cuda) or cuda-emu (the kernels' host emulation: a correctness tool, far slower than
    /// the CPU). Data loading and the training noise stay on the host, so a run's data order and noise
    /// are the same on every device and its checkpoints interchangeable (the weights agree to rounding).
    #[arg(long, default_value = "cpu", value_parser = crate::bench::parse_device)]
    pub device: nvg_engine::Device,
    /// How a device's matmuls multiply: f32 (the SIMT GEMM) or bf16 (operands rounded to bf16, products
    /// accumulated in f32 on the tensor cores, like PyTorch's bf16 matmul precision). The CPU always
    /// computes in f32.
    #[arg(long, default_value = "f32", value_parser = crate::bench::parse_matmul)]
    pub matmul: nvg_engine::cuda::MatmulPrecision,
}

/// Parses `--config` into a depth, checking it builds (even, at most `MAX_DEPTH`) before any data is read.
pub fn parse_depth(s: &str) -> Result<usize> {
    Ok(GeneratorConfig::preset(s)
        .with_context(|| format!("--config {s}"))?
        .depth)
}

fn fmt_stages(v: &[f32]) -> String {
    v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" ")
}

pub fn run(o: &TrainOptions) -> Result<()> {
    // Before any data is read: a device this build or machine cannot drive is a clear error.
    nvg_engine::cuda::check_device("--device", o.device)?;
    ensure!(
        o.init_classes.is_none() || o.init.is_some(),
        "--init-classes maps the data's classes onto those of an --init model: give --init too"
    );
    ensure!(
        o.class_balance.is_finite() && (0.0..=1.0).contains(&o.class_balance),
        "--class-balance must be a number from 0 (the data's own class mix) to 1 (every class equally often), not {}",
        o.class_balance
    );
    if let Some(top) = o.drop_path {
        ensure!(
            top.is_finite() && (0.0..1.0).contains(&top),
            "--drop-path must be a rate in [0, 1), not {top}"
        );
    }
    ensure!(
        o.steps != Some(0) && o.epochs != Some(0),
        "--steps and --epochs must be at least 1"
    );
    ensure!(
        o.checkpoint_every > 0 && o.stop_after != Some(0),
        "--checkpoint-every and --stop-after must be at least 1"
    );
    if let Some(m) = o.stop_after_minutes {
        ensure!(
            m.is_finite() && m > 0.0,
            "--stop-after-minutes must be a number of minutes > 0, not {m}"
        );
    }
    o.lr.map(crate::check_learning_rate).transpose()?;
    let given_depth = o.config.as_deref().map(parse_depth).transpose()?;
    let dataset = Arc::new(Dataset::open(&o.data, None)?);
    let grid = dataset.header.grid()?;
    let tok =
        Tokenizer::load(&o.tokenizer, grid.side()).with_context(|| format!("tokenizer {}", o.tokenizer.display()))?;
    ensure!(
        tok.assigns_codes_of(dataset.header.tokenizer_hash),
        "{} was tokenized with another tokenizer than {} (the fingerprints of their encoders and codebooks differ)",
        o.data.display(),
        o.tokenizer.display()
    );
    ensure!(o.batch > 0 && o.accum > 0, "--batch and --accum must be at least 1");
    let per_epoch = (dataset.len() / o.batch / o.accum) as u64;
    ensure!(
        per_epoch > 0,
        "{} has {} records: fewer than one step of --batch {} × --accum {}",
        o.data.display(),
        dataset.len(),
        o.batch,
        o.accum
    );
    let steps = match (o.steps, o.epochs) {
        (Some(s), None) => s,
        (None, Some(e)) => e.checked_mul(per_epoch).context("--epochs: too many steps")?,
        _ => bail!("give exactly one of --steps and --epochs"),
    };
    ensure!(steps > 0, "--steps must be at least 1");
    // The official learning rate: 1e-4 per 256 images of an optimiser step.
    let lr = o.lr.unwrap_or(1e-4 * (o.batch * o.accum) as f32 / 256.0);
    let warmup = o.warmup.unwrap_or(1000.min(steps / 10));
    let settings = TrainSettings {
        batch: o.batch,
        accum: o.accum,
        steps,
        lr,
        warmup,
        hold_end: warmup.saturating_add((0.8 * steps as f64) as u64),
        final_lr: 0.1 * lr,
        clip: 1.0,
        ema_decay: o.ema_decay,
        drop_path: match (o.no_drop_path, o.drop_path) {
            (true, _) => DropPath::Off,
            (false, None) => DropPath::Official,
            (false, Some(0.0)) => DropPath::Off,
            (false, Some(top)) => DropPath::Top(top),
        },
        class_balance: o.class_balance,
        seed: o.seed,
        checkpoint_every: o.checkpoint_every,
        log_every: o.log_every,
        prefetch: 2,
        stop_after: o.stop_after,
        stop_after_seconds: o.stop_after_minutes.map(|m| m * 60.0),
        device: o.device,
        matmul: o.matmul,
    };

    // The model this run continues, if any: its shape is the default of --config and --position-embedding.
    let ckpt = checkpoint_path(&o.out);
    let resumed = match o.resume && ckpt.exists() {
        true => Some(TrainState::load(&ckpt, o.ema_decay)?),
        false => None,
    };
    if let (Some(_), Some(init)) = (&resumed, &o.init) {
        eprintln!(
            "warning: --init {} is ignored: resuming {}",
            init.display(),
            ckpt.display()
        );
    }
    // The --init weights are loaded once: their shape is read here, `TrainState::from_weights` trains them.
    let init = match (&resumed, &o.init) {
        (None, Some(path)) => {
            Some(WeightMap::generator(path, WeightSet::Raw).with_context(|| format!("--init {}", path.display()))?)
        }
        _ => None,
    };
    let continued = match (&resumed, &init) {
        (Some(s), _) => Some(s.config.clone()),
        (None, Some(w)) => Some(infer_config(w).with_context(|| format!("--init {}", w.source()))?),
        (None, None) => None,
    };
    let depth = match (given_depth, &continued) {
        (Some(d), _) => d,
        (None, Some(c)) => c.depth,
        (None, None) => 16,
    };
    let mut config = GeneratorConfig::from_depth(depth)?;
    config.grid = grid;
    config.vocab_size = dataset.header.codebook_size;
    config.latent_channels = tok.quantizer.channels();
    config.num_classes = dataset.header.num_classes;
    config.position_embedding = o.position_embedding || continued.as_ref().is_some_and(|c| c.position_embedding);

    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let mut state = if let Some(s) = resumed {
        let mut same = s.config.clone();
        same.position_embedding = config.position_embedding;
        ensure!(
            same == config,
            "{}: {}, but the run (--config, --data and --tokenizer) is {}",
            ckpt.display(),
            s.config.describe(),
            config.describe()
        );
        ensure!(
            s.config.position_embedding == config.position_embedding,
            "{}: a checkpoint without position embeddings: resume it without --position-embedding (to add \
             them, start a new --out with --init <this checkpoint> --position-embedding)",
            ckpt.display(),
        );
        eprintln!("resuming from {} at step {}", ckpt.display(), s.step);
        // Resuming with other settings is allowed (e.g. more --steps) but changes the run: say what.
        let old = checkpoint_settings(&ckpt)?;
        let new = settings.describe();
        if let (Some(old), Some(new)) = (old.as_object(), new.as_object()) {
            // A setting recorded only when set (class_balance, drop_path_top) is missing from one side.
            let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            let shown = |v: Option<&serde_json::Value>| v.map_or("unset (its default)".to_string(), |v| v.to_string());
            for k in keys {
                if old.get(k) != new.get(k) {
                    eprintln!(
                        "warning: {k} was {} in the checkpoint's run and is {} now",
                        shown(old.get(k)),
                        shown(new.get(k))
                    );
                }
            }
        }
        s
    } else {
        if ckpt.exists() {
            bail!(
                "{} already holds a checkpoint; pass --resume to continue it or choose another --out",
                o.out.display()
            );
        }
        match init {
            Some(w) => {
                let source = w.source().to_string();
                TrainState::from_weights(&config, w, o.init_classes.as_deref(), o.seed, o.ema_decay)
                    .with_context(|| format!("--init {source}"))?
            }
            None => TrainState::new(&config, None, o.seed, o.ema_decay)?,
        }
    };
    eprintln!(
        "training depth {} ({:.2} M parameters) on {} ({} records of {} classes): {} steps of {}×{} images, lr {:.2e} (warmup {}, decay after {} to {:.2e}), DropPath {}",
        config.depth,
        config.parameter_count() as f64 / 1e6,
        o.device,
        dataset.len(),
        config.num_classes,
        steps,
        o.batch,
        o.accum,
        lr,
        warmup,
        settings.hold_end,
        settings.final_lr,
        match settings.drop_path {
            DropPath::Off => "off".to_string(),
            d => format!("on (top rate {:.3})", d.top(config.depth)),
        }
    );
    if settings.class_balance != 0.0 {
        eprintln!(
            "class balance {}: each class drawn in proportion to (its records)^{}",
            settings.class_balance,
            1.0 - settings.class_balance
        );
    }
    let log_path = o.out.join("log.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| log_path.display().to_string())?;
    let mut io_error = None;
    train(
        &mut state,
        dataset,
        Arc::new(tok.quantizer),
        &settings,
        &ckpt,
        |s: &StepLog| {
            let line = serde_json::json!({
                "step": s.step, "lr": s.lr, "loss": s.terms.total, "grad_norm": s.grad_norm,
                "final_mse": s.terms.final_mse, "ce": s.terms.ce, "accuracy": s.terms.accuracy,
                "structure_mse": s.terms.structure_mse, "seconds": s.seconds,
                "images_per_second": s.images_per_second, "tokens_per_second": s.tokens_per_second,
            });
            if let Err(e) = writeln!(log, "{line}") {
                io_error.get_or_insert(e);
            }
            if s.step.is_multiple_of(settings.log_every.max(1)) || s.step == steps || s.step == 1 {
                eprintln!(
                    "step {}/{steps}  loss {:.4}  lr {:.2e}  |g| {:.3}  {:.2} img/s  {:.0} tok/s\n  final {}\n  ce    {}\n  struct {}",
                    s.step,
                    s.terms.total,
                    s.lr,
                    s.grad_norm,
                    s.images_per_second,
                    s.tokens_per_second,
                    fmt_stages(&s.terms.final_mse),
                    fmt_stages(&s.terms.ce),
                    fmt_stages(&s.terms.structure_mse)
                );
            }
        },
    )?;
    if let Some(e) = io_error {
        return Err(e).with_context(|| format!("writing {}", log_path.display()));
    }
    if state.step < steps {
        eprintln!(
            "stopped at step {} of {steps} (--stop-after / --stop-after-minutes): run the same command with --resume to continue",
            state.step
        );
    }
    eprintln!(
        "done: step {} checkpoint {} (load it with `nvg generate --generator {} [--ema]`)",
        state.step,
        ckpt.display(),
        ckpt.display()
    );
    Ok(())
}
