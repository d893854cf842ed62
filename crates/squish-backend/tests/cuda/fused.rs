//! The fused decode-step kernels (src/cuda/fused.cu) against f64 references on the same bf16
//! inputs: silu(gate) * up on the two halves of a stacked product, and the residual add with
//! the RMS norm after it. The sum must equal the bf16-rounded sum exactly (it is the residual
//! stream); the rest within 1% of each row's largest |value|.

use super::{bf16_round, compare, download, gpu, noise, upload};
use squish_backend::{add_rms_norm, silu_mul};

#[test]
fn silu_mul_on_stacked_halves_matches_the_reference() {
    let Some(dev) = gpu() else { return };
    for (t, width) in [(1, 4864), (3, 1536), (9, 96)] {
        let joint = bf16_round(&noise(t * 2 * width, t as u32).iter().map(|v| v * 8.0).collect::<Vec<_>>());
        let stacked = upload(&joint, &[1, t, 2 * width], &dev);
        let (gate, up) = (stacked.narrow(2, 0, width).unwrap(), stacked.narrow(2, width, width).unwrap());
        let got = silu_mul(&gate, &up).unwrap();
        assert_eq!(got.dims(), &[1, t, width]);
        let want: Vec<f32> = (0..t * width)
            .map(|i| {
                let (r, c) = (i / width, i % width);
                let (g, u) = (joint[r * 2 * width + c] as f64, joint[r * 2 * width + width + c] as f64);
                (g / (1.0 + (-g).exp()) * u) as f32
            })
            .collect();
        compare(&format!("silu_mul {t} x {width}"), &download(&got), &want, width);
    }
}

#[test]
fn add_rms_norm_matches_the_reference() {
    let Some(dev) = gpu() else { return };
    let eps = 1e-6f32;
    for (t, width) in [(1, 3584), (5, 576), (2, 100)] {
        let x = bf16_round(&noise(t * width, 7 + t as u32).iter().map(|v| v * 4.0).collect::<Vec<_>>());
        let y = bf16_round(&noise(t * width, 70 + t as u32));
        let w = bf16_round(&noise(width, 700).iter().map(|v| v + 1.0).collect::<Vec<_>>());
        let (sum, normed) = add_rms_norm(&upload(&x, &[1, t, width], &dev), &upload(&y, &[1, t, width], &dev), &upload(&w, &[width], &dev), eps).unwrap();
        assert_eq!((sum.dims(), normed.dims()), (&[1, t, width][..], &[1, t, width][..]));
        let want_sum: Vec<f32> = bf16_round(&x.iter().zip(&y).map(|(a, b)| a + b).collect::<Vec<_>>());
        assert_eq!(download(&sum), want_sum, "{t} x {width}: the residual sum");
        let want: Vec<f32> = want_sum
            .chunks(width)
            .flat_map(|row| {
                let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / width as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                row.iter().zip(&w).map(move |(&v, &w)| (v as f64 * inv * w as f64) as f32).collect::<Vec<_>>()
            })
            .collect();
        compare(&format!("add_rms_norm {t} x {width}"), &download(&normed), &want, width);
    }
}
