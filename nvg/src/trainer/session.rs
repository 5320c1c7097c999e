//! The training loop: data loader → teacher-forced forward → backward (with gradient accumulation) →
//! global-norm clipping → AdamW at the scheduled learning rate → EMA; logs and atomic checkpoints that
//! a resumed run continues from exactly.
//!
//! A checkpoint (`OUT/last.safetensors`) holds the weights under the official names (`nvgformer.*`),
//! the EMA weights (`ema_model.nvgformer.*`) — so `nvg generate` loads it directly, with or without
//! `--ema` — and the optimiser state (`adamw.*`); its metadata `nvg.train` records the step, the data
//! order (loader state) and the settings. All randomness of step n is keyed by (seed, n), so no RNG
//! state needs saving.

use super::loader::{Loader, LoaderState};
use super::objective::{CFG_RATE, DropPath, LossTerms, LossWeights, TrainNoise, training_forward};
use super::{init, params};
use crate::config::GeneratorConfig;
use crate::dataset::Dataset;
use crate::model::Generator;
use crate::tokenizer::Quantizer;
use crate::weights::WeightMap;
use anyhow::{Context, Result, bail, ensure};
use nvg_engine::cuda::{MatmulPrecision, scoped_matmul_precision};
use nvg_engine::io::safetensors::{self, SafetensorsFile};
use nvg_engine::optim::{AdamW, AdamWConfig, Ema, LrSchedule, clip_grad_norm};
use nvg_engine::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const GENERATOR_PREFIX: &str = "nvgformer.";
const EMA_PREFIX: &str = "ema_model.nvgformer.";
const OPTIMIZER_PREFIX: &str = "adamw.";

/// Settings of a training run.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Images per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimiser step.
    pub accum: usize,
    /// Optimiser steps of the whole run.
    pub steps: u64,
    /// Peak learning rate, warmup length, the step the hold ends at and the final learning rate.
    pub lr: f32,
    pub warmup: u64,
    pub hold_end: u64,
    pub final_lr: f32,
    pub clip: f32,
    pub ema_decay: f64,
    pub drop_path: DropPath,
    /// Class-balance strength of the data order, 0 (the records' own class mix) to 1 (every class
    /// equally often); see `trainer::class_balance`.
    pub class_balance: f32,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub log_every: u64,
    pub prefetch: usize,
    /// Stop (with a checkpoint) after this many steps of this invocation, e.g. to fit a job's time
    /// slot; `--resume` continues the same run.
    pub stop_after: Option<u64>,
    /// Stop (with a checkpoint) after the first step that ends this many seconds or more after `train`
    /// started (`--stop-after-minutes`).
    pub stop_after_seconds: Option<f64>,
    /// Where the forward, backward and optimiser run (`nvg train --device`). Checkpoints are the same
    /// whatever the device; the data order and noise too (drawn on the host).
    pub device: Device,
    /// How the device's matmuls multiply (`--matmul`: f32, or bf16 operands on the tensor cores). No
    /// effect on the CPU.
    pub matmul: MatmulPrecision,
}

impl TrainSettings {
    /// The learning-rate schedule (official shape: warmup from 0.005·lr, hold, linear decay).
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule::new(
            self.lr,
            0.005 * self.lr,
            self.warmup,
            self.hold_end,
            self.steps,
            self.final_lr,
        )
    }

    /// The settings as recorded in checkpoints. `class_balance` and `drop_path_top` (`--drop-path`) are
    /// recorded only when set, so the runs from before they existed describe themselves as they did.
    pub fn describe(&self) -> serde_json::Value {
        let mut d = serde_json::json!({
            "batch": self.batch, "accum": self.accum, "steps": self.steps, "lr": self.lr,
            "warmup": self.warmup, "hold_end": self.hold_end, "final_lr": self.final_lr, "clip": self.clip,
            "ema_decay": self.ema_decay, "drop_path": self.drop_path != DropPath::Off, "seed": self.seed,
        });
        // As the decimals given on the command line (0.7, not the f32's 0.699999988...).
        let decimal = |x: f32| x.to_string().parse::<f64>().expect("an f32's decimal text parses");
        if let DropPath::Top(top) = self.drop_path {
            d["drop_path_top"] = decimal(top).into();
        }
        if self.class_balance != 0.0 {
            d["class_balance"] = decimal(self.class_balance).into();
        }
        d
    }
}

