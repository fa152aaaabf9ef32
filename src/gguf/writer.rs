//! Writes GGUF version 3 files.

use std::io::{self, Write};

use super::reader::{align_up, DEFAULT_ALIGNMENT, MAGIC};
use super::value::Value;
use crate::quant::GgmlType;

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    /// `None` for a tensor whose bytes come from the producer given to `write_streaming`.
    data: Option<std::borrow::Cow<'a, [u8]>>,
    n_bytes: u64,
}

/// Collects metadata and tensors, then writes them out in one pass.
///
/// Tensor data may be borrowed (for example straight from another file's map), so
/// rewriting a file does not copy its weights into memory first. Tensors declared with
/// `declare_tensor` have no data until `write_streaming` asks for it, one tensor at a time
/// in file order, so a file larger than memory can be generated straight to disk.
pub struct GgufWriter<'a> {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets a metadata value, replacing one with the same key.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Adds a tensor. `data` must hold exactly the bytes its type and shape need.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ggml_type: GgmlType,
        data: impl Into<std::borrow::Cow<'a, [u8]>>,
    ) -> io::Result<()> {
        let data = data.into();
        let n_bytes = Self::size_of(name, dims, ggml_type)?;
        if n_bytes != data.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tensor {name:?}: {} bytes given, {} needs {}",
                    data.len(),
                    ggml_type,
                    n_bytes
                ),
            ));
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ggml_type,
            data: Some(data),
            n_bytes,
        });
        Ok(())
    }

    /// Adds a tensor whose bytes `write_streaming` will ask for when it reaches it.
    pub fn declare_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ggml_type: GgmlType,
    ) -> io::Result<()> {
        let n_bytes = Self::size_of(name, dims, ggml_type)?;
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ggml_type,
            data: None,
            n_bytes,
        });
        Ok(())
    }

    fn size_of(name: &str, dims: &[u64], ggml_type: GgmlType) -> io::Result<u64> {
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| ggml_type.bytes_for(n));
        n.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tensor {name:?}: shape {dims:?} does not fill whole {ggml_type} blocks"),
            )
        })
    }

    /// Writes the file; every tensor must have been given its data.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        self.write_streaming(w, |i, _| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tensor {:?} was declared without data",
                    self.tensors[i].name
                ),
            ))
        })
    }

    /// Writes the file, calling `produce(i, out)` for each declared tensor `i` (its index
    /// in the order tensors were added) to write exactly its bytes into `out`.
    pub fn write_streaming<W: Write>(
        &self,
        w: &mut W,
        mut produce: impl FnMut(usize, &mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let align = self.alignment();
        if !align.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("general.alignment {align} is not a power of two"),
            ));
        }
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&v.type_tag().to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = align_up(offset + t.n_bytes, align);
        }
        if !self.tensors.is_empty() {
            head.resize(align_up(head.len() as u64, align) as usize, 0);
        }
        w.write_all(&head)?;
        let mut written = 0u64;
        for (i, (t, &off)) in self.tensors.iter().zip(&offsets).enumerate() {
            w.write_all(&vec![0u8; (off - written) as usize])?;
            match &t.data {
                Some(d) => w.write_all(d)?,
                None => {
                    let mut counted = Counted {
                        inner: &mut *w,
                        n: 0,
                    };
                    produce(i, &mut counted)?;
                    if counted.n != t.n_bytes {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "tensor {:?}: {} bytes produced, {} needed",
                                t.name, counted.n, t.n_bytes
                            ),
                        ));
                    }
                }
            }
            written = off + t.n_bytes;
        }
        // Pad the last tensor too, as ggml does, so that the file length is aligned.
        w.write_all(&vec![0u8; (offset - written) as usize])?;
        Ok(())
    }

    /// The file as bytes. Panics only if `general.alignment` was set to a value that is
    /// not a power of two, or a tensor was declared without data.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v)
            .expect("writing to a Vec fails only on a bad alignment or a missing tensor");
        v
    }
}

/// Counts what a producer writes, so that a short or long tensor is caught before the
/// offsets of every later tensor silently shift.
struct Counted<'w, W: Write> {
    inner: &'w mut W,
    n: u64,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(et, items) => {
            out.extend_from_slice(&et.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn streaming_matches_in_memory() {
        let a = f32_bytes(&[1.0, 2.0, 3.0]);
        let b = f32_bytes(&[4.0; 10]);
        let mut whole = GgufWriter::new();
        whole.set("k", Value::U32(7));
        whole.add_tensor("a", &[3], GgmlType::F32, &a[..]).unwrap();
        whole
            .add_tensor("b", &[5, 2], GgmlType::F32, &b[..])
            .unwrap();

        let mut streamed = GgufWriter::new();
        streamed.set("k", Value::U32(7));
        streamed
            .add_tensor("a", &[3], GgmlType::F32, &a[..])
            .unwrap();
        streamed
            .declare_tensor("b", &[5, 2], GgmlType::F32)
            .unwrap();
        let mut out = Vec::new();
        streamed
            .write_streaming(&mut out, |i, w| {
                assert_eq!(i, 1);
                // In pieces, as a producer of a big tensor would.
                w.write_all(&b[..12])?;
                w.write_all(&b[12..])
            })
            .unwrap();
        assert_eq!(out, whole.to_vec());
    }

    #[test]
    fn wrong_length_from_a_producer_is_an_error() {
        let mut w = GgufWriter::new();
        w.declare_tensor("b", &[4], GgmlType::F32).unwrap();
        let e = w
            .write_streaming(&mut Vec::new(), |_, w| w.write_all(&[0; 12]))
            .unwrap_err();
        assert!(
            e.to_string().contains("12 bytes produced, 16 needed"),
            "{e}"
        );
        assert!(w.write_to(&mut Vec::new()).is_err());
        assert!(w.declare_tensor("c", &[33], GgmlType::Q8_0).is_err());
    }
}
