//! The NVG tokenizer: a convolutional VQ autoencoder (`vqae`), granularity clustering (`clustering`) and
//! the residual multi-stage quantiser (`quantizer`). Images become NVG's granularity sequence (per stage:
//! structure map, codes, canvas) and canvases become images again.

pub mod clustering;
pub mod quantizer;
pub mod train;
pub mod vqae;

pub use quantizer::{Quantized, Quantizer};
pub use vqae::{Decoder, Encoder, TokenizerConfig};

use crate::config::Grid;
use crate::weights::WeightMap;
use anyhow::{Context, Result, bail};
use nvg_engine::{Device, Tensor};
use rayon::prelude::*;
use std::path::Path;

/// Prefix of the tokenizer inside official generator checkpoints.
const GENERATOR_COPY_PREFIX: &str = "first_stage_model.";

/// Whether a named tokenizer tensor belongs to the decoder, the one part that does not decide the codes.
pub fn is_decoder_tensor(name: &str) -> bool {
    name.starts_with("decoder.")
}

/// An image as NVG sees it: per stage its structure map and codes, plus every stage's canvas and the
/// final latent (batched over B images).
pub struct Tokens {
    /// `[B][stages][T]`: stage-s labels in `0..2^s`.
    pub labels: Vec<Vec<Vec<i64>>>,
    pub quantized: Quantized,
}

/// The whole tokenizer.
pub struct Tokenizer {
    pub config: TokenizerConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quantizer: Quantizer,
    /// Fingerprint of all the weights.
    pub hash: u64,
    /// Fingerprint of the weights that decide the codes (everything but the decoder): what a tokenized
    /// dataset records, so that a decoder fine-tuned with `nvg train-tokenizer --decoder-only` reads
    /// the datasets of the tokenizer it came from.
    pub codes_hash: u64,
}

impl Tokenizer {
    /// Loads a tokenizer from a safetensors file with the official VQAE key names (as in `ae.ckpt`, or
    /// prefixed `first_stage_model.` as inside generator checkpoints). `grid_side` is the latent grid the
    /// images will be encoded to (16 for 256-pixel images with the official f16 tokenizer); the
    /// configuration is read off the weights.
    pub fn load(path: &Path, grid_side: usize) -> Result<Tokenizer> {
        Tokenizer::load_on(path, grid_side, Device::Cpu)
    }

    /// [`Tokenizer::load`] with the weights on `device` (the encoder, quantiser and decoder then run
    /// there).
    pub fn load_on(path: &Path, grid_side: usize, device: Device) -> Result<Tokenizer> {
        let file = nvg_engine::io::safetensors::SafetensorsFile::open(path)?;
        let prefixed =
            file.names().any(|n| n.starts_with(GENERATOR_COPY_PREFIX)) && !file.contains("encoder.conv_in.conv.weight");
        let prefix = if prefixed { GENERATOR_COPY_PREFIX } else { "" };
        let mut w =
            WeightMap::from_file(path, prefix).with_context(|| format!("loading tokenizer {}", path.display()))?;
        // EMA copy, loss networks and usage counters of tokenizer training are not needed.
        w.allow_unused(&[
            "ema_model.",
            "loss.",
            "total_visited_codes",
            "nvgformer.",
            "repa_encoder.",
            "first_stage_model.",
        ]);
        let config = TokenizerConfig::infer(&w)?;
        let mut w = w.to_device(device)?;
        let tok = Tokenizer::build(&mut w, config, Grid::new(grid_side)?)?;
        w.finish()?;
        Ok(tok)
    }

    /// Loads a tokenizer for images of `resolution × resolution` pixels: the latent grid side is the
    /// resolution over the tokenizer's downsampling factor and must be a power of two.
    pub fn load_for_resolution(path: &Path, resolution: usize) -> Result<Tokenizer> {
        Tokenizer::load_for_resolution_on(path, resolution, Device::Cpu)
    }

    /// [`Tokenizer::load_for_resolution`] with the weights on `device`.
    pub fn load_for_resolution_on(path: &Path, resolution: usize, device: Device) -> Result<Tokenizer> {
        let grid = TokenizerConfig::infer(&WeightMap::from_file(path, "")?)?.grid_for_resolution(resolution)?;
        Tokenizer::load_on(path, grid.side(), device)
    }

    /// A tokenizer with made-up weights (benchmarks, tests).
    pub fn synthetic(config: TokenizerConfig, grid_side: usize, seed: u64) -> Result<Tokenizer> {
        Tokenizer::build(&mut WeightMap::synthetic(seed), config, Grid::new(grid_side)?)
    }

