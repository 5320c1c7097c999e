//! # nvg (the model crate)
//!
//! NVG — Next Visual Granularity generation — on the nvg-rs engine. The generator, tokenizer, sampler,
//! trainer and dataset modules arrive with issues 3–6; the engine they build on is `nvg-engine`.

pub use nvg_engine as engine;
