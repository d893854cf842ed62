//! Activation quantization for the INT4 kernel (llama.cpp's Q8_1 idea): each token's
//! inputs, in blocks of 32, become int8 codes with one f32 scale (absmax/127) per block.
//! Per weight group it also keeps two exact f32 sums: Σx, which carries the group's `min`
//! term exactly, and the quantization residual Σ(x - x̂), which cancels most of the
//! quantization error (see `CODE_CENTER`). The scalar and AVX2 versions give identical
//! codes and scales.

use crate::isa::Isa;
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// `x + MAGIC - MAGIC` rounds to nearest, ties to even, for |x| < 2^22: the same rounding
/// as `_mm256_cvtps_epi32` under the default MXCSR, without a libm call.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

/// The kernels add `scale · CODE_CENTER · Σ(x - x̂)` per group: the error of
/// `scale · Σ q x̂` against `scale · Σ q x` is `scale · Σ q (x - x̂)`, and with the
/// correction it becomes `scale · Σ (q - 7.5)(x - x̂)`: codes centred on 0..=15's middle,
/// about 2.5x smaller on typical groups, for one FMA per group. INT3 centres its codes
/// 0..=7 on 3.5 the same way (`quantize_centred`).
pub(crate) const CODE_CENTER: f32 = 7.5;

/// One call's quantized activations, reused between calls (see `with_scratch`).
#[derive(Default)]
pub(crate) struct ActQ8 {
    /// t x k codes in -127..=127, token-major like x.
    pub q: Vec<i8>,
    /// t x (k/32) block scales, t x (k/g) group sums Σx and t x (k/g) centred residuals
    /// CODE_CENTER · Σ(x - x̂), as each token's quantizer wrote them.
    pub dtok: Vec<f32>,
    pub sxtok: Vec<f32>,
    pub rctok: Vec<f32>,
    /// The same three transposed, (k/32) x tp and (k/g) x tp (token fastest, zero past t):
    /// a tile reads 8 tokens' values with one load.
    pub d: Vec<f32>,
    pub sx: Vec<f32>,
    pub rc: Vec<f32>,
    pub t: usize,
    pub k: usize,
    pub g: usize,
    /// t rounded up to a multiple of 8 (the stride of `d`, `sx` and `rc`).
    pub tp: usize,
    /// A number no other `quantize` call got: per-call caches (the prefill kernel's
    /// repacked weights) use it to know they belong to this call.
    pub call: u64,
}

/// One token's outputs: codes (k), block scales (k/32), group sums and centred residuals
/// (k/g each, `center` · Σ(x - x̂)).
pub(crate) struct TokenOut<'a> {
    pub q: &'a mut [i8],
    pub d: &'a mut [f32],
    pub sx: &'a mut [f32],
    pub rc: &'a mut [f32],
    pub center: f32,
}

/// One token's input and output slices, as the zipped chunk iterators yield them.
type Parts<'a> = ((((&'a [f32], &'a mut [i8]), &'a mut [f32]), &'a mut [f32]), &'a mut [f32]);

/// Below this many inputs one thread quantizes (splitting costs more than it saves).
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 16;

impl ActQ8 {
    /// Quantizes `t` tokens of `k` inputs for weight groups of `g`. Preconditions (checked
    /// by the matmul entry): `x.len() == t * k`, `k % 32 == 0`, `g % 32 == 0`, `k % g == 0`.
    // Used by x86's panel path and the tests.
    #[cfg_attr(not(any(test, target_arch = "x86_64")), allow(dead_code))]
    pub fn quantize(&mut self, isa: Isa, x: &[f32], t: usize, k: usize, g: usize) {
        self.quantize_centred(isa, x, t, k, g, CODE_CENTER);
    }

