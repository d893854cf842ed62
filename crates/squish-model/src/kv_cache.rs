//! The key/value cache of one sequence: preallocated to the context size at creation (so its
//! memory is known up front and never reallocated), written in place, truncatable so a prompt
//! that shares a prefix with the previous one reuses it.

use candle_core::{DType, Device, Tensor};

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

    /// Records the tokens whose keys and values every layer has just appended.
    pub(crate) fn commit(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }
}
