//! The VQ autoencoder's convolutional encoder and decoder (NVG-SPEC §2.2–2.4), with the official key
//! names and any base width, channel multipliers and block counts — so the official f16 tokenizer, the
//! tiny fixture tokenizer and small f4/f8 tokenizers all load from their weights.

use crate::weights::WeightMap;
use anyhow::{Result, bail, ensure};
use nvg_engine::{Padding, Tensor, nvtx};

/// GroupNorm groups and epsilon of every normalisation layer.
const GROUPS: usize = 32;
const GN_EPS: f32 = 1e-6;

/// Sizes of a VQ autoencoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// Width of the first level (`base_ch`).
    pub base_channels: usize,
    /// Width multiplier per level; `levels − 1` downsamplings (factor `2^(levels−1)`).
    pub channel_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more per level).
    pub res_blocks: usize,
    /// Latent channels (= code dimension).
    pub latent_channels: usize,
    pub codebook_size: usize,
}

impl TokenizerConfig {
    /// The official `vq-f16-d32` tokenizer.
    pub fn official() -> TokenizerConfig {
        TokenizerConfig {
            base_channels: 128,
            channel_mult: vec![1, 2, 4, 4, 4],
            res_blocks: 2,
            latent_channels: 32,
            codebook_size: 4096,
        }
    }

    /// Spatial downsampling factor (16 for the official tokenizer).
    pub fn downsample(&self) -> usize {
        1 << (self.channel_mult.len() - 1)
    }

    /// The latent grid of `resolution × resolution` images: the resolution over the downsampling factor,
    /// which must be a power of two (at least 2).
    pub fn grid_for_resolution(&self, resolution: usize) -> Result<crate::config::Grid> {
        let f = self.downsample();
        let side = resolution / f;
        if !resolution.is_multiple_of(f) || !side.is_power_of_two() || side < 2 {
            bail!(
                "{resolution} px does not map onto a power-of-two latent grid with this tokenizer ({} levels, downsampling ×{f}; try {})",
                self.channel_mult.len(),
                16 * f
            );
        }
        crate::config::Grid::new(side)
    }

    fn width(&self, level: usize) -> usize {
        self.base_channels * self.channel_mult[level]
    }

    /// The configuration implied by a tokenizer's weights (official key names, prefix stripped).
    pub fn infer(w: &WeightMap) -> Result<TokenizerConfig> {
        let Some(&[base, 3, _, _]) = w.dims("encoder.conv_in.conv.weight") else {
            bail!("no encoder.conv_in.conv.weight [C, 3, k, k]: this is not an NVG tokenizer (VQAE) file");
        };
        ensure!(base > 0, "encoder.conv_in.conv.weight has no output channels");
        let levels = w.count_indexed("encoder.down.");
        let res_blocks = w.count_indexed("encoder.down.0.block.");
        if levels == 0 || res_blocks == 0 {
            bail!("no encoder.down.* blocks: this is not an NVG tokenizer (VQAE) file");
        }
        ensure!(
            levels <= 16,
            "{levels} encoder levels: each halves the image, more than 16 is not a tokenizer"
        );
        let mut channel_mult = Vec::with_capacity(levels);
        for l in 0..levels {
            let name = format!("encoder.down.{l}.block.0.conv2.conv.weight");
            match w.dims(&name) {
                Some(&[c, ..]) if c % base == 0 => channel_mult.push(c / base),
                other => bail!("{name}: shape {other:?} is not a multiple of the base width {base}"),
            }
        }
        let latent = match w.dims("encoder.conv_out.conv.weight") {
            Some(&[c, ..]) => c,
            _ => bail!("no encoder.conv_out.conv.weight"),
        };
        let codebook = match w.dims("quantize.embedding.weight") {
            Some(&[v, c]) if c == latent => v,
            other => bail!("quantize.embedding.weight has shape {other:?}, expected [V, {latent}]"),
        };
        Ok(TokenizerConfig {
            base_channels: base,
            channel_mult,
            res_blocks,
            latent_channels: latent,
            codebook_size: codebook,
        })
    }
}

