//! The key/value cache of one sequence: preallocated to the context size at creation (so its
//! memory is known up front and never reallocated), written in place, truncatable so a prompt
//! that shares a prefix with the previous one reuses it. Stored as f32 or f16: f16 halves
//! the memory and what each decode step reads (attention over a batch of long contexts reads
//! as many bytes of cache as of weights), at a rounding of every key and value to 11 bits.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor};
use half::slice::HalfFloatSliceExt;

pub struct KvCache {
    keys: Vec<Tensor>,   // per layer: (1, kv_heads, capacity, head_dim)
    values: Vec<Tensor>, // per layer: (1, kv_heads, capacity, head_dim)
    /// The tokens whose keys and values are stored, in order.
    tokens: Vec<u32>,
    capacity: usize,
    dtype: DType,
}

impl KvCache {
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F16) && !(dtype == DType::BF16 && !device.is_cpu()) {
            candle_core::bail!("a kv cache holds f32 or f16 (bf16 on GPUs), not {dtype:?}");
        }
        let make = || zeros_aligned((1, kv_heads, capacity, head_dim), dtype, device);
        Ok(Self {
            keys: (0..layers).map(|_| make()).collect::<candle_core::Result<_>>()?,
            values: (0..layers).map(|_| make()).collect::<candle_core::Result<_>>()?,
            tokens: Vec::new(),
            capacity,
            dtype,
        })
    }

    /// What the keys and values are stored as.
    pub fn dtype(&self) -> DType {
        self.dtype
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
    /// k, v: (1, kv_heads, t, head_dim) -> (1, kv_heads, len + t, head_dim) each, in k's dtype
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let start = self.tokens.len();
        let t = k.dim(2)?;
        self.keys[layer].slice_set(&k.to_dtype(self.dtype)?.contiguous()?, 2, start)?;
        self.values[layer].slice_set(&v.to_dtype(self.dtype)?.contiguous()?, 2, start)?;
        let all = |x: &Tensor| x.narrow(2, 0, start + t)?.to_dtype(k.dtype());
        Ok((all(&self.keys[layer])?, all(&self.values[layer])?))
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
/// value row (a multiple of 64 bytes in f32, of 32 in f16) does too: the attention kernel's
/// loads then never straddle two cache lines (malloc aligns to 16 only, and the split loads
/// cost a long-context decode step several percent).
fn zeros_aligned(shape: (usize, usize, usize, usize), dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    if !device.is_cpu() {
        return Tensor::zeros(shape, dtype, device);
    }
    let size = dtype.size_in_bytes();
    let all = Tensor::zeros(n + 64 / size, dtype, device)?;
    let skip = {
        let (storage, _) = all.storage_and_layout();
        let at = match &*storage {
            candle_core::Storage::Cpu(CpuStorage::F32(v)) => v.as_ptr() as usize,
            candle_core::Storage::Cpu(CpuStorage::F16(v)) => v.as_ptr() as usize,
            _ => candle_core::bail!("zeros of {dtype:?} on the cpu"),
        };
        at.wrapping_neg() % 64 / size
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
        let (_, heads, capacity, d) = layout.shape().dims4()?;
        let t = self.rows.len() / (heads * d);
        if !layout.is_contiguous() || self.start + t > capacity || t * heads * d != self.rows.len() {
            candle_core::bail!("kv cache write of {} values at {} does not fit {:?}", self.rows.len(), self.start, layout.shape());
        }
        let at = |i: usize, h: usize| layout.start_offset() + (h * capacity + self.start + i) * d;
        let heads_of = || self.rows.chunks_exact(heads * d).enumerate().flat_map(|(i, row)| row.chunks_exact(d).enumerate().map(move |(h, x)| (i, h, x)));
        match storage {
            CpuStorage::F32(data) => heads_of().for_each(|(i, h, x)| data[at(i, h)..][..d].copy_from_slice(x)),
            CpuStorage::F16(data) => heads_of().for_each(|(i, h, x)| data[at(i, h)..][..d].convert_from_f32_slice(x)),
            _ => candle_core::bail!("the kv cache is neither f32 nor f16"),
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
        for dtype in [DType::F32, DType::F16] {
            let mut c = KvCache::new(layers, heads, d, cap, dtype, &Device::Cpu).unwrap();
            for l in 0..layers {
                for t in [&c.keys[l], &c.values[l]] {
                    let (s, layout) = t.storage_and_layout();
                    let at = match &*s {
                        candle_core::Storage::Cpu(CpuStorage::F32(v)) => v[layout.start_offset()..].as_ptr() as usize,
                        candle_core::Storage::Cpu(CpuStorage::F16(v)) => v[layout.start_offset()..].as_ptr() as usize,
                        _ => panic!("{dtype:?} cache of another storage"),
                    };
                    assert_eq!(at % 64, 0, "{dtype:?}");
                }
            }
            // Small integers: exact in f16 too.
            let rows: Vec<f32> = (0..2 * heads * d).map(|i| i as f32).collect();
            c.write_rows(1, &rows, &rows).unwrap();
            let k = c.keys[1].narrow(2, 0, 2).unwrap().transpose(1, 2).unwrap().flatten_all().unwrap();
            assert_eq!(k.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), rows, "{dtype:?}");
        }
    }

    #[test]
    fn an_f16_cache_returns_what_it_stored_in_the_callers_dtype() {
        let mut c = KvCache::new(1, 2, 4, 8, DType::F16, &Device::Cpu).unwrap();
        let k = Tensor::from_vec((0..16).map(|i| i as f32 * 0.1).collect::<Vec<_>>(), (1, 2, 2, 4), &Device::Cpu).unwrap();
        let (ks, vs) = c.append(0, &k, &k).unwrap();
        assert_eq!((ks.dtype(), vs.dims()), (DType::F32, &[1, 2, 2, 4][..]));
        let (got, want) = (ks.flatten_all().unwrap().to_vec1::<f32>().unwrap(), k.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= w.abs() / 1024.0), "{got:?}");
    }
}
