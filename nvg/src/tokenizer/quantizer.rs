//! The tokenizer's quantiser (NVG-SPEC §2.5): one codebook shared by all stages and a `Phi`
//! convolution per stage that turns a stage's codes into its canvas increment,
//! `Phi_s(h) = h + 0.5·conv_s(h)` on the `C × side × side` map.
//!
//! - Sampling: `next_canvas` (`nvg_next_input`) adds one stage's increment to the canvas.
//! - Tokenizing: `quantize` runs the residual multi-stage quantisation of encoder features over given
//!   structure maps (`f_to_nvg_input_output`), giving every stage's codes, input canvas and the final
//!   latent; `latent_from_codes` rebuilds the latent from codes alone (`nvg_output_to_fhat`).

use crate::config::Grid;
use crate::weights::WeightMap;
use anyhow::{Result, bail};
use nvg_engine::{DType, Device, Padding, Tensor};
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
    /// Where the codebook lives (and the canvas updates run).
    pub fn device(&self) -> nvg_engine::Device {
        self.codebook.device()
    }

    /// Loads `quantize.embedding.weight` and `quantize.quant_resi.{s}.*` from a tokenizer's safetensors
    /// file (official VQAE key names).
    pub fn load(path: &Path, grid: Grid) -> Result<Quantizer> {
        let mut w = WeightMap::from_file(path, "")?;
        w.allow_unused(&["encoder.", "decoder.", "ema_model.", "loss.", "total_visited_codes"]);
        let q = Quantizer::from_weights(&mut w, grid)?;
        w.finish()?;
        Ok(q)
    }

    /// Takes the quantiser's tensors (`quantize.*`) from `w`.
    pub fn from_weights(w: &mut WeightMap, grid: Grid) -> Result<Quantizer> {
        let Some(&[v, c]) = w.dims("quantize.embedding.weight") else {
            bail!("no codebook (quantize.embedding.weight [V, C]): is this a tokenizer file?");
        };
        Ok(Quantizer::take(w, grid, v, c))
    }

    /// A quantiser with made-up weights (see `WeightMap::synthetic`).
    pub fn synthetic(grid: Grid, vocab: usize, channels: usize, seed: u64) -> Quantizer {
        Quantizer::take(&mut WeightMap::synthetic(seed), grid, vocab, channels)
    }

    pub(crate) fn take(w: &mut WeightMap, grid: Grid, vocab: usize, c: usize) -> Quantizer {
        let codebook = w.take("quantize.embedding.weight", &[vocab, c]);
        // As many Phi convolutions as the weights have (the official tokenizer has 9); stages map onto
        // them as the official code does (see `phi_index`).
        let n_phi = match w.count_indexed("quantize.quant_resi.") {
            0 => grid.stages(),
            n => n,
        };
        let phi = (0..n_phi)
            .map(|s| {
                let name = format!("quantize.quant_resi.{s}");
                (
                    w.take(&format!("{name}.weight"), &[c, c, 3, 3]),
                    w.take(&format!("{name}.bias"), &[c]),
                )
            })
            .collect();
        Quantizer { grid, codebook, phi }
    }

    pub fn grid(&self) -> Grid {
        self.grid
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
        let (w, b) = &self.phi[phi_index(stage, self.grid.stages(), self.phi.len())];
        let conv = h.conv2d(w, Some(b), 1, Padding::uniform(1))?;
        Ok(h.add(&conv.mul_scalar(PHI_RATIO)?)?)
    }

    /// The canvas increment of stage `stage` for one code per token (`[B, T]`, i64): `Phi_s(E[codes])`,
    /// token-major `[B, T, C]`.
    pub fn increment(&self, codes_per_token: &Tensor, stage: usize) -> Result<Tensor> {
        let (t, c, side) = (self.grid.tokens(), self.channels(), self.grid.side());
        let b = codes_per_token.dims()[0];
        if codes_per_token.dims() != [b, t] {
            bail!("codes must be [B, {t}], got {:?}", codes_per_token.dims());
        }
        let h = self.codebook.embedding(codes_per_token)?; // [B, T, C]
        let h = h.transpose(1, 2)?.reshape(&[b, c, side, side])?;
        Ok(self
            .phi(stage, &h)?
            .reshape(&[b, c, t])?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// The canvas after stage `stage`: `canvas + Phi_s(E[codes])`, token-major `[B, T, C]`, with one code
    /// per token (`[B, T]`, i64).
    pub fn next_canvas(&self, canvas: &Tensor, codes_per_token: &Tensor, stage: usize) -> Result<Tensor> {
        let (t, c) = (self.grid.tokens(), self.channels());
        let b = canvas.dims()[0];
        if canvas.dims() != [b, t, c] || codes_per_token.dims() != [b, t] {
            bail!(
                "next_canvas: canvas {:?} and codes {:?} must be [B, {t}, {c}] and [B, {t}]",
                canvas.dims(),
                codes_per_token.dims()
            );
        }
        Ok(canvas.add(&self.increment(codes_per_token, stage)?)?)
    }

    /// Index of the nearest codebook entry of every row of `x` (`[n, C]`): argmin of
    /// `‖x‖² + ‖e‖² − 2·x·e` in f32, as the official code computes it; ties go to the lower index.
    pub fn nearest(&self, x: &Tensor) -> Result<Vec<i64>> {
        let dots = x.linear(&self.codebook, None)?.to_f32_vec()?; // [n, V]
        let xv = x.to_f32_vec()?;
        let ev = self.codebook.to_f32_vec()?;
        let c = self.channels();
        let e2: Vec<f32> = ev.chunks(c).map(|e| e.iter().map(|v| v * v).sum()).collect();
        Ok(dots
            .chunks(self.codebook_size())
            .zip(xv.chunks(c))
            .map(|(row, xr)| {
                let x2: f32 = xr.iter().map(|v| v * v).sum();
                let mut best = (0usize, f32::INFINITY);
                for (k, (&dot, &ek)) in row.iter().zip(&e2).enumerate() {
                    let d = (x2 + ek) - 2.0 * dot;
                    if d < best.1 {
                        best = (k, d);
                    }
                }
                best.0 as i64
            })
            .collect())
    }

    /// The residual multi-stage quantisation of features `f` (`[B, T, C]`, token-major) over the structure
    /// maps `labels` (`[B][stages][T]`): at stage s every cluster's mean residual picks its nearest code,
    /// and `Phi_s` of the codes is added to the running latent and taken off the residual.
    pub fn quantize(&self, f: &Tensor, labels: &[Vec<Vec<i64>>]) -> Result<Quantized> {
        let (t, c, stages) = (self.grid.tokens(), self.channels(), self.grid.stages());
        let b = labels.len();
        if f.dims() != [b, t, c] {
            bail!(
                "quantize: features must be [{b}, {t}, {c}] for {b} label sets, got {:?}",
                f.dims()
            );
        }
        if let Some(bad) = labels
            .iter()
            .find(|l| l.len() != stages || l.iter().any(|s| s.len() != t))
        {
            bail!(
                "quantize: each image needs {stages} label maps of {t} tokens, got {} maps",
                bad.len()
            );
        }
        let mut rest = f.clone();
        let mut latent = Tensor::zeros(&[b, t, c], DType::F32, Device::Cpu)?;
        let (mut codes, mut codes_per_token, mut canvases) = (Vec::new(), Vec::new(), Vec::new());
        for s in 0..stages {
            canvases.push(latent.clone());
            let lab: Vec<i64> = labels.iter().flat_map(|l| l[s].iter().copied()).collect();
            let lab = Tensor::from_vec(lab, &[b, t])?;
            let clusters = self.grid.clusters(s);
            let means = rest.segment_mean(&lab, clusters)?.reshape(&[b * clusters, c])?;
            let stage_codes = Tensor::from_vec(self.nearest(&means)?, &[b, clusters])?;
            let per_token = stage_codes.gather(1, &lab)?;
            let inc = self.increment(&per_token, s)?;
            latent = latent.add(&inc)?;
            rest = rest.sub(&inc)?;
            codes.push(stage_codes);
            codes_per_token.push(per_token);
        }
        let refs: Vec<&Tensor> = canvases.iter().collect();
        Ok(Quantized {
            codes,
            codes_per_token,
            canvases: Tensor::stack(&refs, 1)?,
            latent,
        })
    }

    /// The latent of a token sequence: `Σ_s Phi_s(E[codes_s])` from one code per token per stage
    /// (`[B, stages, T]`, i64) → `[B, T, C]`. Bit-identical to `quantize`'s latent for the same codes.
    pub fn latent_from_codes(&self, codes_per_token: &Tensor) -> Result<Tensor> {
        let (t, c, stages) = (self.grid.tokens(), self.channels(), self.grid.stages());
        let b = codes_per_token.dims()[0];
        if codes_per_token.dims() != [b, stages, t] {
            bail!("codes must be [B, {stages}, {t}], got {:?}", codes_per_token.dims());
        }
        let mut latent = Tensor::zeros(&[b, t, c], DType::F32, Device::Cpu)?;
        for s in 0..stages {
            let codes = codes_per_token.narrow(1, s, 1)?.squeeze(1)?;
            latent = latent.add(&self.increment(&codes, s)?)?;
        }
        Ok(latent)
    }
}

/// Which of `n_phi` convolutions stage `stage` of `stages` uses — VAR's `PhiPartiallyShared`, which the
/// official code inherits: `argmin |ticks − stage/(stages − 1)|` with `ticks = linspace(1/(2K), 1 − 1/(2K),
/// K)` (`1/(3K)` margins when K = 4), evaluated in f64 like NumPy, the first index on a tie. With as many
/// convolutions as stages this is the identity.
pub fn phi_index(stage: usize, stages: usize, n_phi: usize) -> usize {
    let k = n_phi as f64;
    let margin = if n_phi == 4 { 1.0 / 3.0 / k } else { 1.0 / 2.0 / k };
    let (start, stop) = (margin, 1.0 - margin);
    let step = if n_phi > 1 { (stop - start) / (k - 1.0) } else { 0.0 };
    let at = if stages > 1 {
        stage as f64 / (stages - 1) as f64
    } else {
        0.0
    };
    let mut best = (0, f64::INFINITY);
    for i in 0..n_phi {
        // numpy.linspace: i·step + start, with the last value set to `stop` exactly.
        let tick = if i + 1 == n_phi && n_phi > 1 {
            stop
        } else {
            i as f64 * step + start
        };
        let d = (tick - at).abs();
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// The quantisation of a batch of B images.
pub struct Quantized {
    /// Per stage: the code of every cluster `[B, 2^s]`.
    pub codes: Vec<Tensor>,
    /// Per stage: the cluster's code at every token `[B, T]`.
    pub codes_per_token: Vec<Tensor>,
    /// Every stage's input canvas (the latent accumulated before it) `[B, stages, T, C]`.
    pub canvases: Tensor,
    /// The final latent `[B, T, C]` (the generator's regression target; what the decoder reconstructs).
    pub latent: Tensor,
}

#[cfg(test)]
mod tests {
    use super::phi_index;

    #[test]
    fn stages_map_onto_phi_convolutions_like_the_official_code() {
        assert_eq!(
            (0..9).map(|s| phi_index(s, 9, 9)).collect::<Vec<_>>(),
            (0..9).collect::<Vec<_>>()
        );
        // 7 stages (an 8×8 grid) over the official 9 convolutions; the expected values are NumPy's
        // `np.argmin(np.abs(np.linspace(1/18, 17/18, 9) - s/6))` (s = 2 is a tie that rounding decides).
        assert_eq!(
            (0..7).map(|s| phi_index(s, 7, 9)).collect::<Vec<_>>(),
            vec![0, 1, 2, 4, 5, 7, 8]
        );
    }
}
