//! Encoding a whole tensor, row by row, on several threads, straight into a writer: the
//! engine of `wick synth` and `wick quantize`.

use std::io::{self, Write};

use super::{quantize_row, GgmlType, QuantError};

/// Output bytes encoded between two writes: big enough to keep every thread busy, small
/// enough that a multi-gigabyte embedding table never sits in memory whole.
#[cfg(not(test))]
const CHUNK_BYTES: usize = 32 << 20;
/// Small in tests, so that every tensor there spans several chunks.
#[cfg(test)]
const CHUNK_BYTES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{0}")]
    Source(String),
}

/// Encodes `rows` rows of `cols` values as type `ty` and writes them to `out` in order.
/// `fill(r, x)` puts the f32 values of row `r` into `x`; it is called from `threads`
/// threads at once, each row exactly once. `progress` hears the bytes written so far.
pub fn encode_rows<F>(
    ty: GgmlType,
    cols: usize,
    rows: usize,
    threads: usize,
    fill: F,
    out: &mut dyn Write,
    mut progress: impl FnMut(u64),
) -> Result<(), EncodeError>
where
    F: Fn(usize, &mut [f32]) -> Result<(), EncodeError> + Sync,
{
    let row_bytes = ty
        .bytes_for(cols as u64)
        .ok_or(QuantError::Length { t: ty, n: cols })? as usize;
    if rows == 0 || row_bytes == 0 {
        return Ok(());
    }
    let per_chunk = (CHUNK_BYTES / row_bytes).clamp(1, rows);
    let n_chunks = rows.div_ceil(per_chunk);
    // Two buffers: while the workers fill one chunk, this thread writes the one before, so
    // the disk and the cores are busy at the same time.
    let mut bufs = [vec![0u8; per_chunk * row_bytes], Vec::new()];
    if n_chunks > 1 {
        bufs[1] = vec![0u8; per_chunk * row_bytes];
    }
    // Bytes of the previous chunk, waiting in the other buffer.
    let mut pending = 0;
    for k in 0..n_chunks {
        let start = k * per_chunk;
        let n = per_chunk.min(rows - start);
        let [a, b] = &mut bufs;
        let (cur, prev) = if k % 2 == 0 { (a, &*b) } else { (b, &*a) };
        let chunk = &mut cur[..n * row_bytes];
        let prev = &prev[..pending];
        let per_thread = n.div_ceil(threads.clamp(1, n));
        let fill = &fill;
        let out = &mut *out;
        std::thread::scope(|s| -> Result<(), EncodeError> {
            let handles: Vec<_> = chunk
                .chunks_mut(per_thread * row_bytes)
                .enumerate()
                .map(|(ti, part)| {
                    s.spawn(move || -> Result<(), EncodeError> {
                        let mut x = vec![0f32; cols];
                        for (j, dst) in part.chunks_exact_mut(row_bytes).enumerate() {
                            fill(start + ti * per_thread + j, &mut x)?;
                            quantize_row(ty, &x, dst)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            let written = out.write_all(prev);
            handles.into_iter().try_for_each(|h| match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            })?;
            Ok(written?)
        })?;
        progress(pending as u64);
        pending = n * row_bytes;
    }
    let last = &bufs[(n_chunks - 1) % 2][..pending];
    out.write_all(last)?;
    progress(pending as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_whatever_the_thread_count() {
        let fill = |r: usize, x: &mut [f32]| {
            for (i, v) in x.iter_mut().enumerate() {
                *v = ((r * 31 + i * 7) % 17) as f32 - 8.0;
            }
            Ok(())
        };
        let run = |threads| {
            let mut out = Vec::new();
            let mut seen = 0;
            encode_rows(GgmlType::Q8_0, 64, 37, threads, fill, &mut out, |n| {
                seen += n
            })
            .unwrap();
            assert_eq!(seen, out.len() as u64);
            out
        };
        let one = run(1);
        assert_eq!(one.len(), 37 * 2 * 34);
        assert_eq!(run(3), one);
        assert_eq!(run(64), one);
    }

    #[test]
    fn errors_from_fill_stop_the_encoding() {
        let fill = |r: usize, _: &mut [f32]| {
            if r == 5 {
                Err(EncodeError::Source("row 5 is bad".into()))
            } else {
                Ok(())
            }
        };
        let e = encode_rows(GgmlType::F32, 4, 9, 2, fill, &mut Vec::new(), |_| {});
        assert!(matches!(e, Err(EncodeError::Source(m)) if m == "row 5 is bad"));
    }
}
