//! 8-bit group parameters for the grouped layouts (INT3, and INT4 where a model file
//! wants it smaller): each row's scales lie on a grid ds · s8 (s8 in 0..=255) and its mins
//! on dm · m8 (m8 in -127..=127), ds and dm one f16 pair per row; the values the kernels
//! read are those products rounded to f16, expanded once at load (`expand_params`). The
//! quantizers fit every group on its row's grid before choosing its codes, so the stored
//! codes are optimal for the stored parameters. 16 bits per group plus 32 per row, instead
//! of 32 per group.

use crate::fit::{grid_code, Params, Search};
use crate::grouped::{GroupedMatrix, GroupedOwned, Layout};
use crate::int4::gptq::gptq_grouped;
use crate::int4::quant::quantize_grouped;
use crate::int4::GptqFactor;
use crate::ShapeError;
use half::f16;

/// A grouped matrix as a model file stores it: the matrix (its f16 scales and mins are the
/// values the kernels use) and each row's parameter grids (ds, dm), on which every scale
/// and min lies exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored<L> {
    matrix: GroupedOwned<L>,
    /// n x 2: ds, dm per row.
    steps: Vec<f16>,
}

impl<L: Layout> Stored<L> {
    pub fn matrix(&self) -> &GroupedOwned<L> {
        &self.matrix
    }
    pub fn view(&self) -> GroupedMatrix<'_, L> {
        self.matrix.view()
    }
    /// Per row (ds, dm), n x 2.
    pub fn steps(&self) -> &[f16] {
        &self.steps
    }

    /// The stored parts: codes, scale codes (u8), min codes (i8) and the steps (n x 2).
    pub fn into_stored(self) -> (Vec<u8>, Vec<u8>, Vec<i8>, Vec<f16>) {
        let ng = self.matrix.scales().len() / (self.steps.len() / 2).max(1);
        let (mut s8, mut m8) = (Vec::with_capacity(self.matrix.scales().len()), Vec::with_capacity(self.matrix.mins().len()));
        let (codes, scales, mins) = self.matrix.into_parts();
        for (r, st) in self.steps.chunks_exact(2).enumerate() {
            let (ds, dm) = (st[0].to_f32(), st[1].to_f32());
            for gi in r * ng..(r + 1) * ng {
                s8.push(grid_code(scales[gi].to_f32(), ds, 0.0, 255.0) as u8);
                m8.push(grid_code(mins[gi].to_f32(), dm, -127.0, 127.0) as i8);
            }
        }
        (codes, s8, m8, self.steps)
    }
}

/// The f16 scales and mins of stored 8-bit parameters (`Stored::into_stored`):
/// scale = f16(ds · s8), min = f16(dm · m8), row r's (ds, dm) at `steps[2r..2r+2]`.
pub fn expand_params(s8: &[u8], m8: &[i8], steps: &[f16]) -> Result<(Vec<f16>, Vec<f16>), ShapeError> {
    let n = steps.len() / 2;
    if steps.len() % 2 != 0 || s8.len() != m8.len() || (n == 0 && !s8.is_empty()) || (n > 0 && s8.len() % n != 0) {
        return Err(ShapeError::new(format!(
            "8-bit group parameters: {} scale codes, {} min codes and {} steps do not fit n rows x (k/g) groups and n x 2 steps",
            s8.len(),
            m8.len(),
            steps.len()
        )));
    }
    let ng = s8.len() / n.max(1);
    let (mut scales, mut mins) = (Vec::with_capacity(s8.len()), Vec::with_capacity(m8.len()));
    for (r, st) in steps.chunks_exact(2).enumerate() {
        let params = Params::Grid { ds: st[0].to_f32(), dm: st[1].to_f32() };
        for gi in r * ng..(r + 1) * ng {
            let (s, m) = params.round(st[0].to_f32() * s8[gi] as f32, st[1].to_f32() * m8[gi] as f32);
            scales.push(s);
            mins.push(m);
        }
    }
    Ok((scales, mins))
}

/// One row's parameters `values` re-encoded on its grid `step`: the step stays unless the
/// largest |value| outgrows `top` codes (then it becomes that value / top, rounded up in
/// f16); each code is the nearest, in -top..=top.
pub(crate) fn regrid(values: &[f32], step: &mut f16, top: f32) -> Vec<f32> {
    let largest = values.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let mut ds = step.to_f32();
    if largest > top * ds {
        ds = f16::from_f32(largest / top).to_f32();
        if largest / ds > top {
            ds = f16::from_bits(f16::from_f32(ds).to_bits() + 1).to_f32();
        }
        *step = f16::from_f32(ds);
    }
    values.iter().map(|&v| if ds > 0.0 { (v / ds).round().clamp(-top, top) } else { 0.0 }).collect()
}

