//! Choosing and opening the device, and the CPU thread count.

use crate::{BackendError, Result};
use candle_core::Device;
use std::str::FromStr;

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceRequest {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || BackendError::BadDevice(s.to_string());
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (k, i.parse::<usize>().map_err(|_| bad())?),
            None => (s, 0),
        };
        match kind {
            "auto" if !s.contains(':') => Ok(Self::Auto),
            "cpu" if !s.contains(':') => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(index)),
            "metal" => Ok(Self::Metal(index)),
            _ => Err(bad()),
        }
    }
}

/// The accelerator backends compiled into this binary (the CPU is always there).
pub fn built_with() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// Opens the requested device. `auto` takes CUDA device 0 when built with CUDA and one is
/// present, else the CPU.
pub fn open_device(req: DeviceRequest) -> Result<Device> {
    match req {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Auto => {
            if cfg!(feature = "cuda") {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        DeviceRequest::Cuda(i) => {
            if !cfg!(feature = "cuda") {
                return Err(BackendError::NotBuilt("cuda"));
            }
            Device::new_cuda(i).map_err(|source| BackendError::Open { what: format!("cuda:{i}"), source })
        }
        DeviceRequest::Metal(_) => Err(BackendError::NotBuilt("metal")),
    }
}

/// Sets the number of CPU threads for all tensor work. Must run before the first tensor op:
/// candle's matmul reads RAYON_NUM_THREADS and its other kernels use rayon's global pool.
pub fn configure_threads(threads: usize) {
    let threads = threads.max(1);
    // SAFETY: called once at start-up, before any other thread exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    // Fails only if the pool was already built, in which case the env var still governs matmul.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
}

/// Runs `f` on a worker of the compute pool. Kernels called from there fork from a worker
/// whose partner is usually still spinning, instead of waking the pool from outside and
/// sleeping until it finishes: two context switches saved per matmul, which at decode
/// (hundreds of small matmuls per token) is a large share of the time.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("rayon::scope runs its body")
}
