//! squish's INT8, INT4, INT3 and INT2 matrices on a GPU: the packed codes and f16 group
//! parameters are uploaded as they are stored, and `QuantMatrix::matmul` computes from them
//! (src/cuda/quant.cu for INT4/INT8, lowbit.cu for INT3/INT2), rotating its inputs first for
//! matrices stored rotated. The type exists in every build; without the `cuda` feature
//! `upload` is a clear error.

use crate::{BackendError, Result};
use candle_core::{DType, Device, Tensor};
use half::f16;

/// A matrix of N rows (outputs) by K inputs on a CUDA device.
pub struct QuantMatrix {
    kind: Kind,
    /// INT4: N*K/2 bytes; INT8: N*K bytes (i8 stored as u8); INT3: N*K/64*24; INT2: N*K/64*16
    /// and then the 32-byte codebook.
    codes: Tensor,
    /// INT4/INT3/INT2: scale and min of each group, interleaved; INT8: each group's scale. f16.
    params: Tensor,
    n: usize,
    k: usize,
    group: usize,
    /// INT2's codebook (also the tail of `codes`), to tell whether two matrices stack.
    table: Option<[u8; 32]>,
    /// For a matrix stored rotated on its inputs: the rotation its inputs take first.
    rotation: Option<Rotation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int4,
    Int8,
    Int3,
    Int2,
}

impl Kind {
    /// Code bytes per row of k inputs.
    fn row_bytes(self, k: usize) -> usize {
        match self {
            Kind::Int4 => k / 2,
            Kind::Int8 => k,
            Kind::Int3 => k / 64 * 24,
            Kind::Int2 => k / 64 * 16,
        }
    }
}

/// squish_quant::rotate's R = blockdiag(H_b) · D / √b on a matrix's inputs.
#[derive(Clone)]
struct Rotation {
    /// D's ±1 per input, f32 on the device.
    signs: Tensor,
    /// The same signs on the host, to compare rotations.
    host: Vec<f32>,
    block: usize,
}

/// Batches of up to this many rows run the GEMV kernel (one launch, reading the weights once).
/// On an H200 the GEMV made a 1B model's 32-stream decode 1.0k tokens/s (four launches, each
/// decoding every byte eight rows over) against bf16 cuBLAS's 3.0k: past 8 rows the kernel is
/// bound by instructions, not memory.
const GEMV_MAX_ROWS: usize = 8;
/// Batches of up to this many rows (mma_tile.cuh's MMA_T) run the tensor-core kernel, which
/// reads the packed codes once; larger ones (prompts) dequantize to bf16 and go through cuBLAS.
const MMA_MAX_ROWS: usize = 64;
/// Rows of the matrix per tensor-core block (mma_tile.cuh's MMA_N).
const MMA_N: usize = 64;
/// Blocks a tensor-core launch aims for: four per SM of an H100/H200 (132 SMs), so each SM
/// has other blocks' loads in flight while one waits.
const MMA_TARGET_BLOCKS: usize = 528;
/// Fewest 64-input steps a split stretch takes, so a partial's round trip stays small beside
/// its work.
const MMA_MIN_STEPS: usize = 8;
/// The largest Hadamard block of a rotation (squish_quant::rotate::MAX_BLOCK; lowbit.cu's
/// LB_MAX_BLOCK).
const MAX_ROTATION_BLOCK: usize = 512;

/// Into how many stretches the tensor-core kernel splits the inputs of an n x k matrix, and
/// the stretch length in 64-input steps: enough blocks to fill the GPU, every stretch full
/// but the last.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn mma_split(n: usize, k: usize) -> (usize, usize) {
    let steps = k / 64;
    let want = MMA_TARGET_BLOCKS.div_ceil(n.div_ceil(MMA_N)).min(steps / MMA_MIN_STEPS).max(1);
    let per = steps.div_ceil(want).max(1);
    (steps.div_ceil(per), per)
}

impl QuantMatrix {
    /// INT4 codes in squish's nibble layout with per-group scales and mins (w = s·q + m).
    pub fn int4(codes: &[u8], scales: &[f16], mins: &[f16], n: usize, k: usize, group: usize, device: &Device) -> Result<Self> {
        let params: Vec<f16> = scales.iter().zip(mins).flat_map(|(&s, &m)| [s, m]).collect();
        Self::upload(Kind::Int4, codes, params, n, k, group, device)
    }

