//! What the CUDA test binaries share: the GPU (or a skip note) and the tiny models.

use candle_core::Device;
use squish_model::convert::{convert, ConvertOptions, Scheme};
use std::path::{Path, PathBuf};

/// CUDA device 0, or None with a note on stderr (the binary has no CUDA or the machine no GPU).
pub fn gpu() -> Option<Device> {
    match squish_backend::open_device(squish_backend::DeviceRequest::Cuda(0)) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// A committed tiny model (tests/fixtures/tiny), found from CARGO_MANIFEST_DIR, which a test
/// binary carried to a GPU machine gets from benchmarks/gpu/run.sh.
pub fn tiny(name: &str) -> PathBuf {
    Path::new(&*std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into())).join("../../tests/fixtures/tiny").join(name)
}

/// The tiny model `name` converted to `scheme` in the temporary directory.
pub fn converted(name: &str, scheme: Scheme) -> PathBuf {
    let out = std::env::temp_dir().join(format!("squish-cuda-test-{name}-{scheme:?}"));
    let opts = ConvertOptions { scheme, group_size: None, embedding_scheme: None, calib: None, calib_tokens: 0, tune_epochs: 0, force: true };
    convert(&tiny(name), &out, &opts, &mut |_| {}).unwrap();
    out
}
