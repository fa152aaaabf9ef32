//! The CUDA backend: the ops of a forward pass as hand-written kernels (kernels/cuda),
//! called through bindgen's bindings of their C header. Weights are uploaded once, in their
//! GGUF blocks; activations stay on the device between ops.

mod profile;
mod sample;

mod ffi {
    #![allow(
        non_upper_case_globals,
        non_camel_case_types,
        non_snake_case,
        dead_code
    )]
    include!(concat!(env!("OUT_DIR"), "/cuda_bindings.rs"));
}

use std::cell::{Cell, RefCell};
use std::ffi::CStr;

use anyhow::{bail, ensure, Context, Result};

use super::{AttnShape, Backend, DeviceSpec, DraftCut, Verdict};
use crate::kv::{KvLayout, KvType};
use crate::model::{Tensor, MAX_BATCH};
use crate::quant::{self, GgmlType, Precision};
use crate::sample::{Probs, SamplerParams};

/// Turns a CUDA status into an error that names the call.
fn check(code: i32, what: &str) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: cudaGetErrorString returns a static NUL-terminated string for any code.
    let msg = unsafe { CStr::from_ptr(ffi::wick_cuda_error_string(code)) };
    bail!(
        "CUDA error in {what}: {} (code {code})",
        msg.to_string_lossy()
    )
}

/// An owned device allocation.
pub struct DeviceMem {
    ptr: *mut std::ffi::c_void,
    bytes: usize,
}

impl DeviceMem {
    fn new(bytes: usize) -> Result<DeviceMem> {
        let mut ptr = std::ptr::null_mut();
        // SAFETY: plain allocation; the pointer is only used as device memory.
        let code = unsafe { ffi::wick_cuda_malloc(&mut ptr, bytes.max(1)) };
        if code != 0 {
            check(code, "cudaMalloc").with_context(|| {
                format!(
                    "GPU out of memory? allocating {:.1} MiB",
                    bytes as f64 / 1048576.0
                )
            })?;
        }
        Ok(DeviceMem { ptr, bytes })
    }

    fn zeroed(bytes: usize) -> Result<DeviceMem> {
        let m = Self::new(bytes)?;
        // SAFETY: the allocation is `bytes` long.
        check(
            unsafe { ffi::wick_cuda_memset(m.ptr, 0, bytes) },
            "cudaMemset",
        )?;
        Ok(m)
    }

    fn upload(data: &[u8]) -> Result<DeviceMem> {
        let m = Self::new(data.len())?;
        // SAFETY: both sides are `data.len()` bytes.
        check(
            unsafe { ffi::wick_cuda_h2d(m.ptr, data.as_ptr().cast(), data.len()) },
            "copy to the GPU",
        )?;
        Ok(m)
    }

    pub fn f32(&self) -> *mut f32 {
        self.ptr.cast()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        // SAFETY: allocated by wick_cuda_malloc and freed once.
        unsafe { ffi::wick_cuda_free(self.ptr) };
    }
}

/// A weight on the device, in its GGUF blocks (norm vectors as f32).
pub struct DeviceWeight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    mem: DeviceMem,
}

/// The KV cache of every layer, in f16, Q8_0 or fp8 rows, each layer as its [`KvLayout`] says:
/// `[layer][slot][row]` for keys and for values.
pub struct DeviceKv {
    k: DeviceMem,
    v: DeviceMem,
    layouts: Vec<KvLayout>,
    /// Byte offset of each layer's slots.
    layer_off: Vec<usize>,
    row_bytes: usize,
    /// Each layer's `{offset mod ring, floor}`, which the kernels read on the device so
    /// that a recorded decode step follows context shifts.
    state: DeviceMem,
}

impl DeviceKv {
    fn layer(&self, l: usize) -> (*mut std::ffi::c_void, *mut std::ffi::c_void) {
        let off = self.layer_off[l];
        // SAFETY: pointer arithmetic inside the allocations, l < n_layers.
        unsafe {
            (
                self.k.ptr.cast::<u8>().add(off).cast(),
                self.v.ptr.cast::<u8>().add(off).cast(),
            )
        }
    }

    fn state(&self, l: usize) -> *const i32 {
        // SAFETY: two i32 per layer.
        unsafe { self.state.ptr.cast::<i32>().add(2 * l) }
    }

    /// Uploads every layer's offset and floor.
    fn upload_state(&self) -> Result<()> {
        let host: Vec<i32> = self
            .layouts
            .iter()
            .flat_map(|l| {
                let ring = l.capacity - l.keep;
                [(l.offset % ring) as i32, l.floor as i32]
            })
            .collect();
        // SAFETY: the buffer holds two i32 per layer.
        check(
            unsafe { ffi::wick_cuda_h2d(self.state.ptr, host.as_ptr().cast(), host.len() * 4) },
            "copy the KV layout to the GPU",
        )
    }

    /// Both caches, whole, on the host.
    fn download(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut k = vec![0u8; self.k.bytes];
        let mut v = vec![0u8; self.v.bytes];
        // SAFETY: the host buffers have the allocations' sizes.
        check(
            unsafe { ffi::wick_cuda_d2h(k.as_mut_ptr().cast(), self.k.ptr, k.len()) },
            "copy the KV cache from the GPU",
        )?;
        // SAFETY: as above.
        check(
            unsafe { ffi::wick_cuda_d2h(v.as_mut_ptr().cast(), self.v.ptr, v.len()) },
            "copy the KV cache from the GPU",
        )?;
        Ok((k, v))
    }

    /// Where the row of position `p` of layer `l` starts in either cache.
    fn row_at(&self, l: usize, p: usize) -> usize {
        self.layer_off[l] + self.layouts[l].slot(p) * self.row_bytes
    }
}

/// A recorded decode step: an instantiated CUDA graph.
pub struct Graph(*mut std::ffi::c_void);

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: instantiated by wick_graph_end and destroyed once.
        unsafe { ffi::wick_graph_destroy(self.0) };
    }
}

pub struct Cuda {
    pub name: String,
    pub total_mem: usize,
    /// The current forward pass's first position, then its tokens, on the device.
    params: DeviceMem,
    host_params: RefCell<Vec<i32>>,
    /// `Fast` rounds activations to int8 for products of any batch (matrix-vector kernel up
    /// to `Q8_MAX_BATCH` rows, tensor cores above), as the CPU's fast path does; `Exact`
    /// keeps them f32 everywhere.
    precision: Precision,
    /// Activations rounded to int8 (values, then one scale per 32), sized for the widest
    /// weight; allocated while weights load, before any graph records pointers to it.
    q8: RefCell<Option<Q8Scratch>>,
    /// Which buffer's values (pointer, count) the int8 scratch holds now. RMSNorm and SwiGLU
    /// write it as they go, so the product that follows them skips its own rounding; any
    /// op that writes that buffer forgets it.
    q8_holds: Cell<Option<(usize, usize)>>,
    /// As `q8_holds`, for the SwiGLU slot of the int8 scratch (`Q8Scratch::hq`).
    swiglu_holds: Cell<Option<(usize, usize)>>,
    /// Per-op timings, with WICK_PROFILE set.
    profile: Option<RefCell<profile::Profiler>>,
    /// Ops left out of every forward pass (WICK_SKIP, a comma list of `norm`, `qkv`, `rope`,
    /// `attn`, `o`, `gateup`, `swiglu`, `down`, `head`): the output is then garbage, but
    /// the speed gained is what that op costs inside a recorded decode step, where
    /// WICK_PROFILE's per-op times (op by op, no graph) overstate it.
    skip: Vec<String>,
    /// `Backend::set_row_exact`: every batch through the kernels a single row takes.
    row_exact: Cell<bool>,
    /// The attention kernel chosen for batches outside `row_exact` (WICK_ATT).
    att_variant: i32,
    /// RoPE and the KV store as one launch (f16 and q8_0 caches); WICK_FUSE=0 runs them
    /// as two, to compare.
    fuse_rope_store: bool,
    /// Single rows' RoPE and cache store inside the attention kernel (WICK_FUSE_ATT=0:
    /// as a launch of their own, to compare).
    fuse_rope_attention: bool,
    /// Batches above 64 rows through the f16 tensor-core kernel (wick_gemm_f16) where it
    /// applies; WICK_GEMM_F16=0 keeps them on the int8 kernels, to compare.
    gemm_f16: bool,
    /// Device-side state of speculation (`DeviceSpec`).
    spec: SpecScratch,
    /// Partial results of single-row attention's position slices (attention_split.cuh);
    /// allocated once, before any graph records its address.
    att_scratch: DeviceMem,
    /// RMSNorms folded into the products before them (`matmul_add_norm`) where the
    /// matrix-vector kernel can; WICK_FOLD=0 runs them as launches of their own, to compare
    /// (`o` and `down` fold only into products of square or of wide weights).
    fold_norms: String,
    /// Gate and up with SwiGLU in their epilogue (`matmul_swiglu`) where the matrix-vector
    /// kernel can; WICK_SWIGLU=0 runs SwiGLU as a launch of its own, to compare.
    swiglu_epilogue: bool,
    /// Whether the last `matmul_swiglu` ran SwiGLU in the products' epilogue.
    swiglu_fused: Cell<bool>,
    /// What the last folded norm left, until its output is written or its input changes.
    folded: Cell<Option<Folded>>,
}

