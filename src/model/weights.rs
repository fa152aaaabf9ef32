//! Views of a model's weight tensors, borrowed from the GGUF map.

use anyhow::{bail, Context, Result};

use crate::gguf::GgufFile;
use crate::quant::{self, GgmlType};

/// A 1-D or 2-D weight: `rows` rows of `cols` elements, in GGUF blocks, never copied.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> Tensor<'a> {
    /// Loads tensor `name` and checks that its shape is `[cols, rows]` (ggml order).
    pub fn load(f: &'a GgufFile, name: &str, cols: usize, rows: usize) -> Result<Tensor<'a>> {
        let info = f
            .tensor(name)
            .with_context(|| format!("tensor {name} is missing"))?;
        let want: &[u64] = &[cols as u64, rows as u64];
        let shape_ok = if rows == 1 {
            info.dims == want[..1] || info.dims == want
        } else {
            info.dims == want
        };
        if !shape_ok {
            bail!(
                "tensor {name} has shape {:?}, expected {:?}",
                info.dims,
                if rows == 1 { &want[..1] } else { want }
            );
        }
        if !quant::is_supported(info.ggml_type) {
            bail!(
                "tensor {name} has type {}, which wick does not support yet",
                info.ggml_type
            );
        }
        Ok(Tensor {
            ty: info.ggml_type,
            rows,
            cols,
            data: f.tensor_data(info),
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Decodes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        quant::dequantize_row(self.ty, self.row(r), out).expect("type and shape checked at load");
    }
}
