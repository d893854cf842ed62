//! The crate's tests, one file per concern; `util` holds the shared random data helpers.

mod act;
mod int2;
mod int3;
mod int4_quant;
mod int8_quant;
mod kernels;
mod layout;
mod rotate;
mod util;
