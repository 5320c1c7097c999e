//! The layers both NVG transformers are made of (FLUX-style single-stream blocks with AdaLN), written
//! to match the official modules operation for operation (see NVG-SPEC §3.2).

use crate::config::HEAD_DIM;
use crate::weights::WeightMap;
use anyhow::Result;
use nvg_engine::{Tensor, sdpa};

/// LayerNorm epsilon of the blocks and heads, and RMSNorm epsilon of the QK norm.
const NORM_EPS: f32 = 1e-6;

/// `y = x·Wᵀ + b` with PyTorch's `[out, in]` weight.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Takes `{name}.weight` `[out, in]` and `{name}.bias` `[out]`.
    pub fn load(w: &mut WeightMap, name: &str, in_features: usize, out_features: usize) -> Linear {
        Linear {
            weight: w.take(&format!("{name}.weight"), &[out_features, in_features]),
            bias: Some(w.take(&format!("{name}.bias"), &[out_features])),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.linear(&self.weight, self.bias.as_ref())?)
    }
}

/// `(1 + scale)·x + shift` with `scale`, `shift` of shape `[R, w]` broadcast over the tokens of `x`.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let scale1 = scale.add_scalar(1.0)?.unsqueeze(1)?;
    Ok(scale1.mul(x)?.add(&shift.unsqueeze(1)?)?)
}

/// Splits the last dim of `t` into `n` equal views.
fn chunks(t: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    Ok(t.chunk(n, -1)?)
}

/// A FLUX single-stream block with AdaLN: parallel attention and MLP from one projection.
///
/// ```text
/// (shift, scale, gate) = modulation(SiLU(vec))
/// x_mod = (1 + scale)·LN(x) + shift
/// [qkv | mlp] = linear1(x_mod);  q, k = RMSNorm per head;  q, k = RoPE(q, k)
/// x = x + gate · linear2([attention(q, k, v) | GELU_tanh(mlp)])
/// ```
pub struct SelfAttnBlock {
    width: usize,
    heads: usize,
    linear1: Linear,
    linear2: Linear,
    modulation: Linear,
    query_scale: Tensor,
    key_scale: Tensor,
}

impl SelfAttnBlock {
    pub fn load(w: &mut WeightMap, prefix: &str, width: usize, heads: usize, mlp_width: usize) -> SelfAttnBlock {
        SelfAttnBlock {
            width,
            heads,
            linear1: Linear::load(w, &format!("{prefix}.linear1"), width, 3 * width + mlp_width),
            linear2: Linear::load(w, &format!("{prefix}.linear2"), width + mlp_width, width),
            modulation: Linear::load(w, &format!("{prefix}.modulation.lin"), width, 3 * width),
            query_scale: w.take(&format!("{prefix}.norm.query_norm.scale"), &[HEAD_DIM]),
            key_scale: w.take(&format!("{prefix}.norm.key_norm.scale"), &[HEAD_DIM]),
        }
    }

    /// `x` `[R, N, w]`, `vec_silu` = SiLU(vec) `[R, w]`, RoPE tables `[R, N, 32]`.
    pub fn forward(&self, x: &Tensor, vec_silu: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        self.forward_with_drop(x, vec_silu, cos, sin, None)
    }

    /// `forward` with DropPath on the residual branch: `keep` `[R]` holds 0 for rows whose branch is
    /// dropped and 1/keep_probability for the others (training only).
    pub fn forward_with_drop(
        &self,
        x: &Tensor,
        vec_silu: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        keep: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (w, h) = (self.width, self.heads);
        let m = chunks(&self.modulation.forward(vec_silu)?, 3)?;
        let (shift, scale, gate) = (&m[0], &m[1], &m[2]);
        let x_mod = modulate(&x.layer_norm(None, None, NORM_EPS)?, shift, scale)?;
        let hidden = self.linear1.forward(&x_mod)?;
        let mlp_width = hidden.dims()[2] - 3 * w;
        // q, k, v: heads of the fused projection, viewed as [R, H, N, 64] without copying.
        let head = |i: usize| -> Result<Tensor> {
            Ok(hidden
                .narrow(2, i * w, w)?
                .unflatten(2, &[h, HEAD_DIM])?
                .permute(&[0, 2, 1, 3])?)
        };
        let q = head(0)?.rms_norm(&self.query_scale, NORM_EPS)?.rope(cos, sin)?;
        let k = head(1)?.rms_norm(&self.key_scale, NORM_EPS)?.rope(cos, sin)?;
        let v = head(2)?;
        let attn = sdpa(&q, &k, &v, None, None)?; // [R, H, N, 64], stored [R, N, H, 64]
        let (r, n) = (x.dims()[0], x.dims()[1]);
        let attn = attn.transpose(1, 2)?.reshape(&[r, n, w])?;
        let mlp = hidden.narrow(2, 3 * w, mlp_width)?.gelu_tanh()?;
        let out = self.linear2.forward(&Tensor::cat(&[&attn, &mlp], 2)?)?;
        let branch = gate.unsqueeze(1)?.mul(&out)?;
        let branch = match keep {
            Some(k) => branch.mul(&k.reshape(&[r, 1, 1])?)?,
            None => branch,
        };
        Ok(x.add(&branch)?)
    }
}

/// The output layer: `linear((1 + scale)·LN(x) + shift)` with `(shift, scale)` from SiLU(vec).
pub struct LastLayer {
    modulation: Linear,
    linear: Linear,
}

impl LastLayer {
    pub fn load(w: &mut WeightMap, prefix: &str, width: usize, out: usize) -> LastLayer {
        LastLayer {
            modulation: Linear::load(w, &format!("{prefix}.adaLN_modulation.1"), width, 2 * width),
            linear: Linear::load(w, &format!("{prefix}.linear"), width, out),
        }
    }

    pub fn forward(&self, x: &Tensor, vec_silu: &Tensor) -> Result<Tensor> {
        let m = chunks(&self.modulation.forward(vec_silu)?, 2)?;
        let x_mod = modulate(&x.layer_norm(None, None, NORM_EPS)?, &m[0], &m[1])?;
        self.linear.forward(&x_mod)
    }
}

/// `out_layer(SiLU(in_layer(x)))`: embeds the sinusoidal time features.
pub struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    pub fn load(w: &mut WeightMap, prefix: &str, in_dim: usize, width: usize) -> MlpEmbedder {
        MlpEmbedder {
            in_layer: Linear::load(w, &format!("{prefix}.in_layer"), in_dim, width),
            out_layer: Linear::load(w, &format!("{prefix}.out_layer"), width, width),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out_layer.forward(&self.in_layer.forward(x)?.silu()?)
    }
}

/// Sinusoidal embedding of flow times `t` ∈ [0, 1] (FLUX `timestep_embedding`): with
/// `a_k = 1000·t · exp(−ln(10000)·k/half)`, `[cos(a_0..), sin(a_0..)]` of width `dim`. The arguments are
/// formed in f32 exactly as PyTorch does; cos/sin are evaluated in f64 and rounded once.
pub fn timestep_embedding(t: &[f32], dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let ln_period = (10_000f64).ln() as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (((-ln_period * k as f32) / half as f32) as f64).exp() as f32)
        .collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in t {
        let scaled = ti * 1000.0;
        let args: Vec<f32> = freqs.iter().map(|&f| scaled * f).collect();
        out.extend(args.iter().map(|&a| (a as f64).cos() as f32));
        out.extend(args.iter().map(|&a| (a as f64).sin() as f32));
    }
    Ok(Tensor::from_vec(out, &[t.len(), dim])?)
}