/// One optimiser step's record.
#[derive(Debug, Clone)]
pub struct StepLog {
    pub step: u64,
    pub lr: f32,
    pub grad_norm: f32,
    /// Loss terms averaged over the step's micro-batches.
    pub terms: LossTerms,
    pub seconds: f64,
    pub images_per_second: f64,
    pub tokens_per_second: f64,
}

/// Everything a run needs between steps; saved in checkpoints.
pub struct TrainState {
    pub config: GeneratorConfig,
    pub params: BTreeMap<String, Tensor>,
    pub ema: Ema,
    pub optimizer: AdamW,
    /// Optimiser steps done.
    pub step: u64,
    pub loader: LoaderState,
}

impl TrainState {
    /// A new model: official initialisation from `seed`, or the weights of `init` (a generator file).
    pub fn new(config: &GeneratorConfig, init_from: Option<&Path>, seed: u64, ema_decay: f64) -> Result<TrainState> {
        match init_from {
            None => Self::with_parameters(config, init::initial_parameters(config, seed)?, ema_decay),
            Some(path) => Self::from_weights(
                config,
                WeightMap::generator(path, crate::weights::WeightSet::Raw)?,
                None,
                seed,
                ema_decay,
            ),
        }
    }

    /// A new model from loaded generator weights `w` (whose shape must be `config`'s); position tables that
    /// `config` has and `w` lacks are drawn from `seed`.
    ///
    /// `class_rows` starts a model with other classes from `w`: new class `c` takes the embedding rows of
    /// `w`'s class `class_rows[c]` (e.g. each subcategory its category's), the null class keeps `w`'s null
    /// row, and every other weight is `w`'s.
    pub fn from_weights(
        config: &GeneratorConfig,
        w: WeightMap,
        class_rows: Option<&[usize]>,
        seed: u64,
        ema_decay: f64,
    ) -> Result<TrainState> {
        let source = w.source().to_string();
        let g = crate::model::infer_config(&w)?;
        ensure!(
            !g.position_embedding || config.position_embedding,
            "{source}: a generator with position embeddings, but the run is configured without them"
        );
        let mut same = g.clone();
        same.position_embedding = config.position_embedding;
        if let Some(rows) = class_rows {
            ensure!(
                rows.len() == config.num_classes,
                "the class map has {} entries, but the run has {} classes (one entry per class of the data)",
                rows.len(),
                config.num_classes
            );
            if let Some((c, &r)) = rows.iter().enumerate().find(|&(_, &r)| r >= g.num_classes) {
                bail!(
                    "the class map sends class {c} to {r}, but {source} has classes 0..{}",
                    g.num_classes - 1
                );
            }
            same.num_classes = config.num_classes;
        } else if g.num_classes != config.num_classes {
            bail!(
                "{source} is a generator of {} classes and the run has {} classes: map the run's classes onto \
                 the model's to start from it (`nvg train --init-classes`)",
                g.num_classes,
                config.num_classes
            );
        }
        ensure!(
            same == *config,
            "{source}: {}, but the run is configured for {}",
            g.describe(),
            config.describe()
        );
        let mut p = w.into_tensors();
        p.retain(|n, _| n != "rope_ids" && !n.starts_with("projector."));
        let mut p: BTreeMap<String, Tensor> = p
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.contiguous()?)))
            .collect::<Result<_>>()?;
        if let Some(rows) = class_rows {
            let ids: Vec<i64> = rows.iter().chain([&g.num_classes]).map(|&r| r as i64).collect();
            let ids = Tensor::from_vec(ids, &[rows.len() + 1])?;
            for name in ["content_class_embed.weight", "structure_class_embed.weight"] {
                let table = p.get(name).with_context(|| format!("{source}: no {name}"))?;
                let mapped = table.embedding(&ids)?.contiguous()?;
                p.insert(name.to_string(), mapped);
            }
        }
        if config.position_embedding && !g.position_embedding {
            // Our extension on top of a model without it: only the tables are new.
            p.extend(init::position_tables(config, seed)?);
        }
        // Every tensor present with its shape, before any training.
        Generator::from_weights(WeightMap::new(source, p.clone()))?;
        Self::with_parameters(config, p, ema_decay)
    }

    fn with_parameters(
        config: &GeneratorConfig,
        params: BTreeMap<String, Tensor>,
        ema_decay: f64,
    ) -> Result<TrainState> {
        let trainable: BTreeMap<String, Tensor> = params
            .iter()
            .filter(|(n, _)| params::is_parameter(n))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        Ok(TrainState {
            config: config.clone(),
            ema: Ema::new(ema_decay, &trainable)?,
            optimizer: AdamW::new(AdamWConfig::default())?,
            params,
            step: 0,
            loader: LoaderState::default(),
        })
    }

    /// The generator built from the current weights.
    pub fn generator(&self) -> Result<Generator> {
        Generator::from_weights(WeightMap::new("training state", self.params.clone()))
    }

    /// Writes the checkpoint atomically (device tensors are written from host copies by `safetensors::save`).
    pub fn save(&self, path: &Path, settings: &TrainSettings) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (n, t) in &self.params {
            tensors.push((format!("{GENERATOR_PREFIX}{n}"), t.clone()));
        }
        for (n, t) in self.ema.tensors()? {
            tensors.push((format!("{EMA_PREFIX}{n}"), t));
        }
        for (n, t) in self.params.iter().filter(|(n, _)| !params::is_parameter(n)) {
            tensors.push((format!("{EMA_PREFIX}{n}"), t.clone()));
        }
        for (n, t) in self.optimizer.state_tensors()? {
            tensors.push((
                format!("{OPTIMIZER_PREFIX}{}", n.strip_prefix("adamw.").unwrap_or(&n)),
                t,
            ));
        }
        let meta = serde_json::json!({
            "step": self.step,
            "loader": self.loader.to_json(),
            "depth": self.config.depth,
            "settings": settings.describe(),
        });
        let metadata = HashMap::from([
            ("nvg.kind".to_string(), "generator".to_string()),
            (
                "nvg.weights".to_string(),
                "training checkpoint (raw and EMA)".to_string(),
            ),
            ("nvg.train".to_string(), meta.to_string()),
        ]);
        safetensors::save(path, tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
            .with_context(|| format!("writing checkpoint {}", path.display()))?;
        Ok(())
    }

    /// Reads a checkpoint written by `save`.
    pub fn load(path: &Path, ema_decay: f64) -> Result<TrainState> {
        let file = SafetensorsFile::open(path).with_context(|| format!("checkpoint {}", path.display()))?;
        let meta = file
            .metadata()
            .get("nvg.train")
            .cloned()
            .with_context(|| format!("{}: not a training checkpoint (no nvg.train metadata)", path.display()))?;
        let meta: serde_json::Value = serde_json::from_str(&meta)?;
        let (mut params, mut ema, mut opt) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
        for name in file.names() {
            let t = file.get(name)?.contiguous()?;
            if let Some(n) = name.strip_prefix(EMA_PREFIX) {
                if params::is_parameter(n) {
                    ema.insert(n.to_string(), t);
                }
            } else if let Some(n) = name.strip_prefix(GENERATOR_PREFIX) {
                params.insert(n.to_string(), t);
            } else if let Some(n) = name.strip_prefix(OPTIMIZER_PREFIX) {
                opt.push((format!("adamw.{n}"), t));
            }
        }
        let config = crate::model::infer_config(&WeightMap::new("checkpoint", params.clone()))?;
        Ok(TrainState {
            config,
            params,
            ema: Ema::from_tensors(ema_decay, ema)?,
            optimizer: AdamW::from_state_tensors(AdamWConfig::default(), opt)?,
            step: meta["step"].as_u64().context("checkpoint metadata: step")?,
            loader: LoaderState::from_json(&meta["loader"])?,
        })
    }
}

