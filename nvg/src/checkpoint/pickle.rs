//! A restricted unpickler for PyTorch checkpoints. It interprets the pickle opcodes that describe data
//! — numbers, strings, tuples, lists, dicts — and recognises exactly the few callables `torch.save`
//! uses for tensors (`OrderedDict`, `_rebuild_tensor_v2`, `_rebuild_parameter`, the typed storage
//! classes). Nothing is ever called or imported: a tensor becomes a description (storage key, offset,
//! shape, strides), and any other global (`os.system`, `builtins.eval`, a custom class...) or opcode is
//! refused with an error that names it and its byte offset.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;

/// Element type of a PyTorch storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageType {
    fn from_class(name: &str) -> Option<StorageType> {
        Some(match name {
            "DoubleStorage" => StorageType::F64,
            "FloatStorage" => StorageType::F32,
            "HalfStorage" => StorageType::F16,
            "BFloat16Storage" => StorageType::BF16,
            "LongStorage" => StorageType::I64,
            "IntStorage" => StorageType::I32,
            "ShortStorage" => StorageType::I16,
            "CharStorage" => StorageType::I8,
            "ByteStorage" => StorageType::U8,
            "BoolStorage" => StorageType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageType::F64 | StorageType::I64 => 8,
            StorageType::F32 | StorageType::I32 => 4,
            StorageType::F16 | StorageType::BF16 | StorageType::I16 => 2,
            StorageType::I8 | StorageType::U8 | StorageType::Bool => 1,
        }
    }
}

/// A tensor described by the pickle: a strided view of storage `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub dtype: StorageType,
    /// Name of the storage's entry in the archive (`data/<key>`).
    pub key: String,
    /// Elements in the storage.
    pub storage_numel: usize,
    /// Element offset of the view.
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The callables a checkpoint may name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Allowed {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageType),
}

/// A pickled value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Allowed),
    Storage {
        dtype: StorageType,
        key: String,
        numel: usize,
    },
    Tensor(TensorRef),
    /// A stack marker (never escapes the interpreter).
    Mark,
}

impl Value {
    /// Looks up `key` in a dict (the last binding wins, as in Python).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Some(*i as usize),
            _ => None,
        }
    }
}

fn resolve(module: &str, name: &str, at: usize) -> Result<Value> {
    let allowed = match (module, name) {
        ("collections", "OrderedDict") => Allowed::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Allowed::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Allowed::RebuildParameter,
        ("torch", class) if StorageType::from_class(class).is_some() => {
            Allowed::Storage(StorageType::from_class(class).unwrap())
        }
        _ => bail!(
            "refusing global `{module}.{name}` (pickle byte {at}): a checkpoint may only hold tensors, numbers, strings, \
             lists, tuples and dicts, and nothing in it is ever executed"
        ),
    };
    Ok(Value::Global(allowed))
}

fn usizes(v: &Value, what: &str) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|x| x.as_usize().with_context(|| format!("{what}: not a size")))
            .collect(),
        _ => bail!("{what}: expected a tuple of sizes, got {v:?}"),
    }
}

/// Applies an allowed callable (REDUCE).
fn call(f: Allowed, args: Value, at: usize) -> Result<Value> {
    let Value::Tuple(args) = args else {
        bail!("pickle byte {at}: arguments are not a tuple")
    };
    match f {
        Allowed::OrderedDict if args.is_empty() => Ok(Value::Dict(Vec::new())),
        Allowed::RebuildTensorV2 if args.len() >= 4 => {
            let Value::Storage { dtype, key, numel } = &args[0] else {
                bail!("pickle byte {at}: tensor without a storage")
            };
            let offset = args[1].as_usize().context("tensor storage offset")?;
            let (size, stride) = (usizes(&args[2], "tensor shape")?, usizes(&args[3], "tensor strides")?);
            if size.len() != stride.len() {
                bail!(
                    "pickle byte {at}: tensor with {} sizes and {} strides",
                    size.len(),
                    stride.len()
                );
            }
            Ok(Value::Tensor(TensorRef {
                dtype: *dtype,
                key: key.clone(),
                storage_numel: *numel,
                offset,
                size,
                stride,
            }))
        }
        Allowed::RebuildParameter if !args.is_empty() => Ok(args.into_iter().next().unwrap()),
        other => bail!(
            "pickle byte {at}: {other:?} cannot be called with {} arguments",
            args.len()
        ),
    }
}

