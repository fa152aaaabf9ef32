//! SIMD kernels, chosen once per process from the CPU's features.
//!
//! Each level overlays its kernels onto the portable table of `scalar_kernels`; anything a
//! level does not provide keeps the scalar kernel. The quantized dots follow ggml: the
//! activations are 8-bit blocks, so each block is an exact integer dot and only the float
//! accumulation across blocks differs from the scalar reference.
//!
//! The SIMD dots assume activation bytes are never -128, which the Q8_0 / Q8_1 / Q8_K
//! quantizers guarantee (|q| <= 127); weight bytes (sub-block scales included) may take
//! any value.
//!
//! `WICK_SIMD` forces a level, for tests and benchmarks: `scalar`, `avx2`, `avxvnni`,
//! `avx512`, `avx512vnni`, `amx` on x86-64; `scalar`, `neon`, `dotprod` on aarch64. A level the
//! CPU lacks (or an unknown name) falls back to the best one it has, with a warning.

use std::sync::OnceLock;

use super::{scalar_kernels, GgmlType, Kernels};

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

/// A set of CPU features that a family of kernels needs. Later variants of one
/// architecture include the features of earlier ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Scalar,
    /// AVX2 + FMA + F16C (Haswell, Zen 1).
    Avx2,
    /// Avx2 plus AVX-VNNI's 256-bit `vpdpbusd` (Alder Lake, Zen 5).
    AvxVnni,
    /// AVX-512 F/BW/VL (Skylake-X).
    Avx512,
    /// Avx512 plus AVX512-VNNI (Ice Lake, Zen 4); BF16 dots use `vdpbf16ps` where
    /// AVX512-BF16 is present too.
    Avx512Vnni,
    /// Avx512Vnni plus AMX-INT8 tiles (Sapphire Rapids), which prefill's matrix products
    /// use (`quant::amx`); every other kernel is Avx512Vnni's.
    Amx,
    /// Advanced SIMD, which every aarch64 CPU has.
    Neon,
    /// Neon plus the `sdot` instruction (Armv8.2 dotprod).
    NeonDotprod,
}

const ALL: [Level; 8] = [
    Level::Scalar,
    Level::Avx2,
    Level::AvxVnni,
    Level::Avx512,
    Level::Avx512Vnni,
    Level::Amx,
    Level::Neon,
    Level::NeonDotprod,
];

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::AvxVnni => "avxvnni",
            Level::Avx512 => "avx512",
            Level::Avx512Vnni => "avx512vnni",
            Level::Amx => "amx",
            Level::Neon => "neon",
            Level::NeonDotprod => "dotprod",
        }
    }

    pub fn from_name(s: &str) -> Option<Level> {
        ALL.into_iter().find(|l| l.name() == s)
    }

    /// True if this CPU has every feature the level's kernels use.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::AvxVnni | Level::Avx512 | Level::Avx512Vnni => {
                x86::supported(self)
            }
            Level::Amx => Level::Avx512Vnni.is_supported() && super::amx::available(),
            #[cfg(target_arch = "aarch64")]
            Level::Neon | Level::NeonDotprod => neon::supported(self),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// Every level this CPU can run, scalar first, best last.
pub fn supported_levels() -> Vec<Level> {
    ALL.into_iter().filter(|l| l.is_supported()).collect()
}

/// The level `kernels()` uses: `WICK_SIMD` if set and supported, else the best.
pub fn selected_level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = *supported_levels()
            .last()
            .expect("scalar is always supported");
        match std::env::var("WICK_SIMD") {
            Ok(s) => match Level::from_name(s.trim()) {
                Some(l) if l.is_supported() => l,
                _ => {
                    eprintln!(
                        "wick: WICK_SIMD={s} is unknown or unsupported here; using {}",
                        best.name()
                    );
                    best
                }
            },
            Err(_) => best,
        }
    })
}

/// The scalar kernels of `t` with those of `level` laid over them.
///
/// # Panics
/// If this CPU does not support `level`: its kernels could not run.
pub fn kernels_at(level: Level, t: GgmlType) -> Option<Kernels> {
    assert!(
        level.is_supported(),
        "{} is not supported here",
        level.name()
    );
    #[allow(unused_mut)]
    let mut k = scalar_kernels(t)?;
    match level {
        Level::Scalar => {}
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::AvxVnni | Level::Avx512 | Level::Avx512Vnni => {
            x86::overlay(level, t, &mut k)
        }
        // The tiles only take batched products; single rows keep the VNNI kernels.
        #[cfg(target_arch = "x86_64")]
        Level::Amx => x86::overlay(Level::Avx512Vnni, t, &mut k),
        #[cfg(target_arch = "aarch64")]
        Level::Neon | Level::NeonDotprod => neon::overlay(level, t, &mut k),
        #[allow(unreachable_patterns)]
        _ => {}
    }
    Some(k)
}

#[cfg(test)]
mod tests;