/// A norm folded into the product before it: the int8 scratch's norm slot holds `out`'s
/// rows rounded to int8 with scales that lack each row's 1 / rms, and the sums of squares
/// of `x`'s 32-value blocks that give it (wick_mv_fold). `out` itself is written only if an
/// op other than the matrix-vector kernel reads it (`Cuda::unfold`).
#[derive(Clone, Copy, Debug)]
struct Folded {
    out: usize,
    x: usize,
    /// Whether `x` still holds the values the norm is of.
    x_live: bool,
    norm: *const f32,
    eps: f32,
    rows: usize,
    cols: usize,
}

/// The proposals of a draft picked on the device, their probabilities, the target's picks
/// while judging, and the verdict copied to the host.
struct SpecScratch {
    proposals: DeviceMem,
    top: DeviceMem,
    target_ids: DeviceMem,
    target_top: DeviceMem,
    out: DeviceMem,
    host_out: RefCell<Vec<i32>>,
    /// Sampled speculation's state.
    sample: sample::SampleScratch,
}

impl SpecScratch {
    fn new() -> Result<SpecScratch> {
        Ok(SpecScratch {
            proposals: DeviceMem::zeroed(MAX_BATCH * 4)?,
            top: DeviceMem::zeroed(MAX_BATCH * 4)?,
            target_ids: DeviceMem::zeroed((MAX_BATCH + 1) * 4)?,
            target_top: DeviceMem::zeroed((MAX_BATCH + 1) * 4)?,
            out: DeviceMem::zeroed((MAX_BATCH + 3) * 4)?,
            host_out: RefCell::new(vec![0; MAX_BATCH + 3]),
            sample: sample::SampleScratch::new()?,
        })
    }
}

/// Rows of a product up to which the int8 matrix-vector kernel is used; larger batches (up
/// to GPU_MAX_BATCH) go to the int8 tensor-core kernels.
const Q8_MAX_BATCH: usize = 16;

/// Tokens per forward pass on the GPU. A 64-token pass re-reads every weight and leaves
/// the tensor-core kernel too few blocks to fill the SMs (224 for a 14336-row weight);
/// 512 tokens run pp512 as one pass, with 8 token tiles per weight tile in flight.
const GPU_MAX_BATCH: usize = 512;

/// Partial sums of the tensor-core kernels when they split a product along the weight rows
/// (to give small matrices enough blocks), in floats: 16 MiB, room for 8 splits of a
/// 64-token product of 8192 rows, or 4 of a 512-token product of 2048 (the kernels split
/// less when the room is short).
const GEMM_WS_FLOATS: usize = 1 << 22;
/// Floats of single-row attention's scratch: 16 MiB, about 15 rows of llama3-8b's 32 heads
/// of 128 in 64 slices (more rows go in several launches).
const ATT_SCRATCH_FLOATS: usize = 1 << 22;

struct Q8Scratch {
    cols: usize,
    xq: DeviceMem,
    xd: DeviceMem,
    /// A folded norm's int8 output, its scales and sums of squares (`Folded`): apart from
    /// xq and xd, which the product that writes them is reading.
    nq: DeviceMem,
    nd: DeviceMem,
    nss: DeviceMem,
    /// SwiGLU's int8 output when it runs in the gate/up epilogue (`swiglu_holds`): apart
    /// from xq and xd, which those products may be reading.
    hq: DeviceMem,
    hd: DeviceMem,
    /// The int8 activations as f16 values, for wick_gemm_f16.
    xh: DeviceMem,
    ws: DeviceMem,
}

