//! What the INT4 and INT8 quantizers share: the search mode and the per-channel weights.

use std::borrow::Cow;

/// How hard a quantizer looks for a group's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Search {
    /// The clipping search with least-squares refinement (what `quantize` does).
    Clip,
    /// Plain range rounding: the baseline the tests compare against.
    MinMax,
}

/// The importance weights as a slice of length k (all ones when absent).
///
/// Panics if the length is not k or a weight is negative or not finite.
pub(crate) fn weights_or_ones(importance: Option<&[f32]>, k: usize) -> Cow<'_, [f32]> {
    match importance {
        Some(h) => {
            assert_eq!(h.len(), k, "importance has {} values, expected k = {k}", h.len());
            assert!(
                h.iter().all(|v| v.is_finite() && *v >= 0.0),
                "importance weights must be finite and >= 0"
            );
            Cow::Borrowed(h)
        }
        None => Cow::Owned(vec![1.0; k]),
    }
}

/// How a group's (scale, min) is rounded to what is stored. Either way the result is an
/// f16 pair, the values the kernels read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Params {
    /// Each rounded to f16 (INT4).
    F16,
    /// On a row's 8-bit grids (INT3): scale = f16(ds · s8), s8 in 0..=255, and min =
    /// f16(dm · m8), m8 in -127..=127 (ds, dm >= 0, themselves f16 values).
    Grid { ds: f32, dm: f32 },
}

impl Params {
    #[inline]
    pub(crate) fn round(self, s: f32, m: f32) -> (half::f16, half::f16) {
        use half::f16;
        match self {
            Params::F16 => (f16::from_f32(s), f16::from_f32(m)),
            Params::Grid { ds, dm } => (f16::from_f32(ds * grid_code(s, ds, 0.0, 255.0)), f16::from_f32(dm * grid_code(m, dm, -127.0, 127.0))),
        }
    }
}

/// The nearest multiple index of `step` to `v`, clamped to lo..=hi (0 for a zero step).
#[inline]
pub(crate) fn grid_code(v: f32, step: f32, lo: f32, hi: f32) -> f32 {
    if step > 0.0 && v.is_finite() {
        (v / step).round().clamp(lo, hi)
    } else {
        0.0
    }
}
