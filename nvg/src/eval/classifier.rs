//! A small image classifier on the engine (convolutions, group norms, SiLU, a global mean pool and a
//! linear head), trained with the engine's autograd and AdamW, whose pooled features and predictions
//! score generated images (`nvg eval`, docs/evaluation.md).
//!
//! At the default widths (32, 64, 128, 128) and 64×64 input:
//!
//! ```text
//! conv3x3 3→32        64²  → GN(8)→SiLU
//! conv3x3 s2 32→64    32²  → GN(8)→SiLU
//! conv3x3 s2 64→128   16²  → GN(8)→SiLU
//! conv3x3 s2 128→128   8²  → GN(8)→SiLU → mean over the pixels → 128-d features → linear → classes
//! ```
//!
//! The convolutions have no bias (the group norm that follows would cancel it). Weights are named tensors
//! (`conv{i}.weight`, `norm{i}.weight`/`.bias`, `head.weight`/`.bias`) initialised as PyTorch initialises
//! the modules — convolution and linear weights and the linear bias `U(±1/√fan_in)`, group norms 1 / 0 —
//! from one Philox stream per tensor name, so the initial weights are a pure function of the seed.

use crate::image::ImageSet;
use anyhow::{Context, Result, bail, ensure};
use nvg_engine::io::safetensors::{self, SafetensorsFile};
use nvg_engine::optim::{AdamW, AdamWConfig, LrSchedule, clip_grad_norm};
use nvg_engine::rng::{Distribution, RngStream};
use nvg_engine::{DType, Device, Padding, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Group-norm epsilon (PyTorch's default).
pub const NORM_EPS: f32 = 1e-5;

/// `nvg.kind` of a classifier file.
pub const KIND: &str = "classifier";

/// Metadata key holding the classifier's configuration (JSON).
pub const META_KEY: &str = "nvg.classifier";

/// The classifier's shape: class names, input resolution, the width of each convolution stage (the first
/// keeps the resolution, every later one halves it) and the group count of the group norms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifierConfig {
    pub classes: Vec<String>,
    pub resolution: usize,
    pub widths: Vec<usize>,
    pub groups: usize,
}

impl ClassifierConfig {
    /// The default architecture (widths 32, 64, 128, 128; 8 groups) for `classes` at `resolution`.
    pub fn new(classes: Vec<String>, resolution: usize) -> Result<ClassifierConfig> {
        let c = ClassifierConfig {
            classes,
            resolution,
            widths: vec![32, 64, 128, 128],
            groups: 8,
        };
        c.validate()?;
        Ok(c)
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Width of the pooled feature vector (the last stage's channels).
    pub fn feature_width(&self) -> usize {
        *self.widths.last().unwrap_or(&0)
    }

    /// Checks that the configuration describes a network that can run.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.classes.len() >= 2,
            "a classifier needs at least 2 classes, got {}",
            self.classes.len()
        );
        ensure!(
            !self.widths.is_empty(),
            "a classifier needs at least one convolution stage"
        );
        ensure!(self.groups > 0, "the group norms need at least one group");
        for w in &self.widths {
            ensure!(
                *w > 0 && w.is_multiple_of(self.groups),
                "stage width {w} is not a positive multiple of the {} norm groups",
                self.groups
            );
        }
        ensure!(
            self.widths.len() <= 16,
            "{} convolution stages: each halves the image, so more than 16 cannot be meant",
            self.widths.len()
        );
        let f = 1usize << (self.widths.len() - 1);
        ensure!(
            self.resolution > 0 && self.resolution.is_multiple_of(f),
            "resolution {} is not a positive multiple of {f} ({} stages, each after the first halving it)",
            self.resolution,
            self.widths.len()
        );
        Ok(())
    }

    /// Every weight's name and shape.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let mut cin = 3;
        for (i, &w) in self.widths.iter().enumerate() {
            out.push((format!("conv{i}.weight"), vec![w, cin, 3, 3]));
            out.push((format!("norm{i}.weight"), vec![w]));
            out.push((format!("norm{i}.bias"), vec![w]));
            cin = w;
        }
        out.push(("head.weight".to_string(), vec![self.num_classes(), cin]));
        out.push(("head.bias".to_string(), vec![self.num_classes()]));
        out
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "classes": self.classes,
            "resolution": self.resolution,
            "feature_width": self.feature_width(),
            "widths": self.widths,
            "groups": self.groups,
        })
    }

    fn from_json(v: &serde_json::Value) -> Result<ClassifierConfig> {
        let classes = v["classes"]
            .as_array()
            .context("no `classes` list")?
            .iter()
            .map(|c| c.as_str().map(str::to_string).context("a class name is not a string"))
            .collect::<Result<Vec<_>>>()?;
        let uint = |key: &str| -> Result<usize> {
            v[key]
                .as_u64()
                .map(|x| x as usize)
                .with_context(|| format!("no integer `{key}`"))
        };
        let widths = v["widths"]
            .as_array()
            .context("no `widths` list")?
            .iter()
            .map(|w| w.as_u64().map(|x| x as usize).context("a width is not an integer"))
            .collect::<Result<Vec<_>>>()?;
        let c = ClassifierConfig {
            classes,
            resolution: uint("resolution")?,
            widths,
            groups: uint("groups")?,
        };
        c.validate()?;
        ensure!(
            uint("feature_width")? == c.feature_width(),
            "`feature_width` {} differs from the last width {}",
            uint("feature_width")?,
            c.feature_width()
        );
        Ok(c)
    }
}