/// Tokens the two transformers process per image (content: 1 + T per stage; structure: 1 + 2T per
/// flow instance) — the unit of the tokens/s figure.
pub fn tokens_per_image(config: &GeneratorConfig) -> usize {
    let g = &config.grid;
    g.stages() * (1 + g.tokens()) + g.flow_stages() * (1 + 2 * g.tokens())
}

/// Runs optimiser steps `state.step .. settings.steps` on `dataset`, calling `on_step` after each (for
/// logging) and checkpointing to `checkpoint` every `checkpoint_every` steps and at the end.
pub fn train(
    state: &mut TrainState,
    dataset: Arc<Dataset>,
    quantizer: Arc<Quantizer>,
    settings: &TrainSettings,
    checkpoint: &Path,
    mut on_step: impl FnMut(&StepLog),
) -> Result<()> {
    ensure!(
        settings.batch > 0 && settings.accum > 0,
        "--batch and --accum must be at least 1"
    );
    ensure!(
        dataset.header.grid()? == state.config.grid,
        "the dataset's grid does not match the model's"
    );
    if state.step >= settings.steps {
        bail!(
            "the checkpoint is at step {} and the run has {} steps: nothing to do (raise --steps)",
            state.step,
            settings.steps
        );
    }
    let mut loader = Loader::new(
        dataset,
        quantizer,
        settings.batch,
        settings.seed,
        state.loader,
        settings.prefetch,
        settings.class_balance,
    )?;
    // The weights move to the run's device once; the optimiser state and the EMA follow at the first
    // step (a resumed run's come from the checkpoint on the host).
    for t in state.params.values_mut() {
        *t = t.to_device(settings.device)?;
    }
    // This thread runs every step; the previous precision comes back however the run ends.
    let _precision = scoped_matmul_precision(settings.matmul);
    let schedule = settings.schedule();
    let weights = LossWeights::uniform(&state.config.grid);
    let tokens = tokens_per_image(&state.config);
    let last = match settings.stop_after {
        Some(n) => state.step.saturating_add(n).min(settings.steps),
        None => settings.steps,
    };
    let started = Instant::now();
    while state.step < last {
        let t0 = Instant::now();
        let mut grads: Option<BTreeMap<String, Tensor>> = None;
        let mut terms = Vec::with_capacity(settings.accum);
        let mut loader_after = state.loader;
        for micro in 0..settings.accum {
            let loaded = loader.next_batch()?;
            loader_after = loaded.state_after;
            let noise = TrainNoise::draw(
                &state.config.grid,
                state.config.depth,
                micro * settings.batch..(micro + 1) * settings.batch,
                settings.seed,
                state.step,
                settings.drop_path,
            )?;
            let leaves = params::leaves(&state.params);
            let generator = Generator::from_weights(WeightMap::new("training step", leaves.clone()))?;
            let obj = training_forward(&generator, &loaded.batch, &noise, CFG_RATE, &weights)?;
            let loss = obj.loss.mul_scalar(1.0 / settings.accum as f32)?;
            let g = params::gradients(&leaves, &loss.backward()?)?;
            grads = Some(match grads {
                None => g,
                Some(acc) => acc
                    .into_iter()
                    .map(|(n, a)| {
                        let b = &g[&n];
                        Ok((n, a.add(b)?))
                    })
                    .collect::<Result<_>>()?,
            });
            terms.push(obj.terms);
        }
        let mut grads = grads.expect("accum ≥ 1");
        let grad_norm = clip_grad_norm(&mut grads, settings.clip)?;
        let lr = schedule.lr(state.step);
        let mut trainable: BTreeMap<String, Tensor> = state
            .params
            .iter()
            .filter(|(n, _)| params::is_parameter(n))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        state.optimizer.step(&mut trainable, &grads, lr)?;
        state.ema.update(&trainable)?;
        state.params.extend(trainable);
        state.step += 1;
        state.loader = loader_after;

        let seconds = t0.elapsed().as_secs_f64();
        let images = (settings.batch * settings.accum) as f64;
        on_step(&StepLog {
            step: state.step,
            lr,
            grad_norm,
            terms: average_terms(&terms),
            seconds,
            images_per_second: images / seconds,
            tokens_per_second: images * tokens as f64 / seconds,
        });
        let out_of_time = settings
            .stop_after_seconds
            .is_some_and(|limit| started.elapsed().as_secs_f64() >= limit);
        if state.step.is_multiple_of(settings.checkpoint_every.max(1)) || state.step == last || out_of_time {
            state.save(checkpoint, settings)?;
        }
        if out_of_time {
            break;
        }
    }
    Ok(())
}

fn average_terms(all: &[LossTerms]) -> LossTerms {
    let n = all.len() as f32;
    let avg = |f: fn(&LossTerms) -> &Vec<f32>| -> Vec<f32> {
        let len = f(&all[0]).len();
        (0..len).map(|i| all.iter().map(|t| f(t)[i]).sum::<f32>() / n).collect()
    };
    LossTerms {
        final_mse: avg(|t| &t.final_mse),
        ce: avg(|t| &t.ce),
        accuracy: avg(|t| &t.accuracy),
        structure_mse: avg(|t| &t.structure_mse),
        total: all.iter().map(|t| t.total).sum::<f32>() / n,
    }
}

/// The settings recorded in a checkpoint's metadata.
pub fn checkpoint_settings(path: &Path) -> Result<serde_json::Value> {
    let file = SafetensorsFile::open(path)?;
    let meta = file
        .metadata()
        .get("nvg.train")
        .with_context(|| format!("{}: not a training checkpoint", path.display()))?;
    let meta: serde_json::Value = serde_json::from_str(meta)?;
    Ok(meta["settings"].clone())
}

/// Where a run keeps its checkpoint.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("last.safetensors")
}
