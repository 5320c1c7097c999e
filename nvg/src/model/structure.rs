//! The structure transformer: a rectified flow over the structure bits of every token. Given the canvas
//! after stage s's content and the stage-s structure map, it predicts the velocity of the flow state
//! `z` `[R, T, bits]` whose channel s decides the next split (NVG-SPEC §3.5).

use super::layers::{LastLayer, Linear, MlpEmbedder, SelfAttnBlock, timestep_embedding};
use super::{BlockInputs, Trace, class_rows, rope_from_positions};
use crate::config::GeneratorConfig;
use crate::structure_map::{check_labels, rope_positions, structure_features};
use crate::weights::WeightMap;
use anyhow::{Result, bail};
use nvg_engine::Tensor;

/// Width of the sinusoidal time features.
const TIME_FEATURES: usize = 64;
/// RoPE token types of the two image-token groups: canvas condition, noisy structure.
const CONDITION_TOKEN: f32 = 2.0;
const NOISY_TOKEN: f32 = 0.0;

pub struct StructureTransformer {
    cfg: GeneratorConfig,
    embed: Linear,
    class_embed: Tensor,
    canvas_embed: Linear,
    stage_embed: Tensor,
    time_embed: MlpEmbedder,
    blocks: Vec<SelfAttnBlock>,
    head: LastLayer,
}

impl StructureTransformer {
    pub fn load(w: &mut WeightMap, cfg: &GeneratorConfig) -> StructureTransformer {
        let (hs, c, bits) = (cfg.structure_width, cfg.latent_channels, cfg.grid.bits());
        StructureTransformer {
            cfg: cfg.clone(),
            embed: Linear::load(w, "structure_embed", bits, hs),
            class_embed: w.take("structure_class_embed.weight", &[cfg.num_classes + 1, hs]),
            canvas_embed: Linear::load(w, "structure_content_cond_embed", c, hs),
            stage_embed: w.take("structure_stage_embed.weight", &[cfg.grid.flow_stages(), hs]),
            time_embed: MlpEmbedder::load(w, "structure_time_embed", TIME_FEATURES, hs),
            blocks: (0..cfg.depth)
                .map(|i| {
                    SelfAttnBlock::load(
                        w,
                        &format!("structure_blocks.{i}"),
                        hs,
                        cfg.structure_heads,
                        cfg.mlp_ratio * hs,
                    )
                })
                .collect(),
            head: LastLayer::load(w, "structure_head", hs, bits),
        }
    }

    /// The fused granularity embedding of the structure branch: tokens `[R, 1 + 2T, hs]` = class token,
    /// the canvas condition (the canvas after stage s's content, unscaled), the embedded flow state
    /// `z`; the AdaLN vector = class + time + stage embedding; RoPE tables with the stage-s structure
    /// bits (condition tokens typed 2, noisy tokens 0).
    pub fn embed(
        &self,
        z: &Tensor,
        t: &[f32],
        canvas_next: &Tensor,
        labels: &Tensor,
        classes: &[usize],
        stage: usize,
    ) -> Result<BlockInputs> {
        let (grid, r) = (&self.cfg.grid, classes.len());
        if stage >= grid.flow_stages() {
            bail!(
                "the structure flow runs at stages 0..{}, not {stage}",
                grid.flow_stages()
            );
        }
        let (tk, bits, c) = (grid.tokens(), grid.bits(), self.cfg.latent_channels);
        if z.dims() != [r, tk, bits] || canvas_next.dims() != [r, tk, c] || t.len() != r {
            bail!(
                "structure inputs for {r} rows: z {:?} (want [{r}, {tk}, {bits}]), canvas {:?} (want [{r}, {tk}, {c}]), {} times",
                z.dims(),
                canvas_next.dims(),
                t.len()
            );
        }
        let label_rows = check_labels(grid, labels, stage)?;
        let ctx = class_rows(&self.class_embed, classes, self.cfg.num_classes)?; // [R, hs]
        let cond = self.canvas_embed.forward(canvas_next)?;
        let zt = self.embed.forward(z)?;
        let x = Tensor::cat(&[&ctx.unsqueeze(1)?, &cond, &zt], 1)?;
        let time = self.time_embed.forward(&timestep_embedding(t, TIME_FEATURES)?)?;
        let vec = ctx.add(&time)?.add(&self.stage_embed.narrow(0, stage, 1)?)?;
        let mut positions = Vec::new();
        for row in label_rows.chunks(tk) {
            let features = structure_features(grid, row, stage);
            positions.extend(rope_positions(grid, &features, &[CONDITION_TOKEN, NOISY_TOKEN]));
        }
        let (cos, sin) = rope_from_positions(grid, positions, r, 1 + 2 * tk)?;
        Ok(BlockInputs {
            tokens: x,
            vec,
            cos,
            sin,
        })
    }

    /// Predicted velocity `[R, T, bits]` of the flow state `z` at times `t` (one per row).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        z: &Tensor,
        t: &[f32],
        canvas_next: &Tensor,
        labels: &Tensor,
        classes: &[usize],
        stage: usize,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let inputs = self.embed(z, t, canvas_next, labels, classes, stage)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.record("tokens_in", &inputs.tokens);
            tr.record("vec", &inputs.vec);
        }
        let vec_silu = inputs.vec.silu()?;
        let mut x = inputs.tokens;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, &vec_silu, &inputs.cos, &inputs.sin)?;
            if i == 0
                && let Some(tr) = trace.as_deref_mut()
            {
                tr.record("hidden_after_block0", &x);
            }
        }
        let tk = self.cfg.grid.tokens();
        self.head.forward(&x.narrow(1, 1 + tk, tk)?, &vec_silu)
    }
}
