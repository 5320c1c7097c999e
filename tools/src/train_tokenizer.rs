//! `nvg train-tokenizer`: a small NVG VQ tokenizer trained from an ImageFolder (reconstruction L1 + MSE,
//! the codebook and commitment terms; see `nvg::tokenizer::train`), with a JSONL log, held-out PSNR,
//! atomic checkpoints and exact resume.

use crate::progress::Progress;
use crate::tokenize::image_folder;
use anyhow::{Context, Result, bail, ensure};
use nvg::image::ImageSet;
use nvg::tokenizer::TokenizerConfig;
use nvg::tokenizer::train::{TokenizerTrainSettings, TokenizerTrainState, TrainedPart, reconstruction_psnr};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Options of `nvg train-tokenizer`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainTokenizerOptions {
    /// Training images: an ImageFolder (one sub-folder per class), e.g. target/emoji/train from
    /// tools/fetch-emoji.sh.
    #[arg(long)]
    pub images: PathBuf,
    /// Held-out images (an ImageFolder) for the PSNR reported at every --eval-every steps.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Output folder: last.safetensors (checkpoint), tokenizer.safetensors (weights), log.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Image side in pixels (images are resized as a whole when they differ).
    #[arg(long, default_value_t = 64)]
    pub resolution: usize,
    /// Architecture: base=C,mult=A-B-..,res=N,latent=C,codebook=V (one level per mult entry; every
    /// level but the last halves the resolution, so the latent grid is resolution / 2^(levels-1))
    /// [default: base=32,mult=1-2-2-2,res=1,latent=32,codebook=1024; with --init or --resume: that
    /// tokenizer's].
    #[arg(long)]
    pub arch: Option<String>,
    /// Start from the weights of this tokenizer file (e.g. a previous run's tokenizer.safetensors) with
    /// a fresh optimiser and schedule, instead of a random initialisation.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Train the decoder alone; the encoder, codebook and quantiser convs stay bit-identical, so the
    /// tokenizer assigns the same codes and datasets and generators made with --init's tokenizer stay
    /// valid with the new one. Needs --init (or --resume of such a run).
    #[arg(long)]
    pub decoder_only: bool,
    /// Optimiser steps of the run.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Peak learning rate (linear warmup, then linear decay to a tenth).
    #[arg(long, default_value_t = 4e-4)]
    pub lr: f32,
    /// Warmup steps [default: steps / 20].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Seed of the initialisation and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Write the checkpoint and the weights every N steps (and at the end).
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: u64,
    /// Held-out PSNR every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    pub eval_every: u64,
    /// Held-out images used for the PSNR (the first N of --val).
    #[arg(long, default_value_t = 128)]
    pub eval_images: usize,
    /// Stop after this many steps of this invocation (the run continues with --resume).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Where the encoder, quantiser, decoder, backward and optimiser run: cpu, cuda (GPU 0), cuda:N (a
    /// build with --features cuda) or cuda-emu (the kernels' host emulation: a correctness tool, far
    /// slower than the CPU). Images, batches and the clustering are on the host; checkpoints are the same
    /// on every device.
    #[arg(long, default_value = "cpu", value_parser = crate::bench::parse_device)]
    pub device: nvg_engine::Device,
}

/// The architecture `nvg train-tokenizer` builds without --arch (and the base --arch keys change).
pub fn default_arch() -> TokenizerConfig {
    TokenizerConfig {
        base_channels: 32,
        channel_mult: vec![1, 2, 2, 2],
        res_blocks: 1,
        latent_channels: 32,
        codebook_size: 1024,
    }
}

/// Parses `--arch`.
pub fn parse_arch(s: &str) -> Result<TokenizerConfig> {
    let mut cfg = default_arch();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--arch `{part}`: expected key=value"))?;
        let num = |v: &str| -> Result<usize> {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("--arch {k}={v}: expected a positive integer"))
        };
        match k.trim() {
            "base" => cfg.base_channels = num(v)?,
            "mult" => cfg.channel_mult = v.split('-').map(num).collect::<Result<_>>()?,
            "res" => cfg.res_blocks = num(v)?,
            "latent" => cfg.latent_channels = num(v)?,
            "codebook" => cfg.codebook_size = num(v)?,
            other => bail!("--arch: unknown key `{other}` (base, mult, res, latent, codebook)"),
        }
    }
    ensure!(
        (1..=16).contains(&cfg.channel_mult.len()),
        "--arch: mult has {} levels; each after the first halves the image, so give 1 to 16",
        cfg.channel_mult.len()
    );
    // Group norms use 32 groups (NVG-SPEC §2.2): every width must be a multiple of 32.
    for m in &cfg.channel_mult {
        ensure!(
            (cfg.base_channels * m).is_multiple_of(32),
            "--arch: width base×mult = {} is not a multiple of 32 (the group norms' group count)",
            cfg.base_channels * m
        );
    }
    Ok(cfg)
}