/// Freshly initialised weights (PyTorch's module defaults; see the module notes), a pure function of
/// `seed`.
pub fn initial_weights(config: &ClassifierConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    config.validate()?;
    let mut out = BTreeMap::new();
    for (name, dims) in config.parameter_shapes() {
        let n: usize = dims.iter().product();
        let t = if name.starts_with("norm") {
            if name.ends_with("weight") {
                Tensor::ones(&dims, DType::F32, Device::Cpu)?
            } else {
                Tensor::zeros(&dims, DType::F32, Device::Cpu)?
            }
        } else {
            // conv weight [O, I, 3, 3]: fan_in = I·9; head weight [C, F] and bias [C]: fan_in = F.
            let fan_in = match name.as_str() {
                "head.bias" => config.feature_width(),
                _ => dims[1..].iter().product(),
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut v = vec![0.0f32; n];
            RngStream::for_name(seed, &name).fill(Distribution::Uniform, 0, &mut v);
            v.iter_mut().for_each(|u| *u = (2.0 * *u - 1.0) * bound);
            Tensor::from_vec(v, &dims)?
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// The forward pass on `images` (`[B, 3, R, R]` in [−1, 1]) with weights `params` (plain tensors or
/// autograd leaves): the pooled features `[B, F]` and the logits `[B, classes]`.
pub fn forward(
    config: &ClassifierConfig,
    params: &BTreeMap<String, Tensor>,
    images: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let [b, c, h, w] = images.dims_n::<4>("classifier input")?;
    ensure!(
        c == 3 && h == config.resolution && w == config.resolution,
        "the classifier takes [B, 3, {r}, {r}] images, got {:?}",
        images.dims(),
        r = config.resolution
    );
    let p = |name: &str| -> Result<&Tensor> {
        params
            .get(name)
            .with_context(|| format!("classifier: no weight `{name}`"))
    };
    let mut x = images.clone();
    for i in 0..config.widths.len() {
        let stride = if i == 0 { 1 } else { 2 };
        x = x.conv2d(p(&format!("conv{i}.weight"))?, None, stride, Padding::uniform(1))?;
        x = x
            .group_norm(
                config.groups,
                Some(p(&format!("norm{i}.weight"))?),
                Some(p(&format!("norm{i}.bias"))?),
                NORM_EPS,
            )?
            .silu()?;
    }
    let [_, f, fh, fw] = x.dims_n::<4>("classifier features")?;
    let features = x.reshape(&[b, f, fh * fw])?.mean(-1, false)?;
    let logits = features.linear(p("head.weight")?, Some(p("head.bias")?))?;
    Ok((features, logits))
}

/// The cross-entropy of `logits` (`[B, C]`) against `labels`, each image weighted by `weights[i]`:
/// `Σ w_i·(−log p_i[y_i]) / Σ w_i`, as a `[1]` tensor to call `backward` on (tracked when the logits
/// are).
pub fn cross_entropy(logits: &Tensor, labels: &[usize], weights: &[f32]) -> Result<Tensor> {
    let [b, c] = logits.dims_n::<2>("cross_entropy")?;
    ensure!(
        labels.len() == b && weights.len() == b,
        "cross_entropy: {b} rows, {} labels, {} weights",
        labels.len(),
        weights.len()
    );
    ensure!(labels.iter().all(|&y| y < c), "cross_entropy: a label is not below {c}");
    let total: f32 = weights.iter().sum();
    ensure!(total > 0.0, "cross_entropy: the weights sum to 0");
    let ids = Tensor::from_vec(labels.iter().map(|&y| y as i64).collect::<Vec<_>>(), &[b, 1])?;
    let picked = logits.log_softmax(-1)?.gather(-1, &ids)?.reshape(&[b])?;
    let w = Tensor::from_vec(weights.to_vec(), &[b])?;
    Ok(picked.mul(&w)?.sum(0, true)?.mul_scalar(-1.0 / total)?)
}

/// A classifier: configuration and weights.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub config: ClassifierConfig,
    pub params: BTreeMap<String, Tensor>,
    /// Free-form JSON stored with the weights (training settings and results).
    pub info: serde_json::Value,
}

/// Features and logits of a set of images, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub count: usize,
    pub feature_width: usize,
    pub num_classes: usize,
    /// `count × feature_width`.
    pub features: Vec<f32>,
    /// `count × num_classes`.
    pub logits: Vec<f32>,
}

impl Embedding {
    /// The predicted class of every image (ties to the lower class id).
    pub fn predictions(&self) -> Vec<usize> {
        self.logits
            .chunks_exact(self.num_classes)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
                    )
                    .0
            })
            .collect()
    }

    /// Mean cross-entropy against `labels` (f64).
    pub fn mean_cross_entropy(&self, labels: &[usize]) -> f64 {
        let mut total = 0.0f64;
        for (row, &y) in self.logits.chunks_exact(self.num_classes).zip(labels) {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            total += lse - row[y] as f64;
        }
        total / labels.len().max(1) as f64
    }
}