impl Cuda {
    /// Opens GPU `device`. Fails with one clear line when there is no GPU or driver.
    pub fn new(device: usize) -> Result<Cuda> {
        let mut count = 0;
        // SAFETY: writes one int.
        let code = unsafe { ffi::wick_cuda_device_count(&mut count) };
        // cudart reports a missing driver as "insufficient driver" (35) and a machine with
        // no GPU as "no device" (100); say what the user can act on.
        match code {
            0 => {}
            35 => bail!("--gpu needs an NVIDIA GPU driver, and none is installed (or it is older than CUDA 13)"),
            100 => bail!("--gpu needs an NVIDIA GPU, and none was found"),
            _ => check(code, "cudaGetDeviceCount").context("no usable NVIDIA GPU or driver")?,
        }
        ensure!(count > 0, "no NVIDIA GPU found");
        ensure!(
            (device as i32) < count,
            "GPU {device} does not exist ({count} found)"
        );
        let mut name = [0 as std::ffi::c_char; 256];
        let (mut mem, mut major, mut minor) = (0usize, 0, 0);
        // SAFETY: name has 256 bytes; the others are plain out-parameters.
        check(
            unsafe {
                ffi::wick_cuda_init(
                    device as i32,
                    name.as_mut_ptr(),
                    256,
                    &mut mem,
                    &mut major,
                    &mut minor,
                )
            },
            "cudaSetDevice",
        )?;
        ensure!(
            major >= 8,
            "GPU compute capability {major}.{minor} is too old (wick needs 8.0+)"
        );
        // SAFETY: NUL-terminated by wick_cuda_init.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(Cuda {
            name,
            total_mem: mem,
            params: DeviceMem::new((GPU_MAX_BATCH + 1) * 4)?,
            host_params: RefCell::new(Vec::with_capacity(GPU_MAX_BATCH + 1)),
            precision: Precision::Fast,
            q8: RefCell::new(None),
            q8_holds: Cell::new(None),
            swiglu_holds: Cell::new(None),
            profile: std::env::var_os("WICK_PROFILE").map(|_| RefCell::default()),
            skip: std::env::var("WICK_SKIP")
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            row_exact: Cell::new(false),
            // WICK_ATT=1 sends batches to the single-row attention kernel, to compare.
            att_variant: std::env::var("WICK_ATT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            fuse_rope_store: std::env::var("WICK_FUSE").map_or(true, |v| v != "0"),
            fuse_rope_attention: std::env::var("WICK_FUSE_ATT").map_or(true, |v| v != "0"),
            gemm_f16: std::env::var("WICK_GEMM_F16").map_or(true, |v| v != "0"),
            spec: SpecScratch::new()?,
            att_scratch: DeviceMem::new(ATT_SCRATCH_FLOATS * 4)?,
            fold_norms: std::env::var("WICK_FOLD").unwrap_or_else(|_| "1".into()),
            swiglu_epilogue: std::env::var("WICK_SWIGLU").map_or(true, |v| v != "0"),
            swiglu_fused: Cell::new(false),
            folded: Cell::new(None),
        })
        .inspect(|c| {
            // WICK_MV picks the int8 matrix-vector kernel: "old" (or 1) the direct one,
            // "new" (or 0) the streaming one, 2..5 its fixed shapes (set_matvec_variant).
            if let Some(v) = std::env::var("WICK_MV")
                .ok()
                .and_then(|v| match v.as_str() {
                    "old" => Some(1),
                    "new" => Some(0),
                    _ => v.parse().ok(),
                })
            {
                set_matvec_variant(v);
            }
            set_attention_variant(c.att_variant);
            // WICK_ATT_DECODE=old sends single rows to the former one-block-per-head
            // kernel, `split` to the split one whatever the head count; a number sets the split
            // kernel's slices per KV head (tuning).
            match std::env::var("WICK_ATT_DECODE").as_deref() {
                Ok("old") => set_attention_decode(true, 0),
                Ok("split") => set_attention_decode(false, -1),
                Ok(v) => set_attention_decode(false, v.parse().unwrap_or(0)),
                Err(_) => {}
            }
            // WICK_GEMM_F16=8 runs the f16 kernel with 8 warps per block (4 by default).
            if std::env::var("WICK_GEMM_F16").is_ok_and(|v| v == "8") {
                // SAFETY: sets a plain integer read at launch.
                unsafe { ffi::wick_gemm_f16_warps(8) };
            }
            // WICK_GEMM picks the tensor-core kernels (set_gemm_variant), to compare.
            if let Some(v) = std::env::var("WICK_GEMM").ok().and_then(|v| v.parse().ok()) {
                set_gemm_variant(v);
            }
        })
    }

    /// Chooses how activations enter matrix products (the default is `Fast`).
    pub fn with_precision(mut self, p: Precision) -> Cuda {
        self.precision = p;
        self
    }

    /// Makes the int8 activation scratch wide enough for GPU_MAX_BATCH rows of `cols` values
    /// (the partial-sum workspace beside it has a fixed size).
    fn reserve_q8(&self, cols: usize) -> Result<()> {
        let mut q8 = self.q8.borrow_mut();
        if q8.as_ref().is_some_and(|s| s.cols >= cols) {
            return Ok(());
        }
        let cols = q8.as_ref().map_or(cols, |s| s.cols.max(cols));
        let n = GPU_MAX_BATCH * cols.next_multiple_of(32);
        // A new scratch holds nobody's values yet.
        self.q8_holds.set(None);
        self.swiglu_holds.set(None);
        self.folded.set(None);
        *q8 = Some(Q8Scratch {
            cols,
            xq: DeviceMem::new(n)?,
            xd: DeviceMem::new(n / 32 * 4)?,
            nq: DeviceMem::new(n)?,
            nd: DeviceMem::new(n / 32 * 4)?,
            nss: DeviceMem::new(n / 32 * 4)?,
            hq: DeviceMem::new(n)?,
            hd: DeviceMem::new(n / 32 * 4)?,
            xh: DeviceMem::new(n * 2)?,
            ws: DeviceMem::new(GEMM_WS_FLOATS * 4)?,
        });
        Ok(())
    }

    /// The int8 scratch, when `n` values of activations fit it and products over them may
    /// round activations to 8 bits.
    fn q8_scratch(&self, n: usize) -> Option<(*mut i8, *mut f32)> {
        let q8 = self.q8.borrow();
        let s = q8.as_ref()?;
        (self.precision == Precision::Fast && n.is_multiple_of(32) && n <= GPU_MAX_BATCH * s.cols)
            .then(|| (s.xq.ptr.cast::<i8>(), s.xd.f32()))
    }

    /// The folded norm's slot of the int8 scratch (values, scales, sums of squares), when
    /// `n` values fit it.
    fn norm_slot(&self, n: usize) -> Option<(*mut i8, *mut f32, *mut f32)> {
        self.q8_scratch(n)?;
        let q8 = self.q8.borrow();
        let s = q8.as_ref()?;
        Some((s.nq.ptr.cast::<i8>(), s.nd.f32(), s.nss.f32()))
    }

    /// SwiGLU's slot of the int8 scratch (values, scales), when `n` values fit it.
    fn swiglu_slot(&self, n: usize) -> Option<(*mut i8, *mut f32)> {
        self.q8_scratch(n)?;
        let q8 = self.q8.borrow();
        let s = q8.as_ref()?;
        Some((s.hq.ptr.cast::<i8>(), s.hd.f32()))
    }

    /// Notes that `buf` was written, so the int8 scratch no longer holds its values.
    fn wrote(&self, buf: &DeviceMem) {
        let p = buf.ptr as usize;
        if self.q8_holds.get().is_some_and(|(h, _)| h == p) {
            self.q8_holds.set(None);
        }
        if self.swiglu_holds.get().is_some_and(|(h, _)| h == p) {
            self.swiglu_holds.set(None);
        }
        if let Some(mut f) = self.folded.get() {
            if f.out == p {
                self.folded.set(None);
            } else if f.x == p {
                f.x_live = false;
                self.folded.set(Some(f));
            }
        }
    }

    /// Before an op reads `buf`: writes a folded norm's output if `buf` is it.
    fn reads(&self, buf: &DeviceMem) -> Result<()> {
        match self.folded.get() {
            Some(f) if f.out == buf.ptr as usize => self.unfold(),
            _ => Ok(()),
        }
    }

    /// Runs the folded norm as its own launch after all, for an op that reads its output
    /// as f32 values, or through a kernel without the folded input.
    fn unfold(&self) -> Result<()> {
        let Some(f) = self.folded.take() else {
            return Ok(());
        };
        ensure!(
            f.x_live,
            "a folded RMSNorm's output was read after its input changed"
        );
        let n = f.rows * f.cols;
        let (xq, xd) = self.q8_scratch(n).context("no int8 scratch")?;
        // SAFETY: x and out held rows * cols values when the norm was folded (checked in
        // matmul_add_norm; buffers are never resized); the scratch holds n values.
        check(
            unsafe {
                ffi::wick_rmsnorm_q8(
                    f.x as *const f32,
                    f.norm,
                    f.eps,
                    f.rows as i32,
                    f.cols as i32,
                    f.out as *mut f32,
                    xq,
                    xd,
                )
            },
            "rmsnorm",
        )?;
        self.q8_holds.set(Some((f.out, n)));
        Ok(())
    }

    /// The first `n` values of `x` as int8 values and scales for a product: a folded norm's
    /// slot as it is when `may_fold` (its sums of squares go into `fold`), else SwiGLU's
    /// slot when it holds them, else the int8 scratch, where `x` is rounded unless the op
    /// that wrote it already did. A folded norm that cannot go in as it is runs first.
    fn int8_input(
        &self,
        x: &DeviceMem,
        n: usize,
        may_fold: bool,
        fold: &mut ffi::wick_mv_fold,
    ) -> Result<(*mut i8, *mut f32)> {
        ensure!(n * 4 <= x.bytes, "matmul input too small");
        let key = (x.ptr as usize, n);
        if let Some(f) = self.folded.get().filter(|f| f.out == key.0) {
            if may_fold && f.rows * f.cols == n {
                let (nq, nd, nss) = self.norm_slot(n).context("no int8 scratch")?;
                fold.in_ss = nss;
                fold.eps = f.eps;
                return Ok((nq, nd));
            }
            self.unfold()?;
        }
        if self.swiglu_holds.get() == Some(key) {
            return self.swiglu_slot(n).context("no int8 scratch");
        }
        let (xq, xd) = self.q8_scratch(n).context("no int8 scratch")?;
        if self.q8_holds.get() != Some(key) {
            // SAFETY: the scratch holds at least n values (q8_scratch checked), x too.
            check(
                unsafe { ffi::wick_quantize_q8(x.f32(), n as i32, xq, xd) },
                "rounding activations",
            )?;
            self.q8_holds.set(Some(key));
        }
        Ok((xq, xd))
    }

    /// The int8 path, when it applies to every weight of a product: rounds `x` once (unless
    /// the op that wrote it already did) and runs the weights over it: the matrix-vector
    /// kernel for small batches (weights of one type in one launch), tensor cores for
    /// larger ones. False when the f32 kernel must be used.
    /// With `fold_out` (a norm's weight), the matrix-vector kernel also folds that norm into
    /// its output, into the norm slot (the caller has checked that it can).
    fn try_matmul_q8(
        &self,
        x: &DeviceMem,
        rows: usize,
        ws: &[&DeviceWeight],
        outs: &mut [&mut DeviceMem],
        accumulate: bool,
        fold_out: Option<&DeviceWeight>,
    ) -> Result<bool> {
        let cols = ws[0].cols;
        // The matrix-vector kernel computes each row as it computes a single one; the
        // tensor-core kernel sums in another order.
        let matvec = rows <= Q8_MAX_BATCH || self.row_exact.get();
        let usable = rows <= GPU_MAX_BATCH
            && ws.iter().all(|w| {
                w.cols == cols
                    // SAFETY: pure queries.
                    && unsafe {
                        if matvec {
                            ffi::wick_matvec_q8_supports(type_id(w.ty))
                        } else {
                            ffi::wick_gemm_q8_supports(type_id(w.ty))
                        }
                    } != 0
            });
        let n = rows * cols;
        if !usable || self.q8_scratch(n).is_none() {
            // The f32 kernel reads x: a folded norm's output is written first.
            self.reads(x)?;
            return Ok(false);
        }
        let mut fold = no_fold();
        // A folded norm's output goes in as it is only to the matrix-vector kernel, and not
        // to one that folds a norm into its own output in the same slot.
        let (xq, xd) = self.int8_input(x, n, matvec && fold_out.is_none(), &mut fold)?;
        if let Some(norm) = fold_out {
            let (nq, nd, nss) = self
                .norm_slot(rows * ws[0].rows)
                .context("no room for a folded norm")?;
            fold.norm = norm.mem.f32();
            fold.out_q = nq;
            fold.out_d = nd;
            fold.out_ss = nss;
        }
        for (w, out) in ws.iter().zip(outs.iter()) {
            ensure!(rows * w.rows * 4 <= out.bytes, "matmul output too small");
        }
        if matvec {
            for_type_groups(ws, outs, |ty, targets| {
                // SAFETY: sizes checked above; each weight holds `rows` rows of `cols` values.
                check(
                    unsafe {
                        ffi::wick_matvec_q8(
                            type_id(ty),
                            targets.as_ptr(),
                            targets.len() as i32,
                            cols as i32,
                            xq,
                            xd,
                            rows as i32,
                            accumulate as i32,
                            &fold,
                        )
                    },
                    "matmul",
                )
            })?;
        } else {
            let q8 = self.q8.borrow();
            let scratch = q8.as_ref().context("no int8 scratch")?;
            // The f16 kernel where it takes every weight: the activations become f16 once.
            let f16 = self.gemm_f16
                && GEMM_VARIANT.load(std::sync::atomic::Ordering::Relaxed) == 0
                && ws.iter().all(|w| {
                    // SAFETY: a pure query.
                    let applies = unsafe {
                        ffi::wick_gemm_f16_applies(
                            type_id(w.ty),
                            w.mem.ptr,
                            cols as i32,
                            rows as i32,
                        )
                    };
                    applies != 0
                });
            if f16 {
                // SAFETY: xq and xd hold n values (q8_scratch checked); xh has room for n
                // f16 values (reserve_q8).
                check(
                    unsafe { ffi::wick_q8_to_f16(xq, xd, n as i32, scratch.xh.ptr) },
                    "activations to f16",
                )?;
            }
            if f16 {
                for_type_groups(ws, outs, |ty, targets| {
                    // SAFETY: as for wick_gemm_q8 below, with xh holding the n values.
                    check(
                        unsafe {
                            ffi::wick_gemm_f16(
                                type_id(ty),
                                targets.as_ptr(),
                                targets.len() as i32,
                                cols as i32,
                                scratch.xh.ptr,
                                rows as i32,
                                accumulate as i32,
                                scratch.ws.f32(),
                                scratch.ws.bytes / 4,
                            )
                        },
                        "matmul",
                    )
                })?;
            }
            for (w, out) in ws.iter().zip(outs.iter()).filter(|_| !f16) {
                // SAFETY: sizes checked above; the weight holds `w.rows` rows of `cols`
                // values; the workspace is passed with its true size, and the kernel uses
                // no more.
                check(
                    unsafe {
                        ffi::wick_gemm_q8(
                            type_id(w.ty),
                            w.mem.ptr,
                            w.rows as i32,
                            cols as i32,
                            xq,
                            xd,
                            rows as i32,
                            out.f32(),
                            accumulate as i32,
                            scratch.ws.f32(),
                            scratch.ws.bytes / 4,
                        )
                    },
                    "matmul",
                )?;
            }
        }
        for out in outs.iter() {
            self.wrote(out);
        }
        Ok(true)
    }

    /// Whether `rope_attention` runs as one kernel for `rows` rows of this layer: single
    /// rows over an f16 cache, where attention takes the one-block-per-head kernel.
    pub fn fuses_rope(&self, kv: &DeviceKv, layer: usize, rows: usize, s: AttnShape) -> bool {
        let l = kv.layouts[layer];
        let (kc, vc) = kv.layer(layer);
        rows == 1
            && self.fuse_rope_store
            && self.fuse_rope_attention
            && l.ty == KvType::F16
            && s.rope_dims.is_multiple_of(2)
            && !self.skip.iter().any(|n| n == "rope" || n == "attn")
            // SAFETY: a pure query.
            && unsafe {
                ffi::wick_attention_rope_applies(
                    l.ty.id() as i32,
                    kc,
                    vc,
                    1,
                    s.n_heads as i32,
                    s.head_dim as i32,
                )
            } != 0
    }

    /// Whether WICK_SKIP leaves out op `name`; if so, the int8 scratch is taken to hold
    /// `rounded` (`n` values), as the op would have left it.
    fn skipped(&self, name: &str, rounded: Option<(&DeviceMem, usize)>) -> bool {
        if !self.skip.iter().any(|s| s == name) {
            return false;
        }
        if let Some((buf, n)) = rounded {
            self.q8_holds.set(Some((buf.ptr as usize, n)));
        }
        true
    }

    /// Times the op that runs until the returned span drops (with WICK_PROFILE).
    fn span(&self, name: impl FnOnce() -> String) -> Option<profile::Span<'_>> {
        self.profile
            .as_ref()
            .and_then(|p| profile::Profiler::span(p, name()))
    }

    /// The per-op timings so far, as a table, when WICK_PROFILE is set.
    pub fn profile_report(&self) -> Option<String> {
        self.profile.as_ref().map(|p| p.borrow().report())
    }

    /// Waits for queued work to finish, reporting an error a kernel raised.
    pub fn sync(&self) -> Result<()> {
        // SAFETY: no arguments.
        check(unsafe { ffi::wick_cuda_sync() }, "a kernel")
    }

    /// Copies host values to a device buffer (for tests and the self-test).
    pub fn write(&self, dst: &mut DeviceMem, src: &[f32]) -> Result<()> {
        ensure!(
            src.len() * 4 <= dst.bytes,
            "write past the end of a device buffer"
        );
        self.wrote(dst);
        // SAFETY: bounds checked above.
        check(
            unsafe { ffi::wick_cuda_h2d(dst.ptr, src.as_ptr().cast(), src.len() * 4) },
            "copy to the GPU",
        )
    }

    /// Sets the proposals of a draft and their probabilities from the host (the n-gram
    /// drafter's, and the self-test's).
    pub fn set_proposals_with_top(&self, ids: &[u32], top: &[f32]) -> Result<()> {
        ensure!(
            ids.len() <= MAX_BATCH && top.len() == ids.len(),
            "proposals and probabilities must match, at most {MAX_BATCH}"
        );
        // SAFETY: at most MAX_BATCH values into buffers of MAX_BATCH.
        check(
            unsafe {
                ffi::wick_cuda_h2d(self.spec.proposals.ptr, ids.as_ptr().cast(), ids.len() * 4)
            },
            "copy proposals to the GPU",
        )?;
        // SAFETY: as above.
        check(
            unsafe { ffi::wick_cuda_h2d(self.spec.top.ptr, top.as_ptr().cast(), top.len() * 4) },
            "copy proposals to the GPU",
        )
    }

    /// The greedy pick of each of `rows` rows of `vocab` logits and its probability, as
    /// the speculative kernels compute them (for the self-test).
    pub fn argmax_rows(
        &self,
        x: &DeviceMem,
        rows: usize,
        vocab: usize,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        ensure!(
            rows <= MAX_BATCH + 1 && rows * vocab * 4 <= x.bytes,
            "argmax_rows out of bounds"
        );
        let s = &self.spec;
        // SAFETY: bounds checked above; the scratch holds MAX_BATCH + 1 rows.
        check(
            unsafe {
                ffi::wick_argmax_rows(
                    x.f32(),
                    rows as i32,
                    vocab as i32,
                    s.target_ids.ptr.cast(),
                    s.target_top.f32(),
                )
            },
            "argmax",
        )?;
        read_picks(&s.target_ids, &s.target_top, rows)
    }

    /// Whether the last `matmul_swiglu` ran SwiGLU in the products' epilogue.
    pub fn swiglu_fused(&self) -> bool {
        self.swiglu_fused.get()
    }

    /// Whether the last `matmul_add_norm` folded its norm and nothing has read it yet.
    pub fn norm_folded(&self) -> bool {
        self.folded.get().is_some()
    }

    /// Fills a buffer with NaN bytes, so a value a kernel failed to write shows up.
    pub fn poison(&self, dst: &mut DeviceMem) -> Result<()> {
        self.wrote(dst);
        // SAFETY: the whole allocation.
        check(
            unsafe { ffi::wick_cuda_memset(dst.ptr, 0xff, dst.bytes) },
            "cudaMemset",
        )
    }
}

