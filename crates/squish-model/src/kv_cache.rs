//! The key/value cache of one sequence: preallocated to the context size at creation (so its
//! memory is known up front and never reallocated), written in place, truncatable so a prompt
//! that shares a prefix with the previous one reuses it.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor};

pub struct KvCache {
    keys: Vec<Tensor>,   // per layer: (1, kv_heads, capacity, head_dim)
    values: Vec<Tensor>, // per layer: (1, kv_heads, capacity, head_dim)
    /// The tokens whose keys and values are stored, in order.
    tokens: Vec<u32>,
    capacity: usize,
}

impl KvCache {
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let make = || zeros_aligned((1, kv_heads, capacity, head_dim), device);
        Ok(Self {
            keys: (0..layers).map(|_| make()).collect::<candle_core::Result<_>>()?,
            values: (0..layers).map(|_| make()).collect::<candle_core::Result<_>>()?,
            tokens: Vec::new(),
            capacity,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets everything after the first `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
    }

    /// Stores one layer's keys and values for positions len..len+t and returns all of them.
    /// k, v: (1, kv_heads, t, head_dim) -> (1, kv_heads, len + t, head_dim) each
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let start = self.tokens.len();
        let t = k.dim(2)?;
        self.keys[layer].slice_set(&k.contiguous()?, 2, start)?;
        self.values[layer].slice_set(&v.contiguous()?, 2, start)?;
        Ok((self.keys[layer].narrow(2, 0, start + t)?, self.values[layer].narrow(2, 0, start + t)?))
    }

    /// Writes one layer's keys and values for positions len..len+t in place, from plain rows
    /// (t x kv_heads * head_dim, token-major; keys already rotated). CPU caches only.
    pub(crate) fn write_rows(&mut self, layer: usize, k: &[f32], v: &[f32]) -> candle_core::Result<()> {
        let start = self.tokens.len();
        self.keys[layer].inplace_op1(&WriteRows { rows: k, start })?;
        self.values[layer].inplace_op1(&WriteRows { rows: v, start })
    }

    /// One layer's whole key and value tensors, (1, kv_heads, capacity, head_dim) each: the
    /// first len + (tokens being run) positions are meaningful.
    pub(crate) fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Records the tokens whose keys and values every layer has just appended.
    pub(crate) fn commit(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }
}

/// Zeros whose first element sits on a 64-byte boundary on the CPU, so that every key and
/// value row (a multiple of 64 bytes) does too: the attention kernel's 64-byte loads then
/// never straddle two cache lines (malloc aligns to 16 only, and the split loads cost a
/// long-context decode step several percent).
fn zeros_aligned(shape: (usize, usize, usize, usize), device: &Device) -> candle_core::Result<Tensor> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    if !device.is_cpu() {
        return Tensor::zeros(shape, DType::F32, device);
    }
    const LANES: usize = 16; // f32 per 64 bytes
    let all = Tensor::zeros(n + LANES, DType::F32, device)?;
    let skip = {
        let (storage, _) = all.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F32(v)) = &*storage else { candle_core::bail!("zeros are not f32") };
        (v.as_ptr() as usize).wrapping_neg() % 64 / 4
    };
    all.narrow(0, skip, n)?.reshape(shape)
}

/// Token-major rows (t x heads * d) stored at positions start.. of a (1, heads, capacity, d)
/// cache tensor.
struct WriteRows<'a> {
    rows: &'a [f32],
    start: usize,
}

impl InplaceOp1 for WriteRows<'_> {
    fn name(&self) -> &'static str {
        "kv-cache-write-rows"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else { candle_core::bail!("the kv cache is not f32") };
        let (_, heads, capacity, d) = layout.shape().dims4()?;
        let t = self.rows.len() / (heads * d);
        if !layout.is_contiguous() || self.start + t > capacity || t * heads * d != self.rows.len() {
            candle_core::bail!("kv cache write of {} values at {} does not fit {:?}", self.rows.len(), self.start, layout.shape());
        }
        let data = &mut data[layout.start_offset()..];
        for (i, row) in self.rows.chunks_exact(heads * d).enumerate() {
            for (h, head) in row.chunks_exact(d).enumerate() {
                data[(h * capacity + self.start + i) * d..][..d].copy_from_slice(head);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layer's keys and values start on a 64-byte boundary, and rows written there
    /// read back at their positions.
    #[test]
    fn caches_are_aligned_and_hold_their_rows() {
        let (layers, heads, cap, d) = (3, 2, 5, 64);
        let mut c = KvCache::new(layers, heads, d, cap, &Device::Cpu).unwrap();
        for l in 0..layers {
            for t in [&c.keys[l], &c.values[l]] {
                let (s, layout) = t.storage_and_layout();
                let candle_core::Storage::Cpu(CpuStorage::F32(v)) = &*s else { panic!("not f32") };
                assert_eq!(v[layout.start_offset()..].as_ptr() as usize % 64, 0);
            }
        }
        let rows: Vec<f32> = (0..2 * heads * d).map(|i| i as f32).collect();
        c.write_rows(1, &rows, &rows).unwrap();
        let k = c.keys[1].narrow(2, 0, 2).unwrap().transpose(1, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(k, rows);
    }
}