impl Classifier {
    /// A new classifier with initial weights from `seed`.
    pub fn new(config: ClassifierConfig, seed: u64) -> Result<Classifier> {
        let params = initial_weights(&config, seed)?;
        Ok(Classifier {
            config,
            params,
            info: serde_json::Value::Null,
        })
    }

    /// Features `[B, F]` and logits `[B, classes]` of `images` `[B, 3, R, R]` in [−1, 1].
    pub fn forward(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        forward(&self.config, &self.params, images)
    }

    /// Features and logits of every image of `set`, `batch` images at a time.
    pub fn embed(&self, set: &ImageSet, batch: usize) -> Result<Embedding> {
        self.embed_with(set, batch, |_| {})
    }

    /// [`Classifier::embed`], calling `progress(images)` after every batch.
    pub fn embed_with(&self, set: &ImageSet, batch: usize, mut progress: impl FnMut(usize)) -> Result<Embedding> {
        ensure!(batch > 0, "batch must be at least 1");
        ensure!(
            set.resolution == self.config.resolution,
            "the images are {}² but the classifier takes {}²",
            set.resolution,
            self.config.resolution
        );
        let ids: Vec<usize> = (0..set.len()).collect();
        let (mut features, mut logits) = (Vec::new(), Vec::new());
        for chunk in ids.chunks(batch) {
            let (f, l) = self.forward(&set.batch(chunk)?)?;
            features.extend(f.to_f32_vec()?);
            logits.extend(l.to_f32_vec()?);
            progress(chunk.len());
        }
        Ok(Embedding {
            count: set.len(),
            feature_width: self.config.feature_width(),
            num_classes: self.config.num_classes(),
            features,
            logits,
        })
    }

