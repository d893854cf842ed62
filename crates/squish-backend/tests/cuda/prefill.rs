//! Prompt attention (src/cuda/prefill.cu) against an f64 reference on the same bf16 inputs:
//! whole prompts and chunks after a cached prefix, one query block and several, q/k/v apart
//! or as views of one stacked product. It also checks the keys and values stored for the new
//! positions and that no other cache position changes.
//!
//! Tolerance: the output is bf16 and the kernel rounds its probabilities to bf16 for the
//! tensor cores (as the generic path does), so each element may differ from the reference by
//! 1% of its row's largest |value|; the stored keys by one bf16 rounding.

use super::{attend, bf16, compare_head, download, gpu, plus, upload, values};
use candle_core::Device;
use squish_backend::{prefill_attention, CacheSlot, Rope};

/// `t` new tokens after `start` cached ones.
fn check(dev: &Device, (heads, kv_heads, d): (usize, usize, usize), start: usize, t: usize, stacked: bool, bias: bool) {
    let label = format!("{heads}/{kv_heads} heads, d {d}, {t} tokens after {start}, stacked {stacked}, bias {bias}");
    let (group, half, cap) = (heads / kv_heads, d / 2, start + t + 3);
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect();
    let rope = Rope::new(&inv_freq, cap, dev).unwrap();
    let (cos, sin) = (download(rope.tables().0), download(rope.tables().1));

    let (qw, kw) = (heads * d, kv_heads * d);
    let q = values(t * qw, 1, 8.0);
    let (k_new, v_new) = (values(t * kw, 2, 1.0), values(t * kw, 3, 1.0));
    let (k_before, v_before) = (values(kv_heads * cap * d, 10, 1.0), values(kv_heads * cap * d, 11, 1.0));
    let (kc, vc) = (upload(&k_before, &[1, kv_heads, cap, d], dev), upload(&v_before, &[1, kv_heads, cap, d], dev));
    let (qt, kt, vt) = match stacked {
        true => {
            let joint: Vec<f32> = (0..t).flat_map(|r| [&q[r * qw..][..qw], &k_new[r * kw..][..kw], &v_new[r * kw..][..kw]].concat()).collect();
            let joint = upload(&joint, &[1, t, qw + 2 * kw], dev);
            (joint.narrow(2, 0, qw).unwrap(), joint.narrow(2, qw, kw).unwrap(), joint.narrow(2, qw + kw, kw).unwrap())
        }
        false => (upload(&q, &[1, t, qw], dev), upload(&k_new, &[1, t, kw], dev), upload(&v_new, &[1, t, kw], dev)),
    };
    let slot = CacheSlot { keys: &kc, values: &vc, pos: start };
    let bias = bias.then(|| values((heads + 2 * kv_heads) * d, 4, 2.0));
    let bias_t = bias.as_ref().map(|b| upload(b, &[b.len()], dev));
    let out = prefill_attention(&qt, &kt, &vt, bias_t.as_ref(), &slot, rope.tables(), (heads, kv_heads, d))
        .unwrap()
        .unwrap_or_else(|| panic!("{label}: the kernel did not apply"));
    assert_eq!(out.dims(), &[1, t, qw], "{label}");
    let (out, kc, vc): (Vec<f32>, Vec<f32>, Vec<f32>) = (download(&out), download(&kc), download(&vc));
    // What the kernels attend with and store: the rows plus their biases, rounded to bf16.
    let (q, k_new, v_new) = match &bias {
        Some(b) => (plus(&q, &b[..qw]), plus(&k_new, &b[qw..qw + kw]), plus(&v_new, &b[qw + kw..])),
        None => (q, k_new, v_new),
    };

    let rotate = |x: &[f32], pos: usize, j: usize| -> f64 {
        let (co, si) = (cos[pos * half + j % half] as f64, sin[pos * half + j % half] as f64);
        let (a, b) = (x[j % half] as f64, x[j % half + half] as f64);
        if j < half { a * co - b * si } else { a * si + b * co }
    };
    for h in 0..kv_heads {
        let at = |p: usize| (h * cap + p) * d;
        for p in (0..cap).filter(|p| !(start..start + t).contains(p)) {
            assert_eq!(&kc[at(p)..at(p) + d], &k_before[at(p)..at(p) + d], "{label}: kv head {h}: key {p} changed");
            assert_eq!(&vc[at(p)..at(p) + d], &v_before[at(p)..at(p) + d], "{label}: kv head {h}: value {p} changed");
        }
        for i in 0..t {
            let kr = &k_new[i * kw + h * d..][..d];
            for j in 0..d {
                let want = rotate(kr, start + i, j);
                assert!((kc[at(start + i) + j] as f64 - want).abs() <= 1e-2 * want.abs() + 1e-6, "{label}: kv head {h}: stored key {} [{j}]", start + i);
            }
            assert_eq!(&vc[at(start + i)..at(start + i) + d], &v_new[i * kw + h * d..][..d], "{label}: kv head {h}: stored value {}", start + i);
        }
        for g in 0..group {
            let hq = h * group + g;
            for i in 0..t {
                let pos = start + i;
                let qrot: Vec<f64> = (0..d).map(|j| bf16(rotate(&q[i * qw + hq * d..][..d], pos, j))).collect();
                let want = attend(&qrot, &kc[at(0)..at(pos + 1)], &vc[at(0)..at(pos + 1)], d);
                compare_head(&format!("{label}: token {i} head {hq}"), &out[i * qw + hq * d..][..d], &want);
            }
        }
    }
}

#[test]
fn prefill_attention_matches_the_reference() {
    let Some(dev) = gpu() else { return };
    let qwen7b = (28, 4, 128);
    check(&dev, qwen7b, 0, 300, false, false);
    check(&dev, qwen7b, 200, 77, true, false); // a chunk after a cached prefix
    check(&dev, qwen7b, 20, 70, true, true); // Qwen2's q/k/v bias, added by the kernels
    check(&dev, (9, 3, 64), 0, 1, false, false); // SmolLM2, one token
    check(&dev, (9, 3, 64), 30, 65, true, false); // two query blocks
    check(&dev, (32, 8, 64), 0, 129, false, false); // Llama-3.2-1B
}
