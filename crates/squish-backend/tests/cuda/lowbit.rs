//! The kernels for squish's INT3 and INT2 matrices (src/cuda/lowbit.cu) against squish-quant's
//! scalar references on the same packed bytes, stored plain and rotated (the GPU rotates the
//! inputs first): the GEMV (up to 8 rows), the tensor-core kernel (9 to 64) and the
//! dequantize-then-cuBLAS path (more), groups of 32 and 64; and stacking, which needs one
//! kind, group, codebook and rotation.
//!
//! Tolerance: as for INT4 (quant.rs), 1% of each row's largest |value|. The reference takes
//! the rotated inputs rounded to bf16, as the GPU passes them to the product.

use super::{bf16_round, compare, gpu, noise};
use candle_core::{DType, Device, Tensor};
use squish_backend::QuantMatrix;
use squish_quant::rotate::Rotation;
use squish_quant::{int2, int3};

/// The CPU's product of a stored matrix with t rows of (already rotated) inputs.
type Reference<'a> = &'a dyn Fn(&[f32], usize, &mut [f32]);

/// `m` against `reference` at batches for each of its paths.
fn check(label: &str, m: &QuantMatrix, rotation: Option<&Rotation>, reference: Reference, dev: &Device) {
    let (n, k) = m.shape();
    for t in [1, 3, 8, 9, 40, 64, 65] {
        let x = bf16_round(&noise(t * k, t as u32 + 11));
        let xt = Tensor::from_vec(x.clone(), (1, t, k), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap().to_device(dev).unwrap();
        let mut xr = x.clone();
        if let Some(r) = rotation {
            r.apply(&mut xr);
            xr = bf16_round(&xr);
        }
        let mut want = vec![0f32; t * n];
        reference(&xr, t, &mut want);
        let got = m.matmul(&xt).unwrap();
        assert_eq!(got.dims(), &[1, t, n], "{label}");
        compare(&format!("{label}, {t} rows"), &got.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap(), &want, n);
    }
}

#[test]
fn int3_and_int2_kernels_match_the_references() {
    let Some(dev) = gpu() else { return };
    for (n, k, g) in [(200, 576, 64), (96, 1536, 32), (37, 64, 64)] {
        let w = noise(n * k, (n + k) as u32);
        let q3 = int3::quantize(&w, n, k, g, None);
        let q2 = int2::quantize(&w, n, k, g, None);
        let (v3, v2) = (q3.view(), q2.view());
        let rotation = Rotation::random(k, 5);
        for rotated in [false, true] {
            let r = rotated.then_some(&rotation);
            let label = format!("{n}x{k} g{g}, rotated {rotated}");
            let mut m3 = QuantMatrix::int3(v3.codes(), v3.scales(), v3.mins(), n, k, g, &dev).unwrap();
            let mut m2 = QuantMatrix::int2(v2.codes(), v2.scales(), v2.mins(), q2.table(), n, k, g, &dev).unwrap();
            if let Some(r) = r {
                m3 = m3.rotated(r.signs(), r.block()).unwrap();
                m2 = m2.rotated(r.signs(), r.block()).unwrap();
            }
            check(&format!("int3 {label}"), &m3, r, &|x, t, out| int3::matmul_ref(&v3, x, t, out), &dev);
            check(&format!("int2 {label}"), &m2, r, &|x, t, out| int2::matmul_ref(&v2, x, t, out), &dev);
        }
    }
}

#[test]
fn low_bit_matrices_stack_only_alike() {
    let Some(dev) = gpu() else { return };
    let (k, g) = (576, 64);
    let rotation = Rotation::random(k, 5);
    let parts: Vec<_> = [128, 64].iter().enumerate().map(|(i, &n)| (n, int3::quantize(&noise(n * k, 60 + i as u32), n, k, g, None))).collect();
    let mats: Vec<QuantMatrix> = parts
        .iter()
        .map(|(n, q)| {
            let v = q.view();
            QuantMatrix::int3(v.codes(), v.scales(), v.mins(), *n, k, g, &dev).unwrap().rotated(rotation.signs(), rotation.block()).unwrap()
        })
        .collect();
    let stacked = QuantMatrix::stack(&mats.iter().collect::<Vec<_>>()).unwrap().expect("same kind, group and rotation");
    let views: Vec<_> = parts.iter().map(|(_, q)| q.view()).collect();
    check(
        "stacked rotated int3",
        &stacked,
        Some(&rotation),
        &|x, t, out| {
            // The parts' outputs side by side in each row.
            let mut at = 0;
            for v in &views {
                let mut mine = vec![0f32; t * v.n()];
                int3::matmul_ref(v, x, t, &mut mine);
                for (row, part) in out.chunks_mut(192).zip(mine.chunks(v.n())) {
                    row[at..at + v.n()].copy_from_slice(part);
                }
                at += v.n();
            }
        },
        &dev,
    );
    let plain = {
        let v = parts[0].1.view();
        QuantMatrix::int3(v.codes(), v.scales(), v.mins(), 128, k, g, &dev).unwrap()
    };
    assert!(QuantMatrix::stack(&[&mats[0], &plain]).unwrap().is_none(), "rotated and plain must not stack");

    // INT2: the same codebook stacks (the codebook goes after all the rows), another does not.
    let q2 = int2::quantize(&noise(64 * k, 70), 64, k, g, None);
    let other = int2::quantize(&noise(64 * k, 71), 64, k, g, None);
    let up = |q: &int2::Int2Quantized| {
        let v = q.view();
        QuantMatrix::int2(v.codes(), v.scales(), v.mins(), q.table(), 64, k, g, &dev).unwrap()
    };
    let (a, b) = (up(&q2), up(&q2));
    let twice = QuantMatrix::stack(&[&a, &b]).unwrap().expect("one codebook");
    let v2 = q2.view();
    check(
        "int2 stacked with itself",
        &twice,
        None,
        &|x, t, out| {
            let mut once = vec![0f32; t * 64];
            int2::matmul_ref(&v2, x, t, &mut once);
            for (row, part) in out.chunks_mut(128).zip(once.chunks(64)) {
                row[..64].copy_from_slice(part);
                row[64..].copy_from_slice(part);
            }
        },
        &dev,
    );
    if q2.table() != other.table() {
        assert!(QuantMatrix::stack(&[&a, &up(&other)]).unwrap().is_none(), "different codebooks must not stack");
    }
}