    /// Writes the weights with the configuration (`nvg.classifier`: classes, resolution, feature width,
    /// widths, groups) and `info` (`nvg.classifier.info`) as metadata, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let metadata = HashMap::from([
            ("nvg.kind".to_string(), KIND.to_string()),
            (META_KEY.to_string(), self.config.to_json().to_string()),
            (format!("{META_KEY}.info"), self.info.to_string()),
        ]);
        safetensors::save(path, self.params.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
            .with_context(|| format!("writing classifier {}", path.display()))
    }

    /// Reads a classifier written by [`Classifier::save`], checking every weight's shape.
    pub fn load(path: &Path) -> Result<Classifier> {
        let ctx = || format!("classifier {}", path.display());
        let file = SafetensorsFile::open(path).with_context(ctx)?;
        let meta = file.metadata();
        let Some(cfg) = meta.get(META_KEY) else {
            bail!(
                "{}: not a classifier (no `{META_KEY}` metadata; train one with `nvg eval train-classifier`)",
                path.display()
            );
        };
        let cfg: serde_json::Value = serde_json::from_str(cfg).with_context(ctx)?;
        let config = ClassifierConfig::from_json(&cfg).with_context(|| format!("{}: metadata `{META_KEY}`", ctx()))?;
        let info = meta
            .get(&format!("{META_KEY}.info"))
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(serde_json::Value::Null);
        let shapes = config.parameter_shapes();
        let mut params = BTreeMap::new();
        for (name, dims) in &shapes {
            ensure!(file.contains(name), "{}: no tensor `{name}`", ctx());
            let t = file.get(name).with_context(ctx)?.to_dtype(DType::F32)?.contiguous()?;
            ensure!(
                t.dims() == dims.as_slice(),
                "{}: `{name}` is {:?}, expected {dims:?}",
                ctx(),
                t.dims()
            );
            params.insert(name.clone(), t);
        }
        ensure!(
            file.len() == shapes.len(),
            "{}: {} tensors, expected {} (unexpected extra tensors)",
            ctx(),
            file.len(),
            shapes.len()
        );
        Ok(Classifier { config, params, info })
    }
}

/// Optimisation settings of classifier training.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierTrainSettings {
    pub epochs: usize,
    pub batch: usize,
    /// Peak learning rate: linear warmup over the first 5% of the steps, then linear decay to a tenth.
    pub lr: f32,
    /// AdamW weight decay (on convolution and linear weights only).
    pub weight_decay: f64,
    /// Seed of the initial weights, the data order and the augmentation.
    pub seed: u64,
    /// Largest random translation in pixels (each image shifted by dx, dy ∈ [−shift, shift], the
    /// uncovered border filled with white); 0 turns augmentation off.
    pub shift: usize,
    /// Weight each image's loss by the inverse frequency of its class (so every class counts alike).
    pub balance: bool,
    /// Global gradient-norm clip.
    pub clip: f32,
}

impl Default for ClassifierTrainSettings {
    fn default() -> Self {
        ClassifierTrainSettings {
            epochs: 10,
            batch: 64,
            lr: 2e-3,
            weight_decay: 0.05,
            seed: 0,
            shift: 4,
            balance: true,
            clip: 1.0,
        }
    }
}

impl ClassifierTrainSettings {
    pub fn describe(&self) -> serde_json::Value {
        // The f32 learning rate as its shortest decimal (0.002, not 0.0020000000949949026).
        let lr: f64 = self.lr.to_string().parse().unwrap_or(self.lr as f64);
        serde_json::json!({
            "epochs": self.epochs, "batch": self.batch, "lr": lr, "weight_decay": self.weight_decay,
            "seed": self.seed, "shift": self.shift, "balance": self.balance, "clip": self.clip,
        })
    }
}

