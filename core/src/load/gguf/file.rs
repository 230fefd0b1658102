//! The GGUF container (version 2 and 3, little-endian), as llama.cpp's `gguf.c` and the `gguf`
//! Python package define it: a header, typed metadata, tensor descriptors, aligned tensor data.
//!
//! Reading checks every length and offset against the file and names the key or tensor that is
//! wrong; nothing here panics on a malformed file. (The `ggus` crate was tried first: it panics
//! on tensor types it leaves unimplemented and assumes a well-formed file.)

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::quant::GgmlType;
use crate::error::{CoreError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(Vec<Value>),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// An integer of any width, when it is one and not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A number as f64; an f32 becomes the shortest decimal that rounds to it (1e-5, not
    /// 9.99999974e-6), as the f64 it was written from most likely was.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => v.to_string().parse().ok(),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` varies fastest (a PyTorch `[out, in]` weight is `[in, out]`).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The number of elements; `u64::MAX` when the dims overflow (a file with such a tensor is
    /// refused by [`GgufFile::parse`], so a parsed tensor's count is exact).
    pub fn elements(&self) -> u64 {
        self.checked_elements().unwrap_or(u64::MAX)
    }

    /// The number of elements, `None` when the dims' product overflows.
    pub fn checked_elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }

    /// The PyTorch shape: `dims` reversed.
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A GGUF file read into memory: metadata, tensor descriptors and the data section.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// The whole file; tensor data starts at `data_start`.
    bytes: Vec<u8>,
    data_start: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &str) -> CoreError {
        CoreError::Gguf {
            path: self.path.to_path_buf(),
            message: format!("at byte {}: {what}", self.pos),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(&format!(
                "{what} needs {n} bytes but the file ends (truncated?)"
            ))),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.bytes.len() as u64 {
            return Err(self.err(&format!("{what}: string length {len} exceeds the file")));
        }
        let raw = self.take(len as usize, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.err(&format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        let mut fixed = |n: usize| -> Result<&'a [u8]> { self.take(n, key) };
        Ok(match ty {
            0 => Value::U8(fixed(1)?[0]),
            1 => Value::I8(fixed(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(fixed(2)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(fixed(2)?.try_into().unwrap())),
            4 => Value::U32(u32::from_le_bytes(fixed(4)?.try_into().unwrap())),
            5 => Value::I32(i32::from_le_bytes(fixed(4)?.try_into().unwrap())),
            6 => Value::F32(f32::from_le_bytes(fixed(4)?.try_into().unwrap())),
            7 => Value::Bool(fixed(1)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(&format!("`{key}`: arrays nested too deep")));
                }
                let item = self.u32(key)?;
                let count = self.u64(key)?;
                // Every item takes at least one byte: a count beyond the file is corrupt.
                if count > (self.bytes.len() - self.pos) as u64 {
                    return Err(
                        self.err(&format!("`{key}`: array of {count} items exceeds the file"))
                    );
                }
                // Grown as items are read: a count is not trusted with an allocation.
                let mut items = Vec::with_capacity((count as usize).min(1 << 12));
                for _ in 0..count {
                    items.push(self.value(item, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(fixed(8)?.try_into().unwrap())),
            11 => Value::I64(i64::from_le_bytes(fixed(8)?.try_into().unwrap())),
            12 => Value::F64(f64::from_le_bytes(fixed(8)?.try_into().unwrap())),
            other => {
                return Err(self.err(&format!("`{key}`: unknown value type {other}")));
            }
        })
    }
}

impl GgufFile {
    /// Reads a GGUF file whole (metadata and tensor data).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| CoreError::io("read", path, e))?;
        Self::parse(path, bytes)
    }

    /// Reads metadata and tensor descriptors only (the first 256 MiB of the file at most);
    /// tensor data is neither read nor checked.
    pub fn read_metadata(path: &Path) -> Result<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| CoreError::io("open", path, e))?;
        let mut bytes = Vec::new();
        file.take(256 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| CoreError::io("read", path, e))?;
        Self::parse_with(path, bytes, false)
    }

    /// Parses GGUF bytes; `path` names them in errors.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::parse_with(path, bytes, true)
    }

    fn parse_with(path: &Path, bytes: Vec<u8>, check_data: bool) -> Result<Self> {
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
            path,
        };
        if r.take(4, "magic")? != MAGIC {
            return Err(r.err("not a GGUF file (the first 4 bytes are not \"GGUF\")"));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(r.err(&format!(
                "GGUF version {version}; clo reads versions 2 and 3 (big-endian files are not supported)"
            )));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each entry takes bytes of the file: a key/value at least 13 (key length, type, one
        // byte), a tensor descriptor at least 32 (name length, dims count, one dim, type,
        // offset). Counts beyond that are corrupt, whatever the loops below would find.
        let room = (r.bytes.len() - r.pos) as u64;
        if n_kv > room / 13 {
            return Err(r.err(&format!(
                "the header says {n_kv} metadata entries, more than the file's {room} remaining bytes can hold (corrupt or not a model file)"
            )));
        }
        if n_tensors > room / 32 {
            return Err(r.err(&format!(
                "the header says {n_tensors} tensors, more than the file's {room} remaining bytes can hold (corrupt or not a model file)"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.err(&format!("metadata key `{key}` appears twice")));
            }
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(r.err(&format!("tensor `{name}` has {n_dims} dimensions (1 to 4)")));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&name))
                .collect::<Result<Vec<_>>>()?;
            let raw_ty = r.u32(&name)?;
            let ty = GgmlType::from_id(raw_ty).ok_or_else(|| {
                r.err(&format!(
                    "tensor `{name}` has ggml type {raw_ty}, which clo does not read; it reads {}",
                    GgmlType::SUPPORTED
                ))
            })?;
            let offset = r.u64(&name)?;
            if dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .is_none()
            {
                return Err(r.err(&format!(
                    "tensor `{name}` has dims {dims:?}, whose product overflows 64 bits"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a <= 1 << 16 && a.is_power_of_two() => a as usize,
                _ => {
                    return Err(r.err(&format!(
                        "general.alignment = {v:?} is not a power of two up to 65536"
                    )));
                }
            },
        };
        let start = r
            .pos
            .checked_next_multiple_of(alignment)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let data = &bytes[start..];
        for t in &tensors {
            let size =
                t.ty.bytes_for(t.elements())
                    .ok_or_else(|| CoreError::Gguf {
                        path: path.to_path_buf(),
                        message: if t.elements().is_multiple_of(t.ty.block().0 as u64) {
                            format!(
                                "tensor `{}`: {} elements of {:?} take more than 2^64 bytes",
                                t.name,
                                t.elements(),
                                t.ty
                            )
                        } else {
                            format!(
                                "tensor `{}`: {} elements do not fill whole {:?} blocks",
                                t.name,
                                t.elements(),
                                t.ty
                            )
                        },
                    })?;
            if check_data
                && t.offset
                    .checked_add(size)
                    .is_none_or(|end| end > data.len() as u64)
            {
                return Err(CoreError::Gguf {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensor `{}` ({size} bytes at data offset {}) runs past the end of the file (truncated?)",
                        t.name, t.offset
                    ),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            bytes,
            data_start: start,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (checked in [`Self::parse`]).
    /// Empty when the range lies outside the bytes read (a file read by
    /// [`Self::read_metadata`], or a descriptor not from this file).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let range = (|| {
            let size = usize::try_from(info.ty.bytes_for(info.elements())?).ok()?;
            let start = self
                .data_start
                .checked_add(usize::try_from(info.offset).ok()?)?;
            Some(start..start.checked_add(size)?)
        })();
        range.and_then(|r| self.bytes.get(r)).unwrap_or_default()
    }

    /// A tensor as f32 values in PyTorch order (dequantized). Needs a file read by [`Self::read`].
    pub fn tensor_f32(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        super::quant::dequantize(info.ty, self.tensor_bytes(info), info.elements() as usize)
            .map_err(|message| CoreError::Gguf {
                path: self.path.clone(),
                message: format!("tensor `{}`: {message}", info.name),
            })
    }
}

/// A tensor to write: name, GGUF dims (fastest first), type and encoded bytes.
#[derive(Debug, Clone)]
pub struct TensorOut {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub bytes: Vec<u8>,
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => write_string(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(items) => {
            // An empty array is written as an array of u8, as gguf-py does.
            let item_ty = items.first().map_or(0, Value::type_id);
            out.extend_from_slice(&item_ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}

/// Writes a GGUF v3 file: `metadata` in order, then the tensors, data aligned to 32 bytes.
pub fn write_gguf(
    w: &mut impl Write,
    metadata: &[(String, Value)],
    tensors: &[TensorOut],
) -> std::io::Result<()> {
    let mut head = Vec::new();
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut head, key);
        head.extend_from_slice(&value.type_id().to_le_bytes());
        write_value(&mut head, value);
    }
    let mut offset = 0u64;
    for t in tensors {
        write_string(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ty.id().to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + t.bytes.len() as u64).next_multiple_of(DEFAULT_ALIGNMENT as u64);
    }
    head.resize(head.len().next_multiple_of(DEFAULT_ALIGNMENT), 0);
    w.write_all(&head)?;
    for t in tensors {
        w.write_all(&t.bytes)?;
        let pad = t.bytes.len().next_multiple_of(DEFAULT_ALIGNMENT) - t.bytes.len();
        w.write_all(&vec![0; pad])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_read_back() {
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("llama.block_count".into(), Value::U32(2)),
            ("x.f".into(), Value::F32(0.5)),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
        ];
        let data: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let tensors = vec![TensorOut {
            name: "w".into(),
            dims: vec![3, 2],
            ty: GgmlType::F32,
            bytes: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }];
        let mut bytes = Vec::new();
        write_gguf(&mut bytes, &meta, &tensors).unwrap();
        let f = GgufFile::parse(Path::new("t.gguf"), bytes.clone()).unwrap();
        assert_eq!(f.version, 3);
        for (k, v) in &meta {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        let t = f.tensor("w").unwrap();
        assert_eq!(t.torch_shape(), vec![2, 3]);
        assert_eq!(f.tensor_f32(t).unwrap(), data);

        // Truncation and garbage are errors that name the problem, not panics.
        // The data ends 8 bytes of padding after the tensor's 24: cut into the tensor.
        let err = GgufFile::parse(Path::new("t.gguf"), bytes[..bytes.len() - 12].to_vec())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor `w`") && err.contains("truncated"),
            "{err}"
        );
        let err = GgufFile::parse(Path::new("t.gguf"), b"GGML....".to_vec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a GGUF file"), "{err}");
        for cut in [10, 30, 60, 100] {
            assert!(GgufFile::parse(Path::new("t.gguf"), bytes[..cut].to_vec()).is_err());
        }
    }
}
