//! Official PyTorch (Lightning) checkpoints: read safely (`zip` + restricted `pickle`), recognise what
//! they hold, and convert to safetensors with only what inference needs (`nvg convert`). Our own
//! training checkpoints (safetensors from `nvg train` / `nvg train-tokenizer`) convert the same way, and
//! any conversion can store its floating-point tensors as bf16 or f16 (`Converted::cast_floats`).

pub mod pickle;

use anyhow::{Context, Result, bail, ensure};
use nvg_engine::io::safetensors::SafetensorsFile;
use nvg_engine::io::zip::ZipArchive;
use nvg_engine::{DType, Tensor};
use pickle::{StorageType, TensorRef, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// A `torch.save` archive: its pickle, read without executing anything, and its storages.
pub struct TorchCheckpoint {
    archive: ZipArchive,
    /// The archive's top folder (`<name>/`), which prefixes every entry.
    prefix: String,
    root: Value,
}

impl TorchCheckpoint {
    pub fn open(path: &Path) -> Result<TorchCheckpoint> {
        let archive = ZipArchive::open(path)?;
        let pkl = archive
            .names()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .with_context(|| format!("{}: no data.pkl (not a torch.save checkpoint)", path.display()))?
            .to_string();
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let root = pickle::unpickle(archive.get(&pkl).unwrap())
            .with_context(|| format!("{}: reading {pkl}", path.display()))?;
        Ok(TorchCheckpoint { archive, prefix, root })
    }

    /// The tensors of the state dict, in file order: the `state_dict` entry of a Lightning checkpoint, or
    /// the top-level dict of a plain `torch.save(model.state_dict())`. Other entries (optimizer state,
    /// counters) are ignored.
    pub fn state_dict(&self) -> Result<Vec<(String, TensorRef)>> {
        let dict = self.root.get("state_dict").unwrap_or(&self.root);
        let Value::Dict(items) = dict else {
            bail!("the checkpoint holds no dict of tensors")
        };
        let mut out = Vec::new();
        for (k, v) in items {
            if let (Value::Str(name), Value::Tensor(t)) = (k, v) {
                out.push((name.clone(), t.clone()));
            }
        }
        ensure!(!out.is_empty(), "the checkpoint's state dict holds no tensors");
        Ok(out)
    }

    /// Materialises a tensor (a packed copy of its strided view of the storage), in its own dtype where
    /// the engine has it (f32, bf16, f16, i64, u8), else widened (f64 → f32, smaller ints → i64).
    pub fn load(&self, r: &TensorRef) -> Result<Tensor> {
        let entry = format!("{}data/{}", self.prefix, r.key);
        let bytes = self
            .archive
            .get(&entry)
            .with_context(|| format!("storage `{}` is missing from the archive", r.key))?;
        let es = r.dtype.size();
        // Sizes, strides and offsets come from the file: overflow means a corrupt entry, not a panic.
        let too_large = || format!("tensor `{}`: its storage size, shape or strides overflow", r.key);
        let storage_bytes = r.storage_numel.checked_mul(es).with_context(too_large)?;
        ensure!(
            bytes.len() >= storage_bytes,
            "storage `{}` has {} bytes, {} elements need {storage_bytes}",
            r.key,
            bytes.len(),
            r.storage_numel,
        );
        // Offsets (in elements) of the view, row-major.
        let numel = r
            .size
            .iter()
            .try_fold(1usize, |n, &s| n.checked_mul(s))
            .with_context(too_large)?;
        if numel > 0 {
            let last = r
                .size
                .iter()
                .zip(&r.stride)
                .try_fold(r.offset, |sum, (&s, &st)| (s - 1).checked_mul(st)?.checked_add(sum))
                .with_context(too_large)?;
            ensure!(
                last < r.storage_numel,
                "tensor `{}`: its view reaches element {last} of a storage of {}",
                r.key,
                r.storage_numel
            );
        }
        let layout = nvg_engine::layout::Layout::new(r.size.clone(), r.stride.clone(), r.offset);
        let offsets = layout.offsets();
        let elem = |i: usize| &bytes[i * es..(i + 1) * es];
        let dims = &r.size;
        Ok(match r.dtype {
            StorageType::F32 => Tensor::from_vec(
                offsets
                    .iter()
                    .map(|&i| f32::from_le_bytes(elem(i).try_into().unwrap()))
                    .collect::<Vec<_>>(),
                dims,
            )?,
            StorageType::F64 => Tensor::from_vec(
                offsets
                    .iter()
                    .map(|&i| f64::from_le_bytes(elem(i).try_into().unwrap()) as f32)
                    .collect::<Vec<_>>(),
                dims,
            )?,
            StorageType::BF16 => Tensor::from_vec(
                offsets
                    .iter()
                    .map(|&i| half::bf16::from_le_bytes(elem(i).try_into().unwrap()))
                    .collect::<Vec<_>>(),
                dims,
            )?,
            StorageType::F16 => Tensor::from_vec(
                offsets
                    .iter()
                    .map(|&i| half::f16::from_le_bytes(elem(i).try_into().unwrap()))
                    .collect::<Vec<_>>(),
                dims,
            )?,
            StorageType::I64 => Tensor::from_vec(
                offsets
                    .iter()
                    .map(|&i| i64::from_le_bytes(elem(i).try_into().unwrap()))
                    .collect::<Vec<_>>(),
                dims,
            )?,
            StorageType::I32 => Tensor::from_vec(
                offsets
                    .iter()
                    .map(|&i| i32::from_le_bytes(elem(i).try_into().unwrap()) as i64)
                    .collect::<Vec<_>>(),
                dims,
            )?,
            StorageType::I16 => Tensor::from_vec(
                offsets
                    .iter()
                    .map(|&i| i16::from_le_bytes(elem(i).try_into().unwrap()) as i64)
                    .collect::<Vec<_>>(),
                dims,
            )?,
            StorageType::I8 => Tensor::from_vec(
                offsets.iter().map(|&i| elem(i)[0] as i8 as i64).collect::<Vec<_>>(),
                dims,
            )?,
            StorageType::U8 | StorageType::Bool => {
                Tensor::from_vec(offsets.iter().map(|&i| elem(i)[0]).collect::<Vec<_>>(), dims)?
            }
        })
    }
}

/// What a set of tensors is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Generator,
    Tokenizer,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Generator => "generator",
            ModelKind::Tokenizer => "tokenizer",
        }
    }
}

