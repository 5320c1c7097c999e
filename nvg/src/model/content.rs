//! The content transformer: from the canvas and structure of stage s, predicts the final canvas and from
//! it one code distribution per cluster (NVG-SPEC §3.4).

use super::layers::{LastLayer, Linear, SelfAttnBlock};
use super::{BlockInputs, Trace, class_rows, rope_from_positions};
use crate::config::GeneratorConfig;
use crate::structure_map::{check_labels, rope_positions, structure_features};
use crate::weights::WeightMap;
use anyhow::{Result, bail};
use nvg_engine::{Tensor, nvtx};

/// Content-branch outputs for `R` rows at stage s.
pub struct ContentOutput {
    /// Predicted final canvas `[R, T, C]` (already divided by the last scale factor).
    pub x0_hat: Tensor,
    /// Mean of `x0_hat − canvas` inside each cluster `[R, 2^s, C]`.
    pub cluster_mean: Tensor,
    /// Code logits per cluster `[R, 2^s, V]`.
    pub logits: Tensor,
}

pub struct ContentTransformer {
    cfg: GeneratorConfig,
    start_embed: Tensor,
    embed: Linear,
    /// `[1, T, h]`, only with `GeneratorConfig::position_embedding`.
    pos_embed: Option<Tensor>,
    class_embed: Tensor,
    stage_embed: Tensor,
    blocks: Vec<SelfAttnBlock>,
    x0_head: LastLayer,
    cls_head: Linear,
    /// Per-stage input scales; entry `stages` divides the x0 output.
    scale_factors: Vec<f32>,
}

impl ContentTransformer {
    /// Where the weights live.
    pub fn device(&self) -> nvg_engine::Device {
        self.class_embed.device()
    }

    pub fn load(w: &mut WeightMap, cfg: &GeneratorConfig) -> ContentTransformer {
        let (h, c, t, s) = (cfg.width, cfg.latent_channels, cfg.grid.tokens(), cfg.grid.stages());
        ContentTransformer {
            cfg: cfg.clone(),
            start_embed: w.take("content_start_embed", &[1, t, c]),
            embed: Linear::load(w, "content_embed", c, h),
            pos_embed: cfg.position_embedding.then(|| {
                let [(name, dims), _] = cfg.position_tables();
                w.take(name, &dims)
            }),
            class_embed: w.take("content_class_embed.weight", &[cfg.num_classes + 1, h]),
            stage_embed: w.take("content_stage_embed.weight", &[s, h]),
            blocks: (0..cfg.depth)
                .map(|i| SelfAttnBlock::load(w, &format!("content_blocks.{i}"), h, cfg.heads, cfg.mlp_width()))
                .collect(),
            x0_head: LastLayer::load(w, "x0_head", h, c),
            cls_head: Linear::load(w, "cls_head.linear", c, cfg.vocab_size),
            scale_factors: w.take_vec("scale_factors", s + 1),
        }
    }

    /// The fused granularity embedding of the content branch: from the stage-`stage` canvas
    /// `[R, T, C]`, its labels `[R, T]` and one class per row, the block inputs — tokens
    /// `[R, 1 + T, h]` (class token first; the canvas scaled by the stage's factor, or the learned start
    /// canvas at stage 0), the AdaLN vector (class + stage embedding) and the RoPE tables whose bit axes
    /// come from the structure map.
    pub fn embed(&self, canvas: &Tensor, labels: &Tensor, classes: &[usize], stage: usize) -> Result<BlockInputs> {
        let (grid, r) = (&self.cfg.grid, classes.len());
        if stage >= grid.stages() {
            bail!("stage {stage} is outside 0..{}", grid.stages());
        }
        let dims = [r, grid.tokens(), self.cfg.latent_channels];
        if canvas.dims() != dims {
            bail!("content canvas must be {dims:?}, got {:?}", canvas.dims());
        }
        let label_rows = check_labels(grid, labels, stage)?;
        if labels.dims()[0] != r {
            bail!("{} label rows for {r} classes", labels.dims()[0]);
        }
        let input = if stage == 0 {
            self.start_embed.broadcast_as(&dims)?
        } else {
            canvas.mul_scalar(self.scale_factors[stage])?
        };
        let mut tokens = self.embed.forward(&input)?;
        if let Some(pos) = &self.pos_embed {
            tokens = tokens.add(pos)?;
        }
        let ctx = class_rows(&self.class_embed, classes, self.cfg.num_classes)?; // [R, h]
        let x = Tensor::cat(&[&ctx.unsqueeze(1)?, &tokens], 1)?;
        let vec = ctx.add(&self.stage_embed.narrow(0, stage, 1)?)?;
        let mut positions = Vec::new();
        for row in label_rows.chunks(grid.tokens()) {
            positions.extend(rope_positions(grid, &structure_features(grid, row, stage), &[0.0]));
        }
        let (cos, sin) = rope_from_positions(grid, positions, r, 1 + grid.tokens(), self.class_embed.device())?;
        Ok(BlockInputs {
            tokens: x,
            vec,
            cos,
            sin,
        })
    }

    /// The content forward at stage `stage` for rows with classes `classes` (null class = unconditional).
    pub fn forward(
        &self,
        canvas: &Tensor,
        labels: &Tensor,
        classes: &[usize],
        stage: usize,
        trace: Option<&mut Trace>,
    ) -> Result<ContentOutput> {
        self.forward_with_drop(canvas, labels, classes, stage, &[], trace)
    }

    /// `forward` with DropPath: `keep[i]` (if present) is block i's `[R]` keep mask (see
    /// `SelfAttnBlock::forward_with_drop`). Training only.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_drop(
        &self,
        canvas: &Tensor,
        labels: &Tensor,
        classes: &[usize],
        stage: usize,
        keep: &[Tensor],
        mut trace: Option<&mut Trace>,
    ) -> Result<ContentOutput> {
        let _range = nvtx::range_fmt(format_args!("content forward stage {stage}"));
        let inputs = self.embed(canvas, labels, classes, stage)?;
        if let Some(t) = trace.as_deref_mut() {
            t.record("tokens_in", &inputs.tokens);
            t.record("vec", &inputs.vec);
        }
        let vec_silu = inputs.vec.silu()?;
        let mut x = inputs.tokens;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward_with_drop(&x, &vec_silu, &inputs.cos, &inputs.sin, keep.get(i))?;
            if i == 0
                && let Some(t) = trace.as_deref_mut()
            {
                t.record("hidden_after_block0", &x);
            }
        }
        let grid = &self.cfg.grid;
        let x = x.narrow(1, 1, grid.tokens())?;
        let x0_hat = self
            .x0_head
            .forward(&x, &vec_silu)?
            .div_scalar(self.scale_factors[grid.stages()])?;
        let labels = labels.to_device(x0_hat.device())?;
        let cluster_mean = x0_hat.sub(canvas)?.segment_mean(&labels, grid.clusters(stage))?;
        let logits = self.cls_head.forward(&cluster_mean)?;
        Ok(ContentOutput {
            x0_hat,
            cluster_mean,
            logits,
        })
    }
}
