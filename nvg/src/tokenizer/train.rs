//! Training the NVG tokenizer (NVG-SPEC §2.10 without its LPIPS and GAN terms, whose pretrained networks
//! are not available offline): the encoder's features are clustered into structure maps and quantised
//! stage by stage on detached values (as in `Quantizer::quantize`); the codebook and the `Phi_s` convs
//! learn from `MSE(f̂_≤s, sg(f))` and the encoder from the commitment `0.25·MSE(sg(f̂_≤s), f)`, averaged
//! over the stages; the decoder reconstructs from the straight-through latent `f + sg(f̂ − f)` and the
//! reconstruction loss is `mean|x − x̂| + mean (x − x̂)²`.
//!
//! A run can train the decoder alone ([`TrainedPart::Decoder`]): the encoder, the codebook and the `Phi_s`
//! convs stay bit-identical, so every code the tokenizer assigns, and every dataset and generator made
//! with it, stays valid while the decoder learns to draw the same codes better.
//!
//! The official first-epoch soft code assignment (`smooth_end_epoch`) is not implemented: codes are
//! always the nearest ones.

use super::{Tokenizer, TokenizerConfig};
use crate::config::Grid;
use crate::weights::WeightMap;
use anyhow::{Context, Result, ensure};
use nvg_engine::io::safetensors::{self, SafetensorsFile};
use nvg_engine::optim::{AdamW, AdamWConfig, LrSchedule, clip_grad_norm};
use nvg_engine::rng::{Distribution, RngStream};
use nvg_engine::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Weight of the commitment term (the encoder's pull towards its quantisation).
pub const COMMITMENT: f32 = 0.25;

/// Freshly initialised tokenizer weights under the official key names, as PyTorch initialises the
/// modules: convolutions `U(±1/√fan_in)` (weights and biases), group norms 1 / 0, and the codebook
/// `U(±1/V)` (NVG-SPEC §2.5). A pure function of `seed`.
pub fn initial_weights(config: &TokenizerConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    let shapes = Tokenizer::synthetic_weights(config, seed)?;
    let mut out = BTreeMap::new();
    for (name, t) in &shapes {
        let dims = t.dims().to_vec();
        let n: usize = dims.iter().product();
        let uniform = |bound: f32| -> Result<Tensor> {
            let mut v = vec![0.0f32; n];
            RngStream::for_name(seed, name).fill(Distribution::Uniform, 0, &mut v);
            Ok(Tensor::from_vec(
                v.iter().map(|u| (2.0 * u - 1.0) * bound).collect::<Vec<_>>(),
                &dims,
            )?)
        };
        let value = if name == "quantize.embedding.weight" {
            uniform(1.0 / dims[0] as f32)?
        } else if name.contains(".norm") && dims.len() == 1 {
            if name.ends_with("weight") {
                Tensor::ones(&dims, DType::F32, Device::Cpu)?
            } else {
                Tensor::zeros(&dims, DType::F32, Device::Cpu)?
            }
        } else if dims.len() == 4 {
            uniform(1.0 / ((dims[1] * dims[2] * dims[3]) as f32).sqrt())?
        } else if dims.len() == 1 && name.ends_with("bias") {
            // A conv bias: PyTorch bounds it by the fan-in of its weight.
            let weight = name.trim_end_matches("bias").to_string() + "weight";
            let w = shapes
                .get(&weight)
                .with_context(|| format!("no weight {weight} for the bias {name}"))?;
            uniform(1.0 / (w.dims()[1..].iter().product::<usize>() as f32).sqrt())?
        } else {
            anyhow::bail!("no initialisation rule for tokenizer tensor {name} {dims:?}");
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// Which weights a tokenizer run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainedPart {
    /// Encoder, quantiser and decoder.
    #[default]
    Whole,
    /// The decoder alone (`decoder.*`); the rest is frozen, so the tokenizer's codes do not change.
    Decoder,
}

impl TrainedPart {
    /// Whether the named tokenizer tensor is trained.
    pub fn trains(self, name: &str) -> bool {
        match self {
            TrainedPart::Whole => true,
            TrainedPart::Decoder => super::is_decoder_tensor(name),
        }
    }

    /// The name kept in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            TrainedPart::Whole => "whole",
            TrainedPart::Decoder => "decoder",
        }
    }

    fn from_name(name: &str) -> Option<TrainedPart> {
        [TrainedPart::Whole, TrainedPart::Decoder]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// Builds a tokenizer on `grid` from named weights (no hashing: for training steps).
pub fn tokenizer_from(weights: &BTreeMap<String, Tensor>, config: &TokenizerConfig, grid: Grid) -> Result<Tokenizer> {
    let mut w = WeightMap::new("tokenizer training state", weights.clone());
    Tokenizer::build_unhashed(&mut w, config.clone(), grid)
}

/// The loss terms of one batch (means over the batch).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenizerLosses {
    pub total: f32,
    /// `mean |x − x̂|`.
    pub l1: f32,
    /// `mean (x − x̂)²`.
    pub mse: f32,
    /// Codebook term `MSE(f̂_≤s, sg(f))`, averaged over the stages.
    pub codebook: f32,
    /// Commitment term `MSE(sg(f̂_≤s), f)` (before its 0.25 weight), averaged over the stages.
    pub commitment: f32,
}

/// Mean of all elements of `t` as a 0-d-like `[1]` tensor (tracked).
fn mean_all(t: &Tensor) -> Result<Tensor> {
    Ok(t.reshape(&[t.numel()])?.mean(0, true)?)
}

fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    mean_all(&a.sub(b)?.sqr()?)
}

/// The training forward of `tok` (built from autograd leaves) on images `[B, 3, R, R]` in [−1, 1]:
/// the scalar loss (a `[1]` tensor to call `backward` on) and its terms.
pub fn training_loss(tok: &Tokenizer, images: &Tensor) -> Result<(Tensor, TokenizerLosses)> {
    let grid = tok.grid();
    let (t, c, stages) = (grid.tokens(), tok.config.latent_channels, grid.stages());
    let b = images.dims()[0];
    let f = tok.token_major(&tok.encode(images)?)?; // [B, T, C], tracked
    let fd = f.detach();
    let labels = tok.structure_maps(&fd)?;
    let quant = &tok.quantizer;
    let mut rest = fd.clone();
    let mut f_hat = Tensor::zeros(&[b, t, c], DType::F32, fd.device())?;
    let (mut codebook, mut commitment): (Option<Tensor>, Option<Tensor>) = (None, None);
    for s in 0..stages {
        let lab: Vec<i64> = labels.iter().flat_map(|l| l[s].iter().copied()).collect();
        let lab = Tensor::from_vec(lab, &[b, t])?.to_device(fd.device())?;
        let clusters = grid.clusters(s);
        let means = rest.segment_mean(&lab, clusters)?.reshape(&[b * clusters, c])?;
        let codes = Tensor::from_vec(quant.nearest(&means)?, &[b, clusters])?.to_device(fd.device())?;
        let inc = quant.increment(&codes.gather(1, &lab)?, s)?; // tracked through E and Phi_s
        f_hat = f_hat.add(&inc)?;
        rest = rest.sub(&inc.detach())?;
        let cb = mse(&f_hat, &fd)?;
        let cm = mse(&f_hat.detach(), &f)?;
        codebook = Some(match codebook {
            None => cb,
            Some(acc) => acc.add(&cb)?,
        });
        commitment = Some(match commitment {
            None => cm,
            Some(acc) => acc.add(&cm)?,
        });
    }
    let inv = 1.0 / stages as f32;
    let codebook = codebook.context("no stages")?.mul_scalar(inv)?;
    let commitment = commitment.context("no stages")?.mul_scalar(inv)?;
    // Straight through: the decoder sees f̂, the encoder gets the reconstruction gradient.
    let latent = f.add(&f_hat.sub(&f)?.detach())?;
    let side = grid.side();
    let z = latent.transpose(1, 2)?.reshape(&[b, c, side, side])?;
    let recon = tok.decoder.forward_unclamped(&z)?;
    let diff = recon.sub(images)?;
    let l1 = mean_all(&diff.abs()?)?;
    let sq = mean_all(&diff.sqr()?)?;
    let total = l1.add(&sq)?.add(&codebook)?.add(&commitment.mul_scalar(COMMITMENT)?)?;
    let scalar = |t: &Tensor| -> Result<f32> { Ok(t.to_f32_vec()?[0]) };
    let losses = TokenizerLosses {
        total: scalar(&total)?,
        l1: scalar(&l1)?,
        mse: scalar(&sq)?,
        codebook: scalar(&codebook)?,
        commitment: scalar(&commitment)?,
    };
    Ok((total, losses))
}

/// Peak signal-to-noise ratio (dB) of the tokenizer's full round trip (encode, cluster, quantise,
/// decode, clamp) on images `[B, 3, R, R]` in [−1, 1], over the 8-bit pixel range.
pub fn reconstruction_psnr(tok: &Tokenizer, images: &Tensor) -> Result<f64> {
    let tokens = tok.tokenize(&tok.encode(&images.to_device(tok.quantizer.device())?)?)?;
    let recon = tok.decode(&tokens.quantized.latent)?;
    let (a, b) = (recon.to_f32_vec()?, images.to_f32_vec()?);
    ensure!(!a.is_empty(), "no images");
    // Pixels in [−1, 1] span 255 levels over a range of 2: MSE in 8-bit units is (127.5·Δ)².
    let mse: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| {
            let d = (*x as f64 - *y as f64) * 127.5;
            d * d
        })
        .sum::<f64>()
        / a.len() as f64;
    Ok(10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10())
}