    /// INT8 codes (row-major i8) with per-group scales (w = s·q).
    pub fn int8(codes: &[i8], scales: &[f16], n: usize, k: usize, group: usize, device: &Device) -> Result<Self> {
        // SAFETY: i8 and u8 have the same size and alignment; every bit pattern is valid.
        let bytes = unsafe { std::slice::from_raw_parts(codes.as_ptr() as *const u8, codes.len()) };
        Self::upload(Kind::Int8, bytes, scales.to_vec(), n, k, group, device)
    }

    /// INT3 codes in squish's bit-plane layout with per-group scales and mins (w = s·q + m).
    pub fn int3(codes: &[u8], scales: &[f16], mins: &[f16], n: usize, k: usize, group: usize, device: &Device) -> Result<Self> {
        let params: Vec<f16> = scales.iter().zip(mins).flat_map(|(&s, &m)| [s, m]).collect();
        Self::upload(Kind::Int3, codes, params, n, k, group, device)
    }

    /// INT2 codebook entries in squish's pair layout, the 32-byte codebook, and per-group
    /// scales and mins (w = s·table[entry] + m).
    #[allow(clippy::too_many_arguments)]
    pub fn int2(codes: &[u8], scales: &[f16], mins: &[f16], table: &[u8; 32], n: usize, k: usize, group: usize, device: &Device) -> Result<Self> {
        let params: Vec<f16> = scales.iter().zip(mins).flat_map(|(&s, &m)| [s, m]).collect();
        let mut m = Self::upload(Kind::Int2, codes, params, n, k, group, device)?;
        m.codes = Tensor::cat(&[&m.codes, &Tensor::from_slice(table, 32, device)?], 0)?;
        m.table = Some(*table);
        Ok(m)
    }

    /// The matrix as stored rotated on its inputs by squish_quant::rotate's R (signs ±1 per
    /// input, Hadamard blocks of `block`): products rotate their inputs first.
    pub fn rotated(mut self, signs: &[f32], block: usize) -> Result<Self> {
        if signs.len() != self.k || !block.is_power_of_two() || !(2..=MAX_ROTATION_BLOCK).contains(&block) || !self.k.is_multiple_of(block) {
            return Err(BackendError::Candle(candle_core::Error::Msg(format!(
                "a rotation of {} inputs in blocks of {block} does not fit a {} x {} matrix's GPU kernels",
                signs.len(),
                self.n,
                self.k
            ))));
        }
        let device = self.codes.device().clone();
        self.rotation = Some(Rotation { signs: Tensor::from_slice(signs, signs.len(), &device)?, host: signs.to_vec(), block });
        Ok(self)
    }

    fn upload(kind: Kind, codes: &[u8], params: Vec<f16>, n: usize, k: usize, group: usize, device: &Device) -> Result<Self> {
        if !device.is_cuda() {
            return Err(BackendError::NotBuilt("cuda"));
        }
        let per_row = kind.row_bytes(k);
        let groups = n * (k / group.max(1));
        let want_params = if kind == Kind::Int8 { groups } else { 2 * groups };
        if k % 64 != 0 || group % 32 != 0 || k % group != 0 || codes.len() != n * per_row || params.len() != want_params {
            return Err(BackendError::Candle(candle_core::Error::Msg(format!(
                "{kind:?} matrix {n} x {k} (group {group}) with {} code bytes and {} parameters does not fit the GPU kernels",
                codes.len(),
                params.len()
            ))));
        }
        let codes = Tensor::from_slice(codes, codes.len(), device)?;
        let params = Tensor::from_vec(params, want_params, device)?;
        Ok(Self { kind, codes, params, n, k, group, table: None, rotation: None })
    }