/// A 2-D convolution with bias, stored as `{name}.conv.{weight,bias}`.
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: Padding,
}

impl Conv {
    fn load(w: &mut WeightMap, name: &str, cin: usize, cout: usize, k: usize, stride: usize, pad: Padding) -> Conv {
        Conv {
            weight: w.take(&format!("{name}.conv.weight"), &[cout, cin, k, k]),
            bias: w.take(&format!("{name}.conv.bias"), &[cout]),
            stride,
            pad,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.conv2d(&self.weight, Some(&self.bias), self.stride, self.pad)?)
    }
}

/// GroupNorm(32, eps 1e-6) with affine, stored as `{name}.norm.{weight,bias}`.
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn load(w: &mut WeightMap, name: &str, c: usize) -> Norm {
        Norm {
            weight: w.take(&format!("{name}.norm.weight"), &[c]),
            bias: w.take(&format!("{name}.norm.bias"), &[c]),
        }
    }

    /// GroupNorm then swish (every use in the autoencoder is followed by swish).
    fn forward_swish(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.group_norm(GROUPS, Some(&self.weight), Some(&self.bias), GN_EPS)?
            .silu()?)
    }
}

/// `shortcut(x) + conv2(swish(norm2(conv1(swish(norm1(x))))))`.
struct ResnetBlock {
    norm1: Norm,
    conv1: Conv,
    norm2: Norm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl ResnetBlock {
    fn load(w: &mut WeightMap, name: &str, cin: usize, cout: usize) -> ResnetBlock {
        let same = Padding::uniform(1);
        ResnetBlock {
            norm1: Norm::load(w, &format!("{name}.norm1"), cin),
            conv1: Conv::load(w, &format!("{name}.conv1"), cin, cout, 3, 1, same),
            norm2: Norm::load(w, &format!("{name}.norm2"), cout),
            conv2: Conv::load(w, &format!("{name}.conv2"), cout, cout, 3, 1, same),
            shortcut: (cin != cout)
                .then(|| Conv::load(w, &format!("{name}.nin_shortcut"), cin, cout, 1, 1, Padding::default())),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_swish(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_swish(&h)?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        Ok(skip.add(&h)?)
    }
}

/// The encoder: image `[B, 3, H, W]` in [−1, 1] → features `[B, C, H/f, W/f]` (no quantisation).
pub struct Encoder {
    conv_in: Conv,
    levels: Vec<(Vec<ResnetBlock>, Option<Conv>)>,
    mid: [ResnetBlock; 2],
    norm_out: Norm,
    conv_out: Conv,
}

impl Encoder {
    pub fn load(w: &mut WeightMap, cfg: &TokenizerConfig) -> Encoder {
        let same = Padding::uniform(1);
        let conv_in = Conv::load(w, "encoder.conv_in", 3, cfg.base_channels, 3, 1, same);
        let mut cin = cfg.base_channels;
        let n = cfg.channel_mult.len();
        let mut levels = Vec::with_capacity(n);
        for l in 0..n {
            let cout = cfg.width(l);
            let blocks = (0..cfg.res_blocks)
                .map(|b| {
                    let block = ResnetBlock::load(w, &format!("encoder.down.{l}.block.{b}"), cin, cout);
                    cin = cout;
                    block
                })
                .collect();
            // Downsample: zero-pad right and bottom by one, then a stride-2 3×3 convolution.
            let down = (l + 1 < n).then(|| {
                let pad = Padding {
                    top: 0,
                    bottom: 1,
                    left: 0,
                    right: 1,
                };
                Conv::load(w, &format!("encoder.down.{l}.downsample.conv"), cin, cin, 3, 2, pad)
            });
            levels.push((blocks, down));
        }
        Encoder {
            conv_in,
            levels,
            mid: [
                ResnetBlock::load(w, "encoder.mid.block_1", cin, cin),
                ResnetBlock::load(w, "encoder.mid.block_2", cin, cin),
            ],
            norm_out: Norm::load(w, "encoder.norm_out", cin),
            conv_out: Conv::load(w, "encoder.conv_out", cin, cfg.latent_channels, 3, 1, same),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _range = nvtx::range_c(c"tokenizer encode");
        let mut h = self.conv_in.forward(x)?;
        for (blocks, down) in &self.levels {
            for b in blocks {
                h = b.forward(&h)?;
            }
            if let Some(d) = down {
                h = d.forward(&h)?;
            }
        }
        for b in &self.mid {
            h = b.forward(&h)?;
        }
        self.conv_out.forward(&self.norm_out.forward_swish(&h)?)
    }
}

/// The decoder: latent `[B, C, h, w]` → image `[B, 3, h·f, w·f]`, clamped to [−1, 1].
pub struct Decoder {
    conv_in: Conv,
    mid: [ResnetBlock; 2],
    /// Levels in execution order (deepest first), each with its upsampling (none for level 0).
    levels: Vec<(Vec<ResnetBlock>, Option<Conv>)>,
    norm_out: Norm,
    conv_out: Conv,
}

impl Decoder {
    pub fn load(w: &mut WeightMap, cfg: &TokenizerConfig) -> Decoder {
        let same = Padding::uniform(1);
        let n = cfg.channel_mult.len();
        let mut cin = cfg.width(n - 1);
        let conv_in = Conv::load(w, "decoder.conv_in", cfg.latent_channels, cin, 3, 1, same);
        let mid = [
            ResnetBlock::load(w, "decoder.mid.block_1", cin, cin),
            ResnetBlock::load(w, "decoder.mid.block_2", cin, cin),
        ];
        let mut levels = Vec::with_capacity(n);
        for l in (0..n).rev() {
            let cout = cfg.width(l);
            let blocks = (0..=cfg.res_blocks)
                .map(|b| {
                    let block = ResnetBlock::load(w, &format!("decoder.up.{l}.block.{b}"), cin, cout);
                    cin = cout;
                    block
                })
                .collect();
            let up = (l > 0).then(|| Conv::load(w, &format!("decoder.up.{l}.upsample.conv"), cin, cin, 3, 1, same));
            levels.push((blocks, up));
        }
        Decoder {
            conv_in,
            mid,
            levels,
            norm_out: Norm::load(w, "decoder.norm_out", cin),
            conv_out: Conv::load(w, "decoder.conv_out", cin, 3, 3, 1, same),
        }
    }

    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.forward_unclamped(z)?.clamp(-1.0, 1.0)?)
    }

    /// The decoder without the final clamp (training: the clamp would cut the gradient of pixels
    /// outside [−1, 1]).
    pub fn forward_unclamped(&self, z: &Tensor) -> Result<Tensor> {
        let _range = nvtx::range_c(c"tokenizer decode");
        let mut h = self.conv_in.forward(z)?;
        for b in &self.mid {
            h = b.forward(&h)?;
        }
        for (blocks, up) in &self.levels {
            for b in blocks {
                h = b.forward(&h)?;
            }
            if let Some(u) = up {
                // Upsample: nearest ×2, then a 3×3 convolution.
                h = u.forward(&h.upsample_nearest2x()?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_swish(&h)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvg_engine::{DType, Device};
    use std::collections::BTreeMap;

    #[test]
    fn weights_with_an_empty_first_convolution_are_refused_not_divided_by() {
        let conv = |dims: &[usize]| Tensor::zeros(dims, DType::F32, Device::Cpu).unwrap();
        let mut tensors = BTreeMap::new();
        tensors.insert("encoder.conv_in.conv.weight".to_string(), conv(&[0, 3, 3, 3]));
        tensors.insert(
            "encoder.down.0.block.0.conv2.conv.weight".to_string(),
            conv(&[32, 32, 3, 3]),
        );
        let err = TokenizerConfig::infer(&WeightMap::new("t", tensors)).unwrap_err();
        assert!(err.to_string().contains("no output channels"), "{err}");
    }
}
