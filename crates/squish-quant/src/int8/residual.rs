//! The INT8 integer kernel's activations in two int8 levels: x ≈ d·q + d2·q2 per block of
//! 32, where q (scale d) is `ActQ8`'s quantization and q2 (scale d2) the same quantization
//! (absmax/127, ties to even) of what it left, e = x - d·q. One level alone (llama.cpp's
//! Q8_0 activations) cost SmolLM2's INT8 model three times the perplexity of f32
//! activations (+0.068 against +0.022); the second level brings it back to f32's for a
//! second integer dot per block.
//!
//! Also where each level's block accumulators start: the kernel multiplies codes offset to
//! unsigned (q_w + 128), so each starts at -128 · Σ (the block's activation codes), on the
//! bits of `MAGIC` (see `x86::int4_gemm::MAGIC`).

use crate::act::{block_scale, transpose, ActQ8, PAR_MIN_ELEMS, ROUND_MAGIC};
use rayon::prelude::*;

/// The second level and both levels' accumulator starts, reused between calls.
#[derive(Default)]
pub(crate) struct Residual {
    /// t x k codes of e, token-major like x.
    pub q2: Vec<i8>,
    /// t x (k/32) scales of e, and transposed, (k/32) x tp like `ActQ8::d`.
    d2tok: Vec<f32>,
    pub d2: Vec<f32>,
    /// (k/32) x tp each: where the accumulators of q and of q2 start.
    pub init: Vec<i32>,
    pub init2: Vec<i32>,
}

impl Residual {
    /// Fills every field for `a`, the quantization of `x` (t x k).
    pub fn quantize(&mut self, a: &ActQ8, x: &[f32]) {
        let (t, k, nb) = (a.t, a.k, a.k / 32);
        self.q2.resize(t * k, 0);
        self.d2tok.resize(t * nb, 0.0);
        let one = |(i, (q2, d2)): (usize, (&mut [i8], &mut [f32]))| {
            token(&x[i * k..(i + 1) * k], &a.q[i * k..(i + 1) * k], &a.dtok[i * nb..(i + 1) * nb], q2, d2)
        };
        if t * k < PAR_MIN_ELEMS {
            self.q2.chunks_mut(k).zip(self.d2tok.chunks_mut(nb)).enumerate().for_each(one);
        } else {
            self.q2.par_chunks_mut(k).zip(self.d2tok.par_chunks_mut(nb)).enumerate().for_each(one);
        }
        transpose(&self.d2tok, nb, a.tp, &mut self.d2);
        starts(&a.q, k, a.tp, &mut self.init);
        starts(&self.q2, k, a.tp, &mut self.init2);
    }
}

/// One token: e = x - d·q per block, quantized into q2 and d2.
fn token(x: &[f32], q: &[i8], d: &[f32], q2: &mut [i8], d2: &mut [f32]) {
    let mut e = [0.0f32; 32];
    for (b, ((xb, qb), q2b)) in x.chunks_exact(32).zip(q.chunks_exact(32)).zip(q2.chunks_exact_mut(32)).enumerate() {
        for ((ev, &xv), &qv) in e.iter_mut().zip(xb).zip(qb) {
            *ev = xv - d[b] * qv as f32;
        }
        let amax = e.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (db, id) = block_scale(amax);
        d2[b] = db;
        for (out, &ev) in q2b.iter_mut().zip(&e) {
            // |ev * id| <= 127 (up to an ulp), so the cast never saturates.
            *out = ((ev * id + ROUND_MAGIC) - ROUND_MAGIC) as i8;
        }
    }
}

/// Per (block, token), (k/32) x tp: the bits of `MAGIC` less 128 · Σ the block's codes.
fn starts(q: &[i8], k: usize, tp: usize, out: &mut Vec<i32>) {
    let nb = k / 32;
    out.clear();
    out.resize(nb * tp, crate::x86::int4_gemm::MAGIC.to_bits() as i32);
    for (t, row) in q.chunks_exact(k).enumerate() {
        for (b, block) in row.chunks_exact(32).enumerate() {
            out[b * tp + t] -= 128 * block.iter().map(|&v| v as i32).sum::<i32>();
        }
    }
}
