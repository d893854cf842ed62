//! The byte layouts as specified (INT4 nibble packing per 64-block, row-major groups) and
//! the view constructors' shape checks: bad shapes are errors, never panics.

use crate::{f16, int4, int8, Int4Matrix, Int4Owned, Int8Matrix};

#[test]
fn int4_packing_matches_the_spec() {
    let (n, k, g) = (3, 128, 64);
    let q = |r: usize, c: usize| ((c * 7 + r * 3) % 16) as u8;
    let mut codes = vec![0u8; n * k / 2];
    for r in 0..n {
        let row: Vec<u8> = (0..k).map(|c| q(r, c)).collect();
        int4::pack_row(&row, &mut codes[r * k / 2..(r + 1) * k / 2]);
    }
    // byte j of 64-block b in row r = q[64b + j] | q[64b + 32 + j] << 4
    for r in 0..n {
        for b in 0..k / 64 {
            for j in 0..32 {
                let byte = codes[r * k / 2 + b * 32 + j];
                assert_eq!(byte, q(r, 64 * b + j) | (q(r, 64 * b + 32 + j) << 4));
            }
        }
    }
    // scale 1, min 0.5 -> dequantized = q + 0.5; scales/mins are row-major per group.
    let ng = k / g;
    let scales: Vec<f16> = (0..n * ng).map(|i| f16::from_f32(1.0 + (i % ng) as f32)).collect();
    let mins = vec![f16::from_f32(0.5); n * ng];
    let w = Int4Matrix::new(&codes, &scales, &mins, n, k, g).expect("valid view");
    let dq = int4::dequantize(&w);
    for r in 0..n {
        for c in 0..k {
            assert_eq!(w.code(r, c), q(r, c));
            assert_eq!(dq[r * k + c], (1.0 + (c / g) as f32) * q(r, c) as f32 + 0.5);
        }
    }
}

#[test]
fn int8_layout_is_row_major_with_group_scales() {
    let (n, k, g) = (2, 64, 32);
    let codes: Vec<i8> = (0..n * k).map(|i| (i as i32 % 255 - 127) as i8).collect();
    let scales: Vec<f16> = (0..n * k / g).map(|i| f16::from_f32(0.25 * (i + 1) as f32)).collect();
    let w = Int8Matrix::new(&codes, &scales, n, k, g).expect("valid view");
    let dq = int8::dequantize(&w);
    for (i, &v) in dq.iter().enumerate() {
        assert_eq!(v, 0.25 * (i / g + 1) as f32 * codes[i] as f32);
    }
    assert_eq!(w.bytes(), n * k + 2 * n * k / g);
    assert_eq!(Int8Matrix::bits_per_weight(32), 8.5);
    assert_eq!(Int4Matrix::bits_per_weight(64), 4.5);
}

#[test]
fn int4_view_rejects_bad_shapes() {
    let z = f16::ZERO;
    let ok = |n: usize, k: usize, g: usize| {
        Int4Matrix::new(&vec![0u8; n * k / 2], &vec![z; n * k / g.max(1)], &vec![z; n * k / g.max(1)], n, k, g).map(|_| ())
    };
    assert!(ok(2, 128, 64).is_ok());
    assert!(ok(2, 128, 32).is_ok());
    assert!(ok(2, 192, 96).is_ok());
    assert!(ok(0, 128, 64).is_ok());
    for (n, k, g) in [(2, 96, 32), (2, 0, 32), (2, 128, 0), (2, 128, 48), (2, 128, 96), (2, 64, 128)] {
        let err = ok(n, k, g).expect_err("bad shape must be an error");
        assert!(err.to_string().starts_with("int4:"), "{err}");
    }
    let (codes, s) = (vec![0u8; 128], vec![z; 4]);
    assert!(Int4Matrix::new(&codes[..127], &s, &s, 2, 128, 64).unwrap_err().to_string().contains("codes"));
    assert!(Int4Matrix::new(&codes, &s[..3], &s, 2, 128, 64).unwrap_err().to_string().contains("scales"));
    assert!(Int4Matrix::new(&codes, &s, &s[..3], 2, 128, 64).unwrap_err().to_string().contains("mins"));
    assert!(Int4Matrix::new(&codes, &s, &s, usize::MAX, 128, 64).unwrap_err().to_string().contains("overflows"));
    assert!(Int4Owned::from_parts(vec![0; 10], vec![z; 4], vec![z; 4], 2, 128, 64).is_err());
}

#[test]
fn int8_view_rejects_bad_shapes() {
    let z = f16::ZERO;
    let ok = |n: usize, k: usize, g: usize| Int8Matrix::new(&vec![0i8; n * k], &vec![z; n * k / g.max(1)], n, k, g).map(|_| ());
    assert!(ok(3, 96, 32).is_ok());
    assert!(ok(3, 96, 96).is_ok());
    for (n, k, g) in [(3, 48, 16), (3, 0, 32), (3, 96, 0), (3, 96, 64), (3, 64, 48)] {
        let err = ok(n, k, g).expect_err("bad shape must be an error");
        assert!(err.to_string().starts_with("int8:"), "{err}");
    }
    let (codes, s) = (vec![0i8; 192], vec![z; 6]);
    assert!(Int8Matrix::new(&codes[..191], &s, 2, 96, 32).unwrap_err().to_string().contains("codes"));
    assert!(Int8Matrix::new(&codes, &s[..5], 2, 96, 32).unwrap_err().to_string().contains("scales"));
    assert!(Int8Matrix::new(&codes, &s, usize::MAX / 2, 96, 32).unwrap_err().to_string().contains("overflows"));
}
