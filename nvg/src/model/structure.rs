//! The structure transformer: a rectified flow over the structure bits of every token. Given the canvas
//! after stage s's content and the stage-s structure map, it predicts the velocity of the flow state
//! `z` `[R, T, bits]` whose channel s decides the next split (NVG-SPEC §3.5).

use super::layers::{LastLayer, Linear, MlpEmbedder, SelfAttnBlock, timestep_embedding};
use super::{BlockInputs, Trace, class_rows, rope_from_positions};
use crate::config::GeneratorConfig;
use crate::structure_map::{check_labels, rope_positions, structure_features};
use crate::weights::WeightMap;
use anyhow::{Result, bail};
use nvg_engine::{Tensor, nvtx};

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
    /// `[1, T, hs]`, added to the canvas-condition and the noisy-structure token of each position; only
    /// with `GeneratorConfig::position_embedding`.
    pos_embed: Option<Tensor>,
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
            pos_embed: cfg.position_embedding.then(|| {
                let [_, (name, dims)] = cfg.position_tables();
                w.take(name, &dims)
            }),
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

    /// What stays fixed over the flow steps of one stage: the class-token and canvas-condition
    /// embeddings and the RoPE tables (NVG-SPEC §5.3). Computed once per stage, used by every `step`.
    pub fn prepare(
        &self,
        canvas_next: &Tensor,
        labels: &Tensor,
        classes: &[usize],
        stage: usize,
    ) -> Result<FlowContext> {
        let _range = nvtx::range_fmt(format_args!("structure prepare stage {stage}"));
        let (grid, r) = (&self.cfg.grid, classes.len());
        if stage >= grid.flow_stages() {
            bail!(
                "the structure flow runs at stages 0..{}, not {stage}",
                grid.flow_stages()
            );
        }
        let (tk, c) = (grid.tokens(), self.cfg.latent_channels);
        if canvas_next.dims() != [r, tk, c] {
            bail!(
                "the structure canvas for {r} rows must be [{r}, {tk}, {c}], got {:?}",
                canvas_next.dims()
            );
        }
        let label_rows = check_labels(grid, labels, stage)?;
        let ctx = class_rows(&self.class_embed, classes, self.cfg.num_classes)?; // [R, hs]
        let mut cond = self.canvas_embed.forward(canvas_next)?;
        if let Some(pos) = &self.pos_embed {
            cond = cond.add(pos)?;
        }
        let mut positions = Vec::new();
        for row in label_rows.chunks(tk) {
            let features = structure_features(grid, row, stage);
            positions.extend(rope_positions(grid, &features, &[CONDITION_TOKEN, NOISY_TOKEN]));
        }
        let (cos, sin) = rope_from_positions(grid, positions, r, 1 + 2 * tk, self.class_embed.device())?;
        Ok(FlowContext {
            stage,
            rows: r,
            ctx,
            cond,
            cos,
            sin,
        })
    }

    /// The fused granularity embedding of the structure branch for one flow step: tokens
    /// `[R, 1 + 2T, hs]` = class token, the canvas condition (the canvas after stage s's content,
    /// unscaled), the embedded flow state `z`; the AdaLN vector = class + time + stage embedding; RoPE
    /// tables with the stage-s structure bits (condition tokens typed 2, noisy tokens 0).
    pub fn embed(&self, fc: &FlowContext, z: &Tensor, t: &[f32]) -> Result<BlockInputs> {
        let (grid, r) = (&self.cfg.grid, fc.rows);
        let (tk, bits) = (grid.tokens(), grid.bits());
        if z.dims() != [r, tk, bits] || t.len() != r {
            bail!(
                "structure step for {r} rows: z {:?} (want [{r}, {tk}, {bits}]) and {} times",
                z.dims(),
                t.len()
            );
        }
        let mut zt = self.embed.forward(z)?;
        if let Some(pos) = &self.pos_embed {
            zt = zt.add(pos)?;
        }
        let x = Tensor::cat(&[&fc.ctx.unsqueeze(1)?, &fc.cond, &zt], 1)?;
        let time = self
            .time_embed
            .forward(&timestep_embedding(t, TIME_FEATURES)?.to_device(self.class_embed.device())?)?;
        // (class + time) + stage, the official order of the additions.
        let vec = fc.ctx.add(&time)?.add(&self.stage_embed.narrow(0, fc.stage, 1)?)?;
        Ok(BlockInputs {
            tokens: x,
            vec,
            cos: fc.cos.clone(),
            sin: fc.sin.clone(),
        })
    }

    /// Predicted velocity `[R, T, bits]` of the flow state `z` at times `t` (one per row).
    pub fn step(&self, fc: &FlowContext, z: &Tensor, t: &[f32], trace: Option<&mut Trace>) -> Result<Tensor> {
        self.step_with_drop(fc, z, t, &[], trace)
    }

    /// `step` with DropPath: `keep[i]` (if present) is block i's `[R]` keep mask. Training only.
    pub fn step_with_drop(
        &self,
        fc: &FlowContext,
        z: &Tensor,
        t: &[f32],
        keep: &[Tensor],
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let _range = nvtx::range_fmt(format_args!("structure step stage {}", fc.stage));
        let inputs = self.embed(fc, z, t)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.record("tokens_in", &inputs.tokens);
            tr.record("vec", &inputs.vec);
        }
        let vec_silu = inputs.vec.silu()?;
        let mut x = inputs.tokens;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward_with_drop(&x, &vec_silu, &inputs.cos, &inputs.sin, keep.get(i))?;
            if i == 0
                && let Some(tr) = trace.as_deref_mut()
            {
                tr.record("hidden_after_block0", &x);
            }
        }
        let tk = self.cfg.grid.tokens();
        self.head.forward(&x.narrow(1, 1 + tk, tk)?, &vec_silu)
    }

    /// `prepare` and one `step`: the velocity of `z` at times `t`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        z: &Tensor,
        t: &[f32],
        canvas_next: &Tensor,
        labels: &Tensor,
        classes: &[usize],
        stage: usize,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        self.step(&self.prepare(canvas_next, labels, classes, stage)?, z, t, trace)
    }
}

/// The per-stage constants of the structure flow (see `StructureTransformer::prepare`).
pub struct FlowContext {
    stage: usize,
    rows: usize,
    /// Class-token embeddings `[R, hs]`.
    ctx: Tensor,
    /// Canvas-condition tokens `[R, T, hs]`.
    cond: Tensor,
    cos: Tensor,
    sin: Tensor,
}
