//! The CUDA backend: the ops of a forward pass as hand-written kernels (kernels/cuda),
//! called through bindgen's bindings of their C header. Weights are uploaded once, in their
//! GGUF blocks; activations stay on the device between ops.

mod ffi {
    #![allow(
        non_upper_case_globals,
        non_camel_case_types,
        non_snake_case,
        dead_code
    )]
    include!(concat!(env!("OUT_DIR"), "/cuda_bindings.rs"));
}

use std::cell::RefCell;
use std::ffi::CStr;

use anyhow::{bail, ensure, Context, Result};

use super::{AttnShape, Backend};
use crate::model::{Tensor, MAX_BATCH};
use crate::quant::{self, GgmlType, Precision};

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

/// The KV cache of every layer, as f16: `[layer][slot][kv_dim]` for keys and for values.
pub struct DeviceKv {
    k: DeviceMem,
    v: DeviceMem,
    capacity: usize,
    layer_elems: usize,
}

impl DeviceKv {
    fn layer(&self, l: usize) -> (*mut u16, *mut u16) {
        let off = l * self.layer_elems;
        // SAFETY: pointer arithmetic inside the allocations, l < n_layers.
        unsafe {
            (
                self.k.ptr.cast::<u16>().add(off),
                self.v.ptr.cast::<u16>().add(off),
            )
        }
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
}

/// Rows of a product up to which the int8 matrix-vector kernel is used; larger batches (up
/// to MAX_BATCH) go to the int8 tensor-core kernel.
const Q8_MAX_BATCH: usize = 16;

/// Partial sums of the tensor-core kernel when it splits a product along the weight rows
/// (to give small matrices enough blocks): room for this many splits of an output, up to
/// `GEMM_WS_ROWS` rows of MAX_BATCH values in all. Matrices tall enough to need more are
/// tall enough not to be split (the kernel splits less when the room is short).
const GEMM_SPLITS: usize = 8;
const GEMM_WS_ROWS: usize = 65536;

struct Q8Scratch {
    cols: usize,
    /// Rows of the largest weight seen, which sizes `ws`.
    rows: usize,
    xq: DeviceMem,
    xd: DeviceMem,
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
            params: DeviceMem::new((MAX_BATCH + 1) * 4)?,
            host_params: RefCell::new(Vec::with_capacity(MAX_BATCH + 1)),
            precision: Precision::Fast,
            q8: RefCell::new(None),
        })
        .inspect(|_| {
            // A tuning hook: WICK_MV picks a launch shape of the int8 kernel.
            if let Some(v) = std::env::var("WICK_MV").ok().and_then(|v| v.parse().ok()) {
                set_matvec_variant(v);
            }
        })
    }

    /// Chooses how activations enter matrix products (the default is `Fast`).
    pub fn with_precision(mut self, p: Precision) -> Cuda {
        self.precision = p;
        self
    }

    /// Makes the int8 activation scratch wide enough for MAX_BATCH rows of `cols` values,
    /// and the partial-sum workspace for weights of `rows` rows.
    fn reserve_q8(&self, rows: usize, cols: usize) -> Result<()> {
        let mut q8 = self.q8.borrow_mut();
        if q8
            .as_ref()
            .is_some_and(|s| s.cols >= cols && s.rows >= rows)
        {
            return Ok(());
        }
        let (cols, rows) = q8
            .as_ref()
            .map_or((cols, rows), |s| (s.cols.max(cols), s.rows.max(rows)));
        let n = MAX_BATCH * cols.next_multiple_of(32);
        *q8 = Some(Q8Scratch {
            cols,
            rows,
            xq: DeviceMem::new(n)?,
            xd: DeviceMem::new(n / 32 * 4)?,
            ws: DeviceMem::new(MAX_BATCH * (GEMM_SPLITS * rows).min(GEMM_WS_ROWS) * 4)?,
        });
        Ok(())
    }

    /// The int8 path, when it applies to every weight of a product: rounds `x` once and
    /// runs each weight over it, with the matrix-vector kernel for small batches and
    /// tensor cores for larger ones. False when the f32 kernel must be used.
    fn try_matmul_q8(
        &self,
        x: &DeviceMem,
        rows: usize,
        ws: &[&DeviceWeight],
        outs: &mut [&mut DeviceMem],
        accumulate: bool,
    ) -> Result<bool> {
        let cols = ws[0].cols;
        let matvec = rows <= Q8_MAX_BATCH;
        let usable = self.precision == Precision::Fast
            && rows <= MAX_BATCH
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
        let q8 = self.q8.borrow();
        let Some(scratch) = q8.as_ref().filter(|s| usable && s.cols >= cols) else {
            return Ok(false);
        };
        ensure!(rows * cols * 4 <= x.bytes, "matmul input too small");
        let (xq, xd) = (scratch.xq.ptr.cast::<i8>(), scratch.xd.f32());
        // SAFETY: the scratch holds MAX_BATCH rows of at least `cols` values.
        check(
            unsafe { ffi::wick_quantize_q8(x.f32(), (rows * cols) as i32, xq, xd) },
            "rounding activations",
        )?;
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            ensure!(rows * w.rows * 4 <= out.bytes, "matmul output too small");
            let (ty, n, y, acc) = (type_id(w.ty), w.rows as i32, out.f32(), accumulate as i32);
            // SAFETY: sizes checked above; the weight holds `w.rows` rows of `cols` values;
            // the workspace is passed with its true size, and the kernel uses no more.
            let code = unsafe {
                if matvec {
                    ffi::wick_matvec_q8(ty, w.mem.ptr, n, cols as i32, xq, xd, rows as i32, y, acc)
                } else {
                    ffi::wick_gemm_q8(
                        ty,
                        w.mem.ptr,
                        n,
                        cols as i32,
                        xq,
                        xd,
                        rows as i32,
                        y,
                        acc,
                        scratch.ws.f32(),
                        scratch.ws.bytes / 4,
                    )
                }
            };
            check(code, "matmul")?;
        }
        Ok(true)
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
        // SAFETY: bounds checked above.
        check(
            unsafe { ffi::wick_cuda_h2d(dst.ptr, src.as_ptr().cast(), src.len() * 4) },
            "copy to the GPU",
        )
    }

    /// Fills a buffer with NaN bytes, so a value a kernel failed to write shows up.
    pub fn poison(&self, dst: &mut DeviceMem) -> Result<()> {
        // SAFETY: the whole allocation.
        check(
            unsafe { ffi::wick_cuda_memset(dst.ptr, 0xff, dst.bytes) },
            "cudaMemset",
        )
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
            tokens.len() <= MAX_BATCH,
            "too many tokens for one forward pass"
        );
        let mut host = self.host_params.borrow_mut();
        host.clear();
        host.push(pos0 as i32);
        host.extend(tokens.iter().map(|&t| t as i32));
        // SAFETY: at most MAX_BATCH + 1 values into a buffer of that size.
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
            self.reserve_q8(t.rows, t.cols)?;
        }
        Ok(DeviceWeight {
            ty: t.ty,
            rows: t.rows,
            cols: t.cols,
            mem: DeviceMem::upload(t.data)?,
        })
    }

    fn buffer(&self, n: usize) -> Result<DeviceMem> {
        DeviceMem::zeroed(n * 4)
    }

    fn kv_cache(&self, n_layers: usize, capacity: usize, kv_dim: usize) -> Result<DeviceKv> {
        let layer_elems = capacity * kv_dim;
        let bytes = n_layers * layer_elems * 2;
        Ok(DeviceKv {
            k: DeviceMem::zeroed(bytes).context("allocating the KV cache")?,
            v: DeviceMem::zeroed(bytes).context("allocating the KV cache")?,
            capacity,
            layer_elems,
        })
    }

    fn embed(&self, table: &DeviceWeight, tokens: &[u32], x: &mut DeviceMem) -> Result<()> {
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
        if self.try_matmul_q8(x, rows, ws, outs, false)? {
            return Ok(());
        }
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
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
        if self.try_matmul_q8(y, rows, &[w], &mut [x], true)? {
            return Ok(());
        }
        launch_matmul(w, y, rows, x, true)
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
        ensure!(
            pos0 + rows <= kv.capacity,
            "position {} is past the context size {}",
            pos0 + rows - 1,
            kv.capacity
        );
        let (kc, vc) = kv.layer(layer);
        // SAFETY: buffers sized by the forward pass; the cache slot index is taken modulo capacity.
        check(
            unsafe {
                ffi::wick_rope_store(
                    q.f32(),
                    k.f32(),
                    v.f32(),
                    kc,
                    vc,
                    self.params.ptr.cast(),
                    rows as i32,
                    s.n_heads as i32,
                    s.n_kv_heads as i32,
                    s.head_dim as i32,
                    s.rope_dims as i32,
                    s.rope_theta,
                    kv.capacity as i32,
                )
            },
            "rope",
        )
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
        ensure!(
            pos0 + rows <= kv.capacity,
            "attention past the context size"
        );
        let (kc, vc) = kv.layer(layer);
        // SAFETY: as in rope_store.
        check(
            unsafe {
                ffi::wick_attention(
                    q.f32(),
                    kc,
                    vc,
                    self.params.ptr.cast(),
                    rows as i32,
                    s.n_heads as i32,
                    s.n_kv_heads as i32,
                    s.head_dim as i32,
                    kv.capacity as i32,
                    out.f32(),
                )
            },
            "attention",
        )
    }

    fn swiglu(&self, gate: &mut DeviceMem, up: &DeviceMem, n: usize) -> Result<()> {
        // SAFETY: both hold at least n values.
        check(
            unsafe { ffi::wick_swiglu(gate.f32(), up.f32(), n as i32) },
            "swiglu",
        )
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
        // SAFETY: bounds checked above.
        check(
            unsafe { ffi::wick_cuda_d2d(dst.ptr, src.f32().add(row * width).cast(), width * 4) },
            "copy on the GPU",
        )
    }

    fn read(&self, src: &DeviceMem, out: &mut [f32]) -> Result<()> {
        ensure!(
            out.len() * 4 <= src.bytes,
            "read past the end of a device buffer"
        );
        // SAFETY: bounds checked above; cudaMemcpy also waits for the queued kernels.
        check(
            unsafe { ffi::wick_cuda_d2h(out.as_mut_ptr().cast(), src.ptr, out.len() * 4) },
            "copy from the GPU",
        )
    }
}

/// Selects a launch shape of the int8 matrix-vector kernel (0 = default), for tuning.
pub fn set_matvec_variant(v: i32) {
    // SAFETY: sets a plain integer read at launch.
    unsafe { ffi::wick_matvec_q8_variant(v) }
}

/// Whether the CUDA backend can run weights of this type.
pub fn supports(t: GgmlType) -> bool {
    // SAFETY: pure query.
    quant::is_supported(t) && unsafe { ffi::wick_cuda_supports_type(type_id(t)) } != 0
}