/// Optimisation settings of a tokenizer run.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerTrainSettings {
    /// Peak learning rate, reached by a linear warmup from 0 and decayed linearly to `lr / 10` at `steps`.
    pub lr: f32,
    pub warmup: u64,
    pub steps: u64,
    pub batch: usize,
    /// Global gradient-norm clip (the official 1.0).
    pub clip: f32,
    /// Seed of the initialisation and of the data order.
    pub seed: u64,
}

impl TokenizerTrainSettings {
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule::new(self.lr, 0.0, self.warmup, self.warmup, self.steps, self.lr / 10.0)
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "lr": self.lr, "warmup": self.warmup, "steps": self.steps, "batch": self.batch,
            "clip": self.clip, "seed": self.seed,
        })
    }
}

/// The optimiser settings of tokenizer training: AdamW with betas (0.9, 0.95) and no weight decay
/// (NVG-SPEC §2.10).
pub fn tokenizer_adamw() -> AdamWConfig {
    AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    }
}

/// Everything a tokenizer run needs to continue exactly: weights, optimiser state and the step.
pub struct TokenizerTrainState {
    pub config: TokenizerConfig,
    pub grid: Grid,
    pub params: BTreeMap<String, Tensor>,
    /// Which of `params` the optimiser updates (it holds state for those alone).
    pub part: TrainedPart,
    pub optimizer: AdamW,
    pub step: u64,
}

