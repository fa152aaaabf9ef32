//! Parses a GGUF file (versions 2 and 3) that is already in memory, usually by mmap.
//!
//! Nothing here trusts the file: every count, length and offset is checked against the
//! bytes that remain before anything is allocated or sliced, so a corrupt file gives an
//! error, never a panic or an out-of-bounds read.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::value::{tag, Value};
use super::GgufError;
use crate::quant::GgmlType;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Tensors in ggml have at most four dimensions.
pub const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused rather than recursed into.
const MAX_ARRAY_DEPTH: u32 = 8;
/// The most items reserved up front for a count read from the file.
const MAX_PREALLOC: u64 = 4096;

/// Capacity to reserve for `n` items read from the file. A count that passed
/// `check_count` fits the bytes left, but each parsed item takes several times the memory
/// of its smallest encoding (a `Value` is 32 bytes, a u8 element 1), so reserving it all up
/// front lets one corrupt length in a multi-gigabyte file request hundreds of gigabytes and
/// abort the process before the bad items are even reached. Past the cap, vectors grow as
/// items actually parse.
fn prealloc(n: u64) -> usize {
    n.min(MAX_PREALLOC) as usize
}

/// Where the file's bytes live: a read-only map of a file, or data compiled into the binary.
enum Storage {
    Mapped(Mmap),
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// `dims[0]` is the innermost (contiguous) dimension, as in ggml's `ne`.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data, computed from `dims` and the type's block size.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An opened GGUF file: metadata and tensor table parsed, tensor data borrowed from the map.
pub struct GgufFile {
    storage: Storage,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = File::open(path).map_err(|e| GgufError::Io(path.display().to_string(), e))?;
        // SAFETY: the map is read-only. A file truncated by another process while mapped
        // would fault; that is the accepted trade-off of every mmap-based model loader.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| GgufError::Io(path.display().to_string(), e))?;
        Self::parse(Storage::Mapped(map))
    }

    /// Parses bytes that live for the whole program, such as a model compiled into the binary.
    pub fn from_static(bytes: &'static [u8]) -> Result<GgufFile, GgufError> {
        Self::parse(Storage::Static(bytes))
    }

