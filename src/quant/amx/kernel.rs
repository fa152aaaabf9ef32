//! The AMX instructions, through `asm!`: Rust's AMX intrinsics are unstable.
//!
//! Tile registers: tmm0 holds a block of 16 weight rows (16 × block bytes), tmm1 the same
//! block of 16 tokens interleaved (block / 4 rows × 64 bytes), tmm2 their int32 dots; tmm4,
//! tmm5 and tmm3 the same for a second block, so that two products are in flight.
//!
//! Folded K-quants: tmm0 and tmm1 hold a 64-deep block's two weight digits, tmm4 or tmm5
//! its tokens; a super-block's dots of the high and low digits gather in tmm2 and tmm3,
//! the next super-block's in tmm6 and tmm7.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{Format, TILE};

/// `arch_prctl` request for permission to use an extended state component.
const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
/// The XSAVE component of the tile data (8 KiB per thread).
const XFEATURE_XTILEDATA: libc::c_ulong = 18;

pub(super) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl");
        // CPUID.(EAX=7, ECX=0):EDX bit 24 = AMX-TILE, bit 25 = AMX-INT8.
        let edx = if avx512 { __cpuid_count(7, 0).edx } else { 0 };
        let cpu = edx & (1 << 24) != 0 && edx & (1 << 25) != 0;
        cpu && permitted()
    })
}

/// Linux hands out the 8 KiB of tile state only on request; until then the first tile
/// instruction faults. The kernel refuses where it (or the CPU) lacks the feature.
#[cfg(target_os = "linux")]
fn permitted() -> bool {
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn permitted() -> bool {
    let _ = (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
    false
}

/// The 64-byte operand of `ldtilecfg`.
#[repr(C, align(64))]
struct Config([u8; 64]);

/// # Safety
/// AMX must be `available`.
pub(super) unsafe fn configure(block: usize) {
    let mut c = Config([0; 64]);
    // Palette 1; per tile: bytes per row at 16 + 2i (u16), rows at 48 + i.
    c.0[0] = 1;
    let mut set = |t: usize, rows: usize, bytes: usize| {
        c.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&(bytes as u16).to_le_bytes());
        c.0[48 + t] = rows as u8;
    };
    for (a, b, c) in [(0, 1, 2), (4, 5, 3)] {
        set(a, TILE, block);
        set(b, block / 4, TILE * 4);
        set(c, TILE, TILE * 4);
    }
    // Only the folded formats (block 64, where every tile is 16 × 64 bytes) use these.
    set(6, TILE, TILE * 4);
    set(7, TILE, TILE * 4);
    asm!("ldtilecfg [{0}]", in(reg) c.0.as_ptr(), options(nostack, readonly));
}

/// # Safety
/// AMX must be `available`.
pub(super) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// One block's int32 dots into tmm2 (`$a`, `$b`, `$c` = 0, 1, 2) or tmm3 (4, 5, 3):
/// weights at `w` (16 rows, `block` bytes apart), tokens at `a` (interleaved, 64 bytes per
/// row).
macro_rules! block_dots {
    ($a:literal, $b:literal, $c:literal, $w:expr, $block:expr, $x:expr) => {
        asm!(
            concat!("tilezero tmm", $c),
            concat!("tileloadd tmm", $a, ", [{w} + {ws} * 1]"),
            concat!("tileloadd tmm", $b, ", [{a} + {as_} * 1]"),
            concat!("tdpbssd tmm", $c, ", tmm", $a, ", tmm", $b),
            w = in(reg) $w,
            ws = in(reg) $block,
            a = in(reg) $x,
            as_ = in(reg) 64usize,
            options(nostack, readonly),
        )
    };
}

/// Stores tmm`$c` (16 rows of 16 int32) at `c`.
macro_rules! store_dots {
    ($c:literal, $dst:expr) => {
        asm!(
            concat!("tilestored [{c} + {s} * 1], tmm", $c),
            c = in(reg) $dst,
            s = in(reg) 64usize,
            options(nostack),
        )
    };
}

/// `out[n * stride + m] (+)= Σ_b (dots_b[m][n] · wscale[b][m] · ascale[b][n] +
/// wmin[b][m] · asum[b][n])` over `nb` blocks, for the first `rows` weight rows `m` and
/// `tokens` tokens `n`.
///
/// # Safety
/// Tiles configured for `f` on this thread; `wq` / `aq` hold `nb` blocks of 16 rows in the
/// panel / interleaved layouts, the scale arrays `nb * 16` values each; `out` valid for
/// the elements named above.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    f: Format,
    nb: usize,
    w: [*const f32; 2],
    wq: *const u8,
    aq: *const u8,
    a: [*const f32; 2],
    out: Out,
) {
    match (f.block, f.min) {
        _ if f.folded => {
            assert_eq!(f.block, 64);
            if f.min {
                product_folded::<true>(nb / 4, w, wq, aq, a, out)
            } else {
                product_folded::<false>(nb / 4, w, wq, aq, a, out)
            }
        }
        (32, false) => product_at::<32, false>(nb, w, wq, aq, a, out),
        (32, true) => product_at::<32, true>(nb, w, wq, aq, a, out),
        _ => unreachable!("block of {}", f.block),
    }
}

