//! Which scheme each tensor gets, and the safetensors entries that store it. Matrices take
//! the scheme asked for, falling back (with a note in the manifest) when their input width
//! does not fit its group size; vectors (norms, biases, RoPE factors: under 0.1% of the
//! parameters and sensitive to rounding) stay f32.

use crate::TensorSpec;
use squish_format::{PlannedTensor, StoredDtype};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Int4,
    /// INT4 with 8-bit group parameters (`squish_quant::params8`): what `--to int3` keeps
    /// its most sensitive matrices in; not offered on the command line.
    Int4P8,
    Int3,
    /// A 16-entry codebook of weight pairs per matrix (`squish_quant::int2`).
    Int2,
    Int8,
    F16,
    Bf16,
    F32,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Self::Int4 => "int4",
            Self::Int4P8 => "int4p8",
            Self::Int3 => "int3",
            Self::Int2 => "int2",
            Self::Int8 => "int8",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::F32 => "f32",
        }
    }

    pub fn default_group_size(self) -> Option<usize> {
        match self {
            Self::Int4 | Self::Int4P8 => Some(64),
            Self::Int3 | Self::Int2 => Some(64),
            Self::Int8 => Some(32),
            _ => None,
        }
    }

    fn dense_dtype(self) -> StoredDtype {
        match self {
            Self::F16 => StoredDtype::F16,
            Self::Bf16 => StoredDtype::BF16,
            _ => StoredDtype::F32,
        }
    }
}

/// How one tensor is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    Int4 { group: usize },
    Int4P8 { group: usize },
    Int3 { group: usize },
    Int2 { group: usize },
    Int8 { group: usize },
    Dense(StoredDtype),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorChoice {
    pub spec: TensorSpec,
    pub storage: Storage,
    pub note: Option<String>,
    /// Stored rotated (`squish_quant::rotate`) in blocks of this size: its signs are one
    /// more part.
    pub rotation: Option<usize>,
}

impl TensorChoice {
    pub fn scheme_name(&self) -> &'static str {
        match self.storage {
            Storage::Int4 { .. } => "int4",
            Storage::Int4P8 { .. } => "int4p8",
            Storage::Int3 { .. } => "int3",
            Storage::Int2 { .. } => "int2",
            Storage::Int8 { .. } => "int8",
            Storage::Dense(StoredDtype::F16) => "f16",
            Storage::Dense(StoredDtype::BF16) => "bf16",
            Storage::Dense(_) => "f32",
        }
    }

    pub fn group(&self) -> Option<usize> {
        match self.storage {
            Storage::Int4 { group }
            | Storage::Int4P8 { group }
            | Storage::Int3 { group }
            | Storage::Int2 { group }
            | Storage::Int8 { group } => Some(group),
            Storage::Dense(_) => None,
        }
    }

    /// The safetensors entries, in write order.
    pub fn parts(&self) -> Vec<PlannedTensor> {
        let name = &self.spec.name;
        let shape = &self.spec.shape;
        let mut parts = match self.storage {
            Storage::Int4 { group } => {
                let (n, k) = (shape[0], shape[1]);
                vec![
                    PlannedTensor::new(format!("{name}.q4"), StoredDtype::U8, &[n, k / 2]),
                    PlannedTensor::new(format!("{name}.scales"), StoredDtype::F16, &[n, k / group]),
                    PlannedTensor::new(format!("{name}.mins"), StoredDtype::F16, &[n, k / group]),
                ]
            }
            Storage::Int3 { group } | Storage::Int4P8 { group } => {
                let (n, k) = (shape[0], shape[1]);
                let codes = match self.storage {
                    Storage::Int3 { .. } => PlannedTensor::new(format!("{name}.q3"), StoredDtype::U8, &[n, k * 3 / 8]),
                    _ => PlannedTensor::new(format!("{name}.q4"), StoredDtype::U8, &[n, k / 2]),
                };
                vec![
                    codes,
                    PlannedTensor::new(format!("{name}.scales"), StoredDtype::U8, &[n, k / group]),
                    PlannedTensor::new(format!("{name}.mins"), StoredDtype::I8, &[n, k / group]),
                    PlannedTensor::new(format!("{name}.steps"), StoredDtype::F16, &[n, 2]),
                ]
            }
            Storage::Int2 { group } => {
                let (n, k) = (shape[0], shape[1]);
                vec![
                    PlannedTensor::new(format!("{name}.q2"), StoredDtype::U8, &[n, k / 4]),
                    PlannedTensor::new(format!("{name}.scales"), StoredDtype::U8, &[n, k / group]),
                    PlannedTensor::new(format!("{name}.steps"), StoredDtype::F16, &[n]),
                    PlannedTensor::new(format!("{name}.codebook"), StoredDtype::U8, &[32]),
                ]
            }
            Storage::Int8 { group } => {
                let (n, k) = (shape[0], shape[1]);
                vec![
                    PlannedTensor::new(format!("{name}.q8"), StoredDtype::I8, &[n, k]),
                    PlannedTensor::new(format!("{name}.scales"), StoredDtype::F16, &[n, k / group]),
                ]
            }
            Storage::Dense(dtype) => return vec![PlannedTensor::new(name.clone(), dtype, shape)],
        };
        if self.rotation.is_some() {
            parts.push(PlannedTensor::new(format!("{name}.signs"), StoredDtype::U8, &[shape[1].div_ceil(8)]));
        }
        parts
    }

    /// The same choice stored rotated (quantized matrices only; a dense one is kept as is).
    pub fn rotated(mut self) -> Self {
        if !matches!(self.storage, Storage::Dense(_)) {
            self.rotation = Some(squish_quant::rotate::block_for(self.spec.shape[1]));
        }
        self
    }

    pub fn params(&self) -> usize {
        self.spec.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.parts().iter().map(PlannedTensor::bytes).sum()
    }
}