/// A matrix-vector launch with no norm folded on either side.
fn no_fold() -> ffi::wick_mv_fold {
    ffi::wick_mv_fold {
        in_ss: std::ptr::null(),
        eps: 0.0,
        norm: std::ptr::null(),
        out_q: std::ptr::null_mut(),
        out_d: std::ptr::null_mut(),
        out_ss: std::ptr::null_mut(),
    }
}

fn type_id(t: GgmlType) -> i32 {
    t.id() as i32
}

/// `out[b] (+)= w · x[b]` for `rows` activation rows: the one matrix kernel behind both
/// `matmul` and `matmul_add`.
fn launch_matmul(
    w: &DeviceWeight,
    x: &DeviceMem,
    rows: usize,
    out: &mut DeviceMem,
    accumulate: bool,
) -> Result<()> {
    ensure!(
        rows * w.cols * 4 <= x.bytes && rows * w.rows * 4 <= out.bytes,
        "matmul buffers too small"
    );
    // SAFETY: sizes checked above; the weight holds `w.rows` rows of `w.cols` values.
    check(
        unsafe {
            ffi::wick_matmul(
                type_id(w.ty),
                w.mem.ptr,
                w.rows as i32,
                w.cols as i32,
                x.f32(),
                rows as i32,
                out.f32(),
                accumulate as i32,
            )
        },
        "matmul",
    )
}

impl<'a> Backend<'a> for Cuda {
    type Buf = DeviceMem;
    type Weight = DeviceWeight;
    type Kv = DeviceKv;
    type Graph = Graph;

    fn begin_forward(&self, tokens: &[u32], pos0: usize) -> Result<()> {
        ensure!(
            tokens.len() <= GPU_MAX_BATCH,
            "too many tokens for one forward pass"
        );
        let mut host = self.host_params.borrow_mut();
        host.clear();
        host.push(pos0 as i32);
        host.extend(tokens.iter().map(|&t| t as i32));
        // SAFETY: at most GPU_MAX_BATCH + 1 values into a buffer of that size.
        check(
            unsafe { ffi::wick_cuda_h2d(self.params.ptr, host.as_ptr().cast(), host.len() * 4) },
            "copy tokens to the GPU",
        )
    }

    fn run_step(
        &self,
        graph: &mut Option<Graph>,
        step: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        if self.profile.is_some() {
            return step();
        }
        if graph.is_none() {
            // SAFETY: starts recording the stream; every op below only enqueues work on it.
            check(unsafe { ffi::wick_graph_begin() }, "starting a CUDA graph")?;
            let recorded = step();
            let mut exec = std::ptr::null_mut();
            // SAFETY: ends the recording started above, whatever `step` returned.
            let ended = check(
                unsafe { ffi::wick_graph_end(&mut exec) },
                "recording a CUDA graph",
            );
            recorded?;
            ended?;
            *graph = Some(Graph(exec));
        }
        let g = graph.as_ref().map_or(std::ptr::null_mut(), |g| g.0);
        // SAFETY: an instantiated graph over buffers that live as long as the state holding it.
        check(
            unsafe { ffi::wick_graph_launch(g) },
            "replaying the decode step",
        )
    }

