//! safetensors files: zero-copy reads through a memory map, atomic writes.
//!
//! Reading maps the file once; every f32/bf16/f16/i64/u8 tensor whose data is aligned for its type
//! becomes a view into the map (no copy). Other integer types are widened to i64 and f64 is narrowed
//! to f32 (copies). A truncated or malformed file is an error that names the file and the problem.
//! The map stays valid while any tensor from it lives; modifying the file while it is mapped is not
//! supported (as with every mmap-based loader).

use super::atomic_write;
use crate::error::{Error, Result, fmt_shape};
use crate::storage::{CpuStorage, MappedBytes};
use crate::{DType, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where one tensor lives in the mapped file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    /// Byte range in the file.
    pub start: usize,
    pub len: usize,
}

/// An opened safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Arc<Mmap>,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    /// Maps `path` and validates its header (sizes, offsets, total length).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let name = path.display().to_string();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&name, e))?;
        // SAFETY: the map is read-only; the file must not be truncated while mapped (documented).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&name, e))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| Error::format(&name, format!("not a valid safetensors file: {e}")))?;
        let base = map.as_ptr() as usize;
        let mut tensors = BTreeMap::new();
        for (tname, view) in st.tensors() {
            let data = view.data();
            tensors.insert(
                tname,
                TensorInfo {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start: data.as_ptr() as usize - base,
                    len: data.len(),
                },
            );
        }
        let (_, meta) =
            SafeTensors::read_metadata(&map).map_err(|e| Error::format(&name, format!("bad header: {e}")))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(SafetensorsFile {
            path,
            map: Arc::new(map),
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The free-form `__metadata__` of the header.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Loads tensor `name` (a view into the map when possible).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let fname = self.path.display().to_string();
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::format(&fname, format!("no tensor named `{name}`")))?;
        let bytes = &self.map[info.start..info.start + info.len];
        let native = match info.dtype {
            StDtype::F32 => Some(DType::F32),
            StDtype::BF16 => Some(DType::BF16),
            StDtype::F16 => Some(DType::F16),
            StDtype::I64 => Some(DType::I64),
            StDtype::U8 | StDtype::BOOL => Some(DType::U8),
            _ => None,
        };
        if let Some(dt) = native {
            if let Some(m) = MappedBytes::new(self.map.clone(), info.start, info.len, dt) {
                return Ok(Tensor::from_storage(CpuStorage::Mapped(m), &info.shape));
            }
            // Unaligned data: copy.
            let storage = match dt {
                DType::F32 => CpuStorage::F32(read_le(bytes, f32::from_le_bytes)),
                DType::BF16 => CpuStorage::BF16(read_le(bytes, |b: [u8; 2]| {
                    half::bf16::from_bits(u16::from_le_bytes(b))
                })),
                DType::F16 => CpuStorage::F16(read_le(bytes, |b: [u8; 2]| half::f16::from_bits(u16::from_le_bytes(b)))),
                DType::I64 => CpuStorage::I64(read_le(bytes, i64::from_le_bytes)),
                DType::U8 => CpuStorage::U8(bytes.to_vec()),
            };
            return Ok(Tensor::from_storage(storage, &info.shape));
        }
        let storage = match info.dtype {
            StDtype::I8 => CpuStorage::I64(bytes.iter().map(|&b| b as i8 as i64).collect()),
            StDtype::I16 => CpuStorage::I64(read_le(bytes, |b: [u8; 2]| i16::from_le_bytes(b) as i64)),
            StDtype::U16 => CpuStorage::I64(read_le(bytes, |b: [u8; 2]| u16::from_le_bytes(b) as i64)),
            StDtype::I32 => CpuStorage::I64(read_le(bytes, |b: [u8; 4]| i32::from_le_bytes(b) as i64)),
            StDtype::U32 => CpuStorage::I64(read_le(bytes, |b: [u8; 4]| u32::from_le_bytes(b) as i64)),
            StDtype::F64 => CpuStorage::F32(read_le(bytes, |b: [u8; 8]| f64::from_le_bytes(b) as f32)),
            other => {
                return Err(Error::format(
                    &fname,
                    format!("tensor `{name}` has dtype {other:?}, which nvg-rs does not read"),
                ));
            }
        };
        Ok(Tensor::from_storage(storage, &info.shape))
    }

    /// Every tensor, by name.
    pub fn load_all(&self) -> Result<BTreeMap<String, Tensor>> {
        self.names().map(|n| Ok((n.to_string(), self.get(n)?))).collect()
    }
}

fn read_le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| f(c.try_into().unwrap())).collect()
}

/// Loads every tensor of a safetensors file (views into one shared map).
pub fn load(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    SafetensorsFile::open(path)?.load_all()
}

/// Writes `tensors` (name → tensor) to `path` atomically, with optional header metadata.
///
/// The file is streamed tensor by tensor (no second copy of the data in memory). Tensors are laid out
/// by element size, largest first, then by name, and the header is padded to 8 bytes, so every tensor
/// starts aligned for its type and loads zero-copy.
pub fn save<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let mut items: Vec<(String, Tensor)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (tname, t) in tensors {
        if !seen.insert(tname.to_string()) {
            return Err(Error::format(&name, format!("tensor name `{tname}` given twice")));
        }
        if tname == "__metadata__" {
            return Err(Error::format(
                &name,
                "`__metadata__` is reserved and cannot name a tensor",
            ));
        }
        // Device tensors are copied to the host (a file holds their values wherever they live).
        items.push((tname.to_string(), t.to_device(crate::Device::Cpu)?.contiguous()?));
    }
    items.sort_by(|(an, a), (bn, b)| b.dtype().size().cmp(&a.dtype().size()).then_with(|| an.cmp(bn)));
    let mut header = serde_json::Map::new();
    if let Some(meta) = metadata {
        let mut m = serde_json::Map::new();
        let mut keys: Vec<_> = meta.into_iter().collect();
        keys.sort();
        for (k, v) in keys {
            m.insert(k, serde_json::Value::String(v));
        }
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for (tname, t) in &items {
        let len = t.numel() * t.dtype().size();
        let dtype = match t.dtype() {
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::I64 => "I64",
            DType::U8 => "U8",
        };
        header.insert(
            tname.clone(),
            serde_json::json!({ "dtype": dtype, "shape": t.dims(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::format(&name, format!("cannot write the header: {e}")))?;
    json.resize(json.len().div_ceil(8) * 8, b' ');
    atomic_write(path, |f| {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(&json)?;
        for (_, t) in &items {
            let st = t.cpu_storage("save").map_err(std::io::Error::other)?;
            let es = t.dtype().size();
            let off = t.layout().offset() * es;
            w.write_all(&st.bytes()[off..off + t.numel() * es])?;
        }
        w.flush()
    })
}

/// A short description of a tensor for listings: `name  dtype  [shape]`.
pub fn describe(name: &str, info: &TensorInfo) -> String {
    format!("{name}  {:?}  {}", info.dtype, fmt_shape(&info.shape))
}