    /// Parses an owned buffer; meant for tests, fuzzing and files built in memory.
    pub fn from_vec(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Storage::Owned(bytes))
    }

    /// All bytes of the file.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(m) => m,
            Storage::Static(s) => s,
            Storage::Owned(v) => v,
        }
    }

    fn parse(storage: Storage) -> Result<GgufFile, GgufError> {
        let bytes: &[u8] = match &storage {
            Storage::Mapped(m) => m,
            Storage::Static(s) => s,
            Storage::Owned(v) => v,
        };
        let mut c = Cursor { bytes, pos: 0 };

        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic([
                magic[0], magic[1], magic[2], magic[3],
            ]));
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::Version(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;

        // Each metadata entry takes at least 8 (key length) + 4 (type) bytes, each tensor
        // entry at least 8 + 4 + 4 + 8; a count that could not fit is corrupt.
        c.check_count(n_kv, 12, "metadata count")?;
        let mut metadata = Vec::with_capacity(prealloc(n_kv));
        let mut meta_index = HashMap::with_capacity(prealloc(n_kv));
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let t = c.u32("metadata type")?;
            let value = c.value(t, 0, &key)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::Corrupt(format!(
                    "duplicate metadata key {key:?}"
                )));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let a = metadata[i].1.as_u64().unwrap_or(0);
                if a == 0 || !a.is_power_of_two() || a > 1 << 20 {
                    return Err(GgufError::Corrupt(format!(
                        "general.alignment is {}, not a power of two",
                        super::value::Abbrev(&metadata[i].1, 4)
                    )));
                }
                a
            }
        };

        c.check_count(n_tensors, 24, "tensor count")?;
        let mut tensors = Vec::with_capacity(prealloc(n_tensors));
        let mut tensor_index = HashMap::with_capacity(prealloc(n_tensors));
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dimension count")?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut n_elements: u64 = 1;
            for _ in 0..n_dims {
                let d = c.u64("tensor dimension")?;
                n_elements = n_elements.checked_mul(d).ok_or_else(|| {
                    GgufError::Corrupt(format!("tensor {name:?} has too many elements"))
                })?;
                dims.push(d);
            }
            let type_id = c.u32("tensor type")?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownType {
                tensor: name.clone(),
                id: type_id,
            })?;
            let offset = c.u64("tensor offset")?;
            if offset % alignment != 0 {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name:?} offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let row = dims.first().copied().unwrap_or(1);
            if row % ggml_type.block_len() as u64 != 0 {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name:?} has rows of {row} elements, not a multiple of {}'s block of {}",
                    ggml_type,
                    ggml_type.block_len()
                )));
            }
            let n_bytes = ggml_type
                .bytes_for(n_elements)
                .ok_or_else(|| GgufError::Corrupt(format!("tensor {name:?} size overflows")))?;
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Corrupt(format!(
                    "duplicate tensor name {name:?}"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_bytes,
            });
        }

        let data_offset = align_up(c.pos as u64, alignment);
        let file_len = bytes.len() as u64;
        // An empty tensor table may end the file right after the header, with no padding.
        if data_offset > file_len && !tensors.is_empty() {
            return Err(GgufError::Truncated("tensor data"));
        }
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(GgufError::Corrupt(format!(
                    "tensor {:?} ({} bytes at offset {}) runs past the end of the file ({} bytes)",
                    t.name, t.n_bytes, t.offset, file_len
                )))
                }
            }
        }

        Ok(GgufFile {
            storage,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            meta_index,
            tensor_index,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Option<&[Value]> {
        self.get(key).and_then(Value::as_array)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor, borrowed from the file (bounds were checked at parse time).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.bytes()[start..start + t.n_bytes as usize]
    }
}

pub(crate) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated(what));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuses a count of items that cannot fit in the bytes left, each at least `min_size`.
    fn check_count(&self, n: u64, min_size: u64, what: &'static str) -> Result<(), GgufError> {
        match n.checked_mul(min_size) {
            Some(need) if need <= self.remaining() as u64 => Ok(()),
            _ => Err(GgufError::Corrupt(format!(
                "{what} {n} is larger than the file allows"
            ))),
        }
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(GgufError::Truncated(what));
        }
        let raw = self.take(len as usize, what)?;
        // Some vocabularies hold pieces that are not valid UTF-8 on their own; keep the file
        // loadable and let the tokenizer deal with the replacement characters.
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    fn value(&mut self, t: u32, depth: u32, key: &str) -> Result<Value, GgufError> {
        Ok(match t {
            tag::U8 => Value::U8(self.array::<1>("metadata value")?[0]),
            tag::I8 => Value::I8(self.array::<1>("metadata value")?[0] as i8),
            tag::U16 => Value::U16(u16::from_le_bytes(self.array("metadata value")?)),
            tag::I16 => Value::I16(i16::from_le_bytes(self.array("metadata value")?)),
            tag::U32 => Value::U32(self.u32("metadata value")?),
            tag::I32 => Value::I32(i32::from_le_bytes(self.array("metadata value")?)),
            tag::F32 => Value::F32(f32::from_le_bytes(self.array("metadata value")?)),
            tag::BOOL => match self.array::<1>("metadata value")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::Corrupt(format!(
                        "metadata {key:?} has bool value {b}"
                    )))
                }
            },
            tag::STRING => Value::String(self.string("metadata string")?),
            tag::U64 => Value::U64(self.u64("metadata value")?),
            tag::I64 => Value::I64(i64::from_le_bytes(self.array("metadata value")?)),
            tag::F64 => Value::F64(f64::from_le_bytes(self.array("metadata value")?)),
            tag::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Corrupt(format!(
                        "metadata {key:?} nests arrays too deeply"
                    )));
                }
                let et = self.u32("array type")?;
                let n = self.u64("array length")?;
                let min_size = match et {
                    tag::U8 | tag::I8 | tag::BOOL => 1,
                    tag::U16 | tag::I16 => 2,
                    tag::U32 | tag::I32 | tag::F32 => 4,
                    tag::U64 | tag::I64 | tag::F64 | tag::STRING => 8,
                    tag::ARRAY => 12,
                    _ => {
                        return Err(GgufError::Corrupt(format!(
                            "metadata {key:?} has arrays of unknown type {et}"
                        )))
                    }
                };
                self.check_count(n, min_size, "array length")?;
                let mut items = Vec::with_capacity(prealloc(n));
                for _ in 0..n {
                    items.push(self.value(et, depth + 1, key)?);
                }
                Value::Array(et, items)
            }
            _ => {
                return Err(GgufError::Corrupt(format!(
                    "metadata {key:?} has unknown value type {t}"
                )))
            }
        })
    }
}
