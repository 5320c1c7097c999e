//! The NVG generator: a content transformer and a structure transformer (same depth, separate weights),
//! loaded from the official key names.

pub mod content;
pub mod layers;
pub mod structure;

use crate::config::{GeneratorConfig, Grid, ROPE_THETA};
use crate::weights::{WeightMap, WeightSet};
use anyhow::{Context, Result, bail};
use content::ContentTransformer;
use nvg_engine::{Tensor, rope_tables};
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
    let ids = Tensor::from_vec(classes.iter().map(|&c| c as i64).collect::<Vec<_>>(), &[classes.len()])?;
    Ok(table.embedding(&ids)?)
}

/// RoPE cos/sin tables `[rows, n, 32]` from flat positions `[rows, n, 3 + bits]`.
pub(crate) fn rope_from_positions(grid: &Grid, positions: Vec<f32>, rows: usize, n: usize) -> Result<(Tensor, Tensor)> {
    let axes = grid.rope_axes();
    let pos = Tensor::from_vec(positions, &[rows, n, axes.len()])?;
    Ok(rope_tables(&pos, &axes, ROPE_THETA)?)
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
        let weights =
            WeightMap::generator(path, set).with_context(|| format!("loading generator {}", path.display()))?;
        Generator::from_weights(weights)
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
fn infer_config(w: &WeightMap) -> Result<GeneratorConfig> {
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
    Ok(cfg)
}