/// Whether `--to int3` keeps the matrix `name` (of a model with `layers` decoder layers) at
/// INT4 (g64, 8-bit group parameters): the token embeddings (the LM head too, tied or not),
/// the attention key and value projections, and the MLP down projections of the first two
/// and last two layers: where a fourth bit bought the most perplexity per bit on
/// SmolLM2-135M (8 windows, 10k calibration tokens: v_proj -0.8 PPL for +0.025 bits/weight,
/// k_proj -0.3 for +0.025, those four down_proj -0.3 for +0.026, the embeddings -1.4 for
/// +0.2; all down_proj only -1.1 for +0.2). 3.59 bits/weight on SmolLM2-135M. With the
/// rotation, paying for o_proj at 4 bits with groups of 192 on gate, up and q measured
/// worse (40 windows, 32k tokens: +2.00 against +1.89).
pub fn int3_keeps_int4(name: &str, layers: usize) -> bool {
    if matches!(name, "model.embed_tokens.weight" | "lm_head.weight") {
        return true;
    }
    let Some((i, part)) = name.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) else { return false };
    let Ok(i) = i.parse::<usize>() else { return false };
    match part {
        "self_attn.v_proj.weight" | "self_attn.k_proj.weight" => true,
        "mlp.down_proj.weight" => i < 2 || i + 2 >= layers,
        _ => false,
    }
}

/// What `--to int2` stores the matrix `name` (of a model with `layers` decoder layers) as
/// when not INT2 (None): the token embeddings (the LM head too) at INT3, the attention key
/// and value projections at INT4 (g64, 8-bit group parameters), and the MLP down
/// projections of the first and last fifth of the layers at INT3. 2.597 bits/weight on
/// SmolLM2-135M. Screened there (8k calibration tokens, 8 windows, base 12.76): embeddings,
/// k and v alone 36.2 at 2.507 bits/weight; every down_proj at INT3 28.6 at 2.731 (over
/// budget); the outer fifths' 32.8 at 2.597; o_proj at INT3 instead 33.4 at 2.593; the
/// embeddings at 4 bits 32.7 at 2.718; the embeddings at INT2 paying for every down_proj
/// at INT3, 43.0 at 2.489.
pub fn int2_keeps(name: &str, layers: usize) -> Option<Scheme> {
    if matches!(name, "model.embed_tokens.weight" | "lm_head.weight") {
        return Some(Scheme::Int3);
    }
    let (i, part) = name.strip_prefix("model.layers.").and_then(|r| r.split_once('.'))?;
    let i = i.parse::<usize>().ok()?;
    let fifth = layers / 5;
    match part {
        "self_attn.v_proj.weight" | "self_attn.k_proj.weight" => Some(Scheme::Int4P8),
        "mlp.down_proj.weight" if i < fifth || i + fifth >= layers => Some(Scheme::Int3),
        _ => None,
    }
}

