//! Builds the CUDA kernels when the `cuda` feature is on; without it, does nothing.
//!
//! nvcc is found through CUDA_ROOT, CUDA_PATH, or PATH. The kernels are compiled for
//! sm_80, sm_86, sm_89 and sm_90a machine code plus sm_90 PTX (so newer GPUs can JIT them),
//! cudart is linked statically so the binary needs only the NVIDIA driver, and bindgen
//! writes the Rust bindings of kernels/cuda/wick_cuda.h.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::path::{Path, PathBuf};

    const KERNELS: &str = "kernels/cuda";

    fn find_root() -> PathBuf {
        for var in ["CUDA_ROOT", "CUDA_PATH"] {
            println!("cargo:rerun-if-env-changed={var}");
            if let Some(r) = std::env::var_os(var) {
                return PathBuf::from(r);
            }
        }
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                if dir.join("nvcc").is_file() {
                    if let Some(root) = dir.parent() {
                        return root.to_path_buf();
                    }
                }
            }
        }
        fail("nvcc was not found")
    }

    fn fail(why: &str) -> ! {
        panic!(
            "\n\nwick: the `cuda` feature needs CUDA's compiler: {why}.\n\
             Install a toolkit, or run `scripts/install-cuda.sh` (CUDA 13.0 from pip wheels) and\n\
             build with `CUDA_ROOT=$(scripts/install-cuda.sh) cargo build --features cuda`.\n\n"
        )
    }

    pub fn build() {
        let root = find_root();
        let nvcc = root.join("bin/nvcc");
        if !nvcc.is_file() {
            fail(&format!("{} does not exist", nvcc.display()));
        }
        let lib = ["lib64", "lib", "targets/x86_64-linux/lib"]
            .iter()
            .map(|d| root.join(d))
            .find(|d| d.join("libcudart_static.a").is_file())
            .unwrap_or_else(|| {
                fail(&format!(
                    "libcudart_static.a is not under {}",
                    root.display()
                ))
            });

        let mut sources: Vec<PathBuf> = std::fs::read_dir(KERNELS)
            .expect("kernels/cuda exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        sources.sort();
        println!("cargo:rerun-if-changed={KERNELS}");

        // cc picks the CUDA compiler from NVCC; `.compiler()` would make it treat nvcc as a
        // plain C++ compiler and pass it gcc-only flags.
        std::env::set_var("NVCC", &nvcc);
        let mut b = cc::Build::new();
        b.cuda(true)
            // With debug info on (our release profile keeps line tables), cc would pass
            // nvcc `-G`, which turns off every device-code optimization.
            .debug(false)
            .include(KERNELS)
            .flag("-O3")
            .flag("-std=c++17")
            .flag("-cudart=static")
            .flag("-Xcompiler=-fPIC");
        // WICK_CUDA_ARCHS (a comma list such as "90a") builds machine code for those GPUs
        // only, and no PTX: a kernel experiment then compiles in a quarter of the time. The
        // binary it makes runs on those GPUs alone.
        println!("cargo:rerun-if-env-changed=WICK_CUDA_ARCHS");
        // WICK_CUDA_TRACE=1 compiles in the launch timeline of kernels/cuda/trace.cuh.
        println!("cargo:rerun-if-env-changed=WICK_CUDA_TRACE");
        if std::env::var("WICK_CUDA_TRACE").is_ok_and(|v| v == "1") {
            b.define("WICK_TRACE", "1");
        }
        let gencodes: Vec<String> = match std::env::var("WICK_CUDA_ARCHS") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|a| format!("arch=compute_{0},code=sm_{0}", a.trim()))
                .collect(),
            _ => [
                "arch=compute_80,code=sm_80",
                "arch=compute_86,code=sm_86",
                "arch=compute_89,code=sm_89",
                "arch=compute_90a,code=sm_90a",
                "arch=compute_90,code=compute_90",
            ]
            .map(String::from)
            .to_vec(),
        };
        for gencode in gencodes {
            b.flag(format!("-gencode={gencode}"));
        }
        // Given several files, cc compiles them as relocatable device code (--device-c).
        // No kernel needs that, but building each file whole-program instead made the
        // decode step slower (H100 Q4_0 tg128 377 against 400 tok/s, docs/PERF.md session
        // 16): ptxas gives the streaming matrix-vector kernel 64 registers instead of 80,
        // and the code that streams best is the relocatable build's.
        b.files(&sources).compile("wick_cuda");

        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-lib=static=cudart_static");
        for l in ["dl", "rt", "pthread", "stdc++"] {
            println!("cargo:rustc-link-lib=dylib={l}");
        }

        let header = Path::new(KERNELS).join("wick_cuda.h");
        let out =
            PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("cuda_bindings.rs");
        bindgen::Builder::default()
            .header(header.to_string_lossy())
            .allowlist_function("wick_.*")
            .allowlist_var("WICK_.*")
            .generate()
            .unwrap_or_else(|e| fail(&format!("bindgen failed on {}: {e}", header.display())))
            .write_to_file(&out)
            .expect("write bindings");
    }
}