/// Where a 16×16 result goes: `ptr[n * stride + m]` for `n < tokens`, `m < rows`.
#[derive(Clone, Copy)]
pub(super) struct Out {
    /// Memory to prefetch into L2 meanwhile (the next weight panel), spread over the
    /// blocks so the hints never pile up: `(start, bytes)`.
    pub prefetch: (*const u8, usize),
    pub ptr: *mut f32,
    pub stride: usize,
    pub rows: usize,
    pub tokens: usize,
    pub accumulate: bool,
}

#[repr(C, align(64))]
struct Dots([[i32; TILE * TILE]; 2]);

#[target_feature(enable = "avx512f")]
unsafe fn product_at<const BL: usize, const MIN: bool>(
    nb: usize,
    [ws, wm]: [*const f32; 2],
    wq: *const u8,
    aq: *const u8,
    [asc, asum]: [*const f32; 2],
    out: Out,
) {
    // Written by the tile stores before each read: no need to clear it on every call.
    let mut dots = std::mem::MaybeUninit::<Dots>::uninit();
    let mut acc = [_mm512_setzero_ps(); TILE];
    let step = TILE * BL;
    let c0 = dots.as_mut_ptr().cast::<i32>();
    let c1 = c0.add(TILE * TILE);
    // Two products in flight: block b + 2's runs while AVX-512 scales block b's.
    if nb > 0 {
        block_dots!(0, 1, 2, wq, BL, aq);
    }
    if nb > 1 {
        block_dots!(4, 5, 3, wq.add(step), BL, aq.add(step));
    }
    let (pf, pf_lines) = (out.prefetch.0, out.prefetch.1.div_ceil(64));
    let pf_per = pf_lines.div_ceil(nb.max(1));
    let mut b = 0;
    while b < nb {
        for l in b * pf_per..((b + 2) * pf_per).min(pf_lines) {
            _mm_prefetch(pf.add(l * 64).cast(), _MM_HINT_T1);
        }
        store_dots!(2, c0);
        if b + 2 < nb {
            block_dots!(0, 1, 2, wq.add((b + 2) * step), BL, aq.add((b + 2) * step));
        }
        scale_block::<MIN>(
            &mut acc,
            c0,
            ws.add(b * TILE),
            wm.add(b * TILE),
            asc.add(b * TILE),
            asum.add(b * TILE),
        );
        if b + 1 < nb {
            store_dots!(3, c1);
            if b + 3 < nb {
                block_dots!(4, 5, 3, wq.add((b + 3) * step), BL, aq.add((b + 3) * step));
            }
            let b1 = (b + 1) * TILE;
            scale_block::<MIN>(
                &mut acc,
                c1,
                ws.add(b1),
                wm.add(b1),
                asc.add(b1),
                asum.add(b1),
            );
        }
        b += 2;
    }
    finish(acc, out)
}