    fn weight(&self, t: Tensor<'a>) -> Result<DeviceWeight> {
        if t.rows == 1 {
            // Norm vectors: RMSNorm reads them as f32.
            let mut v = vec![0f32; t.cols];
            t.dequantize_row(0, &mut v);
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            return Ok(DeviceWeight {
                ty: GgmlType::F32,
                rows: 1,
                cols: t.cols,
                mem: DeviceMem::upload(&bytes)?,
            });
        }
        // SAFETY: pure query.
        let ok = unsafe { ffi::wick_cuda_supports_type(type_id(t.ty)) } != 0;
        ensure!(
            ok,
            "the CUDA backend has no kernels for tensor type {} yet",
            t.ty
        );
        let float = matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        ensure!(
            if float {
                t.cols.is_multiple_of(4)
            } else {
                t.cols.is_multiple_of(t.ty.block_len())
            },
            "the CUDA kernels cannot take rows of {} values of {}",
            t.cols,
            t.ty
        );
        // SAFETY: pure queries.
        let int8 = unsafe {
            ffi::wick_matvec_q8_supports(type_id(t.ty)) != 0
                || ffi::wick_gemm_q8_supports(type_id(t.ty)) != 0
        };
        if int8 {
            self.reserve_q8(t.cols)?;
        }
        Ok(DeviceWeight {
            ty: t.ty,
            rows: t.rows,
            cols: t.cols,
            mem: DeviceMem::upload(t.data)?,
        })
    }

    fn max_batch(&self) -> usize {
        GPU_MAX_BATCH
    }

    fn buffer(&self, n: usize) -> Result<DeviceMem> {
        let m = DeviceMem::zeroed(n * 4)?;
        // A freed buffer's address may come back with new values.
        self.wrote(&m);
        Ok(m)
    }

    fn kv_cache(&self, layouts: &[KvLayout], kv_dim: usize) -> Result<DeviceKv> {
        let ty = layouts.first().map_or(KvType::F16, |l| l.ty);
        ensure!(
            layouts.iter().all(|l| l.ty == ty),
            "every layer's KV cache must have the same type"
        );
        ensure!(
            matches!(ty, KvType::F16 | KvType::Q8_0 | KvType::Fp8),
            "the CUDA backend keeps its KV cache in f16, q8_0 or fp8, not {}",
            ty.name()
        );
        crate::kv::check_kv_dim(ty, kv_dim)?;
        // The kernels read an fp8 row's f32 scale in place.
        ensure!(
            ty != KvType::Fp8 || kv_dim.is_multiple_of(4),
            "an fp8 KV cache on the GPU needs rows that are a multiple of 4 values, and this \
             model's are {kv_dim}: use --kv-type f16"
        );
        let row_bytes = ty.row_bytes(kv_dim);
        let mut layer_off = Vec::with_capacity(layouts.len());
        let mut bytes = 0;
        for l in layouts {
            layer_off.push(bytes);
            bytes += l.capacity * row_bytes;
        }
        let kv = DeviceKv {
            k: DeviceMem::zeroed(bytes).context("allocating the KV cache")?,
            v: DeviceMem::zeroed(bytes).context("allocating the KV cache")?,
            layouts: layouts.to_vec(),
            layer_off,
            row_bytes,
            state: DeviceMem::zeroed(layouts.len() * 8)?,
        };
        kv.upload_state()?;
        Ok(kv)
    }

    fn kv_shift(
        &self,
        kv: &mut DeviceKv,
        start: usize,
        d: usize,
        len: usize,
        s: AttnShape,
    ) -> Result<()> {
        let ty = kv.layouts.first().map_or(KvType::F16, |l| l.ty);
        let unit = if ty == KvType::Fp8 { 4 } else { 32 };
        ensure!(
            s.kv_dim().is_multiple_of(unit),
            "context shift on the GPU needs KV rows that are a multiple of {unit} values"
        );
        for layer in 0..kv.layouts.len() {
            let old = kv.layouts[layer];
            let from = old.stored(len).start.max(start + d);
            let (kc, _) = kv.layer(layer);
            // SAFETY: positions from..len are stored in this layer's slots.
            check(
                unsafe {
                    ffi::wick_kv_shift(
                        old.ty.id() as i32,
                        kc,
                        from as i32,
                        len.saturating_sub(from) as i32,
                        s.kv_dim() as i32,
                        s.head_dim as i32,
                        s.rope_dims as i32,
                        s.rope_theta,
                        -(d as f32),
                        old.capacity as i32,
                        old.keep as i32,
                        (old.offset % (old.capacity - old.keep)) as i32,
                    )
                },
                "kv shift",
            )?;
            kv.layouts[layer] = old.shifted(start, d, len);
        }
        kv.upload_state()
    }

    fn kv_save(&self, kv: &DeviceKv, len: usize, out: &mut Vec<u8>) -> Result<()> {
        let (k, v) = kv.download()?;
        let rb = kv.row_bytes;
        for (layer, l) in kv.layouts.iter().enumerate() {
            for p in l.stored(len) {
                let i = kv.row_at(layer, p);
                out.extend_from_slice(&k[i..i + rb]);
                out.extend_from_slice(&v[i..i + rb]);
            }
        }
        Ok(())
    }

    fn kv_load(&self, kv: &mut DeviceKv, len: usize, data: &[u8]) -> Result<()> {
        let rb = kv.row_bytes;
        let need: usize = kv
            .layouts
            .iter()
            .map(|l| l.stored(len).len() * 2 * rb)
            .sum();
        ensure!(data.len() == need, "the saved cache has the wrong size");
        let (mut k, mut v) = kv.download()?;
        let mut rows = data.chunks_exact(rb);
        for (layer, l) in kv.layouts.iter().enumerate() {
            for p in l.stored(len) {
                let i = kv.row_at(layer, p);
                k[i..i + rb].copy_from_slice(rows.next().unwrap());
                v[i..i + rb].copy_from_slice(rows.next().unwrap());
            }
        }
        // SAFETY: the host buffers have the allocations' sizes.
        check(
            unsafe { ffi::wick_cuda_h2d(kv.k.ptr, k.as_ptr().cast(), k.len()) },
            "copy the KV cache to the GPU",
        )?;
        // SAFETY: as above.
        check(
            unsafe { ffi::wick_cuda_h2d(kv.v.ptr, v.as_ptr().cast(), v.len()) },
            "copy the KV cache to the GPU",
        )
    }

    fn embed(&self, table: &DeviceWeight, tokens: &[u32], x: &mut DeviceMem) -> Result<()> {
        let _t = self.span(|| "embed".into());
        self.wrote(x);
        for &t in tokens {
            ensure!(
                (t as usize) < table.rows,
                "token id {t} is outside the vocabulary of {}",
                table.rows
            );
        }
        // SAFETY: the tokens uploaded by begin_forward follow the position in `params`.
        check(
            unsafe {
                ffi::wick_embed(
                    type_id(table.ty),
                    table.mem.ptr,
                    table.cols as i32,
                    self.params.ptr.cast::<i32>().add(1),
                    tokens.len() as i32,
                    x.f32(),
                )
            },
            "embed",
        )
    }

    fn rmsnorm(
        &self,
        x: &DeviceMem,
        w: &DeviceWeight,
        eps: f32,
        rows: usize,
        out: &mut DeviceMem,
    ) -> Result<()> {
        let _t = self.span(|| format!("rmsnorm x{rows}"));
        self.reads(x)?;
        self.wrote(out);
        let cols = w.cols;
        if self.skipped("norm", Some((out, rows * cols))) {
            return Ok(());
        }
        if let Some((xq, xd)) = self
            .q8_scratch(rows * cols)
            .filter(|_| rows <= Q8_MAX_BATCH || self.row_exact.get())
        {
            // SAFETY: device buffers hold at least rows * cols values, the scratch too.
            check(
                unsafe {
                    ffi::wick_rmsnorm_q8(
                        x.f32(),
                        w.mem.f32(),
                        eps,
                        rows as i32,
                        cols as i32,
                        out.f32(),
                        xq,
                        xd,
                    )
                },
                "rmsnorm",
            )?;
            self.q8_holds.set(Some((out.ptr as usize, rows * cols)));
            return Ok(());
        }
        self.wrote(out);
        // SAFETY: device buffers hold at least rows * cols values.
        check(
            unsafe {
                ffi::wick_rmsnorm(
                    x.f32(),
                    w.mem.f32(),
                    eps,
                    rows as i32,
                    w.cols as i32,
                    out.f32(),
                )
            },
            "rmsnorm",
        )
    }