/// Multiplies every group's scale and min by its factor (one per group, row-major as the
/// codes; a group's weights all scale by it) and re-encodes them on their rows' grids
/// (`regrid`: a row keeps its steps unless a new value outgrows them).
///
/// Panics unless the lengths fit n rows (`steps`: n x 2) of k/g groups.
pub fn rescale(s8: &mut [u8], m8: &mut [i8], steps: &mut [f16], factors: &[f32]) {
    let n = steps.len() / 2;
    assert!(n > 0 && steps.len() % 2 == 0 && s8.len() == m8.len() && s8.len() == factors.len() && s8.len() % n == 0, "params8 rescale: shapes");
    let ng = s8.len() / n;
    for (r, st) in steps.chunks_exact_mut(2).enumerate() {
        let (ds, dm) = (st[0].to_f32(), st[1].to_f32());
        let at = r * ng..(r + 1) * ng;
        let f = &factors[at.clone()];
        let scales: Vec<f32> = s8[at.clone()].iter().zip(f).map(|(&c, &f)| f16::from_f32(ds * c as f32).to_f32() * f.max(0.0)).collect();
        let mins: Vec<f32> = m8[at.clone()].iter().zip(f).map(|(&c, &f)| f16::from_f32(dm * c as f32).to_f32() * f.max(0.0)).collect();
        for (c, q) in s8[at.clone()].iter_mut().zip(regrid(&scales, &mut st[0], 255.0)) {
            *c = q.max(0.0) as u8;
        }
        for (c, q) in m8[at].iter_mut().zip(regrid(&mins, &mut st[1], 127.0)) {
            *c = q as i8;
        }
    }
}

/// Each row's grids from a first quantization's f16 parameters: ds covers the row's
/// largest scale and dm its largest |min|, both times `headroom`.
fn row_grids<L: Layout>(first: &GroupedOwned<L>, n: usize, headroom: f32) -> (Vec<[f32; 2]>, Vec<f16>) {
    let ng = first.scales().len() / n.max(1);
    let mut grids = Vec::with_capacity(n);
    let mut steps = Vec::with_capacity(2 * n);
    for r in 0..n {
        let span = r * ng..(r + 1) * ng;
        let smax = first.scales()[span.clone()].iter().fold(0.0f32, |a, v| a.max(v.to_f32()));
        let mmax = first.mins()[span].iter().fold(0.0f32, |a, v| a.max(v.to_f32().abs()));
        let (ds, dm) = (f16::from_f32(smax * headroom / 255.0), f16::from_f32(mmax * headroom / 127.0));
        grids.push([ds.to_f32(), dm.to_f32()]);
        steps.extend([ds, dm]);
    }
    (grids, steps)
}

/// `int4::quantize_with_error`'s search for layout L, run twice: once with f16 parameters
/// to find each row's grids, once on them.
pub(crate) fn quantize<L: Layout>(
    w: &[f32],
    n: usize,
    k: usize,
    g: usize,
    importance: Option<&[f32]>,
    search: Search,
) -> (Stored<L>, f64) {
    let (first, _) = quantize_grouped::<L>(w, n, k, g, importance, search, None);
    let (grids, steps) = row_grids(&first, n, 1.0);
    let (matrix, err) = quantize_grouped::<L>(w, n, k, g, importance, search, Some(&grids));
    (Stored { matrix, steps }, err)
}

/// Headroom of the grids GPTQ quantizes on: its error feedback can widen a group's range
/// past what the first pass (on the original weights) saw; wider groups are clipped.
const GPTQ_HEADROOM: f32 = 1.15;

/// GPTQ for layout L on per-row grids from a first (diagonal-weighted) pass over the
/// original weights.
pub(crate) fn quantize_gptq<L: Layout>(w: &[f32], n: usize, k: usize, g: usize, factor: &GptqFactor) -> Stored<L> {
    let (first, _) = quantize_grouped::<L>(w, n, k, g, Some(factor.diagonal()), Search::Clip, None);
    let (grids, steps) = row_grids(&first, n, GPTQ_HEADROOM);
    Stored { matrix: gptq_grouped::<L>(w, n, k, g, factor, Some(&grids)), steps }
}
