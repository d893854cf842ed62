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
        let make = || Tensor::zeros((1, kv_heads, capacity, head_dim), DType::F32, device);
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