    fn matmul(
        &self,
        x: &DeviceMem,
        rows: usize,
        ws: &[&DeviceWeight],
        outs: &mut [&mut DeviceMem],
    ) -> Result<()> {
        let _t = self.span(|| {
            let shapes: Vec<String> = ws
                .iter()
                .map(|w| format!("{} {}x{}", w.ty, w.rows, w.cols))
                .collect();
            format!("matmul x{rows} {}", shapes.join(" + "))
        });
        let name = ["head", "gateup", "qkv"][ws.len().clamp(1, 3) - 1];
        if self.skipped(name, None) {
            return Ok(());
        }
        if self.try_matmul_q8(x, rows, ws, outs, false, None)? {
            return Ok(());
        }
        self.reads(x)?;
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.wrote(out);
            launch_matmul(w, x, rows, out, false)?;
        }
        Ok(())
    }

    fn matmul_add(
        &self,
        y: &DeviceMem,
        rows: usize,
        w: &DeviceWeight,
        x: &mut DeviceMem,
    ) -> Result<()> {
        let _t = self.span(|| format!("matmul_add x{rows} {} {}x{}", w.ty, w.rows, w.cols));
        if self.skipped(if w.rows == w.cols { "o" } else { "down" }, None) {
            return Ok(());
        }
        if self.try_matmul_q8(y, rows, &[w], &mut [x], true, None)? {
            return Ok(());
        }
        self.reads(y)?;
        self.wrote(x);
        launch_matmul(w, y, rows, x, true)
    }

    fn matmul_add_norm(
        &self,
        y: &DeviceMem,
        rows: usize,
        w: &DeviceWeight,
        x: &mut DeviceMem,
        norm: &DeviceWeight,
        eps: f32,
        out: &mut DeviceMem,
    ) -> Result<()> {
        let n = rows * norm.cols;
        let fold = match self.fold_norms.as_str() {
            "0" => false,
            "o" => w.rows == w.cols,
            "down" => w.rows != w.cols,
            _ => true,
        } && self.skip.is_empty()
            && (rows <= Q8_MAX_BATCH || self.row_exact.get())
            && w.rows == norm.cols
            && n * 4 <= x.bytes.min(out.bytes)
            && self.norm_slot(n).is_some()
            // SAFETY: a pure query.
            && unsafe {
                ffi::wick_matvec_fold_applies(
                    type_id(w.ty),
                    w.mem.ptr,
                    w.rows as i32,
                    w.cols as i32,
                )
            } != 0;
        if fold {
            let _t =
                self.span(|| format!("matmul_add_norm x{rows} {} {}x{}", w.ty, w.rows, w.cols));
            // The norm's output is about to be replaced: nothing may unfold the old one.
            self.wrote(out);
            if self.try_matmul_q8(y, rows, &[w], &mut [x], true, Some(norm))? {
                self.folded.set(Some(Folded {
                    out: out.ptr as usize,
                    x: x.ptr as usize,
                    x_live: true,
                    norm: norm.mem.f32(),
                    eps,
                    rows,
                    cols: norm.cols,
                }));
                return Ok(());
            }
        }
        self.matmul_add(y, rows, w, x)?;
        self.rmsnorm(x, norm, eps, rows, out)
    }

    fn rope_store(
        &self,
        q: &mut DeviceMem,
        k: &mut DeviceMem,
        v: &DeviceMem,
        kv: &mut DeviceKv,
        layer: usize,
        pos0: usize,
        rows: usize,
        s: AttnShape,
    ) -> Result<()> {
        let _t = self.span(|| format!("rope_store x{rows}"));
        if self.skipped("rope", None) {
            return Ok(());
        }
        for b in [&*q, &*k, v] {
            self.reads(b)?;
        }
        self.wrote(q);
        self.wrote(k);
        let l = kv.layouts[layer];
        l.check_store(pos0, rows)?;
        ensure!(
            rows * s.q_dim() * 4 <= q.bytes && rows * s.kv_dim() * 4 <= k.bytes.min(v.bytes),
            "rope buffers too small"
        );
        let (kc, vc) = kv.layer(layer);
        if self.fuse_rope_store && l.ty != KvType::Fp8 {
            // SAFETY: as below, for both launches' buffers.
            return check(
                unsafe {
                    ffi::wick_rope_store(
                        l.ty.id() as i32,
                        q.f32(),
                        k.f32(),
                        v.f32(),
                        kc,
                        vc,
                        self.params.ptr.cast(),
                        kv.state(layer),
                        rows as i32,
                        s.n_heads as i32,
                        s.n_kv_heads as i32,
                        s.head_dim as i32,
                        s.rope_dims as i32,
                        s.rope_theta,
                        l.capacity as i32,
                        l.keep as i32,
                    )
                },
                "rope and kv store",
            );
        }
        // SAFETY: buffers sized by the forward pass (checked above); positions come from
        // `params`, written by begin_forward.
        check(
            unsafe {
                ffi::wick_rope(
                    q.f32(),
                    k.f32(),
                    self.params.ptr.cast(),
                    rows as i32,
                    s.n_heads as i32,
                    s.n_kv_heads as i32,
                    s.head_dim as i32,
                    s.rope_dims as i32,
                    s.rope_theta,
                )
            },
            "rope",
        )?;
        // SAFETY: the slots of every position lie inside this layer's part of the caches.
        check(
            unsafe {
                ffi::wick_kv_store(
                    l.ty.id() as i32,
                    k.f32(),
                    v.f32(),
                    kc,
                    vc,
                    self.params.ptr.cast(),
                    kv.state(layer),
                    rows as i32,
                    s.kv_dim() as i32,
                    s.head_dim as i32,
                    l.capacity as i32,
                    l.keep as i32,
                )
            },
            "kv store",
        )
    }

    fn rope_attention(
        &self,
        q: &mut DeviceMem,
        k: &mut DeviceMem,
        v: &DeviceMem,
        kv: &mut DeviceKv,
        layer: usize,
        pos0: usize,
        rows: usize,
        s: AttnShape,
        out: &mut DeviceMem,
    ) -> Result<()> {
        if !self.fuses_rope(kv, layer, rows, s) {
            self.rope_store(q, k, v, kv, layer, pos0, rows, s)?;
            return self.attention(q, kv, layer, pos0, rows, s, out);
        }
        let _t = self.span(|| "rope_attention x1".to_string());
        for b in [&*q, &*k, v] {
            self.reads(b)?;
        }
        let l = kv.layouts[layer];
        let (kc, vc) = kv.layer(layer);
        l.check_store(pos0, rows)?;
        ensure!(
            s.q_dim() * 4 <= q.bytes
                && s.kv_dim() * 4 <= k.bytes.min(v.bytes)
                && s.q_dim() * 4 <= out.bytes,
            "attention buffers too small"
        );
        self.wrote(out);
        let n = s.n_heads * s.head_dim;
        let (xq, xd) = self
            .q8_scratch(n)
            .unwrap_or((std::ptr::null_mut(), std::ptr::null_mut()));
        let mut rounded = 0;
        // SAFETY: as in rope_store and attention: one row of q, k and v (checked above), the
        // new position's slot inside this layer's caches (check_store), and the int8
        // scratch holding n values (q8_scratch checked).
        check(
            unsafe {
                ffi::wick_attention_rope(
                    l.ty.id() as i32,
                    q.f32(),
                    k.f32(),
                    v.f32(),
                    kc,
                    vc,
                    self.params.ptr.cast(),
                    kv.state(layer),
                    s.n_heads as i32,
                    s.n_kv_heads as i32,
                    s.head_dim as i32,
                    s.rope_dims as i32,
                    s.rope_theta,
                    l.capacity as i32,
                    l.keep as i32,
                    l.window.unwrap_or(0) as i32,
                    out.f32(),
                    xq,
                    xd,
                    &mut rounded,
                )
            },
            "rope and attention",
        )?;
        if rounded != 0 {
            self.q8_holds.set(Some((out.ptr as usize, n)));
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &DeviceMem,
        kv: &DeviceKv,
        layer: usize,
        pos0: usize,
        rows: usize,
        s: AttnShape,
        out: &mut DeviceMem,
    ) -> Result<()> {
        let l = kv.layouts[layer];
        l.check_store(pos0, rows)?;
        let _t = self.span(|| format!("attention x{rows}"));
        if self.skipped("attn", Some((out, rows * s.n_heads * s.head_dim))) {
            return Ok(());
        }
        self.reads(q)?;
        self.wrote(out);
        let (kc, vc) = kv.layer(layer);
        // Single rows may round their output to int8 for the o projection on the way out.
        let n = rows * s.n_heads * s.head_dim;
        let (xq, xd) = self
            .q8_scratch(n)
            .unwrap_or((std::ptr::null_mut(), std::ptr::null_mut()));
        let mut rounded = 0;
        // SAFETY: as in rope_store; the int8 scratch holds n values (q8_scratch checked).
        check(
            unsafe {
                ffi::wick_attention(
                    l.ty.id() as i32,
                    q.f32(),
                    kc,
                    vc,
                    self.params.ptr.cast(),
                    kv.state(layer),
                    rows as i32,
                    s.n_heads as i32,
                    s.n_kv_heads as i32,
                    s.head_dim as i32,
                    l.capacity as i32,
                    l.keep as i32,
                    l.window.unwrap_or(0) as i32,
                    out.f32(),
                    self.att_scratch.f32(),
                    ATT_SCRATCH_FLOATS,
                    xq,
                    xd,
                    &mut rounded,
                )
            },
            "attention",
        )?;
        if rounded != 0 {
            self.q8_holds.set(Some((out.ptr as usize, n)));
        }
        Ok(())
    }

    fn swiglu(&self, gate: &mut DeviceMem, up: &DeviceMem, n: usize) -> Result<()> {
        let _t = self.span(|| "swiglu".into());
        self.reads(gate)?;
        self.reads(up)?;
        if self.skipped("swiglu", Some((gate, n))) {
            return Ok(());
        }
        if let Some((xq, xd)) = self.q8_scratch(n) {
            // SAFETY: both hold at least n values, the scratch too.
            check(
                unsafe { ffi::wick_swiglu_q8(gate.f32(), up.f32(), n as i32, xq, xd) },
                "swiglu",
            )?;
            self.q8_holds.set(Some((gate.ptr as usize, n)));
            return Ok(());
        }
        self.wrote(gate);
        // SAFETY: both hold at least n values.
        check(
            unsafe { ffi::wick_swiglu(gate.f32(), up.f32(), n as i32) },
            "swiglu",
        )
    }

    fn matmul_swiglu(
        &self,
        x: &DeviceMem,
        rows: usize,
        w_gate: &DeviceWeight,
        w_up: &DeviceWeight,
        width: usize,
        gate: &mut DeviceMem,
        up: &mut DeviceMem,
    ) -> Result<()> {
        let (cols, n) = (w_gate.cols, rows * width);
        let fuse = self.swiglu_epilogue
            && self.skip.is_empty()
            && (rows <= Q8_MAX_BATCH || self.row_exact.get())
            && w_gate.ty == w_up.ty
            && (w_gate.rows, w_up.rows, w_up.cols) == (width, width, cols)
            && n * 4 <= gate.bytes
            && self.swiglu_slot(n).is_some()
            // SAFETY: a pure query.
            && unsafe {
                ffi::wick_matvec_swiglu_applies(
                    type_id(w_gate.ty),
                    w_gate.mem.ptr,
                    w_up.mem.ptr,
                    width as i32,
                    cols as i32,
                )
            } != 0;
        self.swiglu_fused.set(fuse);
        if !fuse {
            self.matmul(x, rows, &[w_gate, w_up], &mut [&mut *gate, &mut *up])?;
            return self.swiglu(gate, up, n);
        }
        let _t = self.span(|| format!("gate+up+swiglu x{rows} {} {width}x{cols}", w_gate.ty));
        let (hq, hd) = self.swiglu_slot(n).context("no int8 scratch")?;
        let mut fold = no_fold();
        let (xq, xd) = self.int8_input(x, rows * cols, true, &mut fold)?;
        // SAFETY: the input holds rows * cols int8 values and their scales (and sums, when
        // folded); gate holds n values (checked); the SwiGLU slot holds n values.
        check(
            unsafe {
                ffi::wick_matvec_q8_swiglu(
                    type_id(w_gate.ty),
                    w_gate.mem.ptr,
                    w_up.mem.ptr,
                    width as i32,
                    cols as i32,
                    xq,
                    xd,
                    rows as i32,
                    &fold,
                    gate.f32(),
                    hq,
                    hd,
                )
            },
            "matmul",
        )?;
        self.wrote(gate);
        self.wrote(up);
        self.swiglu_holds.set(Some((gate.ptr as usize, n)));
        Ok(())
    }

    fn copy_row(
        &self,
        src: &DeviceMem,
        row: usize,
        width: usize,
        dst: &mut DeviceMem,
    ) -> Result<()> {
        ensure!(
            (row + 1) * width * 4 <= src.bytes && width * 4 <= dst.bytes,
            "copy_row out of bounds"
        );
        self.reads(src)?;
        self.wrote(dst);
        // SAFETY: bounds checked above.
        check(
            unsafe { ffi::wick_cuda_d2d(dst.ptr, src.f32().add(row * width).cast(), width * 4) },
            "copy on the GPU",
        )
    }

    fn set_row_exact(&self, on: bool) {
        self.row_exact.set(on);
        // The tiled attention kernel shares work between rows and rounds unlike the
        // single-row one.
        set_attention_variant(if on { 1 } else { self.att_variant });
    }

    fn device_spec(&self) -> Option<&dyn DeviceSpec<DeviceMem>> {
        Some(self)
    }

    fn read(&self, src: &DeviceMem, out: &mut [f32]) -> Result<()> {
        ensure!(
            out.len() * 4 <= src.bytes,
            "read past the end of a device buffer"
        );
        self.reads(src)?;
        // SAFETY: bounds checked above; cudaMemcpy also waits for the queued kernels.
        check(
            unsafe { ffi::wick_cuda_d2h(out.as_mut_ptr().cast(), src.ptr, out.len() * 4) },
            "copy from the GPU",
        )?;
        if let Some(p) = &self.profile {
            p.borrow_mut().collect();
        }
        Ok(())
    }
}