const PARAM_PREFIX: &str = "tokenizer.";
const OPTIMIZER_PREFIX: &str = "adamw.";

impl TokenizerTrainState {
    pub fn new(config: &TokenizerConfig, grid: Grid, seed: u64) -> Result<TokenizerTrainState> {
        Ok(TokenizerTrainState {
            config: config.clone(),
            grid,
            params: initial_weights(config, seed)?,
            part: TrainedPart::Whole,
            optimizer: AdamW::new(tokenizer_adamw())?,
            step: 0,
        })
    }

    /// A run on `resolution`-pixel images that starts from the weights of an existing tokenizer file
    /// (official key names, as `export` writes them; any float storage) with a fresh optimiser, training
    /// `part`. The configuration is read off the weights; every tensor the architecture needs must be
    /// there with its shape, and tensors of other modules (an official checkpoint's loss networks) are
    /// left out.
    pub fn from_tokenizer_file(path: &Path, resolution: usize, part: TrainedPart) -> Result<TokenizerTrainState> {
        let loaded = WeightMap::from_file(path, "").with_context(|| format!("loading tokenizer {}", path.display()))?;
        let config = TokenizerConfig::infer(&loaded).with_context(|| path.display().to_string())?;
        let grid = config.grid_for_resolution(resolution)?;
        let mut tensors = loaded.into_tensors();
        let mut params = BTreeMap::new();
        for (name, expected) in initial_weights(&config, 0)? {
            let t = tensors
                .remove(&name)
                .with_context(|| format!("{}: no tensor {name}", path.display()))?;
            ensure!(
                t.dims() == expected.dims(),
                "{}: {name} has shape {:?}, the architecture it describes needs {:?}",
                path.display(),
                t.dims(),
                expected.dims()
            );
            params.insert(name, t.to_dtype(DType::F32)?.contiguous()?);
        }
        Ok(TokenizerTrainState {
            config,
            grid,
            params,
            part,
            optimizer: AdamW::new(tokenizer_adamw())?,
            step: 0,
        })
    }

