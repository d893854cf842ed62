//! Activation quantization: the AVX2 version gives the scalar version's codes and scales
//! bit for bit (ties round to even in both), the codes reconstruct x within d/2, and the
//! group sums and centred residuals are what they claim.

use super::util::Rng;
use crate::act::{quantize_token_scalar, ActQ8, TokenOut, CODE_CENTER};
use crate::isa::{detect, Isa};

#[test]
fn codes_scales_and_sums() {
    let (k, g) = (256, 64);
    let mut x = Rng::new(21).gauss_vec(k, 1.5);
    x[..32].fill(0.0); // an all-zero block: scale 0, codes 0
    // Exact ties after scaling by 127/127 = 1: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0.
    x[32] = 127.0;
    x[33..37].copy_from_slice(&[0.5, 1.5, 2.5, -0.5]);
    let (mut q, mut d) = (vec![0i8; k], vec![0.0f32; k / 32]);
    let (mut sx, mut rc) = (vec![0.0f32; k / g], vec![0.0f32; k / g]);
    quantize_token_scalar(&x, g, TokenOut { q: &mut q, d: &mut d, sx: &mut sx, rc: &mut rc, center: CODE_CENTER });
    assert_eq!(d[0], 0.0);
    assert!(q[..32].iter().all(|&v| v == 0));
    assert_eq!(&q[32..37], &[127, 0, 2, 2, 0]);
    for (i, (&xv, &qv)) in x.iter().zip(&q).enumerate() {
        assert!((xv - d[i / 32] * qv as f32).abs() <= d[i / 32] * 0.5 * (1.0 + 1e-6), "input {i}");
    }
    for gi in 0..k / g {
        let span = gi * g..(gi + 1) * g;
        let exact: f64 = x[span.clone()].iter().map(|&v| v as f64).sum();
        let resid: f64 = span.map(|i| x[i] as f64 - d[i / 32] as f64 * q[i] as f64).sum();
        assert!((sx[gi] as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()));
        assert!((rc[gi] as f64 - CODE_CENTER as f64 * resid).abs() <= 1e-5 * (1.0 + exact.abs()));
    }

    if detect() == Isa::Scalar {
        return;
    }
    let t = 3;
    let xs: Vec<f32> = [x.clone(), Rng::new(22).gauss_vec(2 * k, 40.0)].concat();
    let (mut a, mut b) = (ActQ8::default(), ActQ8::default());
    a.quantize(Isa::Scalar, &xs, t, k, g);
    b.quantize(detect(), &xs, t, k, g);
    assert_eq!(a.q, b.q);
    assert_eq!(a.dtok, b.dtok);
    assert_eq!(a.d, b.d);
    assert_eq!(a.d.len(), (k / 32) * 8);
    for (u, v) in a.sx.iter().zip(&b.sx).chain(a.rc.iter().zip(&b.rc)) {
        assert!((u - v).abs() <= 1e-4 * (1.0 + u.abs()), "{u} vs {v}");
    }
}
