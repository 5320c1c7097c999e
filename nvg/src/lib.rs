//! # nvg (the model crate)
//!
//! NVG — Next Visual Granularity generation — on the nvg-rs engine: the model configuration
//! (`config`), weight loading by official key names (`weights`), the structure maps (`structure_map`),
//! the content and structure transformers (`model`), the sampling-side quantiser (`quantizer`) and the
//! stage-by-stage sampler (`sampler`).

pub mod config;
pub mod model;
pub mod quantizer;
pub mod sampler;
pub mod structure_map;
pub mod weights;

pub use nvg_engine as engine;