fn load_images(dir: &Path, resolution: usize, limit: Option<usize>) -> Result<ImageSet> {
    let folder = image_folder(dir)?;
    let mut files = folder.files;
    if let Some(n) = limit {
        files.truncate(n);
    }
    ensure!(!files.is_empty(), "{}: no images in the class folders", dir.display());
    ImageSet::load(&files, resolution).with_context(|| format!("reading {}", dir.display()))
}

/// Evenly spread held-out images (every class represented when the folder is sorted by class).
fn spread(n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    (0..k).map(|i| i * n / k).collect()
}

pub fn run(o: &TrainTokenizerOptions) -> Result<()> {
    // Before any image is read: a device this build or machine cannot drive is a clear error.
    nvg_engine::cuda::check_device("--device", o.device)?;
    ensure!(
        o.batch > 0 && o.steps > 0 && o.stop_after != Some(0),
        "--batch, --steps and --stop-after must be at least 1"
    );
    crate::check_learning_rate(o.lr)?;
    ensure!(
        o.checkpoint_every > 0 && o.eval_every > 0 && o.eval_images > 0,
        "--checkpoint-every, --eval-every and --eval-images must be at least 1"
    );
    let ckpt = o.out.join("last.safetensors");
    let resuming = o.resume && ckpt.exists();
    ensure!(
        resuming || !ckpt.exists(),
        "{} already holds a checkpoint; pass --resume to continue it or choose another --out",
        o.out.display()
    );
    ensure!(
        !o.decoder_only || o.init.is_some() || resuming,
        "--decoder-only fine-tunes the decoder of an existing tokenizer: pass --init TOKENIZER.safetensors"
    );
    let part = if o.decoder_only {
        TrainedPart::Decoder
    } else {
        TrainedPart::Whole
    };
    let arch = o.arch.as_deref().map(parse_arch).transpose()?;
    let mut state = if resuming {
        if o.init.is_some() {
            eprintln!(
                "note: --init is ignored: continuing the checkpoint in {}",
                o.out.display()
            );
        }
        let s = TokenizerTrainState::load(&ckpt)?;
        ensure!(
            s.step < o.steps,
            "{}: the checkpoint is at step {} and the run has {} steps: nothing to do (raise --steps)",
            ckpt.display(),
            s.step,
            o.steps
        );
        let grid = s.config.grid_for_resolution(o.resolution).context("--resolution")?;
        ensure!(
            s.grid == grid,
            "{}: the run's latent grid is {side}×{side} but --resolution {} gives {}×{}",
            ckpt.display(),
            o.resolution,
            grid.side(),
            grid.side(),
            side = s.grid.side()
        );
        if s.part != part {
            match s.part {
                TrainedPart::Decoder => bail!(
                    "{}: the run trains the decoder only; resume it with --decoder-only",
                    ckpt.display()
                ),
                TrainedPart::Whole => bail!(
                    "{}: the run trains the whole tokenizer; resume it without --decoder-only",
                    ckpt.display()
                ),
            }
        }
        s
    } else if let Some(init) = &o.init {
        TokenizerTrainState::from_tokenizer_file(init, o.resolution, part)
            .with_context(|| format!("--init {}", init.display()))?
    } else {
        let config = arch.clone().unwrap_or_else(default_arch);
        let grid = config.grid_for_resolution(o.resolution).context("--resolution")?;
        TokenizerTrainState::new(&config, grid, o.seed)?
    };
    if let Some(a) = &arch {
        ensure!(
            *a == state.config,
            "--arch ({a:?}) differs from the architecture of the tokenizer being continued ({:?}); leave --arch out",
            state.config
        );
    }
    state.to_device(o.device)?;
    let config = state.config.clone();
    let (f, side) = (config.downsample(), state.grid.side());
    let settings = TokenizerTrainSettings {
        lr: o.lr,
        warmup: o.warmup.unwrap_or(o.steps / 20),
        steps: o.steps,
        batch: o.batch,
        clip: 1.0,
        seed: o.seed,
    };
    let train = load_images(&o.images, o.resolution, None)?;
    let val = o
        .val
        .as_deref()
        .map(|d| load_images(d, o.resolution, None))
        .transpose()?;
    ensure!(
        train.len() >= o.batch,
        "{} images are fewer than one batch of {}",
        train.len(),
        o.batch
    );
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    if resuming {
        eprintln!("resuming from {} at step {}", ckpt.display(), state.step);
    }
    let params: usize = state.params.values().map(|t| t.numel()).sum();
    let trained: usize = state
        .params
        .iter()
        .filter(|(n, _)| state.part.trains(n))
        .map(|(_, t)| t.numel())
        .sum();
    if state.part == TrainedPart::Decoder {
        eprintln!(
            "decoder only: {:.2} M of the parameters learn; the encoder and quantiser (the codes) stay as they are",
            trained as f64 / 1e6
        );
    }
    eprintln!(
        "training a tokenizer ({:.2} M parameters, f{f}, {side}×{side}×{} latent, {} codes) on {} images of {}²: {} steps of {}, lr {:.1e}",
        params as f64 / 1e6,
        config.latent_channels,
        config.codebook_size,
        train.len(),
        o.resolution,
        o.steps,
        o.batch,
        o.lr
    );
    let log_path = o.out.join("log.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| log_path.display().to_string())?;
    let eval_ids = val.as_ref().map(|v| spread(v.len(), o.eval_images));
    let evaluate = |state: &TokenizerTrainState| -> Result<Option<f64>> {
        match (&val, &eval_ids) {
            (Some(v), Some(ids)) => {
                let tok = state.tokenizer()?;
                let mut sum = 0.0;
                for chunk in ids.chunks(32) {
                    sum += reconstruction_psnr(&tok, &v.batch(chunk)?)? * chunk.len() as f64;
                }
                Ok(Some(sum / ids.len() as f64))
            }
            _ => Ok(None),
        }
    };
    let save = |state: &TokenizerTrainState| -> Result<()> {
        state.save(&ckpt, &settings)?;
        state.export(&o.out.join("tokenizer.safetensors"))
    };
    let start = state.step;
    let end = o.stop_after.map_or(o.steps, |n| start.saturating_add(n).min(o.steps));
    let mut progress = Progress::new("train-tokenizer", "steps", (end - start) as usize);
    let t0 = std::time::Instant::now();
    while state.step < end {
        let ids = TokenizerTrainState::batch_ids(train.len(), o.batch, o.seed, state.step);
        let (losses, norm) = state.train_step(&train.batch(&ids)?, &settings)?;
        let mut entry = serde_json::json!({
            "step": state.step, "loss": losses.total, "l1": losses.l1, "mse": losses.mse,
            "codebook": losses.codebook, "commitment": losses.commitment, "grad_norm": norm,
            "lr": settings.schedule().lr(state.step - 1), "seconds": t0.elapsed().as_secs_f64(),
        });
        if (state.step.is_multiple_of(o.eval_every) || state.step == end)
            && let Some(psnr) = evaluate(&state)?
        {
            entry["val_psnr"] = psnr.into();
            eprintln!("step {}: held-out PSNR {psnr:.2} dB", state.step);
        }
        writeln!(log, "{entry}")?;
        if state.step.is_multiple_of(o.checkpoint_every) || state.step == end {
            save(&state)?;
        }
        progress.add(1);
    }
    progress.finish();
    eprintln!(
        "step {} of {}: weights in {} (checkpoint {})",
        state.step,
        o.steps,
        o.out.join("tokenizer.safetensors").display(),
        ckpt.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_strings_are_parsed_or_refused_with_the_reason() {
        let cfg = parse_arch("base=64,mult=1-2-4,res=1,latent=16,codebook=512").unwrap();
        assert_eq!((cfg.base_channels, cfg.channel_mult.clone()), (64, vec![1, 2, 4]));
        assert_eq!((cfg.res_blocks, cfg.latent_channels, cfg.codebook_size), (1, 16, 512));
        let refused = |s: &str, needle: &str| {
            let err = format!("{:#}", parse_arch(s).unwrap_err());
            assert!(err.contains(needle), "{s}: {err}");
        };
        refused(&format!("mult={}", vec!["1"; 17].join("-")), "mult has 17 levels");
        refused("mult=1-0", "positive integer");
        refused("base=48", "multiple of 32");
        refused("depth=3", "unknown key `depth`");
    }
}
