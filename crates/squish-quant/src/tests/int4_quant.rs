//! The INT4 quantizer: error bounds on Gaussian weights, the clipping search and the
//! importance weighting each pay off, and the stored (f16) parameters are the measured ones.

use super::util::{on_pool, rel_rms, weighted_sq_err, Rng};
use crate::{f16, int4};

fn gaussian(n: usize, k: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).gauss_vec(n * k, 0.02)
}

/// Measured on 256 x 1024 N(0, 0.02²) weights: g32 0.0811, g64 0.0929, g128 0.1015
/// (plain min/max rounding: g64 0.1026). Bounds leave ~3% room.
#[test]
fn round_trip_error_on_gaussian_weights() {
    let (n, k) = (256, 1024);
    let w = gaussian(n, k, 1);
    for (g, bound) in [(32, 0.072), (64, 0.084), (128, 0.094)] {
        let q = int4::quantize(&w, n, k, g, None);
        let e = rel_rms(&w, &int4::dequantize(&q.view()));
        eprintln!("int4 g{g}: rel RMS error {e:.4}");
        assert!(e < bound, "int4 g{g}: rel RMS error {e} >= {bound}");
    }
}

#[test]
fn clipping_search_beats_min_max_rounding() {
    let (n, k, g) = (64, 512, 64);
    let w = gaussian(n, k, 2);
    let mut rng = Rng::new(3);
    let h: Vec<f32> = (0..k).map(|_| rng.uniform() * 2.0 + 0.1).collect();
    for imp in [None, Some(&h[..])] {
        let (_, searched) = int4::quantize_with_error(&w, n, k, g, imp);
        let (_, plain) = int4::quantize_minmax(&w, n, k, g, imp);
        eprintln!("int4 g{g} weighted error: search {searched:.4e}, min/max {plain:.4e} ({:.3})", searched / plain);
        assert!(searched < 0.9 * plain, "search {searched} vs min/max {plain}");
    }
}

#[test]
fn importance_lowers_the_weighted_error() {
    let (n, k, g) = (64, 512, 64);
    let w = gaussian(n, k, 4);
    // A few channels (one per group) matter 100x more, as outlier activations do.
    let h: Vec<f32> = (0..k).map(|c| if c % 64 == 5 { 100.0 } else { 1.0 }).collect();
    let weighted = int4::quantize(&w, n, k, g, Some(&h));
    let plain = int4::quantize(&w, n, k, g, None);
    let ew = weighted_sq_err(&w, &int4::dequantize(&weighted.view()), k, Some(&h));
    let ep = weighted_sq_err(&w, &int4::dequantize(&plain.view()), k, Some(&h));
    eprintln!("int4 importance-weighted error: with importance {ew:.4e}, without {ep:.4e}");
    assert!(ew < 0.8 * ep, "with importance {ew} vs without {ep}");
}

#[test]
fn stored_parameters_give_the_measured_error() {
    let (n, k, g) = (37, 576, 64);
    let w = gaussian(n, k, 5);
    let mut rng = Rng::new(6);
    let h: Vec<f32> = (0..k).map(|_| rng.uniform()).collect();
    for imp in [None, Some(&h[..])] {
        let (q, measured) = int4::quantize_with_error(&w, n, k, g, imp);
        let actual = weighted_sq_err(&w, &int4::dequantize(&q.view()), k, imp);
        assert!((measured - actual).abs() <= 1e-9 * actual, "measured {measured} vs dequantized {actual}");
        // Codes are optimal for the stored values: no single code change lowers the error.
        let v = q.view();
        for r in 0..n {
            for c in 0..k {
                let gi = r * (k / g) + c / g;
                let (s, m) = (v.scales()[gi].to_f32(), v.mins()[gi].to_f32());
                let err = |code: u8| (w[r * k + c] - (s * code as f32 + m)).abs();
                let code = v.code(r, c);
                for other in [code.saturating_sub(1), (code + 1).min(15)] {
                    assert!(err(code) <= err(other) * (1.0 + 1e-5) + 1e-9, "row {r} col {c}");
                }
            }
        }
    }
}

#[test]
fn constant_and_zero_groups() {
    let (n, k, g) = (2, 128, 32);
    let mut w = gaussian(n, k, 7);
    w[..32].fill(0.0);
    w[32..64].fill(0.37);
    w[128 + 64..128 + 96].fill(-1.5);
    let q = int4::quantize(&w, n, k, g, None);
    let dq = int4::dequantize(&q.view());
    assert!(dq[..32].iter().all(|&v| v == 0.0));
    let c = f16::from_f32(0.37).to_f32();
    assert!(dq[32..64].iter().all(|&v| v == c), "{:?}", &dq[32..40]);
    assert!(dq[128 + 64..128 + 96].iter().all(|&v| v == -1.5));
    // Zero importance on a whole group falls back to uniform weights rather than failing.
    let h: Vec<f32> = (0..k).map(|c| if c < 32 { 0.0 } else { 1.0 }).collect();
    let (q2, err) = int4::quantize_with_error(&w, n, k, g, Some(&h));
    assert!(err.is_finite());
    assert!(q2.scales().iter().all(|s| s.to_f32() >= 0.0));
}

#[test]
fn quantize_does_not_depend_on_the_thread_count() {
    let (n, k, g) = (50, 256, 64);
    let w = gaussian(n, k, 8);
    let one = on_pool(1, || int4::quantize_with_error(&w, n, k, g, None));
    let two = on_pool(2, || int4::quantize_with_error(&w, n, k, g, None));
    assert_eq!(one.0, two.0);
    assert_eq!(one.1, two.1);
}

#[test]
#[should_panic(expected = "int4 quantize")]
fn quantize_rejects_a_bad_group_size() {
    int4::quantize(&[0.0; 128], 1, 128, 48, None);
}
