//! The public handle of a matrix laid out for an AVX512-VNNI panel kernel (INT4's, INT8's):
//! the x86 layout inside, built only where `isa::detect` found AVX512-VNNI; elsewhere no
//! handle exists and callers use the scheme's plain `matmul`.

/// Defines `$name`, the handle of `$layout` (an `x86::…::Panels` with `new(&$matrix)` and
/// `bytes()`).
macro_rules! panels_handle {
    ($(#[$doc:meta])* $name:ident, $matrix:ty, $layout:ident) => {
        $(#[$doc])*
        pub struct $name {
            #[cfg(target_arch = "x86_64")]
            inner: crate::x86::$layout::Panels,
            #[cfg(not(target_arch = "x86_64"))]
            _never: std::convert::Infallible,
        }

        impl $name {
            /// The layout of `w`, or None on CPUs without AVX512-VNNI (or with `SQUISH_ISA`
            /// capping below it).
            pub fn new(w: &$matrix) -> Option<Self> {
                #[cfg(target_arch = "x86_64")]
                if crate::isa::detect() == crate::isa::Isa::Avx512Vnni {
                    return Some(Self { inner: crate::x86::$layout::Panels::new(w) });
                }
                let _ = w;
                None
            }

            /// Memory held, in bytes.
            pub fn bytes(&self) -> usize {
                #[cfg(target_arch = "x86_64")]
                return self.inner.bytes();
                #[cfg(not(target_arch = "x86_64"))]
                match self._never {}
            }
        }
    };
}

pub(crate) use panels_handle;