/// Recognises a generator (official NVGformer names, optionally prefixed) or a tokenizer (VQAE names).
pub fn detect_kind<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<ModelKind> {
    let mut kind = None;
    for n in names {
        let bare = n.strip_prefix("ema_model.").unwrap_or(n);
        let bare = bare.strip_prefix("nvgformer.").unwrap_or(bare);
        if bare == "content_embed.weight" {
            return Some(ModelKind::Generator);
        }
        if bare == "encoder.conv_in.conv.weight" && !n.starts_with("first_stage_model.") {
            kind = Some(ModelKind::Tokenizer);
        }
    }
    kind
}

/// A converted checkpoint.
pub struct Converted {
    pub kind: ModelKind,
    /// Tensors under their official names, without prefixes.
    pub tensors: BTreeMap<String, Tensor>,
    /// How many state-dict tensors were left out (training-only or other models' weights).
    pub dropped: usize,
}

/// Which output name a state-dict entry gets, if inference needs it.
fn keep(kind: ModelKind, name: &str, ema: bool) -> Option<String> {
    match kind {
        ModelKind::Generator => {
            let prefix = if ema { "ema_model.nvgformer." } else { "nvgformer." };
            let bare = if name.starts_with("nvgformer.") || name.starts_with("ema_model.") {
                name.strip_prefix(prefix)?
            } else if !ema
                && !["first_stage_model.", "repa_encoder.", "adamw."]
                    .iter()
                    .any(|p| name.starts_with(p))
            {
                name // a bare NVGformer state dict (never the optimiser state of an `nvg train` checkpoint)
            } else {
                return None;
            };
            // The REPA projector is used in training only.
            (!bare.starts_with("projector.")).then(|| bare.to_string())
        }
        ModelKind::Tokenizer => {
            let bare = if ema { name.strip_prefix("ema_model.")? } else { name };
            let needed = ["encoder.", "decoder.", "quantize."]
                .iter()
                .any(|p| bare.starts_with(p));
            (needed && bare != "quantize.total_visited_codes").then(|| bare.to_string())
        }
    }
}

