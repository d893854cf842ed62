//! What every model-running subcommand does first: CPU threads, then the device.

use anyhow::Result;
use squish_backend::{Device, DeviceRequest};

/// Sets the thread count (default: all cores) and opens the device.
pub fn device(device: &str, threads: Option<usize>) -> Result<(Device, usize)> {
    let request: DeviceRequest = device.parse()?;
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    squish_backend::configure_threads(threads);
    let device = squish_backend::open_device(request)?;
    // Which GPU, or what `auto` took in a build that has one: said once, on stderr.
    if !device.is_cpu() || request == DeviceRequest::Auto && squish_backend::built_with().len() > 1 {
        eprintln!("device: {}", squish_backend::describe(&device));
    }
    Ok((device, threads))
}

/// What KV caches store keys and values as (`--kv-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCache {
    /// 4 bytes per value: exact
    F32,
    /// 2 bytes per value: half the cache memory and of what attention reads per step (every
    /// key and value rounded to 11 significant bits, as llama.cpp's default cache does)
    F16,
}

impl KvCache {
    /// Makes `model`'s new caches store this type.
    pub fn apply(self, model: &mut squish_model::Model) -> Result<()> {
        let dtype = match self {
            KvCache::F32 => squish_backend::DType::F32,
            KvCache::F16 => squish_backend::DType::F16,
        };
        Ok(model.set_kv_dtype(dtype)?)
    }
}

/// A progress bar on stderr in squish's style; hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Peak resident memory of this process (Linux: VmHWM), 0 where unknown.
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
