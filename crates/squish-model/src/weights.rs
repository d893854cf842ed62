//! Where the decoder's tensors come from: Hugging Face names are canonical; GGUF names are
//! mapped to them, and llama.cpp's row permutation of Q and K (done for its interleaved RoPE)
//! is undone so one rotate-half RoPE serves both sources.

use crate::config::{Arch, ModelConfig};
use crate::linear::{GroupParams, Linear, Weight};
use crate::ModelError;
use candle_core::{DType, Device, Tensor};
use squish_format::{Mapped, ModelFiles, StDtype};
use squish_quant::rotate::Rotation;
use std::sync::Arc;

pub struct Weights<'a> {
    files: &'a Arc<ModelFiles>,
    device: &'a Device,
    cfg: &'a ModelConfig,
}

impl<'a> Weights<'a> {
    pub fn new(files: &'a Arc<ModelFiles>, cfg: &'a ModelConfig, device: &'a Device) -> Self {
        Self { files, device, cfg }
    }

    /// Where the weights are loaded to.
    pub fn device(&self) -> &Device {
        self.device
    }

    pub fn has(&self, hf_name: &str) -> bool {
        match self.files.as_ref() {
            ModelFiles::HfDir(d) => d.has_tensor(hf_name),
            ModelFiles::Squish(s) => s.manifest().tensors.contains_key(hf_name),
            ModelFiles::Gguf(g) => g.has_tensor(&gguf_name(hf_name)),
        }
    }

    /// The linear layer `prefix` (`prefix.weight`, optional `prefix.bias`) of shape (out, inp):
    /// quantized weights stay packed, in place in the mmap; dense ones become f32 tensors.
    pub fn linear(&self, prefix: &str, out: usize, inp: usize) -> Result<Linear, ModelError> {
        let name = format!("{prefix}.weight");
        let bias = self.maybe(&format!("{prefix}.bias"), &[out])?;
        let quantized = match self.files.as_ref() {
            ModelFiles::Squish(s) => s.manifest().tensors.get(&name).map(|e| (e.scheme.clone(), e.group_size, e.shape.clone(), e.rotation)),
            _ => None,
        };
        let weight = match quantized {
            Some((scheme, Some(group), shape, rotation)) if ["int4", "int4p8", "int3", "int2", "int8"].contains(&scheme.as_str()) => {
                if shape != [out, inp] {
                    return Err(ModelError::unsupported(
                        self.files.path(),
                        format!("tensor `{name}` has shape {shape:?}, expected {:?} from the config", [out, inp]),
                    ));
                }
                let part = |suffix: &str, dtype| Mapped::new(self.files, &format!("{name}.{suffix}"), dtype);
                // 8-bit parameters (int3, int4p8) become the f16 values the kernels read, once.
                let params = |eight: bool| -> Result<GroupParams, ModelError> {
                    if !eight {
                        return Ok(GroupParams::Mapped { scales: part("scales", StDtype::F16)?, mins: part("mins", StDtype::F16)? });
                    }
                    let (s8, m8, steps) = (part("scales", StDtype::U8)?, part("mins", StDtype::I8)?, part("steps", StDtype::F16)?);
                    let (scales, mins) = squish_quant::params8::expand_params(s8.bytes(), m8.as_i8(), steps.as_f16()?)
                        .map_err(|e| ModelError::unsupported(self.files.path(), format!("tensor `{name}`: {e}")))?;
                    Ok(GroupParams::Expanded { scales, mins })
                };
                let weight = match scheme.as_str() {
                    "int4" | "int4p8" => Weight::Int4 {
                        codes: part("q4", StDtype::U8)?,
                        params: params(scheme == "int4p8")?,
                        n: out,
                        k: inp,
                        group,
                        panels: Default::default(),
                    },
                    "int3" => Weight::Int3 { codes: part("q3", StDtype::U8)?, params: params(true)?, n: out, k: inp, group },
                    "int2" => {
                        let (s8, steps, book) = (part("scales", StDtype::U8)?, part("steps", StDtype::F16)?, part("codebook", StDtype::U8)?);
                        let bad = |e: String| ModelError::unsupported(self.files.path(), format!("tensor `{name}`: {e}"));
                        let (scales, mins) = squish_quant::int2::expand_params(s8.bytes(), steps.as_f16()?).map_err(|e| bad(e.to_string()))?;
                        let table: [u8; 32] = book.bytes().try_into().map_err(|_| bad(format!("codebook of {} bytes, expected 32", book.bytes().len())))?;
                        Weight::Int2 { codes: part("q2", StDtype::U8)?, params: GroupParams::Expanded { scales, mins }, table, n: out, k: inp, group }
                    }
                    _ => Weight::Int8 { codes: part("q8", StDtype::I8)?, scales: part("scales", StDtype::F16)?, n: out, k: inp, group, panels: Default::default() },
                };
                if let Some(block) = rotation {
                    let signs = part("signs", StDtype::U8)?;
                    let r = Rotation::from_sign_bits(signs.bytes(), inp, block)
                        .map_err(|e| ModelError::unsupported(self.files.path(), format!("tensor `{name}`: {e}")))?;
                    return Linear::rotated(weight, bias, r).to_device(self.device);
                }
                weight
            }
            _ => Weight::Dense(self.get(&name, &[out, inp])?),
        };
        Linear::new(weight, bias).to_device(self.device)
    }