/// Reads a PyTorch checkpoint (or, for a `.safetensors` path, one of our training checkpoints or an
/// already converted file; see [`convert_safetensors`]) and keeps what inference needs: the generator's
/// weights (`nvgformer.*`, or `ema_model.nvgformer.*` with `ema`; never `first_stage_model.*`,
/// `repa_encoder.*` or the REPA projector) or the tokenizer's encoder, decoder and quantiser
/// (`ema_model.*` with `ema`; never the training losses).
pub fn convert(path: &Path, ema: bool) -> Result<Converted> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        return convert_safetensors(path, ema);
    }
    let ckpt = TorchCheckpoint::open(path)?;
    let entries = ckpt.state_dict().with_context(|| path.display().to_string())?;
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let refs: BTreeMap<&str, &TensorRef> = entries.iter().map(|(n, r)| (n.as_str(), r)).collect();
    select(path, &names, ema, |name| ckpt.load(refs[name]))
}

/// The safetensors counterpart of [`convert`]: an `nvg train` checkpoint (raw `nvgformer.*`, EMA
/// `ema_model.nvgformer.*`, optimiser `adamw.*`), a tokenizer file of `nvg train-tokenizer`, or a file
/// `nvg convert` already wrote (e.g. to change its storage type).
pub fn convert_safetensors(path: &Path, ema: bool) -> Result<Converted> {
    let file = SafetensorsFile::open(path)?;
    let names: Vec<&str> = file.names().collect();
    select(path, &names, ema, |name| Ok(file.get(name)?))
}

/// Recognises the model among `names` and loads the tensors inference needs.
fn select(path: &Path, names: &[&str], ema: bool, load: impl Fn(&str) -> Result<Tensor>) -> Result<Converted> {
    let kind = detect_kind(names.iter().copied()).with_context(|| {
        format!(
            "{}: neither an NVG generator nor an NVG tokenizer checkpoint",
            path.display()
        )
    })?;
    let mut tensors = BTreeMap::new();
    let mut dropped = 0;
    for &name in names {
        match keep(kind, name, ema) {
            Some(out) => {
                let t = load(name).with_context(|| format!("{}: tensor `{name}`", path.display()))?;
                tensors.insert(out, t);
            }
            None => dropped += 1,
        }
    }
    if tensors.is_empty() {
        bail!(
            "{}: no {} {} weights in this checkpoint{}",
            path.display(),
            if ema { "EMA" } else { "raw" },
            kind.name(),
            if ema {
                " (it was saved without EMA; convert without --ema)"
            } else {
                ""
            }
        );
    }
    Ok(Converted { kind, tensors, dropped })
}

impl Converted {
    /// Stores every floating-point tensor as `dtype` (f32, bf16 or f16); integer tensors stay as they
    /// are. The models compute in f32 whatever the storage, so bf16 halves the file at the cost of
    /// rounding each weight to 8 significant bits.
    pub fn cast_floats(&mut self, dtype: DType) -> Result<()> {
        ensure!(dtype.is_float(), "storage type {dtype:?} is not a floating-point type");
        for (name, t) in self.tensors.iter_mut() {
            if t.dtype().is_float() {
                *t = t
                    .to_dtype(dtype)
                    .with_context(|| format!("tensor `{name}` to {dtype:?}"))?;
            }
        }
        Ok(())
    }
}
