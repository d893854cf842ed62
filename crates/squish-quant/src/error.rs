//! The one error type of squish-quant: a matrix view whose slices or shape break the layout.

use std::fmt;

/// Slices that do not fit the shape they claim (wrong length, K or g not divisible as the
/// scheme needs). The message names the offending quantity and both numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(String);

impl ShapeError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

/// `a * b` or a ShapeError naming `what` (shapes from a file must not wrap around).
pub(crate) fn checked_len(a: usize, b: usize, what: &str) -> Result<usize, ShapeError> {
    a.checked_mul(b)
        .ok_or_else(|| ShapeError::new(format!("{what}: {a} x {b} overflows usize")))
}
