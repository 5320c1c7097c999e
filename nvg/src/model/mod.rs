//! The NVG generator: a content transformer and a structure transformer (same depth, separate weights),
//! loaded from the official key names.

pub mod content;
pub mod layers;
pub mod structure;

use crate::config::{GeneratorConfig, Grid, ROPE_THETA};
use crate::weights::{WeightMap, WeightSet};
use anyhow::{Context, Result, bail};
use content::ContentTransformer;
use nvg_engine::{Device, Tensor, rope_tables};
use std::path::Path;
use structure::StructureTransformer;

/// What a transformer's blocks consume: the token sequence, the AdaLN conditioning vector and the RoPE
/// tables.
pub struct BlockInputs {
    /// `[R, N, w]`.
    pub tokens: Tensor,
    /// `[R, w]`.
    pub vec: Tensor,
    /// `[R, N, 32]` each.
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Named intermediate activations, recorded on request (to localise a parity failure).
#[derive(Default)]
pub struct Trace {
    pub tensors: Vec<(String, Tensor)>,
}

impl Trace {
    pub fn record(&mut self, name: &str, t: &Tensor) {
        self.tensors.push((name.to_string(), t.clone()));
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Rows of a class-embedding table for `classes`; ids above `num_classes` (the null class) are errors.
pub(crate) fn class_rows(table: &Tensor, classes: &[usize], num_classes: usize) -> Result<Tensor> {
    if let Some(&bad) = classes.iter().find(|&&c| c > num_classes) {
        bail!(
            "class id {bad} is out of range: classes are 0..{} and {num_classes} is the null class",
            num_classes - 1
        );
    }
    let ids = Tensor::from_vec(classes.iter().map(|&c| c as i64).collect::<Vec<_>>(), &[classes.len()])?
        .to_device(table.device())?;
    Ok(table.embedding(&ids)?)
}

/// RoPE cos/sin tables `[rows, n, 32]` from flat positions `[rows, n, 3 + bits]`.
/// The RoPE tables of per-token positions, built on the CPU and placed on `device` (the model's).
pub(crate) fn rope_from_positions(
    grid: &Grid,
    positions: Vec<f32>,
    rows: usize,
    n: usize,
    device: nvg_engine::Device,
) -> Result<(Tensor, Tensor)> {
    let axes = grid.rope_axes();
    let pos = Tensor::from_vec(positions, &[rows, n, axes.len()])?;
    let (cos, sin) = rope_tables(&pos, &axes, ROPE_THETA)?;
    Ok((cos.to_device(device)?, sin.to_device(device)?))
}

/// Both transformers of an NVG generator.
pub struct Generator {
    pub config: GeneratorConfig,
    pub content: ContentTransformer,
    pub structure: StructureTransformer,
}

impl Generator {
    /// Loads a generator from a safetensors file with official key names (with or without the
    /// `nvgformer.` prefix; `WeightSet::Ema` takes `ema_model.nvgformer.*`). The configuration is read
    /// off the weights (depth from the number of blocks; grid, codebook and class count from the
    /// embedding shapes) and every tensor is checked against it; all problems are reported together.
    pub fn load(path: &Path, set: WeightSet) -> Result<Generator> {
        Generator::load_on(path, set, Device::Cpu)
    }

    /// [`Generator::load`] with the weights on `device` (a CUDA device runs the model's kernels there).
    pub fn load_on(path: &Path, set: WeightSet, device: Device) -> Result<Generator> {
        let weights =
            WeightMap::generator(path, set).with_context(|| format!("loading generator {}", path.display()))?;
        Generator::from_weights(weights.to_device(device)?)
    }

    /// Where the weights live (and the model runs).
    pub fn device(&self) -> Device {
        self.content.device()
    }

    /// A generator of configuration `cfg` with made-up weights (`WeightMap::synthetic`), for benchmarks
    /// and tests that need full-size models without a checkpoint.
    pub fn synthetic(cfg: &GeneratorConfig, seed: u64) -> Generator {
        let mut w = WeightMap::synthetic(seed);
        let content = ContentTransformer::load(&mut w, cfg);
        let structure = StructureTransformer::load(&mut w, cfg);
        Generator {
            config: cfg.clone(),
            content,
            structure,
        }
    }

    /// Builds the generator from a weight map (see `load`).
    pub fn from_weights(mut w: WeightMap) -> Result<Generator> {
        let config = infer_config(&w)?;
        // Buffers the model recomputes, and the training-only REPA projector.
        w.allow_unused(&["rope_ids", "projector."]);
        let content = ContentTransformer::load(&mut w, &config);
        let structure = StructureTransformer::load(&mut w, &config);
        w.finish()?;
        Ok(Generator {
            config,
            content,
            structure,
        })
    }
}

/// The configuration implied by a generator's weights.
pub fn infer_config(w: &WeightMap) -> Result<GeneratorConfig> {
    let depth = w.count_indexed("content_blocks.");
    if depth == 0 {
        bail!(
            "no content_blocks.* tensors: this is not an NVG generator (is it a tokenizer, or a Lightning .ckpt that needs `nvg convert`?)"
        );
    }
    let mut cfg = GeneratorConfig::from_depth(depth)?;
    if let Some(&[h, c]) = w.dims("content_embed.weight") {
        if h != cfg.width {
            bail!(
                "content width {h} does not match depth {depth} (the official models have width 64·depth = {})",
                cfg.width
            );
        }
        cfg.latent_channels = c;
    }
    if let Some(&[v, _]) = w.dims("cls_head.linear.weight") {
        cfg.vocab_size = v;
    }
    if let Some(&[rows, _]) = w.dims("content_class_embed.weight") {
        if rows < 2 {
            bail!("content_class_embed.weight has {rows} rows; it needs the classes plus the null class");
        }
        cfg.num_classes = rows - 1;
    }
    if let Some(&[1, t, c]) = w.dims("content_start_embed") {
        let side = (t as f64).sqrt() as usize;
        if side * side != t {
            bail!("content_start_embed has {t} tokens, not a square grid");
        }
        cfg.grid = Grid::new(side)?;
        cfg.latent_channels = c;
    }
    cfg.position_embedding = cfg.position_tables().iter().any(|(name, _)| w.contains(name));
    Ok(cfg)
}

/// Floating-point work (2 per multiply-add, matrix products and attention) of one block over `rows`
/// sequences of `n` tokens at width `w`.
fn block_flops(rows: usize, n: usize, w: usize, mlp: usize) -> f64 {
    let (r, n, w, mlp) = (rows as f64, n as f64, w as f64, mlp as f64);
    r * (2.0 * n * w * (3.0 * w + mlp) + 2.0 * n * (w + mlp) * w + 2.0 * w * 3.0 * w + 4.0 * n * n * w)
}

/// Work of one content forward over `rows` rows at stage `stage`.
pub fn content_flops(cfg: &GeneratorConfig, rows: usize, stage: usize) -> f64 {
    let (t, c, h, r) = (
        cfg.grid.tokens() as f64,
        cfg.latent_channels as f64,
        cfg.width as f64,
        rows as f64,
    );
    let blocks = cfg.depth as f64 * block_flops(rows, cfg.grid.tokens() + 1, cfg.width, cfg.mlp_width());
    let heads =
        r * (2.0 * h * 2.0 * h + 2.0 * t * h * c + 2.0 * cfg.grid.clusters(stage) as f64 * c * cfg.vocab_size as f64);
    r * 2.0 * t * c * h + blocks + heads
}

/// Work of one structure forward (one flow step) over `rows` rows.
pub fn structure_flops(cfg: &GeneratorConfig, rows: usize) -> f64 {
    let (t, c, hs, bits, r) = (
        cfg.grid.tokens() as f64,
        cfg.latent_channels as f64,
        cfg.structure_width as f64,
        cfg.grid.bits() as f64,
        rows as f64,
    );
    let embed = r * (2.0 * t * (bits + c) * hs + 2.0 * (64.0 * hs + hs * hs));
    let blocks = cfg.depth as f64
        * block_flops(
            rows,
            2 * cfg.grid.tokens() + 1,
            cfg.structure_width,
            cfg.mlp_ratio * cfg.structure_width,
        );
    let head = r * (2.0 * hs * 2.0 * hs + 2.0 * t * hs * bits);
    embed + blocks + head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_flops_match_the_spec_table_for_d16() {
        // NVG-SPEC §5.4: 107.9 GF per content forward, 60.3 GF per structure forward (one image).
        let d16 = GeneratorConfig::preset("d16").unwrap();
        let content = content_flops(&d16, 1, 4) / 1e9;
        let structure = structure_flops(&d16, 1) / 1e9;
        assert!((content - 107.9).abs() < 0.5, "{content}");
        assert!((structure - 60.3).abs() < 0.5, "{structure}");
    }
}
