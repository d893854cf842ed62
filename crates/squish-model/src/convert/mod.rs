//! `convert`: a model in, a squish directory out. Tensors stream one at a time (load as f32,
//! quantize with every core, write), so memory stays near the largest tensor; with
//! calibration text the f32 model first runs over it to weight quantization errors by
//! activation strength. INT2 with calibration is then tuned (`tune`), which needs the whole
//! quantized model: its parts wait in memory and are written after. The directory is
//! written under a temporary sibling marked incomplete, verified, and only then renamed
//! into place.

mod calibrate;
mod kl;
pub(crate) mod export;
mod plan;
mod tune;

pub use export::SIDE_FILES;
pub use plan::{choose, Scheme, Storage, TensorChoice};

use crate::{tensor_plan, ModelError, Source, Tap};
use candle_core::Device;
use half::{bf16, f16};
use squish_format::{
    plan_shards, sha256_file, CalibrationInfo, FormatError, Manifest, ModelFiles, PlannedTensor, ShardWriter,
    SourceInfo, SquishDir, TensorEntry, FORMAT_VERSION, INCOMPLETE_MARKER, MANIFEST_FILE,
};
use squish_quant::grouped::Layout;
use squish_quant::rotate::Rotation;
use squish_quant::{int2, int3, int4, int8, params8};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const MAX_SHARD_BYTES: usize = 2 << 30;

/// Tuning passes by default: on SmolLM2 with 32k calibration tokens, two gave ΔPPL +4.50,
/// three +4.33, four +4.11 (llama.cpp Q2_K: +4.23).
pub const DEFAULT_TUNE_EPOCHS: usize = 4;

pub struct ConvertOptions {
    pub scheme: Scheme,
    pub group_size: Option<usize>,
    /// The scheme of the token embeddings (and the LM head, tied or not), often the most
    /// rounding-sensitive matrix; None: the same as `scheme` (for int3: int4 g64, see
    /// `plan::int3_keeps_int4`).
    pub embedding_scheme: Option<Scheme>,
    /// Calibration text; None: data-free (every input channel weighs the same).
    pub calib: Option<PathBuf>,
    pub calib_tokens: usize,
    /// Passes over the calibration text that tune an int2 conversion's group scales and norms
    /// after quantization (`tune`); 0: none. Other schemes ignore it.
    pub tune_epochs: usize,
    /// Replace an existing output directory.
    pub force: bool,
}

pub enum Progress<'a> {
    /// Tensor `index` of `total` is next (with calibration, its layer runs first).
    Tensor { index: usize, total: usize, name: &'a str },
    /// Tuning step `step` of `total` done; the KL divergence it started from.
    Tune { step: usize, total: usize, kl: f32 },
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub tensors: usize,
    pub parameters: u64,
    pub bits_per_weight: f64,
    pub source_bytes: u64,
    pub output_bytes: u64,
    pub seconds: f64,
    pub calib_tokens: usize,
    /// With tuning, the mean KL divergence from the source over each pass's windows.
    pub tune_kl: Vec<f32>,
    /// Tensors stored otherwise than asked, with the reason.
    pub fallbacks: Vec<(String, String)>,
}

