//! Loading model weights by their official names.
//!
//! A model is built by *taking* tensors one by one with the shape it expects. Problems (a missing tensor,
//! a wrong shape) are collected instead of stopping at the first one, and `finish` reports all of them —
//! plus every tensor of the chosen family that nothing took — in one error that names each tensor.

use anyhow::{Context, Result, bail};
use nvg_engine::io::safetensors::SafetensorsFile;
use nvg_engine::{DType, Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Which weights of a generator checkpoint to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightSet {
    /// The trained weights (`nvgformer.*`, or unprefixed).
    #[default]
    Raw,
    /// The exponential moving average (`ema_model.nvgformer.*`): what the paper's samples use.
    Ema,
}

/// Prefix of the EMA copy of the generator in official checkpoints.
pub const EMA_PREFIX: &str = "ema_model.nvgformer.";
/// Prefix of the generator in official Lightning checkpoints.
pub const GENERATOR_PREFIX: &str = "nvgformer.";
/// Families that share official generator checkpoints but are not the generator.
const FOREIGN_PREFIXES: [&str; 3] = ["first_stage_model.", "repa_encoder.", "ema_model."];

/// The tensors of one model, by official name, handed out to a model builder.
pub struct WeightMap {
    source: String,
    tensors: BTreeMap<String, Tensor>,
    /// Names the model may leave untaken (buffers it recomputes, training-only heads).
    optional: Vec<String>,
    taken: BTreeSet<String>,
    missing: Vec<String>,
    misshaped: Vec<String>,
    /// When set, absent tensors are made up (deterministically from this seed) instead of missing.
    synthetic_seed: Option<u64>,
}

impl WeightMap {
    /// Where the tensors came from (a path, with the weight set), as error messages name it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A map over `tensors`; `source` names their origin in error messages.
    pub fn new(source: impl Into<String>, tensors: BTreeMap<String, Tensor>) -> WeightMap {
        WeightMap {
            source: source.into(),
            tensors,
            optional: Vec::new(),
            taken: BTreeSet::new(),
            missing: Vec::new(),
            misshaped: Vec::new(),
            synthetic_seed: None,
        }
    }

    /// An empty map that makes up every tensor a model takes, with seeded random values of a sensible
    /// scale (weights N(0, 1/fan_in), biases 0, norm scales and scale factors 1): full-size models for
    /// benchmarks and tests without a checkpoint.
    pub fn synthetic(seed: u64) -> WeightMap {
        WeightMap {
            synthetic_seed: Some(seed),
            ..WeightMap::new("synthetic weights", BTreeMap::new())
        }
    }

    fn synthesize(seed: u64, name: &str, dims: &[usize]) -> Tensor {
        use nvg_engine::rng::{Distribution, RngStream};
        let n: usize = dims.iter().product();
        if name.ends_with("bias") {
            return Tensor::zeros(dims, DType::F32, Device::Cpu).expect("CPU zeros");
        }
        if name.ends_with("scale") || name.ends_with("scale_factors") {
            return Tensor::ones(dims, DType::F32, Device::Cpu).expect("CPU ones");
        }
        let fan_in: usize = if dims.len() > 1 { dims[1..].iter().product() } else { 1 };
        let std = 1.0 / (fan_in as f32).sqrt();
        let mut v = vec![0.0f32; n];
        RngStream::for_name(seed, name).fill(Distribution::Normal, 0, &mut v);
        v.iter_mut().for_each(|x| *x *= std);
        Tensor::from_vec(v, dims).expect("sized")
    }

    /// The generator's tensors from a safetensors file: official Lightning key names with the
    /// `nvgformer.` prefix, the same without prefix, or (for `WeightSet::Ema`) `ema_model.nvgformer.*`.
    pub fn generator(path: &Path, set: WeightSet) -> Result<WeightMap> {
        let file = SafetensorsFile::open(path)?;
        let names: Vec<&str> = file.names().collect();
        let has = |p: &str| names.iter().any(|n| n.starts_with(p));
        let prefix = match set {
            WeightSet::Ema if has(EMA_PREFIX) => EMA_PREFIX,
            WeightSet::Ema => bail!(
                "{}: no EMA weights (no tensor named {EMA_PREFIX}*); use the raw weights or a checkpoint saved with EMA",
                path.display()
            ),
            WeightSet::Raw if has(GENERATOR_PREFIX) => GENERATOR_PREFIX,
            WeightSet::Raw => "",
        };
        let mut tensors = BTreeMap::new();
        for name in names {
            let own = match name.strip_prefix(prefix) {
                Some(rest) if !prefix.is_empty() => Some(rest),
                // Unprefixed files: everything but the families that are not the generator.
                _ if prefix.is_empty() && !FOREIGN_PREFIXES.iter().any(|p| name.starts_with(p)) => Some(name),
                _ => None,
            };
            if let Some(own) = own {
                tensors.insert(own.to_string(), file.get(name)?);
            }
        }
        let what = match set {
            WeightSet::Raw => "raw",
            WeightSet::Ema => "EMA",
        };
        Ok(WeightMap::new(
            format!("{} ({what} generator weights)", path.display()),
            tensors,
        ))
    }

    /// Tensors under `prefix` of a safetensors file, with the prefix stripped (e.g. the tokenizer's
    /// `quantize.*`).
    pub fn from_file(path: &Path, prefix: &str) -> Result<WeightMap> {
        let file = SafetensorsFile::open(path)?;
        let mut tensors = BTreeMap::new();
        for name in file.names() {
            if let Some(own) = name.strip_prefix(prefix) {
                tensors.insert(own.to_string(), file.get(name)?);
            }
        }
        Ok(WeightMap::new(path.display().to_string(), tensors))
    }

    /// The tensors (for a synthetic map: every tensor made up so far), by name.
    /// The same weights on `device` (every tensor copied there; the model built from the map then runs
    /// there).
    pub fn to_device(mut self, device: nvg_engine::Device) -> Result<WeightMap> {
        for t in self.tensors.values_mut() {
            *t = t
                .to_device(device)
                .with_context(|| format!("moving the weights of {} to {device}", self.source))?;
        }
        Ok(self)
    }

    pub fn into_tensors(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }

    /// Declares names (or prefixes ending in `.`) that may stay untaken without being "unexpected".
    pub fn allow_unused(&mut self, names: &[&str]) {
        self.optional.extend(names.iter().map(|s| s.to_string()));
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// How many names start with `prefix` followed by a number (e.g. the blocks of a stack).
    pub fn count_indexed(&self, prefix: &str) -> usize {
        let mut idx = BTreeSet::new();
        for name in self.tensors.keys() {
            if let Some(rest) = name.strip_prefix(prefix)
                && let Some(num) = rest.split('.').next()
                && let Ok(i) = num.parse::<usize>()
            {
                idx.insert(i);
            }
        }
        idx.len()
    }

    /// The shape of tensor `name`, if present.
    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.dims())
    }

    /// Takes tensor `name` as f32 with shape `dims`. A missing or mis-shaped tensor is recorded and a
    /// zero placeholder returned, so that building continues and `finish` can report every problem.
    pub fn take(&mut self, name: &str, dims: &[usize]) -> Tensor {
        self.taken.insert(name.to_string());
        let placeholder = || Tensor::zeros(dims, DType::F32, Device::Cpu).expect("CPU zeros");
        match self.tensors.get(name) {
            None if self.synthetic_seed.is_some() => {
                let t = WeightMap::synthesize(self.synthetic_seed.unwrap(), name, dims);
                self.tensors.insert(name.to_string(), t.clone());
                t
            }
            None => {
                self.missing.push(format!("{name} (expected shape {dims:?})"));
                placeholder()
            }
            Some(t) if t.dims() != dims => {
                self.misshaped
                    .push(format!("{name}: expected shape {dims:?}, found {:?}", t.dims()));
                placeholder()
            }
            Some(t) => match t.to_dtype(DType::F32) {
                Ok(t) => t,
                Err(e) => {
                    self.misshaped.push(format!("{name}: {e}"));
                    placeholder()
                }
            },
        }
    }

    /// Takes a float vector of length `len` (a buffer such as `scale_factors`).
    pub fn take_vec(&mut self, name: &str, len: usize) -> Vec<f32> {
        self.take(name, &[len]).to_f32_vec().expect("f32 tensor")
    }

    /// Two 64-bit fingerprints of the tensors taken so far (names, shapes and f32 values, in name
    /// order): of all of them, and of those whose name satisfies `part`. They identify the weights a
    /// derived artefact (a tokenized dataset) was made with.
    pub fn hashes_taken(&self, part: impl Fn(&str) -> bool) -> Result<(u64, u64)> {
        let (mut all, mut some) = (nvg_engine::io::Hasher64::new(), nvg_engine::io::Hasher64::new());
        for name in &self.taken {
            if let Some(t) = self.tensors.get(name) {
                let v = t.to_f32_vec()?;
                let feed = |h: &mut nvg_engine::io::Hasher64| {
                    h.update(name.as_bytes());
                    for &d in t.dims() {
                        h.update(&(d as u64).to_le_bytes());
                    }
                    h.update(nvg_engine::bytemuck_cast(&v));
                };
                feed(&mut all);
                if part(name) {
                    feed(&mut some);
                }
            }
        }
        Ok((all.finish(), some.finish()))
    }

    /// Reports every missing, mis-shaped and unexpected tensor in one error.
    pub fn finish(self) -> Result<()> {
        let unexpected: Vec<&String> = self
            .tensors
            .keys()
            .filter(|n| !self.taken.contains(*n))
            .filter(|n| {
                !self
                    .optional
                    .iter()
                    .any(|o| *n == o || (o.ends_with('.') && n.starts_with(o.as_str())))
            })
            .collect();
        if self.missing.is_empty() && self.misshaped.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        let mut msg = format!("{}: the weights do not fit the model", self.source);
        let mut section = |title: &str, items: Vec<String>| {
            if !items.is_empty() {
                msg.push_str(&format!("\n  {title} ({}):", items.len()));
                for it in items.iter().take(20) {
                    msg.push_str(&format!("\n    {it}"));
                }
                if items.len() > 20 {
                    msg.push_str(&format!("\n    ... and {} more", items.len() - 20));
                }
            }
        };
        section("missing", self.missing.clone());
        section("wrong shape", self.misshaped.clone());
        section("unexpected", unexpected.into_iter().cloned().collect());
        bail!(msg)
    }
}
