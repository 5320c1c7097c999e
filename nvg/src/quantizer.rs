//! The sampling side of the tokenizer's quantiser: the shared codebook and the per-stage `Phi` convolutions
//! that turn a stage's codes into its canvas increment (`nvg_next_input`, NVG-SPEC §2.5 and §2.8):
//! `canvas' = canvas + Phi_s(E[codes])`, `Phi_s(h) = h + 0.5·conv_s(h)` on the `C × side × side` map.

use crate::config::Grid;
use crate::weights::WeightMap;
use anyhow::{Result, bail};
use nvg_engine::{Padding, Tensor};
use std::path::Path;

/// Weight of the convolution in `Phi` (the official `quant_resi` ratio).
const PHI_RATIO: f32 = 0.5;

pub struct Quantizer {
    grid: Grid,
    /// `[V, C]`.
    codebook: Tensor,
    /// `(weight [C, C, 3, 3], bias [C])` per stage.
    phi: Vec<(Tensor, Tensor)>,
}

impl Quantizer {
    /// Loads `quantize.embedding.weight` and `quantize.quant_resi.{s}.*` from a tokenizer's safetensors
    /// file (official VQAE key names).
    pub fn load(path: &Path, grid: Grid) -> Result<Quantizer> {
        let mut w = WeightMap::from_file(path, "quantize.")?;
        let q = Quantizer::from_weights(&mut w, grid)?;
        w.finish()?;
        Ok(q)
    }

    /// Takes the quantiser's tensors from `w` (names without the `quantize.` prefix).
    pub fn from_weights(w: &mut WeightMap, grid: Grid) -> Result<Quantizer> {
        let Some(&[v, c]) = w.dims("embedding.weight") else {
            bail!("no codebook (quantize.embedding.weight [V, C]): is this a tokenizer file?");
        };
        Ok(Quantizer::take(w, grid, v, c))
    }

    /// A quantiser with made-up weights (see `WeightMap::synthetic`).
    pub fn synthetic(grid: Grid, vocab: usize, channels: usize, seed: u64) -> Quantizer {
        Quantizer::take(&mut WeightMap::synthetic(seed), grid, vocab, channels)
    }

    fn take(w: &mut WeightMap, grid: Grid, vocab: usize, c: usize) -> Quantizer {
        let codebook = w.take("embedding.weight", &[vocab, c]);
        let phi = (0..grid.stages())
            .map(|s| {
                (
                    w.take(&format!("quant_resi.{s}.weight"), &[c, c, 3, 3]),
                    w.take(&format!("quant_resi.{s}.bias"), &[c]),
                )
            })
            .collect();
        Quantizer { grid, codebook, phi }
    }

    pub fn codebook(&self) -> &Tensor {
        &self.codebook
    }

    pub fn codebook_size(&self) -> usize {
        self.codebook.dims()[0]
    }

    pub fn channels(&self) -> usize {
        self.codebook.dims()[1]
    }

    /// `Phi_s(h) = h + 0.5·conv_s(h)` on channels-first maps `[B, C, side, side]`.
    pub fn phi(&self, stage: usize, h: &Tensor) -> Result<Tensor> {
        let (w, b) = &self.phi[stage];
        let conv = h.conv2d(w, Some(b), 1, Padding::uniform(1))?;
        Ok(h.add(&conv.mul_scalar(PHI_RATIO)?)?)
    }

    /// The canvas after stage `stage`: `canvas + Phi_s(E[codes])`, token-major `[B, T, C]`, with one code
    /// per token (`[B, T]`, i64).
    pub fn next_canvas(&self, canvas: &Tensor, codes_per_token: &Tensor, stage: usize) -> Result<Tensor> {
        let (t, c, side) = (self.grid.tokens(), self.channels(), self.grid.side());
        let b = canvas.dims()[0];
        if canvas.dims() != [b, t, c] || codes_per_token.dims() != [b, t] {
            bail!(
                "next_canvas: canvas {:?} and codes {:?} must be [B, {t}, {c}] and [B, {t}]",
                canvas.dims(),
                codes_per_token.dims()
            );
        }
        let h = self.codebook.embedding(codes_per_token)?; // [B, T, C]
        let h = h.transpose(1, 2)?.reshape(&[b, c, side, side])?;
        let inc = self.phi(stage, &h)?.reshape(&[b, c, t])?.transpose(1, 2)?;
        Ok(canvas.add(&inc)?)
    }
}