pub fn convert(
    src_path: &Path,
    out: &Path,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary, ModelError> {
    let start = Instant::now();
    let io = |p: &Path, e| ModelError::from(FormatError::io(p, e));
    if out.exists() && !opts.force {
        return Err(FormatError::invalid(out, "already exists (use --force to replace it)").into());
    }
    let src = Source::open(src_path)?;
    let group = opts.group_size.or(opts.scheme.default_group_size()).unwrap_or(0);
    if matches!(opts.scheme, Scheme::Int4 | Scheme::Int4P8 | Scheme::Int3 | Scheme::Int2 | Scheme::Int8) && (group == 0 || group % 32 != 0) {
        return Err(FormatError::invalid(out, format!("--group-size {group}: must be a multiple of 32")).into());
    }

    // INT3 and INT2 calibrate sequentially (`calibrate::Calibration`): each matrix's
    // statistics come from the model with the matrices before it quantized, and its weights
    // are corrected for the error those left in its inputs. INT4 and INT8 keep the one-pass
    // statistics of the unquantized model (not yet measured sequentially).
    let sequential = matches!(opts.scheme, Scheme::Int3 | Scheme::Int2);
    let mut calib = match &opts.calib {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| io(file, e))?;
            Some(calibrate::Calibration::start(&src, &text, opts.calib_tokens, sequential)?)
        }
        None => None,
    };
    let calibration = match (&opts.calib, &calib) {
        (Some(file), Some(c)) => Some(CalibrationInfo { file: file.display().to_string(), sha256: sha256_file(file)?, tokens: c.tokens }),
        _ => None,
    };

    let files = src.files.as_ref();
    let choices: Vec<TensorChoice> = tensor_plan(&src.config, &|n| src.weights(&Device::Cpu).has(n))
        .iter()
        .map(|spec| match (opts.embedding_scheme, spec.name.as_str()) {
            (Some(e), "model.embed_tokens.weight" | "lm_head.weight") => {
                choose(spec, e, opts.group_size.or(e.default_group_size()).unwrap_or(0))
            }
            _ if opts.scheme == Scheme::Int3 && plan::int3_keeps_int4(&spec.name, src.config.layers) => {
                choose(spec, Scheme::Int4P8, 64)
            }
            _ if opts.scheme == Scheme::Int2 => match plan::int2_keeps(&spec.name, src.config.layers) {
                Some(s) => choose(spec, s, 64),
                None => choose(spec, Scheme::Int2, group),
            },
            _ => choose(spec, opts.scheme, group),
        })
        // Every matrix of the int3 and int2 recipes is stored rotated (`squish_quant::rotate`).
        .map(|c| if matches!(opts.scheme, Scheme::Int3 | Scheme::Int2) { c.rotated() } else { c })
        .collect();

    // Write everything under a marked temporary sibling; rename only once complete.
    let tmp = temp_sibling(out)?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    std::fs::write(tmp.join(INCOMPLETE_MARKER), "").map_err(|e| io(&tmp, e))?;
    export::write_side_files(&src, &tmp)?;

    let parts: Vec<PlannedTensor> = choices.iter().flat_map(TensorChoice::parts).collect();
    let shard_plans = plan_shards(parts, MAX_SHARD_BYTES);
    let count = shard_plans.len();
    let shard_name = |i: usize| match count {
        1 => "model.safetensors".to_string(),
        n => format!("model-{:05}-of-{n:05}.safetensors", i + 1),
    };
    let mut shards = Vec::new();
    let mut plans = shard_plans.into_iter().enumerate();
    let mut writer: Option<ShardWriter> = None;
    let mut write = |choice: &TensorChoice, encoded: Vec<Vec<u8>>| -> Result<(), ModelError> {
        for (part, bytes) in choice.parts().iter().zip(encoded) {
            if writer.as_ref().is_none_or(ShardWriter::is_complete) {
                if let Some(done) = writer.take() {
                    shards.push(done.finish()?);
                }
                let (i, plan) = plans.next().expect("the shard plans hold every part");
                writer = Some(ShardWriter::create(&tmp.join(shard_name(i)), plan)?);
            }
            writer.as_mut().expect("just opened").write_tensor(&part.name, &bytes)?;
        }
        Ok(())
    };
    // Tuning needs the whole quantized model: the parts wait in memory until it is done.
    let tuning = opts.scheme == Scheme::Int2 && calib.is_some() && opts.tune_epochs > 0;
    let (mut held, mut tunable, mut tune_kl) = (Vec::new(), tune::Tunable::default(), Vec::new());
    let weights = src.weights(&Device::Cpu);
    for (index, choice) in choices.iter().enumerate() {
        progress(Progress::Tensor { index, total: choices.len(), name: &choice.spec.name });
        let tap = Tap::of_weight(&choice.spec.name);
        let stats = match (calib.as_mut(), tap) {
            (Some(c), Some(tap)) => Some((c.stats_for(tap)?, tap)),
            _ => None,
        };
        let data = weights.get(&choice.spec.name, &choice.spec.shape)?.flatten_all()?.to_vec1::<f32>()?;
        let (encoded, dequantized) = encode(choice, &data, stats, tuning);
        if tuning {
            tunable.add(choice, data, dequantized.clone(), ROTATION_SEED);
        }
        // Sequential calibration: the later taps see this matrix as it was stored.
        if let (Some(c), Some(w), true) = (calib.as_mut(), dequantized, sequential) {
            let (n, k) = (choice.spec.shape[0], choice.spec.shape[1]);
            c.set_quantized(&choice.spec.name, candle_core::Tensor::from_vec(w, (n, k), &Device::Cpu)?);
        }
        match tuning {
            true => held.push(encoded),
            false => write(choice, encoded)?,
        }
    }
    if tuning {
        let windows = calib.take().map(|c| c.windows()).unwrap_or_default();
        let tuned = tune::tune(&src, &windows, tunable, opts.tune_epochs, &mut |step, total, kl| progress(Progress::Tune { step, total, kl }))?;
        for (choice, mut encoded) in choices.iter().zip(held) {
            tuned.apply(choice, &mut encoded);
            write(choice, encoded)?;
        }
        tune_kl = tuned.kl;
    }
    drop(write);
    if let Some(done) = writer.take() {
        shards.push(done.finish()?);
    }

    let parameters: u64 = choices.iter().map(|c| c.params() as u64).sum();
    let weight_bytes: u64 = choices.iter().map(|c| c.bytes() as u64).sum();
    let tensors = choices
        .iter()
        .map(|c| {
            let entry = TensorEntry {
                scheme: c.scheme_name().into(),
                shape: c.spec.shape.clone(),
                group_size: c.group(),
                bits_per_weight: c.bytes() as f64 * 8.0 / c.params() as f64,
                note: c.note.clone(),
                rotation: c.rotation,
            };
            (c.spec.name.clone(), entry)
        })
        .collect::<BTreeMap<_, _>>();
    let (source_hash, source_bytes) = source_identity(files)?;
    let manifest = Manifest {
        format: "squish".into(),
        // Version 1 readers open what has no rotated tensor.
        version: if choices.iter().any(|c| c.rotation.is_some()) { FORMAT_VERSION } else { 1 },
        created_by: format!("squish {}", env!("CARGO_PKG_VERSION")),
        source: SourceInfo {
            path: src_path.display().to_string(),
            kind: if matches!(files, ModelFiles::Gguf(_)) { "gguf" } else { "hf" }.into(),
            sha256: source_hash,
            bytes: source_bytes,
        },
        scheme: opts.scheme.name().into(),
        group_size: opts.scheme.default_group_size().map(|_| group),
        calibration,
        bits_per_weight: weight_bytes as f64 * 8.0 / parameters as f64,
        parameters,
        tensors,
        shards,
        quality: None,
    };
    let manifest_path = tmp.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("plain JSON");
    std::fs::write(&manifest_path, text + "\n").map_err(|e| io(&manifest_path, e))?;

    // Verify what was written before it becomes visible under its name.
    std::fs::remove_file(tmp.join(INCOMPLETE_MARKER)).map_err(|e| io(&tmp, e))?;
    let written = SquishDir::open(&tmp)?;
    if let Some((file, _)) = written.verify()?.into_iter().find(|(_, ok)| !ok) {
        return Err(FormatError::invalid(&tmp.join(file), "checksum mismatch right after writing").into());
    }
    let output_bytes = manifest.shards.iter().map(|s| s.bytes).sum();
    replace_dir(&tmp, out)?;
    Ok(Summary {
        tensors: choices.len(),
        parameters,
        bits_per_weight: manifest.bits_per_weight,
        source_bytes,
        output_bytes,
        seconds: start.elapsed().as_secs_f64(),
        calib_tokens: manifest.calibration.as_ref().map_or(0, |c| c.tokens),
        tune_kl,
        fallbacks: choices.iter().filter_map(|c| Some((c.spec.name.clone(), c.note.clone()?))).collect(),
    })
}