/// Super-block `sb`'s dots of both digits: into tmm`$hi` and tmm`$lo`, from the panel at
/// `w` (per 64 values: 16 rows of the high digit, then 16 of the low) and the tokens at
/// `a` (per 64 values: 16 rows of 64 bytes). The two digits share each token tile.
macro_rules! super_dots {
    ($hi:literal, $lo:literal, $w:expr, $x:expr) => {
        asm!(
            concat!("tilezero tmm", $hi),
            concat!("tilezero tmm", $lo),
            "tileloadd tmm4, [{a} + {s} * 1]",
            "tileloadd tmm0, [{w} + {s} * 1]",
            concat!("tdpbssd tmm", $hi, ", tmm0, tmm4"),
            "tileloadd tmm1, [{w} + {s} * 1 + 1024]",
            concat!("tdpbssd tmm", $lo, ", tmm1, tmm4"),
            "tileloadd tmm5, [{a} + {s} * 1 + 1024]",
            "tileloadd tmm0, [{w} + {s} * 1 + 2048]",
            concat!("tdpbssd tmm", $hi, ", tmm0, tmm5"),
            "tileloadd tmm1, [{w} + {s} * 1 + 3072]",
            concat!("tdpbssd tmm", $lo, ", tmm1, tmm5"),
            "tileloadd tmm4, [{a} + {s} * 1 + 2048]",
            "tileloadd tmm0, [{w} + {s} * 1 + 4096]",
            concat!("tdpbssd tmm", $hi, ", tmm0, tmm4"),
            "tileloadd tmm1, [{w} + {s} * 1 + 5120]",
            concat!("tdpbssd tmm", $lo, ", tmm1, tmm4"),
            "tileloadd tmm5, [{a} + {s} * 1 + 3072]",
            "tileloadd tmm0, [{w} + {s} * 1 + 6144]",
            concat!("tdpbssd tmm", $hi, ", tmm0, tmm5"),
            "tileloadd tmm1, [{w} + {s} * 1 + 7168]",
            concat!("tdpbssd tmm", $lo, ", tmm1, tmm5"),
            w = in(reg) $w,
            a = in(reg) $x,
            s = in(reg) 64usize,
            options(nostack, readonly),
        )
    };
}

/// One super-block's dots of both digits (hi, then lo).
#[repr(C, align(64))]
struct SuperDots([[i32; 2 * TILE * TILE]; 2]);

/// `product` for the folded formats over `nsb` super-blocks: `w` holds one scale per
/// super-block and row (and 8 offsets, `MIN`), `a` one scale per super-block and token
/// (and 8 scaled sums of 32).
#[target_feature(enable = "avx512f")]
unsafe fn product_folded<const MIN: bool>(
    nsb: usize,
    [ws, wm]: [*const f32; 2],
    wq: *const u8,
    aq: *const u8,
    [asc, asum]: [*const f32; 2],
    out: Out,
) {
    const W: usize = 4 * 2 * TILE * 64;
    const A: usize = 4 * TILE * 64;
    // Written by the tile stores before each read: no need to clear it on every call.
    let mut dots = std::mem::MaybeUninit::<SuperDots>::uninit();
    let mut acc = [_mm512_setzero_ps(); TILE];
    let c0 = dots.as_mut_ptr().cast::<i32>();
    let c1 = c0.add(2 * TILE * TILE);
    // Two super-blocks in flight: sb + 2's products run while AVX-512 scales sb's.
    if nsb > 0 {
        super_dots!(2, 3, wq, aq);
    }
    if nsb > 1 {
        super_dots!(6, 7, wq.add(W), aq.add(A));
    }
    let (pf, pf_lines) = (out.prefetch.0, out.prefetch.1.div_ceil(64));
    let pf_per = pf_lines.div_ceil(nsb.max(1));
    // A macro, not a closure, so that the code stays inside this AVX-512 function.
    macro_rules! scale {
        ($acc:expr, $c:expr, $sb:expr) => {
            scale_super::<MIN>(
                $acc,
                $c,
                ws.add($sb * TILE),
                wm.add($sb * 8 * TILE),
                asc.add($sb * TILE),
                asum.add($sb * 8 * TILE),
            )
        };
    }
    let mut sb = 0;
    while sb < nsb {
        for l in sb * pf_per..((sb + 2) * pf_per).min(pf_lines) {
            _mm_prefetch(pf.add(l * 64).cast(), _MM_HINT_T1);
        }
        store_dots!(2, c0);
        store_dots!(3, c0.add(TILE * TILE));
        if sb + 2 < nsb {
            super_dots!(2, 3, wq.add((sb + 2) * W), aq.add((sb + 2) * A));
        }
        scale!(&mut acc, c0, sb);
        if sb + 1 < nsb {
            store_dots!(6, c1);
            store_dots!(7, c1.add(TILE * TILE));
            if sb + 3 < nsb {
                super_dots!(6, 7, wq.add((sb + 3) * W), aq.add((sb + 3) * A));
            }
            scale!(&mut acc, c1, sb + 1);
        }
        sb += 2;
    }
    finish(acc, out)
}

