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

/// The f64 reference of one query's attention: `q` (d values, rotated and scaled as the kernel
/// rounds it) over the keys and values of consecutive positions (d values each).
fn attend(q: &[f64], keys: &[f32], values: &[f32], d: usize) -> Vec<f64> {
    let scores: Vec<f64> = keys.chunks(d).map(|k| q.iter().zip(k).map(|(a, &b)| a * b as f64).sum::<f64>() / (d as f64).sqrt()).collect();
    let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
    let total: f64 = weights.iter().sum();
    (0..d).map(|e| weights.iter().zip(values.chunks(d)).map(|(w, v)| w * v[e] as f64).sum::<f64>() / total).collect()
}

/// One head's bf16 output within 1% of its largest |value| in `want`.
fn compare_head(label: &str, got: &[f32], want: &[f64]) {
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(want).map(|(&a, b)| (a as f64 - b).abs()).fold(0f64, f64::max);
    assert!(diff <= 0.01 * scale, "{label}: max |diff| {diff} vs largest |value| {scale}");
}

/// Rows of `bias.len()` values each plus the bias, rounded to bf16 (as candle's bf16 add stores
/// them): what the attention kernels compute from un-biased rows and a bias.
fn plus(rows: &[f32], bias: &[f32]) -> Vec<f32> {
    bf16_round(&rows.chunks(bias.len()).flat_map(|r| r.iter().zip(bias).map(|(a, b)| a + b)).collect::<Vec<_>>())
}
