//! Batched decode attention (src/cuda/attention.cu) against an f64 reference on the
//! same bf16 inputs, at cache lengths where its blocks split the positions: one sequence from
//! 1 to 1,000 positions, a batch of different lengths (a short sequence's later stretches are
//! empty), and 40 sequences (two launches); q, k and v apart or as views of one stacked
//! product. It also checks the new key and value the kernel stores and that no other cache
//! position changes.
//!
//! Tolerance: the output is bf16, so each element may differ from the reference by 1% of its
//! head's largest |value|; the stored key by one bf16 rounding.

use super::{attend, bf16, compare_head, download, gpu, plus, upload, values};
use candle_core::{Device, Tensor};
use squish_backend::{decode_attention, CacheSlot, Rope};

/// One decode step of `positions.len()` sequences, the i-th with `positions[i]` tokens cached;
/// `stacked`: q, k and v are views of one product.
fn check(dev: &Device, (heads, kv_heads, d): (usize, usize, usize), positions: &[usize], stacked: bool, bias: bool) {
    let label = format!("{heads}/{kv_heads} heads, d {d}, positions {positions:?}, stacked {stacked}, bias {bias}");
    let (rows, group, half) = (positions.len(), heads / kv_heads, d / 2);
    let cap = positions.iter().max().unwrap() + 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect();
    let rope = Rope::new(&inv_freq, cap, dev).unwrap();
    let (cos, sin) = (download(rope.tables().0), download(rope.tables().1));

    // Queries larger than keys, so the softmax is far from uniform.
    let q = values(rows * heads * d, 1, 8.0);
    let (k_new, v_new) = (values(rows * kv_heads * d, 2, 1.0), values(rows * kv_heads * d, 3, 1.0));
    let before: Vec<(Vec<f32>, Vec<f32>)> =
        (0..rows).map(|i| (values(kv_heads * cap * d, 10 + i as u32, 1.0), values(kv_heads * cap * d, 100 + i as u32, 1.0))).collect();
    let caches: Vec<(Tensor, Tensor)> =
        before.iter().map(|(k, v)| (upload(k, &[1, kv_heads, cap, d], dev), upload(v, &[1, kv_heads, cap, d], dev))).collect();
    let slots: Vec<CacheSlot> = caches.iter().zip(positions).map(|((k, v), &pos)| CacheSlot { keys: k, values: v, pos }).collect();
    let (qt, kt, vt) = match stacked {
        // One (1, rows, q + k + v) product, as a GPU layer's stacked projections give it.
        true => {
            let (qw, kw) = (heads * d, kv_heads * d);
            let joint: Vec<f32> = (0..rows)
                .flat_map(|r| [&q[r * qw..][..qw], &k_new[r * kw..][..kw], &v_new[r * kw..][..kw]].concat())
                .collect();
            let joint = upload(&joint, &[1, rows, qw + 2 * kw], dev);
            (joint.narrow(2, 0, qw).unwrap(), joint.narrow(2, qw, kw).unwrap(), joint.narrow(2, qw + kw, kw).unwrap())
        }
        false => (upload(&q, &[1, rows, heads * d], dev), upload(&k_new, &[1, rows, kv_heads * d], dev), upload(&v_new, &[1, rows, kv_heads * d], dev)),
    };
    let bias = bias.then(|| values((heads + 2 * kv_heads) * d, 4, 2.0));
    let bias_t = bias.as_ref().map(|b| upload(b, &[b.len()], dev));
    let out = decode_attention(
        &qt,
        &kt,
        &vt,
        bias_t.as_ref(),
        &slots,
        rope.tables(),
        (heads, kv_heads, d),
    )
    .unwrap()
    .unwrap_or_else(|| panic!("{label}: the kernel did not apply"));
    assert_eq!(out.dims(), &[1, rows, heads * d], "{label}");
    let out = download(&out);
    // What the kernel attends with: the rows plus their biases, rounded to bf16.
    let (q, k_new, v_new) = match &bias {
        Some(b) => (plus(&q, &b[..heads * d]), plus(&k_new, &b[heads * d..(heads + kv_heads) * d]), plus(&v_new, &b[(heads + kv_heads) * d..])),
        None => (q, k_new, v_new),
    };

    for (i, &pos) in positions.iter().enumerate() {
        let (kc, vc) = (download(&caches[i].0), download(&caches[i].1));
        let (co, si) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
        let rotate = |x: &[f32], j: usize| -> f64 {
            let (a, b, c, s) = (x[j % half] as f64, x[j % half + half] as f64, co[j % half] as f64, si[j % half] as f64);
            if j < half { a * c - b * s } else { a * s + b * c }
        };
        for h in 0..kv_heads {
            let at = |p: usize| (h * cap + p) * d;
            // Every position but pos as uploaded; pos holds the rotated key and the value.
            for p in (0..cap).filter(|&p| p != pos) {
                assert_eq!(&kc[at(p)..at(p) + d], &before[i].0[at(p)..at(p) + d], "{label}: seq {i} kv head {h}: key {p} changed");
                assert_eq!(&vc[at(p)..at(p) + d], &before[i].1[at(p)..at(p) + d], "{label}: seq {i} kv head {h}: value {p} changed");
            }
            let kr = &k_new[(i * kv_heads + h) * d..][..d];
            for j in 0..d {
                let want = rotate(kr, j);
                assert!((kc[at(pos) + j] as f64 - want).abs() <= 1e-2 * want.abs() + 1e-6, "{label}: seq {i} kv head {h}: stored key [{j}]");
            }
            assert_eq!(&vc[at(pos)..at(pos) + d], &v_new[(i * kv_heads + h) * d..][..d], "{label}: seq {i} kv head {h}: stored value");

            for g in 0..group {
                let hq = h * group + g;
                let qr = &q[(i * heads + hq) * d..][..d];
                // The kernel rounds the rotated query to bf16, as the generic path does.
                let qrot: Vec<f64> = (0..d).map(|j| bf16(rotate(qr, j))).collect();
                let want = attend(&qrot, &kc[at(0)..at(pos + 1)], &vc[at(0)..at(pos + 1)], d);
                compare_head(&format!("{label}: seq {i} head {hq}"), &out[(i * heads + hq) * d..][..d], &want);
            }
        }
    }
}

#[test]
fn decode_attention_matches_the_reference_at_every_length() {
    let Some(dev) = gpu() else { return };
    let qwen7b = (28, 4, 128);
    for pos in [0, 1, 37, 64, 300, 1000] {
        check(&dev, qwen7b, &[pos], false, false);
    }
    check(&dev, qwen7b, &[300], true, false);
    check(&dev, qwen7b, &[0, 77, 300], true, true); // Qwen2's q/k/v bias, added by the kernel
    check(&dev, qwen7b, &[0, 5, 300, 999], false, false);
    check(&dev, (9, 3, 64), &[3, 140, 77], true, false); // SmolLM2
    let many: Vec<usize> = (0..40).map(|i| (i * 37) % 300).collect();
    check(&dev, (32, 8, 64), &many, false, false); // Llama-3.2-1B, two launches of up to 32
}
