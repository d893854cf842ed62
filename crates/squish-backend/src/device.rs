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

/// One line naming `device`: `cpu`, or for a GPU its index, name, memory (free of total) and
/// compute capability, e.g. `cuda:0 (NVIDIA H200, 139.2 of 139.8 GiB free, compute 9.0)`.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
            let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
            let (major, minor) = ctx.compute_capability().unwrap_or((0, 0));
            format!("cuda:{} ({name}, {:.1} of {:.1} GiB free, compute {major}.{minor})", ctx.ordinal(), gib(free), gib(total))
        }
        other => format!("{other:?}"),
    }
}

/// Every device this binary can run on, one line each (`squish info --devices`): the CPU
/// with its core count, then each CUDA GPU as `describe` names it, or why none is usable.
pub fn devices() -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[allow(unused_mut)] // pushed to in CUDA builds
    let mut lines = vec![format!("cpu ({cores} cores)")];
    #[cfg(feature = "cuda")]
    match candle_core::cuda_backend::cudarc::driver::CudaContext::device_count() {
        Ok(0) => lines.push("cuda: no GPU found".into()),
        Ok(n) => {
            for i in 0..n as usize {
                lines.push(match Device::new_cuda(i) {
                    Ok(d) => describe(&d),
                    Err(e) => format!("cuda:{i}: cannot open ({e})"),
                });
            }
        }
        Err(e) => lines.push(format!("cuda: no usable driver ({e})")),
    }
    lines
}

/// Bytes free on a GPU device (None on the CPU): what a model's upload and its KV caches must
/// fit in.
pub fn free_memory(device: &Device) -> Option<usize> {
    gpu_memory(device).map(|(free, _)| free)
}

/// (free, total) bytes on a GPU device; None on the CPU.
pub fn gpu_memory(device: &Device) -> Option<(usize, usize)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d.cuda_stream().context().mem_get_info().ok(),
        _ => None,
    }
}

/// The dtype a decoder computes in on `device`: f32 on the CPU (its kernels take f32 and
/// quantize activations themselves), bf16 on GPUs (tensor cores, half the bytes).
pub fn compute_dtype(device: &Device) -> candle_core::DType {
    match device {
        Device::Cpu => candle_core::DType::F32,
        _ => candle_core::DType::BF16,
    }
}

/// Sets the number of CPU threads for all tensor work. Must run before the first tensor op:
/// candle's matmul reads RAYON_NUM_THREADS and its other kernels use rayon's global pool.
pub fn configure_threads(threads: usize) {
    let threads = threads.max(1);
    // SAFETY: called once at start-up, before any other thread exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    // candle's pool for large elementwise ops spins ~25k pauses (about a millisecond) after
    // each op before it parks; with every core already running a compute thread that spin
    // takes a core from the matmul that follows (17% of the CPU while tuning int2). A short
    // spin still catches back-to-back ops. The user's own setting wins.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: as above.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "500") };
    }
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