/// The seed of every stored rotation's signs: one rotation per input width, so the matrices
/// reading one input share its rotated Hessian.
const ROTATION_SEED: u64 = 0x5155_4953_4833;

/// The stored bytes of each part of `choice`, in `parts()` order. With calibration
/// statistics, int4, int4p8 and int3 use GPTQ and int8 the activation-weighted search. A
/// rotated choice quantizes W Rᵀ against the rotated inputs' statistics (R H Rᵀ) and ends
/// with R's sign bits. With calibration statistics or `dequantize`, also the quantized
/// matrix dequantized (in the unrotated basis, n x k), for the calibration pass and tuning.
fn encode(
    choice: &TensorChoice,
    data: &[f32],
    mut calib: Option<(&mut calibrate::ActivationStats, Tap)>,
    dequantize: bool,
) -> (Vec<Vec<u8>>, Option<Vec<f32>>) {
    let wanted = calib.is_some() || dequantize;
    let shape = &choice.spec.shape;
    let rotation = choice.rotation.map(|block| {
        let r = Rotation::random(shape[1], ROTATION_SEED);
        assert_eq!(r.block(), block, "the plan's block is block_for(k)");
        r
    });
    let rotated;
    let data = match &rotation {
        Some(r) => {
            let mut w = data.to_vec();
            r.apply(&mut w);
            rotated = w;
            &rotated[..]
        }
        None => data,
    };
    let grouped = matches!(choice.storage, Storage::Int4 { .. } | Storage::Int3 { .. } | Storage::Int4P8 { .. } | Storage::Int2 { .. });
    let factor = calib.as_mut().filter(|_| grouped).and_then(|(s, tap)| s.gptq_factor(*tap, rotation.as_ref()));
    // Quantize W T instead of W: see `calibrate::correction`.
    let corrected;
    let data = match calib.as_ref().filter(|_| factor.is_some()).and_then(|(s, tap)| s.correction(*tap)) {
        Some(t) => {
            let (n, k) = (shape[0], shape[1]);
            let w = candle_core::Tensor::from_slice(data, (n, k), &Device::Cpu).expect("shape");
            let t = candle_core::Tensor::from_slice(&t[..], (k, k), &Device::Cpu).expect("shape");
            corrected = w.matmul(&t).and_then(|x| x.flatten_all()).and_then(|x| x.to_vec1::<f32>()).expect("f32 matmul");
            &corrected[..]
        }
        None => data,
    };
    let importance = match (&rotation, calib.as_mut()) {
        (Some(r), Some((s, tap))) => s.gptq_factor(*tap, Some(r)).map(|f| f.diagonal().to_vec()),
        (None, Some((s, tap))) => s.importance(*tap),
        (_, None) => None,
    };
    let importance = importance.as_deref();
    let mut dequantized = None;
    let mut keep = |w: Vec<f32>| {
        if wanted {
            dequantized = Some(w);
        }
    };
    let mut parts = match choice.storage {
        Storage::Int4 { group } => {
            let (n, k) = (shape[0], shape[1]);
            let q = match &factor {
                Some(f) => int4::quantize_gptq(data, n, k, group, f),
                None => int4::quantize(data, n, k, group, importance),
            };
            keep(int4::dequantize(&q.view()));
            let (codes, scales, mins) = q.into_parts();
            vec![codes, f16_bytes(&scales), f16_bytes(&mins)]
        }
        Storage::Int3 { group } => {
            let (n, k) = (shape[0], shape[1]);
            let q = match &factor {
                Some(f) => int3::quantize_gptq(data, n, k, group, f),
                None => int3::quantize(data, n, k, group, importance),
            };
            keep(int3::dequantize(&q.view()));
            stored_parts(q)
        }
        Storage::Int4P8 { group } => {
            let (n, k) = (shape[0], shape[1]);
            let q = match &factor {
                Some(f) => int4::quantize_gptq_p8(data, n, k, group, f),
                None => int4::quantize_p8(data, n, k, group, importance),
            };
            keep(int4::dequantize(&q.view()));
            stored_parts(q)
        }
        Storage::Int2 { group } => {
            let (n, k) = (shape[0], shape[1]);
            let q = match &factor {
                Some(f) => int2::quantize_gptq(data, n, k, group, f),
                None => int2::quantize(data, n, k, group, importance),
            };
            keep(int2::dequantize(&q.view()));
            let (codes, s8, steps, table) = q.into_stored();
            vec![codes, s8, f16_bytes(&steps), table.to_vec()]
        }
        Storage::Int8 { group } => {
            let q = int8::quantize(data, shape[0], shape[1], group, importance);
            keep(int8::dequantize(&q.view()));
            let (codes, scales) = q.into_parts();
            vec![codes.iter().map(|&c| c as u8).collect(), f16_bytes(&scales)]
        }
        Storage::Dense(dtype) => vec![match dtype {
            squish_format::StoredDtype::F16 => data.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
            squish_format::StoredDtype::BF16 => data.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
            _ => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }],
    };
    if let (Some(w), Some(r)) = (dequantized.as_mut(), &rotation) {
        r.apply_inverse(w);
    }
    parts.extend(rotation.map(|r| r.sign_bits()));
    (parts, dequantized)
}