/// The images of epoch `epoch` in training order: a Philox Fisher–Yates permutation of `0..n` keyed by
/// (seed, epoch). Every image is used once per epoch (the last batch may be smaller).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let rng = RngStream::new(seed, 0xC1A5_0000_0000 + epoch as u64);
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((rng.words(i as u64)[0] as u64 * (i as u64 + 1)) >> 32) as usize;
        perm.swap(i, j);
    }
    perm
}

/// The translation `(dx, dy)` of image `id` in epoch `epoch`, each in `[−shift, shift]`.
pub fn shift_of(seed: u64, epoch: usize, id: usize, shift: usize) -> (isize, isize) {
    if shift == 0 {
        return (0, 0);
    }
    let w = RngStream::new(seed, 0xC1A5_5A1F_0000 + epoch as u64).words(id as u64);
    let span = 2 * shift as u64 + 1;
    let pick = |x: u32| ((x as u64 * span) >> 32) as isize - shift as isize;
    (pick(w[0]), pick(w[1]))
}

/// Translates each image of `images` (`[B, 3, R, R]` in [−1, 1]) by its `(dx, dy)` (content moves right
/// and down for positive values), filling the uncovered pixels with white (1.0).
pub fn translate(images: &Tensor, shifts: &[(isize, isize)]) -> Result<Tensor> {
    let [b, c, h, w] = images.dims_n::<4>("translate")?;
    ensure!(shifts.len() == b, "translate: {b} images, {} shifts", shifts.len());
    let src = images.to_f32_vec()?;
    let mut out = vec![1.0f32; src.len()];
    let plane = h * w;
    for (k, &(dx, dy)) in shifts.iter().enumerate() {
        for ch in 0..c {
            let base = (k * c + ch) * plane;
            for y in 0..h as isize {
                let sy = y - dy;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                for x in 0..w as isize {
                    let sx = x - dx;
                    if sx >= 0 && sx < w as isize {
                        out[base + y as usize * w + x as usize] = src[base + sy as usize * w + sx as usize];
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, &[b, c, h, w])?)
}

/// Loss weight of each class: with `balance`, `n / (k·n_c)` over the `k` classes present (so the
/// weights average 1 over the images); otherwise 1.
pub fn class_weights(labels: &[usize], num_classes: usize, balance: bool) -> Vec<f32> {
    let mut counts = vec![0usize; num_classes];
    for &y in labels {
        if y < num_classes {
            counts[y] += 1;
        }
    }
    let present = counts.iter().filter(|&&n| n > 0).count().max(1);
    counts
        .iter()
        .map(|&n| {
            if !balance || n == 0 {
                1.0
            } else {
                labels.len() as f32 / (present * n) as f32
            }
        })
        .collect()
}

/// Loss and accuracy of an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    /// Mean (weighted) training loss over the epoch's steps.
    pub loss: f64,
    /// Fraction of the epoch's (augmented) training images classified right during training.
    pub accuracy: f64,
    pub steps: usize,
    pub lr_end: f32,
}

/// Classifier training: the classifier, AdamW state, the step count and the settings.
pub struct ClassifierTrainer {
    pub classifier: Classifier,
    pub optimizer: AdamW,
    pub step: u64,
    pub settings: ClassifierTrainSettings,
    /// Loss weight per class (see [`class_weights`]).
    pub weights: Vec<f32>,
    steps_per_epoch: usize,
}

impl ClassifierTrainer {
    /// A trainer for a new classifier of `config` (initialised from `settings.seed`) on `train`.
    pub fn new(
        config: ClassifierConfig,
        settings: ClassifierTrainSettings,
        train: &ImageSet,
    ) -> Result<ClassifierTrainer> {
        ensure!(
            settings.epochs > 0 && settings.batch > 0,
            "epochs and batch must be at least 1"
        );
        ensure!(
            settings.lr.is_finite() && settings.lr > 0.0,
            "the learning rate must be positive"
        );
        ensure!(!train.is_empty(), "no training images");
        ensure!(
            train.classes.iter().all(|&c| c < config.num_classes()),
            "a training image has a class id beyond the {} classes",
            config.num_classes()
        );
        let weights = class_weights(&train.classes, config.num_classes(), settings.balance);
        let optimizer = AdamW::new(AdamWConfig {
            weight_decay: settings.weight_decay,
            ..AdamWConfig::default()
        })?;
        Ok(ClassifierTrainer {
            classifier: Classifier::new(config, settings.seed)?,
            optimizer,
            step: 0,
            steps_per_epoch: train.len().div_ceil(settings.batch),
            weights,
            settings,
        })
    }

    pub fn total_steps(&self) -> u64 {
        (self.steps_per_epoch * self.settings.epochs) as u64
    }

    pub fn steps_per_epoch(&self) -> usize {
        self.steps_per_epoch
    }

    /// The learning-rate schedule: warmup over 5% of the steps (at least 1), then linear decay to lr/10.
    pub fn schedule(&self) -> LrSchedule {
        let total = self.total_steps();
        let warmup = (total / 20).max(1);
        let lr = self.settings.lr;
        LrSchedule::new(lr, 0.0, warmup, warmup, total, lr / 10.0)
    }

    /// One optimiser step on `images` with `labels`: returns the loss and the number of images the
    /// (pre-step) classifier got right.
    pub fn train_step(&mut self, images: &Tensor, labels: &[usize]) -> Result<(f32, usize)> {
        let cfg = &self.classifier.config;
        let leaves: BTreeMap<String, Tensor> = self
            .classifier
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.requires_grad()))
            .collect();
        let (_, logits) = forward(cfg, &leaves, images)?;
        let w: Vec<f32> = labels.iter().map(|&y| self.weights[y]).collect();
        let loss = cross_entropy(&logits, labels, &w)?;
        let value = loss.to_f32_vec()?[0];
        ensure!(value.is_finite(), "step {}: the loss is not finite", self.step);
        let predicted = logits.detach().argmax(-1, false)?.to_i64_vec()?;
        let correct = predicted.iter().zip(labels).filter(|(p, y)| **p == **y as i64).count();
        let grads = loss.backward()?;
        let mut grads = crate::trainer::params::gradients_of(&leaves, &grads)?;
        drop(leaves);
        clip_grad_norm(&mut grads, self.settings.clip)?;
        let lr = self.schedule().lr(self.step);
        self.optimizer.step(&mut self.classifier.params, &grads, lr)?;
        self.step += 1;
        Ok((value, correct))
    }

    /// One epoch over `train` in the order of [`epoch_order`], each batch augmented by [`translate`];
    /// `progress(images)` is called after every step.
    pub fn train_epoch(
        &mut self,
        train: &ImageSet,
        epoch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<EpochStats> {
        let s = &self.settings;
        let (seed, batch, shift) = (s.seed, s.batch, s.shift);
        let order = epoch_order(train.len(), seed, epoch);
        let (mut loss_sum, mut correct, mut steps) = (0.0f64, 0usize, 0usize);
        for ids in order.chunks(batch) {
            let mut images = train.batch(ids)?;
            if shift > 0 {
                let shifts: Vec<_> = ids.iter().map(|&i| shift_of(seed, epoch, i, shift)).collect();
                images = translate(&images, &shifts)?;
            }
            let labels: Vec<usize> = ids.iter().map(|&i| train.classes[i]).collect();
            let (loss, ok) = self.train_step(&images, &labels)?;
            loss_sum += loss as f64;
            correct += ok;
            steps += 1;
            progress(ids.len());
        }
        Ok(EpochStats {
            epoch,
            loss: loss_sum / steps.max(1) as f64,
            accuracy: correct as f64 / train.len() as f64,
            steps,
            lr_end: self.schedule().lr(self.step.saturating_sub(1)),
        })
    }
}
