//! `wick info`: what a GGUF file holds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use clap::Args;

use super::load::open_model;
use super::out::Stdout;
use super::{FailWith, Failure};
use crate::gguf::Abbrev;
use crate::kv::{KvSettings, KvType};
use crate::model::Config;

#[derive(Args)]
pub struct InfoArgs {
    /// The GGUF file (default: the embedded stories260K).
    model: Option<PathBuf>,
    /// Print arrays in full instead of their first items.
    #[arg(long)]
    full: bool,
    /// The context to size the KV cache for (default: as `wick gen`, the model's, at most
    /// 4096).
    #[arg(short = 'c', long = "ctx")]
    ctx: Option<usize>,
    /// The KV cache type to size it for: f32, f16, q8_0 or fp8.
    #[arg(long, value_name = "TYPE", default_value = "f16")]
    kv_type: String,
}

pub fn run(a: InfoArgs) -> Result<(), Failure> {
    let (f, name) = open_model(a.model.as_deref())?;
    let mut s = String::new();
    let arch = f.get_str("general.architecture").unwrap_or("(unknown)");
    let n_params: u64 = f.tensors.iter().map(|t| t.n_elements()).sum();
    let n_bytes: u64 = f.tensors.iter().map(|t| t.n_bytes).sum();
    let _ = writeln!(s, "file:         {name}");
    let _ = writeln!(s, "gguf version: {}", f.version);
    let _ = writeln!(s, "architecture: {arch}");
    let _ = writeln!(s, "parameters:   {} ({})", n_params, human_count(n_params));
    let _ = writeln!(
        s,
        "tensor data:  {} bytes ({:.2} bits per weight)",
        n_bytes,
        if n_params > 0 {
            n_bytes as f64 * 8.0 / n_params as f64
        } else {
            0.0
        }
    );
    match Config::from_gguf(&f) {
        Ok(c) => {
            let _ = writeln!(
                s,
                "shape:        {} layers, dim {}, ffn {}, {} heads / {} kv heads, head dim {}, vocab {}, context {}{}",
                c.n_layers, c.dim, c.ffn_dim, c.n_heads, c.n_kv_heads, c.head_dim,
                c.vocab_size, c.train_ctx,
                if c.tied_embeddings { ", tied embeddings" } else { "" }
            );
            if let Some(w) = c.sliding_window {
                let n = c.swa_layers.iter().filter(|&&b| b).count();
                let _ = writeln!(
                    s,
                    "window:       {w} tokens in {n} of {} layers",
                    c.n_layers
                );
            }
            let settings = KvSettings {
                ctx: a.ctx.unwrap_or(c.train_ctx.min(4096)).max(1),
                ty: KvType::parse(&a.kv_type).usage()?,
                ..KvSettings::new(1)
            };
            let bytes = c.kv_bytes(&settings);
            let _ = writeln!(
                s,
                "kv cache:     {bytes} bytes ({:.2} MiB) for ctx {}, {}",
                bytes as f64 / (1 << 20) as f64,
                settings.ctx,
                settings.ty.name()
            );
        }
        Err(e) => {
            let _ = writeln!(s, "shape:        cannot run: {e:#}");
        }
    }

    let mut by_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for t in &f.tensors {
        let e = by_type.entry(t.ggml_type.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    let _ = writeln!(s, "\ntensor types:");
    for (ty, (count, bytes)) in &by_type {
        let _ = writeln!(s, "  {ty:<8} {count:>5} tensors  {bytes:>14} bytes");
    }

    let _ = writeln!(s, "\nmetadata ({} keys):", f.metadata.len());
    let max_items = if a.full { usize::MAX } else { 8 };
    for (k, v) in &f.metadata {
        let _ = writeln!(s, "  {k} = {}", Abbrev(v, max_items));
    }

    let _ = writeln!(s, "\ntensors ({}):", f.tensors.len());
    for t in &f.tensors {
        let _ = writeln!(s, "  {:<32} {:<6} {:?}", t.name, t.ggml_type.name(), t.dims);
    }
    Stdout::new().write(&s).file()
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}