impl DeviceSpec<DeviceMem> for Cuda {
    fn pick(&self, logits: &DeviceMem, vocab: usize, i: usize, next_pos: usize) -> Result<()> {
        ensure!(
            i < MAX_BATCH && vocab > 0 && vocab * 4 <= logits.bytes,
            "draft pick {i} of {vocab} logits out of bounds"
        );
        // SAFETY: bounds checked above; params holds a position and MAX_BATCH tokens.
        check(
            unsafe {
                ffi::wick_spec_pick(
                    logits.f32(),
                    vocab as i32,
                    self.params.ptr.cast(),
                    next_pos as i32,
                    self.spec.proposals.ptr.cast(),
                    self.spec.top.f32(),
                    i as i32,
                )
            },
            "picking a draft token",
        )
    }

    fn set_proposals(&self, ids: &[u32]) -> Result<()> {
        self.set_proposals_with_top(ids, &[1.0; MAX_BATCH][..ids.len().min(MAX_BATCH)])
    }

    fn stage_verify(&self, pos0: usize, first: u32, n: usize) -> Result<()> {
        ensure!(
            n < MAX_BATCH,
            "a verification takes at most {MAX_BATCH} tokens"
        );
        // SAFETY: n + 1 tokens after the position fit in params; n proposals exist.
        check(
            unsafe {
                ffi::wick_spec_stage(
                    self.params.ptr.cast(),
                    pos0 as i32,
                    first as i32,
                    self.spec.proposals.ptr.cast(),
                    n as i32,
                )
            },
            "staging a verification",
        )
    }

    fn judge(
        &self,
        rows: &DeviceMem,
        vocab: usize,
        n: usize,
        cut: DraftCut,
        out: &mut Verdict,
    ) -> Result<()> {
        ensure!(
            n < MAX_BATCH && vocab > 0 && (n + 1) * vocab * 4 <= rows.bytes,
            "judging {n} proposals out of bounds"
        );
        let s = &self.spec;
        // SAFETY: bounds checked above; the scratch holds MAX_BATCH + 1 rows and the verdict
        // MAX_BATCH + 3 values.
        check(
            unsafe {
                ffi::wick_spec_judge(
                    rows.f32(),
                    vocab as i32,
                    s.proposals.ptr.cast(),
                    s.top.f32(),
                    n as i32,
                    cut.min.min(i32::MAX as usize) as i32,
                    cut.p_min,
                    s.target_ids.ptr.cast(),
                    s.target_top.f32(),
                    s.out.ptr.cast(),
                )
            },
            "judging a draft",
        )?;
        self.read_verdict(n, out)
    }

    fn sync(&self) -> Result<()> {
        Cuda::sync(self)
    }

    fn sample_setup(
        &self,
        target: &SamplerParams,
        draft: Option<&SamplerParams>,
        vocab: usize,
    ) -> Result<bool> {
        self.spec.sample.setup(target, draft, vocab)
    }

    fn pick_sampled(
        &self,
        logits: &DeviceMem,
        vocab: usize,
        i: usize,
        next_pos: usize,
    ) -> Result<()> {
        let s = &self.spec;
        s.sample.pick(
            logits,
            vocab,
            &self.params,
            &s.proposals,
            &s.top,
            i,
            next_pos,
        )
    }

    fn judge_sampled(
        &self,
        rows: &DeviceMem,
        vocab: usize,
        n: usize,
        cut: DraftCut,
        out: &mut Verdict,
    ) -> Result<()> {
        let s = &self.spec;
        s.sample.judge(
            rows,
            vocab,
            n,
            cut.min,
            cut.p_min,
            &s.proposals,
            &s.top,
            &s.out,
        )?;
        self.read_verdict(n, out)
    }

    fn plain_setup(
        &self,
        params: &SamplerParams,
        rng: [u64; 4],
        mask: &[u32],
        vocab: usize,
    ) -> Result<bool> {
        self.spec.sample.plain_setup(params, rng, mask, vocab)
    }

