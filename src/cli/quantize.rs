//! `wick quantize`: rewrites a GGUF model with its tensors converted to a quantization
//! mix, as llama-quantize does (same per-tensor rules, same `general.file_type`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::anyhow;
use clap::Args;

use super::load::open_model;
use super::synth::{parse_ftype, threads};
use super::write::{bytes_bar, mib, write_file};
use super::{FailWith, Failure};
use crate::gguf::{GgufWriter, TensorInfo, Value};
use crate::quant::encode::{encode_rows, EncodeError};
use crate::quant::mix::{layer_of, tensor_type, ModelShape};
use crate::quant::{self, GgmlType};

#[derive(Args)]
pub struct QuantizeArgs {
    /// The model to convert (F32, F16, BF16 or any type wick can decode).
    input: PathBuf,
    /// The GGUF file to write.
    output: PathBuf,
    /// Target, as llama-quantize names it: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1,
    /// q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k.
    #[arg(long = "type")]
    ty: String,
    /// Threads (default: all).
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

pub fn run(a: QuantizeArgs) -> Result<(), Failure> {
    let ftype = parse_ftype(&a.ty)?;
    let threads = threads(a.threads);
    let (f, _) = open_model(Some(&a.input))?;

    let arch = f.get_str("general.architecture").unwrap_or("llama");
    let key = |k: &str| f.get_u64(&format!("{arch}.{k}"));
    let n_layers = key("block_count").map_or_else(
        || {
            f.tensors
                .iter()
                .filter_map(|t| layer_of(&t.name))
                .max()
                .map_or(0, |l| l + 1)
        },
        |n| n as usize,
    );
    let n_heads = key("attention.head_count").unwrap_or(1).max(1);
    let n_kv = key("attention.head_count_kv").unwrap_or(n_heads).max(1);
    let shape = ModelShape {
        n_layers,
        n_gqa: (n_heads / n_kv).max(1) as usize,
        has_output: f.tensor("output.weight").is_some(),
    };

    // Every decision before the first byte: a type wick cannot decode or encode fails here,
    // not after minutes of work.
    let mut targets: Vec<(&TensorInfo, GgmlType)> = Vec::with_capacity(f.tensors.len());
    for t in &f.tensors {
        let ty = tensor_type(ftype, &t.name, &t.dims, t.ggml_type, &shape);
        if ty != t.ggml_type {
            for (which, needed) in [("decode", t.ggml_type), ("encode", ty)] {
                if quant::kernels(needed).is_none() {
                    return Err(anyhow!(
                        "{} would go from {} to {}, and wick cannot {which} {needed} yet",
                        t.name,
                        t.ggml_type,
                        ty
                    ))
                    .usage();
                }
            }
        }
        targets.push((t, ty));
    }

    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        w.set(k, v.clone());
    }
    w.set("general.quantization_version", Value::U32(2));
    w.set("general.file_type", Value::U32(ftype.llama_ftype()));
    let (mut total, mut converted) = (0u64, 0u64);
    for &(t, ty) in &targets {
        if ty == t.ggml_type {
            // Same type: the bytes are copied untouched, so re-quantizing is lossless.
            w.add_tensor(&t.name, &t.dims, ty, f.tensor_data(t))
        } else {
            w.declare_tensor(&t.name, &t.dims, ty)
        }
        .file()?;
        let n = ty.bytes_for(t.n_elements()).unwrap_or_default();
        total += n;
        if ty != t.ggml_type {
            converted += n;
        }
    }

    let bar = bytes_bar(converted);
    let start = Instant::now();
    write_file(&a.output, |out| {
        w.write_streaming(out, |i, dst| {
            let (t, ty) = targets[i];
            let cols = t.dims.first().copied().unwrap_or(1) as usize;
            let rows = (t.n_elements() / cols.max(1) as u64) as usize;
            let src = f.tensor_data(t);
            let src_row = src.len() / rows.max(1);
            let fill = |r: usize, x: &mut [f32]| {
                quant::dequantize_row(t.ggml_type, &src[r * src_row..(r + 1) * src_row], x)
                    .map_err(EncodeError::from)
            };
            encode_rows(ty, cols, rows, threads, fill, dst, |n| bar.inc(n)).map_err(|e| match e {
                EncodeError::Io(e) => e,
                e => std::io::Error::other(format!("{}: {e}", t.name)),
            })
        })
        .map_err(|e| anyhow!("cannot write {}: {e}", a.output.display()))
        .file()
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {}: {}, {} tensors, {} in {:.1} s",
        a.output.display(),
        ftype.name().to_uppercase(),
        targets.len(),
        mib(total),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