    /// The tensor under its Hugging Face name, with the expected shape, in the device's compute
    /// dtype (f32 on the CPU, bf16 on GPUs).
    pub fn get(&self, hf_name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let dtype = squish_backend::compute_dtype(self.device);
        let t = match self.files.as_ref() {
            ModelFiles::HfDir(d) => d.tensor(hf_name, dtype, self.device)?,
            ModelFiles::Squish(s) => s.hf().tensor(hf_name, dtype, self.device)?,
            ModelFiles::Gguf(g) => {
                let t = g.tensor(&gguf_name(hf_name), DType::F32, self.device)?;
                let t = if self.unpermute_needed(hf_name) {
                    let heads = if hf_name.contains("q_proj") { self.cfg.heads } else { self.cfg.kv_heads };
                    unpermute_rows(&t, heads)?
                } else {
                    t
                };
                t.to_dtype(dtype)?
            }
        };
        if t.dims() != shape {
            return Err(ModelError::unsupported(
                self.files.path(),
                format!("tensor `{hf_name}` has shape {:?}, expected {shape:?} from the config", t.dims()),
            ));
        }
        Ok(t)
    }

    /// An optional tensor: None when absent.
    pub fn maybe(&self, hf_name: &str, shape: &[usize]) -> Result<Option<Tensor>, ModelError> {
        if self.has(hf_name) {
            self.get(hf_name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    fn unpermute_needed(&self, hf_name: &str) -> bool {
        matches!(self.cfg.arch, Arch::Llama | Arch::Mistral)
            && (hf_name.contains("self_attn.q_proj.") || hf_name.contains("self_attn.k_proj."))
    }
}

/// Undoes llama.cpp's `permute`: its rows are (head, half-pair, 2); ours are (head, 2, half).
/// w: (heads * head_dim, ...) or a bias of heads * head_dim
fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor, ModelError> {
    let dims = w.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    let half = dims[0] / heads / 2;
    let t = w.reshape((heads, half, 2, rest))?.transpose(1, 2)?.contiguous()?;
    Ok(t.reshape(dims)?)
}

/// GGUF's name for a Hugging Face tensor name.
fn gguf_name(hf: &str) -> String {
    const TOP: [(&str, &str); 3] =
        [("model.embed_tokens.", "token_embd."), ("model.norm.", "output_norm."), ("lm_head.", "output.")];
    for (from, to) in TOP {
        if let Some(rest) = hf.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    const LAYER: [(&str, &str); 11] = [
        ("self_attn.q_proj.", "attn_q."),
        ("self_attn.k_proj.", "attn_k."),
        ("self_attn.v_proj.", "attn_v."),
        ("self_attn.o_proj.", "attn_output."),
        ("self_attn.q_norm.", "attn_q_norm."),
        ("self_attn.k_norm.", "attn_k_norm."),
        ("mlp.gate_proj.", "ffn_gate."),
        ("mlp.up_proj.", "ffn_up."),
        ("mlp.down_proj.", "ffn_down."),
        ("input_layernorm.", "attn_norm."),
        ("post_attention_layernorm.", "ffn_norm."),
    ];
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        if let Some((idx, part)) = rest.split_once('.') {
            for (from, to) in LAYER {
                if let Some(tail) = part.strip_prefix(from) {
                    return format!("blk.{idx}.{to}{tail}");
                }
            }
        }
    }
    hf.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hf_names_to_gguf() {
        assert_eq!(gguf_name("model.embed_tokens.weight"), "token_embd.weight");
        assert_eq!(gguf_name("model.layers.12.self_attn.q_proj.bias"), "blk.12.attn_q.bias");
        assert_eq!(gguf_name("model.layers.0.post_attention_layernorm.weight"), "blk.0.ffn_norm.weight");
        assert_eq!(gguf_name("lm_head.weight"), "output.weight");
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, half, rest).swapaxes(1, 2)
        let heads = 2;
        let w = Tensor::arange(0f32, 16.0, &Device::Cpu).unwrap().reshape((8, 2)).unwrap();
        let permuted = w.reshape((heads, 2, 2, 2)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let permuted = permuted.reshape((8, 2)).unwrap();
        let back = unpermute_rows(&permuted, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