    fn plain_queue(&self, logits: &DeviceMem, vocab: usize, next_pos: usize) -> Result<()> {
        self.spec
            .sample
            .plain_queue(logits, vocab, &self.params, next_pos)
    }

    fn plain_take(&self) -> Result<u32> {
        let id = self.spec.sample.plain_take()?;
        // The id waited for its step, as `read` does: the times of the ops before are final.
        if let Some(p) = &self.profile {
            p.borrow_mut().collect();
        }
        Ok(id)
    }

    fn plain_forget(&self) {
        self.spec.sample.plain_forget()
    }

    fn plain_ahead(&self) -> bool {
        // Per-op times are read when an id is taken, and a step queued ahead is not done.
        self.profile.is_none() && self.spec.sample.plain_ahead()
    }
}

impl Cuda {
    /// Plain decoding's device random stream as it stands (self-test: it must have moved
    /// on exactly as a host sampler's stream does).
    pub fn plain_rng_state(&self) -> Result<[u64; 4]> {
        self.spec.sample.plain_rng_state()
    }

    /// Copies the verdict on `n` proposals that the judging kernels queued: the one wait of
    /// a speculative step.
    fn read_verdict(&self, n: usize, out: &mut Verdict) -> Result<()> {
        let s = &self.spec;
        let mut host = s.host_out.borrow_mut();
        ensure!(n + 3 <= host.len(), "a verdict on {n} proposals");
        // SAFETY: n + 3 values of a buffer of MAX_BATCH + 3; waits for the kernels.
        check(
            unsafe { ffi::wick_cuda_d2h(host.as_mut_ptr().cast(), s.out.ptr, (n + 3) * 4) },
            "copy the verdict from the GPU",
        )?;
        let (valid, accepted, next) = (host[0], host[1], host[2]);
        ensure!(
            0 <= accepted && accepted <= valid && valid as usize <= n && 0 <= next,
            "the GPU's verdict is out of range: {valid} valid, {accepted} accepted, next {next}"
        );
        out.valid = valid as usize;
        out.accepted = accepted as usize;
        out.next = next as u32;
        out.proposals.clear();
        out.proposals
            .extend(host[3..3 + n].iter().map(|&t| t as u32));
        Ok(())
    }

    /// The sampling distribution of each of `rows` rows of `vocab` logits as the device
    /// computes it for sampled speculation, most likely first (self-test).
    pub fn sample_rows(
        &self,
        x: &DeviceMem,
        rows: usize,
        vocab: usize,
        params: &SamplerParams,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        self.spec.sample.rows(x, rows, vocab, params)
    }

    /// Seeds the device's random streams for sampled speculation exactly as host samplers
    /// of these seeds (self-test; `sample_setup` seeds them from the samplers' seeds).
    pub fn seed_sampling(&self, target: u64, draft: u64) -> Result<()> {
        self.spec.sample.seed(target, draft)
    }

    /// The acceptance kernel of sampled speculation alone, on the model's distributions
    /// `p` (one more row than proposals) and the draft's `q` (`None`: one-hot at the
    /// proposals), with the proposals and their probabilities set from the host, and
    /// random numbers from the model's stream (self-test).
    #[allow(clippy::too_many_arguments)]
    pub fn accept_sampled(
        &self,
        p: &[Probs],
        q: Option<&[Probs]>,
        vocab: usize,
        proposals: &[u32],
        top: &[f32],
        cut: DraftCut,
        out: &mut Verdict,
    ) -> Result<()> {
        self.set_proposals_with_top(proposals, top)?;
        let s = &self.spec;
        s.sample.accept_given(
            p,
            q,
            vocab,
            cut.min,
            cut.p_min,
            &s.proposals,
            &s.top,
            &s.out,
        )?;
        self.read_verdict(proposals.len(), out)
    }

    /// The first `n` proposals and their probabilities, and the draft's distributions of
    /// their rows (rows of `vocab`), as sampled picks left them (self-test).
    pub fn sampled_draft(&self, n: usize, vocab: usize) -> Result<(Vec<u32>, Vec<f32>, Vec<f32>)> {
        ensure!(n <= MAX_BATCH, "at most {MAX_BATCH} proposals");
        let s = &self.spec;
        let (ids, top) = read_picks(&s.proposals, &s.top, n)?;
        Ok((ids, top, s.sample.q_rows(n, vocab)?))
    }
}

/// The int8 matrix-vector kernels set_matvec_variant selects: 0 the streaming kernel with
/// its shape chosen by size (default), 1 the direct kernel, 2..5 the streaming kernel with
/// rows per warp and ring depth fixed (R1 S8, R2 S4, R4 S4, R1 S4).
pub const MV_VARIANTS: [i32; 6] = [0, 1, 2, 3, 4, 5];

/// Selects an int8 matrix-vector kernel (MV_VARIANTS), for tuning and A/B runs.
pub fn set_matvec_variant(v: i32) {
    // SAFETY: sets a plain integer read at launch.
    unsafe { ffi::wick_matvec_q8_variant(v) }
}

/// Calls `f` once per group of up to three weights of one type (in the order given), with
/// their launch targets: the kernels that take several weights over one input run them
/// in one launch.
fn for_type_groups(
    ws: &[&DeviceWeight],
    outs: &[&mut DeviceMem],
    mut f: impl FnMut(GgmlType, &[ffi::wick_mv_target]) -> Result<()>,
) -> Result<()> {
    ensure!(ws.len() <= 8, "too many weights in one product");
    let mut done = [false; 8];
    for i in 0..ws.len() {
        if done[i] {
            continue;
        }
        let mut targets = [ffi::wick_mv_target {
            w: std::ptr::null(),
            y: std::ptr::null_mut(),
            rows: 0,
        }; 3];
        let mut n = 0;
        for j in i..ws.len() {
            if !done[j] && ws[j].ty == ws[i].ty && n < 3 {
                targets[n] = ffi::wick_mv_target {
                    w: ws[j].mem.ptr,
                    y: outs[j].f32(),
                    rows: ws[j].rows as i32,
                };
                n += 1;
                done[j] = true;
            }
        }
        f(ws[i].ty, &targets[..n])?;
    }
    Ok(())
}

/// Selects the tensor-core kernels: 0 = the 64-token int8 one up to 64 tokens and the f16
/// one above where it applies (default; else as 3), 1 = the 128-token int8 one from 17
/// tokens, 2 = the 64-token one only (wider batches in launches of 64), 3 / 4 = as 0 / 1
/// with the second 128-token int8 kernel (wide2: cp.async weights, cheaper scaling) above
/// 64 tokens, 5 = as 3 with wide2's multiply unrolled twice, 6 = as 0 with the first
/// 128-token int8 kernel; for timing one against the other.
pub fn set_gemm_variant(v: i32) {
    GEMM_VARIANT.store(v, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: sets a plain integer read at launch.
    unsafe { ffi::wick_gemm_q8_variant(v) }
}

/// The variant set by set_gemm_variant: the f16 kernel runs only under the default.
static GEMM_VARIANT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Selects the kernel of multi-row attention: 0 = the tiled tensor-core one (default),
/// 1 = the single-row one, for timing one against the other.
pub fn set_attention_variant(v: i32) {
    // SAFETY: sets a plain integer read at launch.
    unsafe { ffi::wick_attention_variant(v) }
}

/// Whether speculation on the GPU can sample as a host sampler of these settings would over
/// `vocab` tokens (temperature above 0, no repeat penalty, at most
/// `WICK_SAMPLE_CAP` tokens left by top-k).
pub fn can_sample(p: &SamplerParams, vocab: usize) -> bool {
    sample::device_cfg(p, vocab).is_some()
}

/// Selects the kernel of single-row attention: the former one-block-per-head one (`old`),
/// or the split one with `splits` slices per KV head (0 = from the SM count, where the
/// heads alone leave most SMs idle; -1 = from the SM count, always).
pub fn set_attention_decode(old: bool, splits: i32) {
    // SAFETY: sets plain integers read at launch.
    unsafe { ffi::wick_attention_decode(old as i32, splits) }
}

/// The first `n` token ids and probabilities of two device buffers of picks (self-test).
fn read_picks(ids: &DeviceMem, top: &DeviceMem, n: usize) -> Result<(Vec<u32>, Vec<f32>)> {
    ensure!(
        n * 4 <= ids.bytes.min(top.bytes),
        "{n} picks asked of a smaller buffer"
    );
    let mut got_ids = vec![0u32; n];
    let mut got_top = vec![0f32; n];
    // SAFETY: n values of each buffer (checked above).
    check(
        unsafe { ffi::wick_cuda_d2h(got_ids.as_mut_ptr().cast(), ids.ptr, n * 4) },
        "copy from the GPU",
    )?;
    // SAFETY: as above.
    check(
        unsafe { ffi::wick_cuda_d2h(got_top.as_mut_ptr().cast(), top.ptr, n * 4) },
        "copy from the GPU",
    )?;
    Ok((got_ids, got_top))
}

/// Whether the CUDA backend can run weights of this type.
pub fn supports(t: GgmlType) -> bool {
    // SAFETY: pure query.
    quant::is_supported(t) && unsafe { ffi::wick_cuda_supports_type(type_id(t)) } != 0
}
