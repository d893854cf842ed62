//! squish-backend's GPU kernels (src/cuda) against references computed on the CPU: the
//! quantized matrices (INT8, INT4, INT3, INT2, rotated or not), decode and prompt attention,
//! the fused decode-step kernels. Skipped (passing, with a note) without a CUDA build and
//! device.

mod attention;
mod fused;
mod lowbit;
mod prefill;
mod quant;

use candle_core::{DType, Device, Tensor};
use squish_backend::{open_device, DeviceRequest};

fn gpu() -> Option<Device> {
    open_device(DeviceRequest::Cuda(0)).map_err(|e| eprintln!("skipped: no CUDA device ({e})")).ok()
}

/// Reproducible values in [-0.5, 0.5).
fn noise(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

fn bf16_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect()
}

/// Each row of n values within 1% of that row's largest |value| in `want`.
fn compare(label: &str, got: &[f32], want: &[f32], n: usize) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    for (r, (g, w)) in got.chunks(n).zip(want.chunks(n)).enumerate() {
        let scale = w.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let d = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 0.01 * scale, "{label}: row {r}: max |diff| {d} vs largest |value| {scale}");
    }
}

/// bf16 values in [-amplitude/2, amplitude/2).
fn values(len: usize, seed: u32, amplitude: f32) -> Vec<f32> {
    bf16_round(&noise(len, seed).iter().map(|v| v * amplitude).collect::<Vec<_>>())
}

fn bf16(x: f64) -> f64 {
    half::bf16::from_f64(x).to_f64()
}

fn upload(x: &[f32], shape: &[usize], dev: &Device) -> Tensor {
    Tensor::from_vec(x.to_vec(), shape, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap().to_device(dev).unwrap()
}

fn download(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}
