//! The Hadamard rotation: equal to its dense definition, orthogonal, its signs stored and
//! read back exactly, the Hessian mapped as the inputs are, and (what it is for) INT3 codes
//! of rotated weights giving a smaller output error than unrotated ones on weights with
//! outlier inputs.

use super::util::Rng;
use crate::rotate::{block_for, Rotation};
use crate::{int3, int4};

/// R as a dense k x k matrix from the definition: blockdiag(H_b) · D / √b, with
/// H_b[i][j] = (-1)^popcount(i & j).
fn dense(r: &Rotation) -> Vec<f64> {
    let (k, b) = (r.k(), r.block());
    let mut signs = vec![0f64; k];
    for (i, s) in signs.iter_mut().enumerate() {
        let mut e = vec![0f64; k];
        e[i] = 1.0;
        r.apply(&mut e);
        // Column i of R has one non-zero block; its first entry is sign_i / √b.
        *s = e[i / b * b] * (b as f64).sqrt();
    }
    let mut m = vec![0f64; k * k];
    for i in 0..k {
        for j in (i / b * b)..(i / b * b + b) {
            let h = if (i % b & j % b).count_ones() % 2 == 0 { 1.0 } else { -1.0 };
            m[i * k + j] = h * signs[j] / (b as f64).sqrt();
        }
    }
    m
}

#[test]
fn rotation_is_the_signed_block_hadamard_and_orthogonal() {
    assert_eq!((block_for(576), block_for(1536), block_for(4096), block_for(96)), (64, 512, 512, 32));
    for k in [576, 1536] {
        let r = Rotation::random(k, 42);
        let signs: Vec<u8> = r.sign_bits();
        assert!(signs.iter().map(|b| b.count_ones()).sum::<u32>() > k as u32 / 3, "about half the signs are negative");
        let m = dense(&r);
        // The signs read back from the dense form are ±1, and apply equals R x.
        let x: Vec<f64> = Rng::new(k as u64).gauss_vec(k, 1.0).iter().map(|&v| v as f64).collect();
        let mut y = x.clone();
        r.apply(&mut y);
        for i in 0..k {
            let want: f64 = (0..k).map(|j| m[i * k + j] * x[j]).sum();
            assert!((y[i] - want).abs() < 1e-12, "k{k} [{i}]: {} vs {want}", y[i]);
        }
        // Orthogonal: the inverse undoes it and norms are kept.
        let (n0, n1): (f64, f64) = (x.iter().map(|v| v * v).sum(), y.iter().map(|v| v * v).sum());
        assert!((n0 - n1).abs() < 1e-9 * n0);
        r.apply_inverse(&mut y);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-12));
        // Rows of a t x k matrix each rotate alone (f32 as at run time).
        let xs: Vec<f32> = Rng::new(3).gauss_vec(3 * k, 1.0);
        let mut all = xs.clone();
        r.apply(&mut all);
        let mut second = xs[k..2 * k].to_vec();
        r.apply(&mut second);
        assert_eq!(&all[k..2 * k], &second[..]);
    }
}

#[test]
fn rotation_signs_round_trip_and_are_checked() {
    let r = Rotation::random(192, 7);
    let bits = r.sign_bits();
    assert_eq!(bits.len(), 24);
    assert_eq!(Rotation::from_sign_bits(&bits, 192, 64).unwrap(), r);
    assert!(Rotation::from_sign_bits(&bits[1..], 192, 64).unwrap_err().to_string().contains("sign bytes"));
    for bad in [0, 48, 128, 1024] {
        assert!(Rotation::from_sign_bits(&bits, 192, bad).is_err(), "block {bad}");
    }
    assert_ne!(Rotation::random(192, 8), r, "another seed, other signs");
}

#[test]
fn rotated_hessian_is_r_h_rt() {
    let k = 128;
    let r = Rotation::random(k, 5);
    let x: Vec<f64> = Rng::new(9).gauss_vec(4 * k, 1.0).iter().map(|&v| v as f64).collect();
    let mut h = vec![0f64; k * k];
    for row in x.chunks(k) {
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] += row[i] * row[j];
            }
        }
    }
    // The Hessian of the rotated inputs, from the inputs themselves.
    let mut xr = x.clone();
    r.apply(&mut xr);
    let mut want = vec![0f64; k * k];
    for row in xr.chunks(k) {
        for i in 0..k {
            for j in 0..k {
                want[i * k + j] += row[i] * row[j];
            }
        }
    }
    r.rotate_symmetric(&mut h);
    assert!(h.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-9), "R H Rᵀ");
}

/// Weights with a few strong input columns (as real layers have): quantizing W Rᵀ and
/// feeding R x gives W x with a clearly smaller error than quantizing W itself, at 3 bits
/// and at 4.
#[test]
fn rotation_lowers_the_output_error_of_outlier_weights() {
    let (n, k, g, t) = (64, 576, 64, 32);
    let mut rng = Rng::new(21);
    let mut w = rng.gauss_vec(n * k, 0.02);
    for (i, v) in w.iter_mut().enumerate() {
        if i % k % 61 == 7 {
            *v *= 12.0;
        }
    }
    let x = rng.gauss_vec(t * k, 1.0);
    let r = Rotation::random(k, 1);
    let (mut wr, mut xr) = (w.clone(), x.clone());
    r.apply(&mut wr);
    r.apply(&mut xr);
    // y = W x per token, exact, and each quantization's error against it.
    let y: Vec<f64> = x.chunks(k).flat_map(|xt| (0..n).map(|row| (0..k).map(|c| (w[row * k + c] * xt[c]) as f64).sum::<f64>()).collect::<Vec<_>>()).collect();
    let err = |deq: &[f32], xs: &[f32]| -> f64 {
        let mut e = 0.0;
        for (tok, xt) in xs.chunks(k).enumerate() {
            for row in 0..n {
                let got: f64 = (0..k).map(|c| (deq[row * k + c] * xt[c]) as f64).sum();
                e += (got - y[tok * n + row]).powi(2);
            }
        }
        e
    };
    let plain3 = err(&int3::dequantize(&int3::quantize(&w, n, k, g, None).view()), &x);
    let rot3 = err(&int3::dequantize(&int3::quantize(&wr, n, k, g, None).view()), &xr);
    assert!(rot3 < 0.7 * plain3, "int3: rotated {rot3} vs plain {plain3}");
    let plain4 = err(&int4::dequantize(&int4::quantize(&w, n, k, g, None).view()), &x);
    let rot4 = err(&int4::dequantize(&int4::quantize(&wr, n, k, g, None).view()), &xr);
    assert!(rot4 < 0.7 * plain4, "int4: rotated {rot4} vs plain {plain4}");
}