    /// (out, in)
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Matrices reading the same input stacked on their outputs into one (rows of the first,
    /// then of the second, ...): one product serves them all. Codes and parameters are stored
    /// row by row, so stacking is concatenation (INT2's codebook goes after all the rows).
    /// None where the kinds, widths, group sizes, codebooks or rotations differ.
    pub fn stack(parts: &[&QuantMatrix]) -> Result<Option<Self>> {
        let Some(first) = parts.first() else { return Ok(None) };
        let same_rotation = |m: &QuantMatrix| match (&m.rotation, &first.rotation) {
            (None, None) => true,
            (Some(a), Some(b)) => a.block == b.block && a.host == b.host,
            _ => false,
        };
        if parts.iter().any(|m| (m.kind, m.k, m.group, m.table) != (first.kind, first.k, first.group, first.table) || !same_rotation(m)) {
            return Ok(None);
        }
        let mut codes = parts.iter().map(|m| m.codes.narrow(0, 0, m.n * m.kind.row_bytes(m.k))).collect::<candle_core::Result<Vec<_>>>()?;
        if let Some(table) = &first.table {
            codes.push(Tensor::from_slice(table, 32, first.codes.device())?);
        }
        let codes = Tensor::cat(&codes, 0)?;
        let params = Tensor::cat(&parts.iter().map(|m| &m.params).collect::<Vec<_>>(), 0)?;
        let n = parts.iter().map(|m| m.n).sum();
        Ok(Some(Self { kind: first.kind, codes, params, n, k: first.k, group: first.group, table: first.table, rotation: first.rotation.clone() }))
    }

    /// x (..., K) -> (..., N), in bf16.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let t = x.elem_count() / self.k;
        let x2 = x.to_dtype(DType::BF16)?.reshape((t, self.k))?;
        // The kernels load 16 bytes of x at a time from a contiguous start of their own.
        let x2 = if x2.is_contiguous() && x2.layout().start_offset() % 8 == 0 { x2 } else { x2.copy()? };
        let x2 = match &self.rotation {
            Some(r) => x2.apply_op2_no_bwd(&r.signs, &Op::Rotate { block: r.block })?,
            None => x2,
        };
        let y = if t <= GEMV_MAX_ROWS {
            x2.apply_op3_no_bwd(&self.codes, &self.params, &Op::Gemv(self.spec()))?
        } else if t <= MMA_MAX_ROWS {
            x2.apply_op3_no_bwd(&self.codes, &self.params, &Op::Mma(self.spec()))?
        } else {
            x2.matmul(&self.dequantize()?.t()?)?
        };
        let mut out = dims;
        *out.last_mut().expect("x has dims") = self.n;
        Ok(y.reshape(out)?)
    }

    /// The whole matrix, (N, K) in bf16: a transient copy (LoRA's backward multiplies by it).
    /// For a rotated matrix, as stored (the product of the rotated inputs).
    pub fn dequantize(&self) -> Result<Tensor> {
        Ok(self.codes.apply_op2_no_bwd(&self.params, &Op::Dequantize(self.spec()))?)
    }

    fn spec(&self) -> Spec {
        Spec { kind: self.kind, n: self.n, k: self.k, group: self.group }
    }
}

#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Spec {
    kind: Kind,
    n: usize,
    k: usize,
    group: usize,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
enum Op {
    /// (x, codes, params) -> y
    Gemv(Spec),
    /// (x, codes, params) -> y on the tensor cores (up to MMA_MAX_ROWS rows)
    Mma(Spec),
    /// (codes, params) -> w
    Dequantize(Spec),
    /// (x (t, k) bf16, signs (k) f32) -> R x (t, k) bf16: lowbit.cu's rotate_bf16, Hadamard
    /// blocks of `block`
    Rotate { block: usize },
}

impl candle_core::CustomOp3 for Op {
    fn name(&self) -> &'static str {
        "squish-quant-gemv"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        super::no_cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &candle_core::Layout,
        codes: &candle_core::CudaStorage,
        _: &candle_core::Layout,
        params: &candle_core::CudaStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        match self {
            Op::Gemv(spec) => launch::gemv(*spec, x, lx, codes, params),
            Op::Mma(spec) => launch::mma(*spec, x, lx, codes, params),
            Op::Dequantize(_) | Op::Rotate { .. } => candle_core::bail!("not a product"),
        }
    }
}

impl candle_core::CustomOp2 for Op {
    fn name(&self) -> &'static str {
        "squish-quant-dequantize-or-rotate"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        super::no_cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        la: &candle_core::Layout,
        b: &candle_core::CudaStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        match self {
            Op::Dequantize(spec) => launch::dequantize(*spec, a, b),
            Op::Rotate { block } => launch::rotate(*block, a, la, b),
            _ => candle_core::bail!("not a dequantization or rotation"),
        }
    }
}

