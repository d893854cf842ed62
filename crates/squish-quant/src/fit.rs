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