/// A matrix with 8-bit group parameters as its stored parts: codes, scale codes, min codes,
/// steps.
fn stored_parts<L: Layout>(q: params8::Stored<L>) -> Vec<Vec<u8>> {
    let (codes, s8, m8, steps) = q.into_stored();
    vec![codes, s8, m8.iter().map(|&v| v as u8).collect(), f16_bytes(&steps)]
}

fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// sha256 and size of the source's weight files (several files: sha256 of their hashes).
fn source_identity(files: &ModelFiles) -> Result<(String, u64), ModelError> {
    let paths: Vec<PathBuf> = match files {
        ModelFiles::Gguf(g) => vec![g.path().to_path_buf()],
        _ => {
            let root = files.path();
            let mut v: Vec<PathBuf> = std::fs::read_dir(root)
                .map_err(|e| FormatError::io(root, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            v.sort();
            v
        }
    };
    let mut bytes = 0;
    let mut hashes = Vec::new();
    for p in &paths {
        bytes += std::fs::metadata(p).map_err(|e| FormatError::io(p, e))?.len();
        hashes.push(sha256_file(p)?);
    }
    let hash = match hashes.len() {
        1 => hashes.remove(0),
        _ => {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(hashes.concat().as_bytes());
            digest.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    Ok((hash, bytes))
}

fn temp_sibling(out: &Path) -> Result<PathBuf, ModelError> {
    let name = out.file_name().ok_or_else(|| FormatError::invalid(out, "output path has no directory name"))?;
    Ok(out.with_file_name(format!(".{}.partial", name.to_string_lossy())))
}

/// Moves `tmp` to `out`, replacing an existing `out` only once `tmp` is in place beside it.
fn replace_dir(tmp: &Path, out: &Path) -> Result<(), ModelError> {
    let io = |p: &Path, e| ModelError::from(FormatError::io(p, e));
    if out.exists() {
        let old = out.with_file_name(format!(".{}.old", out.file_name().unwrap_or_default().to_string_lossy()));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out, &old).map_err(|e| io(out, e))?;
        std::fs::rename(tmp, out).map_err(|e| io(out, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    } else {
        std::fs::rename(tmp, out).map_err(|e| io(out, e))?;
    }
    Ok(())
}
