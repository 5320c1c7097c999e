//! # nvg (the model crate)
//!
//! NVG — Next Visual Granularity generation — on the nvg-rs engine: the model configuration
//! (`config`), weight loading by official key names (`weights`), the structure maps (`structure_map`),
//! the content and structure transformers (`model`), the tokenizer (`tokenizer`: VQ autoencoder,
//! clustering, quantiser), the stage-by-stage sampler (`sampler`) and image I/O (`image`).

pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod eval;
pub mod image;
pub mod model;
pub mod sampler;
pub mod structure_map;
pub mod tokenizer;
pub mod trainer;
pub mod weights;

pub use nvg_engine as engine;
