//! Linear layers that read the same input: a layer's q, k and v, its gate and up.

use crate::linear::Linear;
use crate::ModelError;
use candle_core::{Device, Tensor};

pub(crate) enum Projections<const N: usize> {
    /// On the CPU: `Linear::forward_many` runs INT4 ones as one call (one activation
    /// quantization) and gives each its own output.
    Apart([Linear; N]),
    /// On a CUDA GPU: stacked on their outputs into one matrix (`Linear::stack`), so a step
    /// runs one product and one bias add instead of N of each (a batch-1 decode step is
    /// bound by its number of launches); the output is viewed as N pieces, without copies.
    Stacked { joint: Linear, widths: [usize; N] },
}

impl<const N: usize> Projections<N> {
    pub(crate) fn new(parts: [Linear; N], device: &Device) -> Result<Self, ModelError> {
        if !device.is_cuda() {
            return Ok(Self::Apart(parts));
        }
        Ok(match Linear::stack(&parts)? {
            Some(joint) => Self::Stacked { joint, widths: parts.each_ref().map(|l| l.shape().0) },
            None => Self::Apart(parts),
        })
    }

    /// x (1, t, in) -> each layer's (1, t, out); the same values either way.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<[Tensor; N], ModelError> {
        match self {
            Self::Apart(parts) => {
                let outs = Linear::forward_many(&parts.each_ref(), x)?;
                Ok(outs.try_into().unwrap_or_else(|_| unreachable!("one output per layer")))
            }
            Self::Stacked { joint, widths } => pieces(&joint.forward(x)?, widths),
        }
    }

    /// `forward` on a GPU whose stacked layers have a bias (Qwen2's q/k/v): the products
    /// without it, and the stacked bias, which the caller adds (the attention kernels fold it
    /// into their reads: one launch fewer per layer). Elsewhere `forward` and None.
    pub(crate) fn forward_deferring_bias(&self, x: &Tensor) -> Result<([Tensor; N], Option<Tensor>), ModelError> {
        let Self::Stacked { joint, widths } = self else { return Ok((self.forward(x)?, None)) };
        let (Some(bias), Some(y)) = (joint.bias(), joint.product_on_gpu(x)?) else { return Ok((self.forward(x)?, None)) };
        Ok((pieces(&y, widths)?, Some(bias.clone())))
    }

    /// Layer `i`, for calibration's weight replacement, which runs on the CPU: None once
    /// stacked.
    pub(crate) fn part_mut(&mut self, i: usize) -> Option<&mut Linear> {
        match self {
            Self::Apart(parts) => parts.get_mut(i),
            Self::Stacked { .. } => None,
        }
    }
}

/// A stacked product's N outputs: views of consecutive `widths` of its last dimension.
fn pieces<const N: usize>(y: &Tensor, widths: &[usize; N]) -> Result<[Tensor; N], ModelError> {
    let last = y.rank() - 1;
    let mut at = 0;
    let mut outs = Vec::with_capacity(N);
    for &w in widths {
        outs.push(y.narrow(last, at, w)?);
        at += w;
    }
    Ok(outs.try_into().unwrap_or_else(|_| unreachable!("one output per layer")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::Weight;

    fn dense(n: usize, k: usize, seed: usize, bias: bool) -> Linear {
        let v = |len: usize, s: usize| (0..len).map(|i| ((i * 7919 + s * 104729) % 1009) as f32 / 1009.0 - 0.5).collect::<Vec<_>>();
        let w = Tensor::from_vec(v(n * k, seed), (n, k), &Device::Cpu).unwrap();
        let b = bias.then(|| Tensor::from_vec(v(n, seed + 1), n, &Device::Cpu).unwrap());
        Linear::new(Weight::Dense(w), b)
    }

    /// Stacked layers (biases on some only, as Qwen2's q/k/v have and Llama's do not) give
    /// each layer's own output.
    #[test]
    fn stacked_layers_give_each_layers_output() {
        let k = 48;
        let x = Tensor::from_vec((0..3 * k).map(|i| (i % 13) as f32 / 13.0 - 0.4).collect::<Vec<_>>(), (1, 3, k), &Device::Cpu).unwrap();
        for biases in [[true, true, false], [false, false, false]] {
            let parts = [dense(40, k, 1, biases[0]), dense(16, k, 2, biases[1]), dense(16, k, 3, biases[2])];
            let want: Vec<Vec<f32>> = parts.iter().map(|l| l.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect();
            let joint = Linear::stack(&parts).unwrap().expect("dense layers of one width stack");
            assert_eq!(joint.shape(), (72, k));
            let stacked = Projections::Stacked { joint, widths: [40, 16, 16] };
            for (i, got) in stacked.forward(&x).unwrap().iter().enumerate() {
                assert_eq!(got.dims(), &[1, 3, [40, 16, 16][i]]);
                let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
                for (a, b) in got.iter().zip(&want[i]) {
                    assert!((a - b).abs() <= 1e-5, "biases {biases:?}, layer {i}: {a} vs {b}");
                }
            }
        }
        assert!(Linear::stack(&[dense(4, 48, 1, false), dense(4, 32, 2, false)]).unwrap().is_none(), "different widths");
    }
}