    /// `quantize` with the residuals scaled by `center` (the middle of the weight codes'
    /// range) instead of `CODE_CENTER`.
    pub fn quantize_centred(&mut self, isa: Isa, x: &[f32], t: usize, k: usize, g: usize, center: f32) {
        let (nb, ng, tp) = (k / 32, k / g, t.next_multiple_of(8));
        self.q.resize(t * k, 0);
        self.dtok.resize(t * nb, 0.0);
        self.sxtok.resize(t * ng, 0.0);
        self.rctok.resize(t * ng, 0.0);
        (self.t, self.k, self.g, self.tp) = (t, k, g, tp);
        static CALLS: AtomicU64 = AtomicU64::new(0);
        self.call = CALLS.fetch_add(1, Ordering::Relaxed);

        let one = |((((x, q), d), sx), rc): Parts| quantize_token(isa, x, g, TokenOut { q, d, sx, rc, center });
        if t * k < PAR_MIN_ELEMS {
            let it = x.chunks(k).zip(self.q.chunks_mut(k)).zip(self.dtok.chunks_mut(nb));
            it.zip(self.sxtok.chunks_mut(ng)).zip(self.rctok.chunks_mut(ng)).for_each(one);
        } else {
            let it = x.par_chunks(k).zip(self.q.par_chunks_mut(k)).zip(self.dtok.par_chunks_mut(nb));
            it.zip(self.sxtok.par_chunks_mut(ng)).zip(self.rctok.par_chunks_mut(ng)).for_each(one);
        }
        transpose(&self.dtok, nb, tp, &mut self.d);
        transpose(&self.sxtok, ng, tp, &mut self.sx);
        transpose(&self.rctok, ng, tp, &mut self.rc);
    }

    /// The scale of block `blk` of token `tok`.
    #[inline]
    pub fn scale(&self, tok: usize, blk: usize) -> f32 {
        self.dtok[tok * self.k / 32 + blk]
    }

    /// Σx over group `grp` of token `tok`.
    #[inline]
    pub fn group_sum(&self, tok: usize, grp: usize) -> f32 {
        self.sxtok[tok * (self.k / self.g) + grp]
    }

    /// center · Σ(x - x̂) over group `grp` of token `tok`.
    #[inline]
    pub fn centred_residual(&self, tok: usize, grp: usize) -> f32 {
        self.rctok[tok * (self.k / self.g) + grp]
    }
}

/// `src` (tokens x cols) into `dst` (cols x tp), zero past the last token.
pub(crate) fn transpose(src: &[f32], cols: usize, tp: usize, dst: &mut Vec<f32>) {
    dst.clear();
    dst.resize(cols * tp, 0.0);
    for (tok, row) in src.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            dst[c * tp + tok] = v;
        }
    }
}

thread_local! {
    static SCRATCH: Cell<ActQ8> = Cell::new(ActQ8::default());
}

/// Runs `f` with this thread's reusable activation buffer, so a decode step allocates
/// nothing once warm. Re-entrant: a nested call (rayon work-stealing into another matmul
/// on this thread) finds the cell empty and just uses a fresh buffer.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut ActQ8) -> R) -> R {
    with_reused(&SCRATCH, f)
}

/// Runs `f` with the buffer in this thread's `cell`, taken out for the call and put back
/// after (a nested call meets an empty cell and gets a fresh buffer).
pub(crate) fn with_reused<T: Default, R>(cell: &'static std::thread::LocalKey<Cell<T>>, f: impl FnOnce(&mut T) -> R) -> R {
    let mut buf = cell.with(Cell::take);
    let r = f(&mut buf);
    cell.with(|c| c.set(buf));
    r
}

/// One token: `x` is its k inputs.
fn quantize_token(isa: Isa, x: &[f32], g: usize, out: TokenOut) {
    match isa {
        // SAFETY: the x86 variants exist only after avx2/fma/f16c were detected; the slice
        // lengths are the ones `ActQ8::quantize` sized from the same k and g.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => unsafe { crate::x86::act::quantize_token(x, g, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::DotProd => quantize_token_scalar(x, g, out),
        Isa::Scalar => quantize_token_scalar(x, g, out),
    }
}

/// The block scale and its inverse, computed the same way by both versions so the codes
/// match bit for bit.
#[inline(always)]
pub(crate) fn block_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

/// The portable version, and the definition the AVX2 one must match.
pub(crate) fn quantize_token_scalar(x: &[f32], g: usize, out: TokenOut) {
    let TokenOut { q, d, sx, rc, center } = out;
    let bpg = g / 32;
    sx.fill(0.0);
    rc.fill(0.0);
    for (b, (xb, qb)) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (db, id) = block_scale(amax);
        d[b] = db;
        let (mut sum, mut resid) = (0.0f32, 0.0f32);
        for (qv, &xv) in qb.iter_mut().zip(xb) {
            // |xv * id| <= 127 (up to an ulp), so the cast never saturates.
            let r = (xv * id + ROUND_MAGIC) - ROUND_MAGIC;
            *qv = r as i8;
            sum += xv;
            resid += xv - db * r;
        }
        sx[b / bpg] += sum;
        rc[b / bpg] += center * resid;
    }
}