#[cfg(feature = "cuda")]
mod launch {
    use super::{Kind, Spec};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};
    use half::{bf16, f16};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/quant.ptx"));
    const MODULE: &str = "squish_quant";
    const LOWBIT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lowbit.ptx"));
    const LOWBIT_MODULE: &str = "squish_lowbit";
    /// Kernel constants (quant.cu's ROWS and WARPS, lowbit.cu's LB_ROWS and LB_WARPS).
    const ROWS: usize = 8;
    const WARPS: u32 = 4;

    /// A kind's kernel `what` ("gemv" or "dequant"), and its module.
    fn kernel(kind: Kind, what: &str) -> (String, &'static str, &'static str) {
        match kind {
            Kind::Int4 => (format!("int4_{what}_bf16"), MODULE, PTX),
            Kind::Int8 => (format!("int8_{what}_bf16"), MODULE, PTX),
            Kind::Int3 => (format!("int3_{what}_bf16"), LOWBIT_MODULE, LOWBIT_PTX),
            Kind::Int2 => (format!("int2_{what}_bf16"), LOWBIT_MODULE, LOWBIT_PTX),
        }
    }

    pub(super) fn rotate(block: usize, x: &CudaStorage, lx: &Layout, signs: &CudaStorage) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (Some((o1, o2)), &[t, k]) = (lx.contiguous_offsets(), lx.dims()) else { candle_core::bail!("rotate: a contiguous (t, k) input expected") };
        let xs = x.as_cuda_slice::<bf16>()?.slice(o1..o2);
        let out = unsafe { dev.alloc::<bf16>(t * k)? };
        let cfg = LaunchConfig { grid_dim: (t as u32, (k / block) as u32, 1), block_dim: (block as u32 / 2, 1, 1), shared_mem_bytes: 0 };
        let f = dev.get_or_load_custom_func("rotate_bf16", LOWBIT_MODULE, LOWBIT_PTX)?;
        let (k_i, block_i) = (k as i32, block as i32);
        // As squish_quant::rotate rounds it: 1/√b in f64, then to f32.
        let scale = (1.0 / (block as f64).sqrt()) as f32;
        let mut b = f.builder();
        b.arg(&xs).arg(signs.as_cuda_slice::<f32>()?).arg(&out).arg(&k_i).arg(&block_i).arg(&scale);
        // SAFETY: x and out hold t x k values, signs k; block (checked by `rotated`) is a power
        // of two from 2 to 512 dividing k.
        unsafe { b.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((t, k))))
    }

    pub(super) fn gemv(spec: Spec, x: &CudaStorage, lx: &Layout, codes: &CudaStorage, params: &CudaStorage) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let Some((o1, o2)) = lx.contiguous_offsets() else { candle_core::bail!("gemv input is not contiguous") };
        let xs = x.as_cuda_slice::<bf16>()?.slice(o1..o2);
        let t = (o2 - o1) / spec.k;
        let y = unsafe { dev.alloc::<bf16>(t * spec.n)? };
        let cfg = LaunchConfig { grid_dim: ((spec.n as u32).div_ceil(WARPS), 1, 1), block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: 0 };
        let (n, k, g) = (spec.n as i32, spec.k as i32, spec.group as i32);
        let (name, module, ptx) = kernel(spec.kind, "gemv");
        let f = dev.get_or_load_custom_func(&name, module, ptx)?;
        let (c, p) = (codes.as_cuda_slice::<u8>()?, params.as_cuda_slice::<f16>()?);
        for t0 in (0..t).step_by(ROWS) {
            let (rows, t0) = (ROWS.min(t - t0) as i32, t0 as i32);
            let mut b = f.builder();
            b.arg(c).arg(p).arg(&xs).arg(&y).arg(&n).arg(&k).arg(&g).arg(&t0).arg(&rows);
            // SAFETY: codes, params, x and y have the sizes of an n x k matrix and t rows.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((t, spec.n))))
    }

    pub(super) fn mma(spec: Spec, x: &CudaStorage, lx: &Layout, codes: &CudaStorage, params: &CudaStorage) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let Some((o1, o2)) = lx.contiguous_offsets() else { candle_core::bail!("mma input is not contiguous") };
        let xs = x.as_cuda_slice::<bf16>()?.slice(o1..o2);
        let t = (o2 - o1) / spec.k;
        if t > super::MMA_MAX_ROWS {
            candle_core::bail!("the tensor-core kernel takes at most {} rows", super::MMA_MAX_ROWS);
        }
        let y = unsafe { dev.alloc::<bf16>(t * spec.n)? };
        let (splits, _) = super::mma_split(spec.n, spec.k);
        // With one stretch the kernel writes y and never touches `part`.
        let part = unsafe { dev.alloc::<f32>(if splits > 1 { splits * t * spec.n } else { 1 })? };
        // MMA_N rows of W per block, one warp per 16 of them; blockIdx.y the input stretch.
        let cfg = LaunchConfig {
            grid_dim: (spec.n.div_ceil(super::MMA_N) as u32, splits as u32, 1),
            block_dim: (super::MMA_N as u32 / 16 * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (name, module, ptx) = kernel(spec.kind, "mma");
        let f = dev.get_or_load_custom_func(&name, module, ptx)?;
        let (c, p) = (codes.as_cuda_slice::<u8>()?, params.as_cuda_slice::<f16>()?);
        let (n, k, g, t_i, splits_i) = (spec.n as i32, spec.k as i32, spec.group as i32, t as i32, splits as i32);
        let mut b = f.builder();
        b.arg(c).arg(p).arg(&xs).arg(&y).arg(&part).arg(&n).arg(&k).arg(&g).arg(&t_i).arg(&splits_i);
        // SAFETY: codes, params and x have the sizes of an n x k matrix and t <= 64 rows; y is
        // t x n, part splits x t x n where splits > 1.
        unsafe { b.launch(cfg) }.w()?;
        if splits > 1 {
            const THREADS: u32 = 256;
            let cfg = LaunchConfig { grid_dim: (((t * spec.n) as u32).div_ceil(THREADS), 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            let f = dev.get_or_load_custom_func("mma_reduce", module, ptx)?;
            let mut b = f.builder();
            b.arg(&part).arg(&y).arg(&n).arg(&t_i).arg(&splits_i);
            // SAFETY: part holds splits x t x n partials written by the launch before.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((t, spec.n))))
    }

    pub(super) fn dequantize(spec: Spec, codes: &CudaStorage, params: &CudaStorage) -> Result<(CudaStorage, Shape)> {
        let dev = codes.device().clone();
        let w = unsafe { dev.alloc::<bf16>(spec.n * spec.k)? };
        // One block row per matrix row; a thread per 8 code bytes (INT4: 16 inputs, INT8: 8)
        // or 8 inputs (INT3, INT2).
        let threads_per_row = match spec.kind {
            Kind::Int4 => spec.k / 16,
            Kind::Int8 | Kind::Int3 | Kind::Int2 => spec.k / 8,
        };
        const THREADS: u32 = 256;
        let stretches = (threads_per_row as u32).div_ceil(THREADS);
        let cfg = LaunchConfig { grid_dim: (spec.n as u32, stretches, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let (name, module, ptx) = kernel(spec.kind, "dequant");
        let f = dev.get_or_load_custom_func(&name, module, ptx)?;
        let (c, p) = (codes.as_cuda_slice::<u8>()?, params.as_cuda_slice::<f16>()?);
        let (n, k, g) = (spec.n as i32, spec.k as i32, spec.group as i32);
        let mut b = f.builder();
        b.arg(c).arg(p).arg(&w).arg(&n).arg(&k).arg(&g);
        unsafe { b.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(w, dev), Shape::from((spec.n, spec.k))))
    }
}

#[cfg(test)]
mod tests {
    use super::mma_split;

    /// Stretches cover every 64-input step once, none empty, and only matrices of few row
    /// slices split.
    #[test]
    fn mma_splits_cover_the_inputs() {
        assert_eq!(mma_split(3584, 18944), (10, 30)); // Qwen2.5-7B down_proj: 56 slices
        assert_eq!(mma_split(4608, 3584), (7, 8)); // its stacked q/k/v: 72 slices
        assert_eq!(mma_split(37888, 3584), (1, 56)); // its stacked gate/up: 592 slices
        assert_eq!(mma_split(64, 64), (1, 1));
        for n in [37, 64, 200, 3584, 40000] {
            for k in [64, 576, 1536, 3584, 18944] {
                let (splits, per) = mma_split(n, k);
                let steps = k / 64;
                assert!(splits * per >= steps && (splits - 1) * per < steps, "{n} x {k}: {splits} x {per}");
                assert!(splits == 1 || per >= super::MMA_MIN_STEPS, "{n} x {k}: {per} steps a stretch");
            }
        }
    }
}