/// `acc[m] += (hi[m] · 64 + lo[m]) · ascale · wscale[m] (+ Σ_j wmin[m][j] · asum[j])` for
/// one super-block: the digits recombine exactly in int32 before the one conversion.
#[inline(always)]
unsafe fn scale_super<const MIN: bool>(
    acc: &mut [__m512; TILE],
    c: *const i32,
    ws: *const f32,
    wm: *const f32,
    asc: *const f32,
    asum: *const f32,
) {
    let av = _mm512_loadu_ps(asc);
    macro_rules! row {
        ($($m:literal)*) => {$(
            let hi = _mm512_load_si512(c.add($m * TILE).cast());
            let lo = _mm512_load_si512(c.add(TILE * TILE + $m * TILE).cast());
            let x = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(hi, 6), lo));
            acc[$m] = _mm512_fmadd_ps(_mm512_mul_ps(x, av), _mm512_set1_ps(*ws.add($m)), acc[$m]);
        )*};
    }
    row!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    if MIN {
        for j in 0..8 {
            let sv = _mm512_loadu_ps(asum.add(j * TILE));
            macro_rules! min {
                ($($m:literal)*) => {$(
                    acc[$m] = _mm512_fmadd_ps(_mm512_set1_ps(*wm.add($m * 8 + j)), sv, acc[$m]);
                )*};
            }
            min!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        }
    }
}

/// Writes (or adds) the accumulated 16×16 result to `out`.
#[inline(always)]
unsafe fn finish(mut acc: [__m512; TILE], out: Out) {
    // acc[m] holds row m's tokens; the output is token-major.
    transpose(&mut acc);
    let mask: __mmask16 = if out.rows >= TILE {
        !0
    } else {
        (1 << out.rows) - 1
    };
    for (n, v) in acc.iter().enumerate().take(out.tokens) {
        let p = out.ptr.add(n * out.stride);
        let v = if out.accumulate {
            _mm512_add_ps(*v, _mm512_maskz_loadu_ps(mask, p))
        } else {
            *v
        };
        _mm512_mask_storeu_ps(p, mask, v);
    }
}

/// `acc[m] += dots[m] · ascale · wscale[m] (+ wmin[m] · asum)` for one block.
#[inline(always)]
unsafe fn scale_block<const MIN: bool>(
    acc: &mut [__m512; TILE],
    c: *const i32,
    ws: *const f32,
    wm: *const f32,
    asc: *const f32,
    asum: *const f32,
) {
    let av = _mm512_loadu_ps(asc);
    macro_rules! row {
        ($($m:literal)*) => {$(
            let x = _mm512_cvtepi32_ps(_mm512_load_si512(c.add($m * TILE).cast()));
            acc[$m] = _mm512_fmadd_ps(_mm512_mul_ps(x, av), _mm512_set1_ps(*ws.add($m)), acc[$m]);
        )*};
    }
    row!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    if MIN {
        let sv = _mm512_loadu_ps(asum);
        macro_rules! min {
            ($($m:literal)*) => {$(
                acc[$m] = _mm512_fmadd_ps(_mm512_set1_ps(*wm.add($m)), sv, acc[$m]);
            )*};
        }
        min!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    }
}

/// Transposes 16 rows of 16 lanes in four butterfly stages: stage `s` swaps, between rows
/// `i` and `i + s`, the lanes whose bit `s` differs from the row's.
#[inline(always)]
unsafe fn transpose(r: &mut [__m512; TILE]) {
    for s in [1usize, 2, 4, 8] {
        let lane = |j: usize, from_a: bool, off: isize| -> i32 {
            let src = (j as isize + off) as i32;
            if from_a {
                src
            } else {
                16 + src
            }
        };
        let mut ia = [0i32; 16];
        let mut ib = [0i32; 16];
        for j in 0..16 {
            if j & s == 0 {
                ia[j] = lane(j, true, 0);
                ib[j] = lane(j, true, s as isize);
            } else {
                ia[j] = lane(j, false, -(s as isize));
                ib[j] = lane(j, false, 0);
            }
        }
        let (ia, ib) = (
            _mm512_loadu_si512(ia.as_ptr().cast()),
            _mm512_loadu_si512(ib.as_ptr().cast()),
        );
        for i in (0..TILE).filter(|i| i & s == 0) {
            let (a, b) = (r[i], r[i + s]);
            r[i] = _mm512_permutex2var_ps(a, ia, b);
            r[i + s] = _mm512_permutex2var_ps(a, ib, b);
        }
    }
}