/// Interprets a pickle (protocols 2–5, the subset `torch.save` emits).
pub fn unpickle(data: &[u8]) -> Result<Value> {
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8]> {
        let s = data
            .get(*pos..*pos + n)
            .with_context(|| format!("pickle truncated at byte {}", *pos))?;
        *pos += n;
        Ok(s)
    };
    macro_rules! pop {
        () => {
            stack
                .pop()
                .with_context(|| format!("pickle byte {pos}: stack underflow"))?
        };
    }
    macro_rules! pop_mark {
        () => {{
            let m = marks.pop().with_context(|| format!("pickle byte {pos}: no mark"))?;
            if m > stack.len() {
                bail!("pickle byte {pos}: corrupt mark");
            }
            let items = stack.split_off(m);
            stack.pop(); // the Mark itself
            items
        }};
    }
    loop {
        let at = pos;
        let op = *take(&mut pos, 1)?.first().unwrap();
        match op {
            0x80 => {
                take(&mut pos, 1)?; // PROTO
            }
            0x95 => {
                take(&mut pos, 8)?; // FRAME
            }
            b'.' => return stack.pop().context("empty pickle"), // STOP
            b'(' => {
                marks.push(stack.len() + 1);
                stack.push(Value::Mark);
            }
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = pop_mark!();
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark!();
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark!();
                if items.len() % 2 != 0 {
                    bail!("pickle byte {at}: odd number of dict items");
                }
                let mut it = items.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                stack.push(Value::Dict(pairs));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize; // TUPLE1..3
                if stack.len() < n {
                    bail!("pickle byte {at}: stack underflow");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'a' => {
                let v = pop!();
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => bail!("pickle byte {at}: APPEND to a non-list"),
                }
            }
            b'e' => {
                let items = pop_mark!();
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => bail!("pickle byte {at}: APPENDS to a non-list"),
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop!();
                    let k = pop!();
                    vec![k, v]
                } else {
                    pop_mark!()
                };
                if items.len() % 2 != 0 {
                    bail!("pickle byte {at}: odd number of dict items");
                }
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => bail!("pickle byte {at}: SETITEM on a non-dict"),
                }
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    b'q' => take(&mut pos, 1)?[0] as u32,
                    b'r' => u32::from_le_bytes(take(&mut pos, 4)?.try_into()?),
                    _ => memo.len() as u32, // MEMOIZE
                };
                let top = stack
                    .last()
                    .with_context(|| format!("pickle byte {at}: memo of an empty stack"))?
                    .clone();
                memo.insert(idx, top);
            }
            b'h' | b'j' => {
                let idx = if op == b'h' {
                    take(&mut pos, 1)?[0] as u32
                } else {
                    u32::from_le_bytes(take(&mut pos, 4)?.try_into()?)
                };
                stack.push(
                    memo.get(&idx)
                        .with_context(|| format!("pickle byte {at}: memo {idx} not set"))?
                        .clone(),
                );
            }
            b'J' => stack.push(Value::Int(i32::from_le_bytes(take(&mut pos, 4)?.try_into()?) as i64)),
            b'K' => stack.push(Value::Int(take(&mut pos, 1)?[0] as i64)),
            b'M' => stack.push(Value::Int(u16::from_le_bytes(take(&mut pos, 2)?.try_into()?) as i64)),
            0x8a => {
                let n = take(&mut pos, 1)?[0] as usize; // LONG1
                let bytes = take(&mut pos, n)?;
                if n > 8 {
                    bail!("pickle byte {at}: integer wider than 64 bits");
                }
                let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                    [0xFF; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(bytes);
                stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'G' => stack.push(Value::Float(f64::from_be_bytes(take(&mut pos, 8)?.try_into()?))),
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => u32::from_le_bytes(take(&mut pos, 4)?.try_into()?) as usize,
                    0x8c => take(&mut pos, 1)?[0] as usize,
                    _ => usize::try_from(u64::from_le_bytes(take(&mut pos, 8)?.try_into()?))?,
                };
                let s = std::str::from_utf8(take(&mut pos, n)?)
                    .with_context(|| format!("pickle byte {at}: invalid UTF-8"))?;
                stack.push(Value::Str(s.to_string()));
            }
            b'B' | b'C' | b'T' | b'U' => {
                let n = match op {
                    b'B' | b'T' => u32::from_le_bytes(take(&mut pos, 4)?.try_into()?) as usize,
                    _ => take(&mut pos, 1)?[0] as usize,
                };
                stack.push(Value::Bytes(take(&mut pos, n)?.to_vec()));
            }
            b'c' => {
                // GLOBAL "module\nname\n"
                let mut line = || -> Result<String> {
                    let rest = data.get(pos..).context("pickle truncated")?;
                    let end = rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .with_context(|| format!("pickle byte {pos}: unterminated GLOBAL"))?;
                    let s = std::str::from_utf8(&rest[..end])?.to_string();
                    pos += end + 1;
                    Ok(s)
                };
                let (module, name) = (line()?, line()?);
                stack.push(resolve(&module, &name, at)?);
            }
            0x93 => {
                let name = pop!();
                let module = pop!();
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(resolve(&m, &n, at)?),
                    _ => bail!("pickle byte {at}: STACK_GLOBAL of non-strings"),
                }
            }
            b'R' => {
                let args = pop!();
                match pop!() {
                    Value::Global(f) => stack.push(call(f, args, at)?),
                    other => bail!("pickle byte {at}: cannot call {other:?}"),
                }
            }
            b'b' => {
                let state = pop!();
                match (stack.last_mut(), state) {
                    // Tensors and parameters may carry Python attributes; they are not needed.
                    (Some(Value::Tensor(_)), _) => {}
                    (Some(Value::Dict(d)), Value::Dict(extra)) => d.extend(extra),
                    (obj, _) => bail!("pickle byte {at}: BUILD on {obj:?} is not supported"),
                }
            }
            b'Q' => {
                // BINPERSID: ('storage', StorageClass, key, location, numel)
                let pid = pop!();
                let Value::Tuple(items) = pid else {
                    bail!("pickle byte {at}: persistent id is not a tuple")
                };
                match items.as_slice() {
                    [
                        Value::Str(tag),
                        Value::Global(Allowed::Storage(dtype)),
                        Value::Str(key),
                        _,
                        n,
                    ] if tag == "storage" => {
                        let numel = n.as_usize().context("storage size")?;
                        stack.push(Value::Storage {
                            dtype: *dtype,
                            key: key.clone(),
                            numel,
                        });
                    }
                    _ => bail!("pickle byte {at}: unsupported persistent id {items:?}"),
                }
            }
            other => bail!(
                "unsupported pickle opcode 0x{other:02x} at byte {at} (only the data opcodes of torch.save are read)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_containers() {
        // pickle.dumps({'a': [1, 2.5, 'x'], 'b': (True, None)}, protocol=2)
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04\x88N\x86q\x05u.";
        let v = unpickle(p).unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::List(vec![
                Value::Int(1),
                Value::Float(2.5),
                Value::Str("x".into())
            ]))
        );
        assert_eq!(v.get("b"), Some(&Value::Tuple(vec![Value::Bool(true), Value::None])));
    }

    #[test]
    fn refuses_code_and_unknown_opcodes_before_running_anything() {
        // pickle.dumps of an object whose __reduce__ is (os.system, ('echo hi',)), protocol 2.
        let evil = b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00echo hiq\x01\x85q\x02Rq\x03.";
        let err = unpickle(evil).unwrap_err().to_string();
        assert!(err.contains("refusing global `posix.system`"), "{err}");
        let err = unpickle(b"\x80\x02cbuiltins\neval\n.").unwrap_err().to_string();
        assert!(err.contains("builtins.eval"), "{err}");
        assert!(
            unpickle(b"\x80\x02\xff")
                .unwrap_err()
                .to_string()
                .contains("opcode 0xff")
        );
        assert!(
            unpickle(b"\x80\x02X\x05\x00\x00\x00ab")
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        assert!(unpickle(b"").is_err());
    }
}
