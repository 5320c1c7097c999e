//! Parameters of a new generator, initialised as the official constructors do (NVG-SPEC §3.8): class
//! and stage tables N(0, 0.02) (our optional position embeddings too, as in ViTs), every linear weight
//! Xavier-uniform with zero bias, RMSNorm scales 1, the stage-0 start canvas N(0, 1), and the
//! `scale_factors` buffer.

use crate::config::GeneratorConfig;
use crate::model::content::ContentTransformer;
use crate::model::structure::StructureTransformer;
use crate::weights::WeightMap;
use anyhow::Result;
use nvg_engine::rng::{Distribution, RngStream};
use nvg_engine::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// The official content input scales of the 9-stage (16×16) models (stage 0..8) and the x0 output
/// divisor (entry 9), exactly as stored in the official buffer.
pub const OFFICIAL_SCALE_FACTORS: [f32; 10] = [
    1.0, 4.1993, 3.4706, 3.0520, 2.7430, 2.4842, 2.2407, 2.0088, 1.7954, 1.6080,
];

/// Stage scales for a grid with `stages` stages: the official values for 9 stages; otherwise 1 (no
/// scaling; the official values were fitted to the official tokenizer's canvases).
pub fn scale_factors(stages: usize) -> Vec<f32> {
    if stages + 1 == OFFICIAL_SCALE_FACTORS.len() {
        OFFICIAL_SCALE_FACTORS.to_vec()
    } else {
        vec![1.0; stages + 1]
    }
}

/// Every tensor of a generator with configuration `cfg`, initialised from `seed` (one random stream
/// per tensor name, so the initial value of a tensor does not depend on the others).
pub fn initial_parameters(cfg: &GeneratorConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    // The names and shapes: load the model once from made-up weights.
    let mut w = WeightMap::synthetic(0);
    ContentTransformer::load(&mut w, cfg);
    StructureTransformer::load(&mut w, cfg);
    w.into_tensors()
        .into_iter()
        .map(|(name, t)| Ok((name.clone(), initial_tensor(cfg, seed, &name, t.dims())?)))
        .collect()
}

/// The position tables of `cfg` (see `GeneratorConfig::position_embedding`), with the values
/// `initial_parameters` gives them: what `--init` adds to a model that has none.
pub fn position_tables(cfg: &GeneratorConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    cfg.position_tables()
        .into_iter()
        .map(|(name, dims)| Ok((name.to_string(), initial_tensor(cfg, seed, name, &dims)?)))
        .collect()
}

/// The initial value of one named generator tensor.
fn initial_tensor(cfg: &GeneratorConfig, seed: u64, name: &str, dims: &[usize]) -> Result<Tensor> {
    let draw = |dist: Distribution, scale: f32| -> Result<Tensor> {
        let mut v = vec![0.0f32; dims.iter().product()];
        RngStream::for_name(seed, name).fill(dist, 0, &mut v);
        v.iter_mut().for_each(|x| *x *= scale);
        Ok(Tensor::from_vec(v, dims)?)
    };
    Ok(if name == "scale_factors" {
        Tensor::from_vec(scale_factors(cfg.grid.stages()), dims)?
    } else if name == "content_start_embed" {
        draw(Distribution::Normal, 1.0)?
    } else if name.ends_with("class_embed.weight")
        || name.ends_with("stage_embed.weight")
        || name.ends_with("_pos_embed")
    {
        draw(Distribution::Normal, 0.02)?
    } else if name.ends_with(".scale") {
        Tensor::ones(dims, DType::F32, Device::Cpu)?
    } else if name.ends_with(".bias") {
        Tensor::zeros(dims, DType::F32, Device::Cpu)?
    } else if name.ends_with(".weight") && dims.len() == 2 {
        // Xavier-uniform: U(−a, a), a = sqrt(6 / (fan_in + fan_out)).
        let a = (6.0 / (dims[0] + dims[1]) as f32).sqrt();
        draw(Distribution::Uniform, 1.0)?.affine(2.0 * a, -a)?
    } else {
        anyhow::bail!("no initialisation rule for generator tensor {name} {dims:?}");
    })
}
