//! Adapters at inference: beside each adapted base linear layer, y += scale · (x Aᵀ) Bᵀ,
//! computed per sequence, since one batched forward may mix sequences that use different
//! adapters or none. The base weights are never changed, so one quantized base serves every
//! adapter at once.

use super::adapter::{Adapter, Target};
use crate::ModelError;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;

/// One loaded adapter: its factors transposed for the forward, Aᵀ (in, rank) and Bᵀ (rank, out)
/// with the scale folded into Bᵀ.
pub struct Deltas {
    pairs: BTreeMap<(usize, Target), (Tensor, Tensor)>,
}

impl Deltas {
    pub fn new(adapter: &Adapter, device: &Device) -> Result<Self, ModelError> {
        let scale = adapter.config.scale();
        let dtype = squish_backend::compute_dtype(device);
        let mut pairs = BTreeMap::new();
        for (&k, p) in &adapter.pairs {
            let at = p.a.t()?.contiguous()?.to_device(device)?.to_dtype(dtype)?;
            let bt = (p.b.t()?.contiguous()? * scale)?.to_device(device)?.to_dtype(dtype)?;
            pairs.insert(k, (at, bt));
        }
        Ok(Self { pairs })
    }

    /// x (1, t, in) -> this adapter's addition to layer `layer`'s `target`, (1, t, out).
    fn delta(&self, layer: usize, target: Target, x: &Tensor) -> Result<Option<Tensor>, ModelError> {
        let Some((at, bt)) = self.pairs.get(&(layer, target)) else { return Ok(None) };
        Ok(Some(x.broadcast_matmul(at)?.broadcast_matmul(bt)?))
    }
}

/// `y` (1, t, out), the base layer's output for `x` (1, t, in), plus the adapter of each
/// segment of rows: `segments` lists (rows, adapter index) in row order.
pub fn add_deltas(
    adapters: &[(String, Deltas)],
    segments: &[(usize, Option<usize>)],
    layer: usize,
    target: Target,
    x: &Tensor,
    y: Tensor,
) -> Result<Tensor, ModelError> {
    if segments.iter().all(|(_, a)| a.is_none()) {
        return Ok(y);
    }
    if let [(_, Some(j))] = segments {
        return Ok(match adapters[*j].1.delta(layer, target, x)? {
            Some(d) => (y + d)?,
            None => y,
        });
    }
    let mut parts = Vec::with_capacity(segments.len());
    let mut row = 0;
    for &(rows, adapter) in segments {
        let ys = y.narrow(1, row, rows)?;
        let delta = match adapter {
            Some(j) => adapters[j].1.delta(layer, target, &x.narrow(1, row, rows)?)?,
            None => None,
        };
        parts.push(match delta {
            Some(d) => (ys + d)?,
            None => ys,
        });
        row += rows;
    }
    Ok(Tensor::cat(&parts, 1)?)
}
