//! The kernels for squish's INT4 and INT8 matrices against squish-quant's scalar references
//! on the same packed bytes: GEMV batches (up to 8 rows), the tensor-core kernel (9 to 64
//! rows) and the dequantize-then-cuBLAS path (more rows), groups of 32
//! and 64, widths that are not multiples of a warp's 256-byte stride or of the tensor-core
//! kernel's 64 rows, and matrices stacked on their outputs.
//!
//! Tolerance: inputs and outputs are bf16 on the GPU, so each output may differ from the f32
//! reference (fed the same bf16-rounded inputs) by 1% of its row's largest |value|.

use super::{bf16_round, compare, gpu, noise};
use candle_core::{DType, Device, Tensor};
use squish_backend::QuantMatrix;
use squish_quant::{int4, int8};

#[test]
fn int4_and_int8_kernels_match_the_references() {
    let Some(dev) = gpu() else { return };
    for (n, k, g) in [(200, 576, 64), (96, 1536, 32), (37, 64, 64)] {
        let w = noise(n * k, (n + k) as u32);
        let q4 = int4::quantize(&w, n, k, g, None);
        let q8 = int8::quantize(&w, n, k, g, None);
        let (v4, v8) = (q4.view(), q8.view());
        let m4 = QuantMatrix::int4(v4.codes(), v4.scales(), v4.mins(), n, k, g, &dev).unwrap();
        let m8 = QuantMatrix::int8(v8.codes(), v8.scales(), n, k, g, &dev).unwrap();
        for t in [1, 3, 8, 9, 32, 40, 64, 65] {
            let x = bf16_round(&noise(t * k, t as u32 + 7));
            let xt = Tensor::from_vec(x.clone(), (1, t, k), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap();
            let label = format!("{n}x{k} g{g}, {t} rows");
            let mut want = vec![0f32; t * n];
            int4::matmul_ref(&v4, &x, t, &mut want);
            let got = m4.matmul(&xt).unwrap();
            assert_eq!(got.dims(), &[1, t, n], "{label}");
            compare(&format!("int4 {label}"), &got.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap(), &want, n);
            int8::matmul_ref(&v8, &x, t, &mut want);
            let got = m8.matmul(&xt).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            compare(&format!("int8 {label}"), &got, &want, n);
        }
    }
}

/// Matrices stacked on their outputs (a GPU layer's q/k/v, gate/up) give each matrix's own
/// product, through the GEMV and the dequantize-then-cuBLAS path; mismatched groups do not stack.
#[test]
fn stacked_matrices_give_each_matrixs_product() {
    let Some(dev) = gpu() else { return };
    let (k, g) = (576, 64);
    let widths = [192, 64, 64];
    let parts: Vec<_> = widths.iter().enumerate().map(|(i, &n)| (n, int4::quantize(&noise(n * k, 40 + i as u32), n, k, g, None))).collect();
    let mats: Vec<QuantMatrix> =
        parts.iter().map(|(n, q)| QuantMatrix::int4(q.view().codes(), q.view().scales(), q.view().mins(), *n, k, g, &dev).unwrap()).collect();
    let stacked = QuantMatrix::stack(&mats.iter().collect::<Vec<_>>()).unwrap().expect("same kind, width and group");
    let total: usize = widths.iter().sum();
    assert_eq!(stacked.shape(), (total, k));
    for t in [1, 5, 12] {
        let x = bf16_round(&noise(t * k, 90 + t as u32));
        let xt = Tensor::from_vec(x.clone(), (1, t, k), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap();
        let got = stacked.matmul(&xt).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut at = 0;
        for (n, q) in &parts {
            let mut want = vec![0f32; t * n];
            int4::matmul_ref(&q.view(), &x, t, &mut want);
            let mine: Vec<f32> = got.chunks(total).flat_map(|row| row[at..at + n].to_vec()).collect();
            compare(&format!("stacked int4 rows {at}..{}, {t} rows", at + n), &mine, &want, *n);
            at += n;
        }
    }
    let other = int4::quantize(&noise(64 * k, 7), 64, k, 32, None);
    let other = QuantMatrix::int4(other.view().codes(), other.view().scales(), other.view().mins(), 64, k, 32, &dev).unwrap();
    assert!(QuantMatrix::stack(&[&mats[0], &other]).unwrap().is_none(), "group 64 and group 32 must not stack");
}