    /// The tokenizer of the current weights.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        tokenizer_from(&self.params, &self.config, self.grid)
    }

    /// Which images step `step` trains on: epoch-wise permutations of `0..n` from `seed`, taken
    /// `batch` at a time (the last partial batch of an epoch is dropped).
    pub fn batch_ids(n: usize, batch: usize, seed: u64, step: u64) -> Vec<usize> {
        let per_epoch = (n / batch).max(1) as u64;
        let (epoch, k) = (step / per_epoch, (step % per_epoch) as usize);
        let rng = RngStream::new(seed, 0x7043_0000 + epoch);
        let mut perm: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = ((rng.words(i as u64)[0] as u64 * (i as u64 + 1)) >> 32) as usize;
            perm.swap(i, j);
        }
        perm.into_iter().cycle().skip(k * batch).take(batch).collect()
    }

    /// Moves the weights to `device`, where the following steps run (the optimiser state follows at the
    /// next step; checkpoints and exports are written from the host).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        for t in self.params.values_mut() {
            *t = t.to_device(device)?;
        }
        Ok(())
    }

    /// One optimiser step on `images` `[B, 3, R, R]` (moved to the weights' device); returns the losses
    /// and the gradient norm before clipping.
    pub fn train_step(&mut self, images: &Tensor, settings: &TokenizerTrainSettings) -> Result<(TokenizerLosses, f32)> {
        let part = self.part;
        let device = self.params.values().next().map_or(Device::Cpu, Tensor::device);
        let images = &images.to_device(device)?;
        // Frozen tensors enter as constants: no graph is recorded through them.
        let leaves: BTreeMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), if part.trains(n) { t.requires_grad() } else { t.clone() }))
            .collect();
        let tok = tokenizer_from(&leaves, &self.config, self.grid)?;
        let (loss, losses) = training_loss(&tok, images)?;
        ensure!(
            losses.total.is_finite(),
            "step {}: the loss is not finite ({losses:?})",
            self.step
        );
        let grads = loss.backward()?;
        let mut grads = crate::trainer::params::gradients_of(leaves.iter().filter(|(n, _)| part.trains(n)), &grads)?;
        drop((tok, leaves));
        let norm = clip_grad_norm(&mut grads, settings.clip)?;
        let lr = settings.schedule().lr(self.step);
        let mut trained: BTreeMap<String, Tensor> = self
            .params
            .iter()
            .filter(|(n, _)| part.trains(n))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        self.optimizer.step(&mut trained, &grads, lr)?;
        self.params.extend(trained);
        self.step += 1;
        Ok((losses, norm))
    }

    /// Writes the training checkpoint (weights, optimiser state, step, settings) atomically.
    pub fn save(&self, path: &Path, settings: &TokenizerTrainSettings) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, t)| (format!("{PARAM_PREFIX}{n}"), t.clone()))
            .collect();
        for (n, t) in self.optimizer.state_tensors()? {
            tensors.push((
                format!("{OPTIMIZER_PREFIX}{}", n.strip_prefix("adamw.").unwrap_or(&n)),
                t,
            ));
        }
        let meta = serde_json::json!({
            "step": self.step,
            "grid_side": self.grid.side(),
            "part": self.part.name(),
            "settings": settings.describe(),
        });
        let metadata = HashMap::from([
            ("nvg.kind".to_string(), "tokenizer-training".to_string()),
            ("nvg.train".to_string(), meta.to_string()),
        ]);
        safetensors::save(path, tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
            .with_context(|| format!("writing checkpoint {}", path.display()))
    }

    /// Reads a checkpoint written by `save`.
    pub fn load(path: &Path) -> Result<TokenizerTrainState> {
        let file = SafetensorsFile::open(path).with_context(|| format!("checkpoint {}", path.display()))?;
        let meta = file
            .metadata()
            .get("nvg.train")
            .cloned()
            .with_context(|| format!("{}: not a tokenizer training checkpoint", path.display()))?;
        let meta: serde_json::Value = serde_json::from_str(&meta)?;
        let (mut params, mut opt) = (BTreeMap::new(), Vec::new());
        for name in file.names() {
            let t = file.get(name)?.contiguous()?;
            if let Some(n) = name.strip_prefix(PARAM_PREFIX) {
                params.insert(n.to_string(), t);
            } else if let Some(n) = name.strip_prefix(OPTIMIZER_PREFIX) {
                opt.push((format!("adamw.{n}"), t));
            }
        }
        let config = TokenizerConfig::infer(&WeightMap::new("checkpoint", params.clone()))?;
        let side = meta["grid_side"].as_u64().context("checkpoint metadata: grid_side")? as usize;
        // Checkpoints from before decoder-only runs trained the whole tokenizer.
        let part = match meta.get("part").and_then(|p| p.as_str()) {
            None => TrainedPart::Whole,
            Some(name) => TrainedPart::from_name(name)
                .with_context(|| format!("{}: unknown trained part `{name}` in the metadata", path.display()))?,
        };
        Ok(TokenizerTrainState {
            config,
            grid: Grid::new(side)?,
            params,
            part,
            optimizer: AdamW::from_state_tensors(tokenizer_adamw(), opt)?,
            step: meta["step"].as_u64().context("checkpoint metadata: step")?,
        })
    }

    /// Writes the weights alone under the official VQAE key names (what `Tokenizer::load`, `nvg
    /// tokenize` and `nvg generate` read), atomically.
    pub fn export(&self, path: &Path) -> Result<()> {
        let metadata = HashMap::from([
            ("nvg.kind".to_string(), "tokenizer".to_string()),
            (
                "nvg.train".to_string(),
                serde_json::json!({ "step": self.step }).to_string(),
            ),
        ]);
        safetensors::save(path, self.params.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
            .with_context(|| format!("writing tokenizer {}", path.display()))
    }
}
