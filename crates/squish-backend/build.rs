//! With the `cuda` feature, compiles src/cuda/*.cu (quant, lowbit, attention, prefill, fused) to PTX for CUDA_COMPUTE_CAP (default 80,
//! the oldest with bf16); the driver JIT-compiles that small module for the GPU at first use.
//! Without the feature nothing runs, so CPU builds need no CUDA toolkit.

use std::{env, path::PathBuf, process::Command};

const KERNELS: [&str; 5] = ["quant", "lowbit", "attention", "prefill", "fused"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    for kernel in KERNELS {
        println!("cargo::rerun-if-changed=src/cuda/{kernel}.cu");
    }
    // Headers the .cu files include.
    for header in ["common", "mma_tile"] {
        println!("cargo::rerun-if-changed=src/cuda/{header}.cuh");
    }
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap = cap.trim().replace('.', "");
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for kernel in KERNELS {
        let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join(format!("{kernel}.ptx"));
        let src = format!("src/cuda/{kernel}.cu");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), &src, "-o"])
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("running {nvcc} (the CUDA compiler; scripts/cuda-toolkit.sh installs one): {e}"));
        assert!(status.success(), "{nvcc} failed on {src}");
    }
}