/// The storage of `spec` under `scheme` with groups of `group` inputs.
pub fn choose(spec: &TensorSpec, scheme: Scheme, group: usize) -> TensorChoice {
    let dense = |dtype, note: Option<String>| TensorChoice { spec: spec.clone(), storage: Storage::Dense(dtype), note, rotation: None };
    if spec.shape.len() != 2 {
        return dense(StoredDtype::F32, None);
    }
    let k = spec.shape[1];
    let int8 = |note: Option<String>| {
        if k % 32 == 0 {
            let g = if k % group == 0 && group % 32 == 0 { group } else { 32 };
            TensorChoice { spec: spec.clone(), storage: Storage::Int8 { group: g }, note, rotation: None }
        } else {
            dense(StoredDtype::F16, Some(format!("f16: {k} inputs is not a multiple of 32")))
        }
    };
    // The largest group (halving, down to 32) that divides k.
    let grouped = |storage: fn(usize) -> Storage| {
        let mut g = group;
        while k % g != 0 && g > 32 {
            g /= 2;
        }
        let note = (g != group).then(|| format!("group {g}: {k} inputs is not a multiple of {group}"));
        TensorChoice { spec: spec.clone(), storage: storage(g), note, rotation: None }
    };
    match scheme {
        Scheme::Int4 if k % 64 == 0 => grouped(|group| Storage::Int4 { group }),
        Scheme::Int3 if k % 64 == 0 => grouped(|group| Storage::Int3 { group }),
        Scheme::Int4P8 if k % 64 == 0 => grouped(|group| Storage::Int4P8 { group }),
        Scheme::Int2 if k % 64 == 0 => grouped(|group| Storage::Int2 { group }),
        Scheme::Int4 | Scheme::Int4P8 | Scheme::Int3 | Scheme::Int2 => int8(Some(format!("int8: {k} inputs is not a multiple of 64"))),
        Scheme::Int8 => {
            let note = (k % group != 0 && k % 32 == 0).then(|| format!("group 32: {k} inputs is not a multiple of {group}"));
            int8(note)
        }
        other => dense(other.dense_dtype(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: &[usize]) -> TensorSpec {
        TensorSpec { name: "w".into(), shape: shape.to_vec() }
    }

    #[test]
    fn vectors_stay_f32() {
        assert_eq!(choose(&spec(&[576]), Scheme::Int4, 64).storage, Storage::Dense(StoredDtype::F32));
    }

    #[test]
    fn int4_bits_per_weight_are_honest() {
        let c = choose(&spec(&[1536, 576]), Scheme::Int4, 64);
        assert_eq!(c.storage, Storage::Int4 { group: 64 });
        assert_eq!(c.bytes() as f64 * 8.0 / c.params() as f64, 4.5);
        let c = choose(&spec(&[1536, 576]), Scheme::Int4, 32);
        assert_eq!(c.bytes() as f64 * 8.0 / c.params() as f64, 5.0);
    }

    #[test]
    fn int3_bits_per_weight_are_honest() {
        // 3 code bits + 16 bits of 8-bit scale and min per group + 32 bits of steps per row.
        let c = choose(&spec(&[1536, 576]), Scheme::Int3, 64);
        assert_eq!(c.storage, Storage::Int3 { group: 64 });
        assert_eq!(c.bytes() * 8, 1536 * (576 * 3 + 9 * 16 + 32));
        assert_eq!(c.parts()[0].name, "w.q3");
        let c = choose(&spec(&[576, 1536]), Scheme::Int3, 96);
        assert_eq!(c.bytes() * 8, 576 * (1536 * 3 + 16 * 16 + 32));
        let c = choose(&spec(&[8, 96]), Scheme::Int3, 64);
        assert_eq!(c.storage, Storage::Int8 { group: 32 });
        let c = choose(&spec(&[1536, 576]), Scheme::Int4P8, 64);
        assert_eq!(c.bytes() * 8, 1536 * (576 * 4 + 9 * 16 + 32));
        assert_eq!(c.scheme_name(), "int4p8");
        // A rotated matrix stores its K sign bits too.
        let c = choose(&spec(&[1536, 576]), Scheme::Int3, 64).rotated();
        assert_eq!(c.rotation, Some(64));
        assert_eq!(c.bytes() * 8, 1536 * (576 * 3 + 9 * 16 + 32) + 576);
        assert_eq!(c.parts().last().unwrap().name, "w.signs");
        assert_eq!(choose(&spec(&[576]), Scheme::Int3, 64).rotated().rotation, None, "vectors stay as they are");
        assert!(int3_keeps_int4("model.embed_tokens.weight", 30) && int3_keeps_int4("model.layers.3.self_attn.v_proj.weight", 30));
        assert!(!int3_keeps_int4("model.layers.3.self_attn.q_proj.weight", 30));
        let downs: Vec<usize> = (0..30).filter(|i| int3_keeps_int4(&format!("model.layers.{i}.mlp.down_proj.weight"), 30)).collect();
        assert_eq!(downs, [0, 1, 28, 29]);
    }

    #[test]
    fn int2_bits_per_weight_are_honest() {
        // 2 code bits + 8 bits of scale code per group + 16 bits of step per row + the
        // 32-byte codebook, + K sign bits rotated.
        let c = choose(&spec(&[1536, 576]), Scheme::Int2, 64);
        assert_eq!(c.storage, Storage::Int2 { group: 64 });
        assert_eq!(c.bytes() * 8, 1536 * (576 * 2 + 9 * 8 + 16) + 256);
        assert_eq!(c.parts().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["w.q2", "w.scales", "w.steps", "w.codebook"]);
        let c = choose(&spec(&[1536, 576]), Scheme::Int2, 64).rotated();
        assert_eq!(c.bytes() * 8, 1536 * (576 * 2 + 9 * 8 + 16) + 256 + 576);
        assert_eq!(choose(&spec(&[8, 96]), Scheme::Int2, 64).storage, Storage::Int8 { group: 32 });
        assert_eq!(int2_keeps("model.embed_tokens.weight", 30), Some(Scheme::Int3));
        assert_eq!(int2_keeps("model.layers.7.self_attn.v_proj.weight", 30), Some(Scheme::Int4P8));
        assert_eq!(int2_keeps("model.layers.7.self_attn.q_proj.weight", 30), None);
        let downs: Vec<usize> = (0..30).filter(|i| int2_keeps(&format!("model.layers.{i}.mlp.down_proj.weight"), 30).is_some()).collect();
        assert_eq!(downs, [0, 1, 2, 3, 4, 5, 24, 25, 26, 27, 28, 29]);
    }

    #[test]
    fn group_falls_back_with_a_note() {
        let c = choose(&spec(&[576, 576]), Scheme::Int4, 128);
        assert_eq!(c.storage, Storage::Int4 { group: 64 });
        assert!(c.note.unwrap().contains("not a multiple of 128"));
        let c = choose(&spec(&[8, 96]), Scheme::Int4, 64);
        assert_eq!(c.storage, Storage::Int8 { group: 32 });
        let c = choose(&spec(&[8, 100]), Scheme::Int4, 64);
        assert_eq!(c.storage, Storage::Dense(StoredDtype::F16));
    }
}
