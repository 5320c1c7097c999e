//! The teacher-forced training objective (NVG-SPEC §4.2–4.3): every content stage and every structure
//! flow instance of each image in one forward, and the official loss.
//!
//! ```text
//! class → null (1000) where u_b < cfg_rate                           (CFG dropout, per image)
//! content, stage s = 0..S-1:   x0_hat_s, logits_s = content(canvas_s, labels_s, class, s)
//!     final_s = MSE(x0_hat_s, f_hat_final)      ce_s = CE(logits_s, the code of each cluster)
//! structure, instance s = 0..S-3:
//!     x = 2·bits(leaf labels) − 1;  ε_s = ε with channels k < s set to x (known bits are clean)
//!     t_s = sigmoid(u_s);  z = t_s·ε_s + (1 − t_s)·x;  v = structure(z, t_s, canvas_{s+1}, labels_s, class, s)
//!     structure_s = MSE(ε_s − v, x)              (all channels)
//! loss = (1/S) Σ_s [w_s·final_s + w_s·ce_s + [s < S-2]·(S/(S-2))·w_s·structure_s]
//! ```
//! REPA is off (its DINOv2 teacher is not available here); see docs/training.md.

use crate::config::Grid;
use crate::dataset::RebuiltBatch;
use crate::model::Generator;
use anyhow::{Result, bail, ensure};
use nvg_engine::rng::{Distribution, RngStream};
use nvg_engine::{DType, Device, Tensor};

/// The official rate of CFG class dropout.
pub const CFG_RATE: f32 = 0.1;

/// The randomness of one training step. Image i of step n draws from its own counter-based streams
/// keyed by (seed, n, i) — i counting over the step's micro-batches — so a resumed run draws exactly
/// what an uninterrupted one would, and splitting a step into micro-batches does not change any
/// image's noise. Tests inject the official values instead.
pub struct TrainNoise {
    /// Per image: the class becomes the null class where this is below the CFG rate.
    pub cfg_uniform: Vec<f32>,
    /// `[B, T, bits]`: the structure noise, shared by the image's flow instances.
    pub structure_eps: Tensor,
    /// `[B · flow stages]`: u of the logit-normal flow times t = sigmoid(u), image-major.
    pub time_logit: Vec<f32>,
    /// DropPath keep masks: `content_keep[s][i]` is block i's `[B]` mask at content stage s,
    /// `structure_keep[s][i]` at flow instance s (empty: no DropPath).
    pub content_keep: Vec<Vec<Tensor>>,
    pub structure_keep: Vec<Vec<Tensor>>,
}

impl TrainNoise {
    /// The same noise with its tensors on `device` (where the generator's weights are).
    pub fn to_device(&self, device: Device) -> Result<TrainNoise> {
        let masks = |m: &Vec<Vec<Tensor>>| -> Result<Vec<Vec<Tensor>>> {
            m.iter()
                .map(|blocks| blocks.iter().map(|t| Ok(t.to_device(device)?)).collect())
                .collect()
        };
        Ok(TrainNoise {
            cfg_uniform: self.cfg_uniform.clone(),
            structure_eps: self.structure_eps.to_device(device)?,
            time_logit: self.time_logit.clone(),
            content_keep: masks(&self.content_keep)?,
            structure_keep: masks(&self.structure_keep)?,
        })
    }
}

/// What an image's stream is for (the low bits of the stream id).
#[derive(Clone, Copy)]
enum NoiseKind {
    Cfg = 0,
    Eps = 1,
    Time = 2,
    DropContent = 3,
    DropStructure = 4,
}

/// Most images in one optimiser step (the stream id holds the image index in 20 bits).
pub const MAX_IMAGES_PER_STEP: usize = 1 << 20;

fn image_stream(seed: u64, step: u64, image: usize, kind: NoiseKind) -> RngStream {
    RngStream::new(seed, (step << 24) | ((image as u64) << 4) | kind as u64)
}

/// The official per-block DropPath rates: linear from 0 to 0.1·depth/24 over the blocks.
pub fn drop_path_rates(depth: usize) -> Vec<f32> {
    drop_path_ramp(depth, official_drop_path_top(depth))
}

/// The official DropPath rate of the last of `depth` blocks, 0.1·depth/24.
pub fn official_drop_path_top(depth: usize) -> f64 {
    0.1 * depth as f64 / 24.0
}