    /// Made-up weights of a tokenizer of `config` under the official key names (e.g. to write an
    /// official-size tokenizer file for benchmarks).
    pub fn synthetic_weights(
        config: &TokenizerConfig,
        seed: u64,
    ) -> Result<std::collections::BTreeMap<String, Tensor>> {
        let mut w = WeightMap::synthetic(seed);
        Tokenizer::build(&mut w, config.clone(), Grid::official())?;
        Ok(w.into_tensors())
    }

    fn build(w: &mut WeightMap, config: TokenizerConfig, grid: Grid) -> Result<Tokenizer> {
        let mut tok = Tokenizer::build_unhashed(w, config, grid)?;
        (tok.hash, tok.codes_hash) = w.hashes_taken(|name| !is_decoder_tensor(name))?;
        Ok(tok)
    }

    /// Whether a dataset whose header records `tokenizer_hash` was made with codes this tokenizer
    /// assigns: the header holds the codes fingerprint, or (files written before 2026-11-30) the
    /// fingerprint of all the weights.
    pub fn assigns_codes_of(&self, tokenizer_hash: u64) -> bool {
        tokenizer_hash == self.codes_hash || tokenizer_hash == self.hash
    }

    /// `build` without the weights' hashes (0): for training steps, which rebuild the model every step.
    pub(crate) fn build_unhashed(w: &mut WeightMap, config: TokenizerConfig, grid: Grid) -> Result<Tokenizer> {
        let encoder = Encoder::load(w, &config);
        let decoder = Decoder::load(w, &config);
        let quantizer = Quantizer::take(w, grid, config.codebook_size, config.latent_channels);
        Ok(Tokenizer {
            config,
            encoder,
            decoder,
            quantizer,
            hash: 0,
            codes_hash: 0,
        })
    }

    pub fn grid(&self) -> Grid {
        self.quantizer.grid()
    }

    /// Image resolution that maps onto the latent grid.
    pub fn resolution(&self) -> usize {
        self.grid().side() * self.config.downsample()
    }

    /// Encoder features `[B, C, side, side]` of images `[B, 3, R, R]` in [−1, 1].
    pub fn encode(&self, images: &Tensor) -> Result<Tensor> {
        let r = self.resolution();
        if images.rank() != 4 || images.dims()[1..] != [3, r, r] {
            bail!(
                "images must be [B, 3, {r}, {r}] for this tokenizer and grid, got {:?}",
                images.dims()
            );
        }
        self.encoder.forward(images)
    }

    /// Encoder features `[B, C, side, side]` as token-major `[B, T, C]`.
    pub fn token_major(&self, features: &Tensor) -> Result<Tensor> {
        let (t, c) = (self.grid().tokens(), self.config.latent_channels);
        let b = features.dims()[0];
        if features.dims() != [b, c, self.grid().side(), self.grid().side()] {
            bail!(
                "features must be [B, {c}, {s}, {s}], got {:?}",
                features.dims(),
                s = self.grid().side()
            );
        }
        Ok(features.reshape(&[b, c, t])?.transpose(1, 2)?.contiguous()?)
    }

    /// The structure maps `[B][stages][T]` of token-major features `[B, T, C]` (parallel across images).
    pub fn structure_maps(&self, tokens: &Tensor) -> Result<Vec<Vec<Vec<i64>>>> {
        let (t, c) = (self.grid().tokens(), self.config.latent_channels);
        let flat = tokens.to_f32_vec()?;
        flat.par_chunks(t * c).map(|f| clustering::cluster(f, t, c)).collect()
    }

    /// Structure maps and the multi-stage quantisation of encoder features `[B, C, side, side]`.
    pub fn tokenize(&self, features: &Tensor) -> Result<Tokens> {
        let tok_major = self.token_major(features)?;
        let labels = self.structure_maps(&tok_major)?;
        let quantized = self.quantizer.quantize(&tok_major, &labels)?;
        Ok(Tokens { labels, quantized })
    }

    /// Images `[B, 3, R, R]` in [−1, 1] from latents `[B, T, C]` (token-major).
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let (side, c) = (self.grid().side(), self.config.latent_channels);
        let b = latent.dims()[0];
        let z = latent.transpose(1, 2)?.reshape(&[b, c, side, side])?;
        self.decoder.forward(&z)
    }
}