/// Per-block DropPath rates rising linearly from 0 at the first block to `top` at the last.
pub fn drop_path_ramp(depth: usize, top: f64) -> Vec<f32> {
    (0..depth)
        .map(|i| {
            if depth > 1 {
                (top * i as f64 / (depth - 1) as f64) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// DropPath of a training run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DropPath {
    Off,
    /// The official rates ([`drop_path_rates`]).
    Official,
    /// A linear ramp to this top rate (in `[0, 1)`), e.g. more than the official 0.017 of a depth-4
    /// model that over-fits.
    Top(f32),
}

impl DropPath {
    /// The per-block rates for a model of `depth` blocks; `None` when off.
    pub fn rates(self, depth: usize) -> Option<Vec<f32>> {
        match self {
            DropPath::Off => None,
            DropPath::Official => Some(drop_path_rates(depth)),
            DropPath::Top(top) => Some(drop_path_ramp(depth, top as f64)),
        }
    }

    /// The last block's rate; 0 when off.
    pub fn top(self, depth: usize) -> f64 {
        match self {
            DropPath::Off => 0.0,
            DropPath::Official => official_drop_path_top(depth),
            DropPath::Top(top) => top as f64,
        }
    }
}

/// `[B]` keep masks of every (sequence, block): 0 with probability `rate`, else 1/(1 − rate).
fn keep_masks(
    seed: u64,
    step: u64,
    images: &std::ops::Range<usize>,
    kind: NoiseKind,
    sequences: usize,
    rates: &[f32],
) -> Result<Vec<Vec<Tensor>>> {
    let mut out = Vec::with_capacity(sequences);
    for s in 0..sequences {
        let mut blocks = Vec::with_capacity(rates.len());
        for (b, &rate) in rates.iter().enumerate() {
            let keep: Vec<f32> = images
                .clone()
                .map(|i| {
                    let u =
                        image_stream(seed, step, i, kind).sample(Distribution::Uniform, (s * rates.len() + b) as u64);
                    if u < rate { 0.0 } else { 1.0 / (1.0 - rate) }
                })
                .collect();
            blocks.push(Tensor::from_vec(keep, &[images.len()])?);
        }
        out.push(blocks);
    }
    Ok(out)
}

impl TrainNoise {
    /// The noise of images `images` (positions within the step, over its micro-batches) of training
    /// step `step`, with DropPath masks at the rates of `drop_path`.
    pub fn draw(
        grid: &Grid,
        depth: usize,
        images: std::ops::Range<usize>,
        seed: u64,
        step: u64,
        drop_path: DropPath,
    ) -> Result<TrainNoise> {
        ensure!(
            images.end <= MAX_IMAGES_PER_STEP,
            "at most {MAX_IMAGES_PER_STEP} images per optimiser step"
        );
        let (t, bits, flows) = (grid.tokens(), grid.bits(), grid.flow_stages());
        let b = images.len();
        let mut cfg_uniform = Vec::with_capacity(b);
        let mut eps = vec![0.0f32; b * t * bits];
        let mut time_logit = vec![0.0f32; b * flows];
        for (k, i) in images.clone().enumerate() {
            cfg_uniform.push(image_stream(seed, step, i, NoiseKind::Cfg).sample(Distribution::Uniform, 0));
            image_stream(seed, step, i, NoiseKind::Eps).fill(
                Distribution::Normal,
                0,
                &mut eps[k * t * bits..(k + 1) * t * bits],
            );
            image_stream(seed, step, i, NoiseKind::Time).fill(
                Distribution::Normal,
                0,
                &mut time_logit[k * flows..(k + 1) * flows],
            );
        }
        let (mut content_keep, mut structure_keep) = (Vec::new(), Vec::new());
        if let Some(rates) = drop_path.rates(depth) {
            ensure!(
                rates.iter().all(|r| (0.0..1.0).contains(r)),
                "DropPath rates must be in [0, 1), not {rates:?}"
            );
            content_keep = keep_masks(seed, step, &images, NoiseKind::DropContent, grid.stages(), &rates)?;
            structure_keep = keep_masks(seed, step, &images, NoiseKind::DropStructure, flows, &rates)?;
        }
        Ok(TrainNoise {
            cfg_uniform,
            structure_eps: Tensor::from_vec(eps, &[b, t, bits])?,
            time_logit,
            content_keep,
            structure_keep,
        })
    }
}

/// Per-stage loss weights (official: uniform).
#[derive(Debug, Clone)]
pub struct LossWeights {
    pub content: Vec<f32>,
    /// Weights of the structure terms (official: the content weight · S/(S−2)).
    pub structure: Vec<f32>,
}

impl LossWeights {
    /// The official 'uniform' strategy.
    pub fn uniform(grid: &Grid) -> LossWeights {
        let (s, f) = (grid.stages(), grid.flow_stages());
        LossWeights {
            content: vec![1.0; s],
            structure: vec![s as f32 / f as f32; f],
        }
    }
}

/// The loss terms of one step (values, for logging and tests).
#[derive(Debug, Clone, Default)]
pub struct LossTerms {
    /// `MSE(x0_hat_s, f_hat_final)` per content stage.
    pub final_mse: Vec<f32>,
    /// Cross-entropy of the per-cluster code logits per content stage.
    pub ce: Vec<f32>,
    /// Accuracy of the per-cluster argmax per content stage.
    pub accuracy: Vec<f32>,
    /// `MSE(ε_s − v, x)` per flow instance.
    pub structure_mse: Vec<f32>,
    pub total: f32,
}

/// The outputs of the training forward.
pub struct Objective {
    /// The scalar loss (tracked when the generator's weights are).
    pub loss: Tensor,
    pub terms: LossTerms,
    /// Classes after CFG dropout.
    pub classes: Vec<usize>,
    /// Flow times per image and instance (image-major).
    pub times: Vec<f32>,
    /// `x0_hat` of every content stage `[B, T, C]`.
    pub x0_hat: Vec<Tensor>,
    /// Predicted velocity of every flow instance `[B, T, bits]`.
    pub velocity: Vec<Tensor>,
}

fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let d = a.sub(b)?.sqr()?;
    Ok(d.reshape(&[d.numel()])?.mean(0, false)?)
}

/// The data point of the structure flow: `2·bit_k − 1` of every token's leaf label, MSB first.
fn structure_target(grid: &Grid, leaf_labels: &[i64], batch: usize) -> Result<Tensor> {
    let bits = grid.bits();
    let mut x = Vec::with_capacity(leaf_labels.len() * bits);
    for &l in leaf_labels {
        for k in 0..bits {
            x.push(if (l >> (bits - 1 - k)) & 1 == 1 { 1.0f32 } else { -1.0 });
        }
    }
    Ok(Tensor::from_vec(x, &[batch, grid.tokens(), bits])?)
}

/// The code of every cluster (`[B, clusters]`, row-major) from per-token codes and labels `[B, T]`.
fn cluster_codes(codes: &[i64], labels: &[i64], batch: usize, tokens: usize, clusters: usize) -> Result<Vec<i64>> {
    let mut out = vec![-1i64; batch * clusters];
    for b in 0..batch {
        for t in 0..tokens {
            let (l, c) = (labels[b * tokens + t] as usize, codes[b * tokens + t]);
            out[b * clusters + l] = c;
        }
    }
    if out.contains(&-1) {
        bail!("a cluster without tokens: the labels are not a complete structure map");
    }
    Ok(out)
}

/// The teacher-forced forward and the official loss for one batch.
pub fn training_forward(
    generator: &Generator,
    batch: &RebuiltBatch,
    noise: &TrainNoise,
    cfg_rate: f32,
    weights: &LossWeights,
) -> Result<Objective> {
    let cfg = &generator.config;
    let grid = &cfg.grid;
    let (b, t, c, bits) = (batch.classes.len(), grid.tokens(), cfg.latent_channels, grid.bits());
    let (stages, flows) = (grid.stages(), grid.flow_stages());
    ensure!(
        batch.canvases.dims() == [b, stages, t, c] && batch.labels.dims() == [b, stages, t],
        "batch canvases {:?} / labels {:?} do not fit the generator ({b} images, {stages} stages, {t} tokens, {c} channels)",
        batch.canvases.dims(),
        batch.labels.dims()
    );
    ensure!(
        noise.cfg_uniform.len() == b
            && noise.structure_eps.dims() == [b, t, bits]
            && noise.time_logit.len() == b * flows,
        "training noise does not fit a batch of {b}"
    );
    // Everything built on the host goes to the generator's device; the loss stays there.
    let device = generator.device();
    let on = |t: Tensor| -> Result<Tensor> { Ok(t.to_device(device)?) };
    let noise = &noise.to_device(device)?;
    let (canvases, final_target) = (on(batch.canvases.clone())?, on(batch.target.clone())?);
    let classes: Vec<usize> = batch
        .classes
        .iter()
        .zip(&noise.cfg_uniform)
        .map(|(&cl, &u)| if u < cfg_rate { cfg.num_classes } else { cl })
        .collect();
    let labels_all = batch.labels.to_i64_vec()?;
    let codes_all = batch.codes_per_token.to_i64_vec()?;
    let stage_ints = |v: &[i64], s: usize| -> Vec<i64> {
        (0..b)
            .flat_map(|i| v[(i * stages + s) * t..(i * stages + s + 1) * t].to_vec())
            .collect()
    };

    let mut terms = LossTerms::default();
    let mut total: Option<Tensor> = None;
    let mut add = |term: Tensor, w: f32| -> Result<()> {
        let term = term.mul_scalar(w)?;
        total = Some(match total.take() {
            Some(acc) => acc.add(&term)?,
            None => term,
        });
        Ok(())
    };

    // Content: every stage from its ground-truth canvas and structure.
    let mut x0_hats = Vec::with_capacity(stages);
    for s in 0..stages {
        let canvas = canvases.narrow(1, s, 1)?.squeeze(1)?;
        let lab = stage_ints(&labels_all, s);
        let labels = on(Tensor::from_vec(lab.clone(), &[b, t])?)?;
        let keep = noise.content_keep.get(s).map(Vec::as_slice).unwrap_or(&[]);
        let out = generator
            .content
            .forward_with_drop(&canvas, &labels, &classes, s, keep, None)?;
        let final_mse = mse(&out.x0_hat, &final_target)?;
        let k = grid.clusters(s);
        let codes = cluster_codes(&stage_ints(&codes_all, s), &lab, b, t, k)?;
        let target = on(Tensor::from_vec(codes.clone(), &[b, k])?)?;
        let logp = out.logits.reshape(&[b * k, cfg.vocab_size])?.log_softmax(-1)?;
        let picked = logp.gather(-1, &target.reshape(&[b * k, 1])?)?;
        let ce = picked.reshape(&[b * k])?.mean(0, false)?.neg()?;
        let predicted = out.logits.detach().argmax(-1, false)?.to_i64_vec()?;
        let hits = predicted.iter().zip(&codes).filter(|(p, t)| p == t).count();
        terms.accuracy.push(hits as f32 / (b * k) as f32);
        terms.final_mse.push(final_mse.to_scalar()?);
        terms.ce.push(ce.to_scalar()?);
        add(final_mse, weights.content[s])?;
        add(ce, weights.content[s])?;
        x0_hats.push(out.x0_hat);
    }

    // Structure: every flow instance from the shared noise with the known bits clean.
    let leaf = stage_ints(&labels_all, stages - 1);
    let x_data = on(structure_target(grid, &leaf, b)?)?;
    let times: Vec<f32> = noise.time_logit.iter().map(|&u| 1.0 / (1.0 + (-u).exp())).collect();
    let mut velocities = Vec::with_capacity(flows);
    for s in 0..flows {
        let eps_s = if s == 0 {
            noise.structure_eps.clone()
        } else {
            Tensor::cat(
                &[&x_data.narrow(2, 0, s)?, &noise.structure_eps.narrow(2, s, bits - s)?],
                2,
            )?
        };
        let t_s: Vec<f32> = (0..b).map(|i| times[i * flows + s]).collect();
        let tt = on(Tensor::from_vec(t_s.clone(), &[b, 1, 1])?)?;
        let one_minus = on(Tensor::from_vec(
            t_s.iter().map(|&x| 1.0 - x).collect::<Vec<_>>(),
            &[b, 1, 1],
        )?)?;
        let z = tt.mul(&eps_s)?.add(&one_minus.mul(&x_data)?)?;
        let canvas_next = canvases.narrow(1, s + 1, 1)?.squeeze(1)?;
        let labels = on(Tensor::from_vec(stage_ints(&labels_all, s), &[b, t])?)?;
        let fc = generator.structure.prepare(&canvas_next, &labels, &classes, s)?;
        let keep = noise.structure_keep.get(s).map(Vec::as_slice).unwrap_or(&[]);
        let v = generator.structure.step_with_drop(&fc, &z, &t_s, keep, None)?;
        let x0_pred = eps_s.sub(&v)?;
        let term = mse(&x0_pred, &x_data)?;
        terms.structure_mse.push(term.to_scalar()?);
        add(term, weights.structure[s])?;
        velocities.push(v);
    }

    let loss = match total {
        Some(t) => t.mul_scalar(1.0 / stages as f32)?,
        None => Tensor::zeros(&[], DType::F32, device)?,
    };
    terms.total = loss.to_scalar()?;
    Ok(Objective {
        loss,
        terms,
        classes,
        times,
        x0_hat: x0_hats,
        velocity: velocities,
    })
}
