//! Real-shaped random-weight models for measurement (`deskhand bench synth`).
//!
//! A forward pass costs the same whatever the weights' values, so a model with a published
//! model's architecture, dimensions, vocabulary and quantization, but random weights, costs
//! what the real one costs in time and memory. These files make real-size benchmarks possible
//! on machines that cannot download several gigabytes: their replies are gibberish, but the
//! action grammar keeps them valid, so whole agent steps run.
//!
//! Each shape is a text GGUF (written as F16 with the project's one GGUF writer, then quantized
//! to Q4_K_M by llama.cpp's own quantizer, as the published files are) and an F16 vision
//! projector. The shapes come from the models' published `config.json`; the key and tensor
//! names from the vendored llama.cpp (`src/models/qwen2vl.cpp`, `tools/mtmd/clip.cpp`,
//! `tools/mtmd/models/qwen2vl.cpp`, and its converter `conversion/qwenvl.py`).
//!
//! The tokenizer is the real Qwen2 vocabulary that llama.cpp ships
//! (`models/ggml-vocab-qwen2.gguf`), padded to the model's vocabulary size with Qwen2.5-VL's
//! added tokens at their real ids, so prompts tokenize into the real number of tokens.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::FamilyId;
use super::gguf::{self, Gguf};
use super::gguf_write::{GgufWriter, StoredType, TensorData, Value, name_seed};

/// A published model's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// What users type: `deskhand bench synth qwen2.5-vl-3b`.
    pub name: &'static str,
    /// The family whose prompt and parser the real model uses.
    pub family: FamilyId,
    pub text: TextShape,
    pub vision: VisionShape,
}

/// A Qwen2-VL-architecture language model (`qwen2vl` in llama.cpp: M-RoPE).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextShape {
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub n_ff: u64,
    pub n_vocab: u64,
    /// The output projection shares the token embedding (Qwen2.5-VL-3B).
    pub tied_embeddings: bool,
    pub context_length: u32,
    pub rope_freq_base: f32,
    /// M-RoPE sections (temporal, height, width, unused) in rotary dimension pairs.
    pub rope_sections: [i32; 4],
}

/// A Qwen2.5-VL vision tower and patch merger (`qwen2.5vl_merger`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VisionShape {
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_ff: u64,
    pub patch_size: u32,
    /// Every n-th block attends to the whole image; the others to windows
    /// (`fullatt_block_indexes` = 7, 15, 23, 31 → 8).
    pub n_wa_pattern: u32,
    /// The language model's width, which the merger projects into.
    pub projection_dim: u64,
}

const QWEN25_VL_VISION: VisionShape = VisionShape {
    n_embd: 1280,
    n_layer: 32,
    n_head: 16,
    n_ff: 3420,
    patch_size: 14,
    n_wa_pattern: 8,
    projection_dim: 0, // set per model below
};

/// The shapes `bench synth` can make. Qwen3-VL (deepstack projector) and Gemma 3 (SigLIP with
/// its own projector) are not here yet.
pub const SHAPES: [Shape; 2] = [
    // Qwen/Qwen2.5-VL-3B-Instruct config.json.
    Shape {
        name: "qwen2.5-vl-3b",
        family: FamilyId::Qwen25Vl,
        text: TextShape {
            n_embd: 2048,
            n_layer: 36,
            n_head: 16,
            n_head_kv: 2,
            n_ff: 11008,
            n_vocab: 151_936,
            tied_embeddings: true,
            context_length: 128_000,
            rope_freq_base: 1_000_000.0,
            rope_sections: [16, 24, 24, 0],
        },
        vision: VisionShape {
            projection_dim: 2048,
            ..QWEN25_VL_VISION
        },
    },
    // ByteDance-Seed/UI-TARS-1.5-7B config.json: the Qwen2.5-VL-7B shape.
    Shape {
        name: "ui-tars-1.5-7b",
        family: FamilyId::UiTars,
        text: TextShape {
            n_embd: 3584,
            n_layer: 28,
            n_head: 28,
            n_head_kv: 4,
            n_ff: 18944,
            n_vocab: 152_064,
            tied_embeddings: false,
            context_length: 128_000,
            rope_freq_base: 1_000_000.0,
            rope_sections: [16, 24, 24, 0],
        },
        vision: VisionShape {
            projection_dim: 3584,
            ..QWEN25_VL_VISION
        },
    },
];

/// The names of [`SHAPES`], for messages.
pub fn shape_names() -> Vec<&'static str> {
    SHAPES.iter().map(|s| s.name).collect()
}

pub fn shape(name: &str) -> Result<&'static Shape, SynthError> {
    SHAPES
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| SynthError::UnknownShape {
            name: name.to_owned(),
            known: shape_names().join(", "),
        })
}

#[derive(Debug, Error)]
pub enum SynthError {
    #[error("no real-shaped model called {name:?}; the shapes deskhand can make: {known}")]
    UnknownShape { name: String, known: String },
    #[error(
        "the Qwen2 vocabulary {} {problem}; it ships in llama.cpp's source as models/ggml-vocab-qwen2.gguf: run benches/build-llama-tools.sh (which downloads that source) or pass --vocab PATH",
        .path.display()
    )]
    Vocab { path: PathBuf, problem: String },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("llama.cpp could not quantize {} to Q4_K_M (code {code}); run again with DESKHAND_LLAMA_LOG=1 to see why", .path.display())]
    Quantize { path: PathBuf, code: u32 },
}

/// The pair `synth` made or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthPair {
    pub model: PathBuf,
    pub mmproj: PathBuf,
}

/// Scale of the random weights: small enough that activations stay finite through every
/// layer (norms keep them in range), large enough that different inputs differ.
const WEIGHT_SCALE: f32 = 0.02;
const SEED: u64 = 0x7379_6e74_6865_7469; // "synthetic"

/// Bumped when the files' contents change, so that a cache written by an older deskhand is not
/// taken for a current one.
const FORMAT: u32 = 2;

impl Shape {
    fn file_stem(&self) -> String {
        format!("{}-random-v{FORMAT}", self.name)
    }

    /// Where the pair lives in `cache`.
    pub fn paths(&self, cache: &Path, projector: Projector) -> SynthPair {
        SynthPair {
            model: cache.join(format!("{}-Q4_K_M.gguf", self.file_stem())),
            mmproj: cache.join(format!(
                "{}-mmproj-{}.gguf",
                self.file_stem(),
                projector.name()
            )),
        }
    }

    /// The text model described in F16, tokenizer included.
    pub fn text_gguf(&self, vocab: &Gguf) -> Result<GgufWriter, String> {
        let t = &self.text;
        let arch = "qwen2vl";
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::Str(arch.into()));
        w.set(
            "general.name",
            Value::Str(format!("deskhand synthetic {} (random weights)", self.name)),
        );
        w.set("general.alignment", Value::U32(32));
        // llama.cpp's LLAMA_FTYPE_MOSTLY_F16: what the file holds before quantizing.
        w.set("general.file_type", Value::U32(1));
        let key = |k: &str| format!("{arch}.{k}");
        let u32_of = |v: u64| Value::U32(u32::try_from(v).unwrap_or(u32::MAX));
        w.set(&key("context_length"), Value::U32(t.context_length));
        w.set(&key("embedding_length"), u32_of(t.n_embd));
        w.set(&key("block_count"), u32_of(t.n_layer));
        w.set(&key("feed_forward_length"), u32_of(t.n_ff));
        w.set(&key("attention.head_count"), u32_of(t.n_head));
        w.set(&key("attention.head_count_kv"), u32_of(t.n_head_kv));
        w.set(&key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6));
        w.set(&key("rope.freq_base"), Value::F32(t.rope_freq_base));
        w.set(
            &key("rope.dimension_sections"),
            Value::I32s(t.rope_sections.to_vec()),
        );
        for (k, v) in qwen_tokenizer(vocab, t.n_vocab)? {
            w.set(&k, v);
        }

        let d = t.n_embd;
        let head_dim = d / t.n_head;
        let kv = t.n_head_kv * head_dim;
        let mut m = Weights {
            writer: &mut w,
            matrices: StoredType::F16,
        };
        m.matrix("token_embd.weight", &[d, t.n_vocab]);
        m.ones("output_norm.weight", &[d]);
        if !t.tied_embeddings {
            m.matrix("output.weight", &[d, t.n_vocab]);
        }
        for b in 0..t.n_layer {
            let n = |s: &str| format!("blk.{b}.{s}");
            m.ones(&n("attn_norm.weight"), &[d]);
            m.matrix(&n("attn_q.weight"), &[d, d]);
            m.vector(&n("attn_q.bias"), &[d]);
            m.matrix(&n("attn_k.weight"), &[d, kv]);
            m.vector(&n("attn_k.bias"), &[kv]);
            m.matrix(&n("attn_v.weight"), &[d, kv]);
            m.vector(&n("attn_v.bias"), &[kv]);
            m.matrix(&n("attn_output.weight"), &[d, d]);
            m.ones(&n("ffn_norm.weight"), &[d]);
            m.matrix(&n("ffn_gate.weight"), &[d, t.n_ff]);
            m.matrix(&n("ffn_up.weight"), &[d, t.n_ff]);
            m.matrix(&n("ffn_down.weight"), &[t.n_ff, d]);
        }
        Ok(w)
    }

    /// The vision projector: F16 like the published mmproj files, or its matrices in Q8_0.
    pub fn mmproj_gguf(&self, projector: Projector) -> GgufWriter {
        let v = &self.vision;
        let mut w = GgufWriter::new();
        let u32_of = |v: u64| Value::U32(u32::try_from(v).unwrap_or(u32::MAX));
        w.set("general.architecture", Value::Str("clip".into()));
        w.set(
            "general.name",
            Value::Str(format!(
                "deskhand synthetic {} projector (random weights)",
                self.name
            )),
        );
        w.set("general.alignment", Value::U32(32));
        w.set("clip.has_vision_encoder", Value::Bool(true));
        w.set("clip.projector_type", Value::Str("qwen2.5vl_merger".into()));
        w.set("clip.use_silu", Value::Bool(true));
        // The converter's default; clip.cpp uses it only to size its warm-up image.
        w.set("clip.vision.image_size", Value::U32(560));
        w.set("clip.vision.patch_size", Value::U32(v.patch_size));
        w.set("clip.vision.embedding_length", u32_of(v.n_embd));
        w.set("clip.vision.feed_forward_length", u32_of(v.n_ff));
        w.set("clip.vision.block_count", u32_of(v.n_layer));
        w.set("clip.vision.attention.head_count", u32_of(v.n_head));
        w.set("clip.vision.attention.layer_norm_epsilon", Value::F32(1e-6));
        w.set("clip.vision.projection_dim", u32_of(v.projection_dim));
        w.set("clip.vision.n_wa_pattern", Value::U32(v.n_wa_pattern));
        w.set(
            "clip.vision.image_mean",
            Value::F32s(vec![0.481_454_66, 0.457_827_5, 0.408_210_73]),
        );
        w.set(
            "clip.vision.image_std",
            Value::F32s(vec![0.268_629_54, 0.261_302_6, 0.275_777_1]),
        );

        let d = v.n_embd;
        let p = u64::from(v.patch_size);
        // Two merged patches of 2x2 go into the merger: 4 * d wide.
        let merged = 4 * d;
        let mut m = Weights {
            writer: &mut w,
            matrices: StoredType::F16,
        };
        // The Conv3D patch embedding, split by the converter into its two temporal halves. It
        // stays F16 in every variant: ggml's convolution takes F16 kernels.
        m.matrix("v.patch_embd.weight", &[p, p, 3, d]);
        m.matrix("v.patch_embd.weight.1", &[p, p, 3, d]);
        m.matrices = projector.stored();
        for b in 0..v.n_layer {
            let n = |s: &str| format!("v.blk.{b}.{s}");
            m.ones(&n("ln1.weight"), &[d]);
            for proj in ["attn_q", "attn_k", "attn_v", "attn_out"] {
                m.matrix(&n(&format!("{proj}.weight")), &[d, d]);
                m.vector(&n(&format!("{proj}.bias")), &[d]);
            }
            m.ones(&n("ln2.weight"), &[d]);
            m.matrix(&n("ffn_gate.weight"), &[d, v.n_ff]);
            m.vector(&n("ffn_gate.bias"), &[v.n_ff]);
            m.matrix(&n("ffn_up.weight"), &[d, v.n_ff]);
            m.vector(&n("ffn_up.bias"), &[v.n_ff]);
            m.matrix(&n("ffn_down.weight"), &[v.n_ff, d]);
            m.vector(&n("ffn_down.bias"), &[d]);
        }
        // The merger: RMSNorm (v.post_ln), then Linear(4d, 4d), GELU, Linear(4d, text width).
        m.ones("v.post_ln.weight", &[d]);
        m.matrix("mm.0.weight", &[merged, merged]);
        m.vector("mm.0.bias", &[merged]);
        m.matrix("mm.2.weight", &[merged, v.projection_dim]);
        m.vector("mm.2.bias", &[v.projection_dim]);
        w
    }
}

/// How the projector's matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Projector {
    /// As the published mmproj files are.
    #[default]
    F16,
    /// Half the size; llama.cpp loads it. Its effect on accuracy cannot be measured with
    /// random weights.
    Q8_0,
}

impl Projector {
    pub fn name(self) -> &'static str {
        match self {
            Projector::F16 => "f16",
            Projector::Q8_0 => "q8_0",
        }
    }

    fn stored(self) -> StoredType {
        match self {
            Projector::F16 => StoredType::F16,
            Projector::Q8_0 => StoredType::Q8_0,
        }
    }
}

/// Random tensors seeded by their names; matrices F16 (or what `matrices` says) and vectors
/// F32, as converters store them.
struct Weights<'a> {
    writer: &'a mut GgufWriter,
    matrices: StoredType,
}

impl Weights<'_> {
    fn random(name: &str) -> TensorData {
        TensorData::Random {
            scale: WEIGHT_SCALE,
            seed: name_seed(name, SEED),
        }
    }

    /// A matrix in `matrices`, or F16 where its rows do not split into Q8_0's 32-value blocks
    /// (the vision FFN's 3420), as llama.cpp's converters do.
    fn matrix(&mut self, name: &str, ne: &[u64]) {
        let stored = match self.matrices {
            StoredType::Q8_0 if ne.first().is_none_or(|n| n % 32 != 0) => StoredType::F16,
            other => other,
        };
        self.writer.add(name, ne, stored, Self::random(name));
    }

    fn vector(&mut self, name: &str, ne: &[u64]) {
        self.writer
            .add(name, ne, StoredType::F32, Self::random(name));
    }

    fn ones(&mut self, name: &str, ne: &[u64]) {
        self.writer.add(name, ne, StoredType::F32, TensorData::Ones);
    }
}

/// Qwen2.5-VL's added tokens at their ids, with llama.cpp's token types (3 control, 4 user
/// defined), from the model's tokenizer_config.json.
const QWEN25_VL_ADDED: [(u64, &str, i32); 22] = [
    (151_643, "<|endoftext|>", 3),
    (151_644, "<|im_start|>", 3),
    (151_645, "<|im_end|>", 3),
    (151_646, "<|object_ref_start|>", 3),
    (151_647, "<|object_ref_end|>", 3),
    (151_648, "<|box_start|>", 3),
    (151_649, "<|box_end|>", 3),
    (151_650, "<|quad_start|>", 3),
    (151_651, "<|quad_end|>", 3),
    (151_652, "<|vision_start|>", 3),
    (151_653, "<|vision_end|>", 3),
    (151_654, "<|vision_pad|>", 3),
    (151_655, "<|image_pad|>", 3),
    (151_656, "<|video_pad|>", 3),
    (151_657, "<tool_call>", 4),
    (151_658, "</tool_call>", 4),
    (151_659, "<|fim_prefix|>", 4),
    (151_660, "<|fim_middle|>", 4),
    (151_661, "<|fim_suffix|>", 4),
    (151_662, "<|fim_pad|>", 4),
    (151_663, "<|repo_name|>", 4),
    (151_664, "<|file_sep|>", 4),
];

/// The `tokenizer.*` keys of the vocabulary file, with the token list padded to `n_vocab` the
/// way llama.cpp's converter pads it (`[PADn]`, type 5 unused), Qwen2.5-VL's added tokens in
/// place, and `<|im_end|>` as the end of a turn as in the instruct models.
fn qwen_tokenizer(vocab: &Gguf, n_vocab: u64) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::new();
    let mut tokens = None;
    let mut types = None;
    for (key, value) in &vocab.metadata {
        if !key.starts_with("tokenizer.") {
            continue;
        }
        let copied = Value::from_read(value)
            .ok_or_else(|| format!("has a value of {key} this writer cannot copy"))?;
        match (key.as_str(), copied) {
            ("tokenizer.ggml.tokens", Value::Strs(t)) => tokens = Some(t),
            ("tokenizer.ggml.token_type", Value::I32s(t)) => types = Some(t),
            (_, v) => out.push((key.clone(), v)),
        }
    }
    let (Some(mut tokens), Some(mut types)) = (tokens, types) else {
        return Err("has no tokenizer.ggml.tokens and token_type arrays".into());
    };
    if vocab.get_str("tokenizer.ggml.model") != Some("gpt2") || tokens.len() != types.len() {
        return Err("is not a BPE (gpt2) vocabulary with one type per token".into());
    }
    let n = usize::try_from(n_vocab).map_err(|e| e.to_string())?;
    if tokens.len() > n {
        return Err(format!(
            "has {} tokens, more than the model's {n_vocab}",
            tokens.len()
        ));
    }
    for i in tokens.len()..n {
        tokens.push(format!("[PAD{i}]"));
        types.push(5);
    }
    // The Qwen2 file already pads its list to 151,936 with `[PADn]` where Qwen2.5-VL has its
    // vision and tool tokens: put them in their places, so that mtmd's <|vision_start|> and
    // <|vision_end|> are one token each, as in the real model.
    for (id, text, ty) in QWEN25_VL_ADDED {
        let i = usize::try_from(id).map_err(|e| e.to_string())?;
        let (Some(token), Some(token_type)) = (tokens.get_mut(i), types.get_mut(i)) else {
            continue;
        };
        if *token == text || token.starts_with("[PAD") {
            *token = text.to_owned();
            *token_type = ty;
        }
    }
    let im_end = tokens.iter().position(|t| t == "<|im_end|>");
    out.retain(|(k, _)| k != "tokenizer.ggml.eos_token_id");
    if let Some(id) = im_end {
        out.push((
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(u32::try_from(id).map_err(|e| e.to_string())?),
        ));
    }
    out.push(("tokenizer.ggml.tokens".into(), Value::Strs(tokens)));
    out.push(("tokenizer.ggml.token_type".into(), Value::I32s(types)));
    Ok(out)
}

/// Reads the Qwen2 vocabulary file, with its whole token and merge lists.
pub fn read_vocab(path: &Path) -> Result<Gguf, SynthError> {
    let vocab = gguf::read_file_keeping_arrays(path).map_err(|e| SynthError::Vocab {
        path: path.to_path_buf(),
        problem: format!("cannot be read: {e}"),
    })?;
    Ok(vocab)
}

/// What `make` is doing, for a progress display.
pub enum Progress {
    /// Writing `file`: `done` of `total` bytes.
    Writing {
        file: PathBuf,
        done: u64,
        total: u64,
    },
    /// llama.cpp is quantizing the text model (no progress figures from it).
    Quantizing { file: PathBuf },
}

/// Makes the pair for `shape` in `cache`, or finds it there. The F16 text model is an
/// intermediate file, removed once quantized; every file appears under its final name only
/// when complete, so an interrupted run leaves nothing that a later run would trust.
pub fn make(
    shape: &Shape,
    cache: &Path,
    vocab_path: &Path,
    threads: i32,
    projector: Projector,
    progress: &mut dyn FnMut(Progress),
) -> Result<SynthPair, SynthError> {
    let pair = shape.paths(cache, projector);
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Write { path, source }
    };
    std::fs::create_dir_all(cache).map_err(write_err(cache))?;
    remove_leftovers(shape, cache);
    if !pair.mmproj.is_file() {
        let w = shape.mmproj_gguf(projector);
        let total = w.file_len();
        let file = pair.mmproj.clone();
        w.write_file(&pair.mmproj, &mut |done| {
            progress(Progress::Writing {
                file: file.clone(),
                done,
                total,
            })
        })
        .map_err(write_err(&pair.mmproj))?;
    }
    if !pair.model.is_file() {
        let vocab = read_vocab(vocab_path)?;
        let w = shape
            .text_gguf(&vocab)
            .map_err(|problem| SynthError::Vocab {
                path: vocab_path.to_path_buf(),
                problem,
            })?;
        let f16 = cache.join(format!("{}-f16.gguf.partial", shape.file_stem()));
        let total = w.file_len();
        w.write_file(&f16, &mut |done| {
            progress(Progress::Writing {
                file: f16.clone(),
                done,
                total,
            })
        })
        .map_err(write_err(&f16))?;
        progress(Progress::Quantizing {
            file: pair.model.clone(),
        });
        let quantized = quantize_q4_k_m(&f16, &pair.model, threads);
        // The F16 intermediate is as large as the model itself; never leave it behind.
        let _ = std::fs::remove_file(&f16);
        quantized?;
    }
    Ok(pair)
}

/// Removes what an interrupted run for this shape left in the cache: the F16 intermediate and
/// half-written files are gigabytes each, and no complete file ever has such a name. (Two runs
/// for the same shape at once are not supported: the second would remove the first's work.)
fn remove_leftovers(shape: &Shape, cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let stem = shape.file_stem();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with(&stem) && (name.contains(".partial") || name.contains(".tmp-"));
        // `crate::files` writes through temporary files of this shape.
        let temporary = name.starts_with(".deskhand-") && name.ends_with(".partial");
        if ours || temporary {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// llama.cpp's own quantizer, as `llama-quantize in out Q4_K_M` runs it, into a temporary
/// name that is renamed when complete.
fn quantize_q4_k_m(input: &Path, output: &Path, threads: i32) -> Result<(), SynthError> {
    let tmp = output.with_extension("gguf.partial");
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| SynthError::Write {
            path: p.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })
    };
    let (c_in, c_out) = (c_path(input)?, c_path(&tmp)?);
    // llama.cpp's logging goes through the process-wide runtime, silenced unless asked for.
    let _ = super::llama::runtime();
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call, and the
    // parameters come from llama.cpp's own defaults with plain fields changed.
    let code = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.nthread = threads;
        params.ftype = llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M;
        llama_cpp_sys_2::llama_model_quantize(c_in.as_ptr(), c_out.as_ptr(), &params)
    };
    if code != 0 {
        let _ = std::fs::remove_file(&tmp);
        return Err(SynthError::Quantize {
            path: input.to_path_buf(),
            code,
        });
    }
    std::fs::rename(&tmp, output).map_err(|source| SynthError::Write {
        path: output.to_path_buf(),
        source,
    })
}

/// `~/.cache/deskhand/synthetic/`.
pub fn default_cache_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "deskhand").map(|d| d.cache_dir().join("synthetic"))
}

/// Where `benches/build-llama-tools.sh` leaves llama.cpp's source, vocabularies included.
pub fn default_vocab_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "deskhand").map(|d| {
        d.cache_dir()
            .join("llama-tools/11434.0.0/src/models/ggml-vocab-qwen2.gguf")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary laid out like llama.cpp's ggml-vocab-qwen2.gguf: `n` tokens, Qwen2's three
    /// special tokens at 151,643 to 151,645, `[PADn]` from 151,646 on.
    fn fake_vocab(n: usize) -> Gguf {
        let token = |i: usize| match i {
            151_643 => "<|endoftext|>".to_owned(),
            151_644 => "<|im_start|>".to_owned(),
            151_645 => "<|im_end|>".to_owned(),
            i if i >= 151_646 => format!("[PAD{i}]"),
            i => format!("t{i}"),
        };
        let w = GgufWriter::new()
            .str("tokenizer.ggml.model", "gpt2")
            .str("tokenizer.ggml.pre", "qwen2")
            .kv(
                "tokenizer.ggml.tokens",
                Value::Strs((0..n).map(token).collect()),
            )
            .kv("tokenizer.ggml.token_type", Value::I32s(vec![1; n]))
            .kv(
                "tokenizer.ggml.merges",
                Value::Strs(vec!["t 0".into(); 300]),
            )
            .kv("tokenizer.ggml.eos_token_id", Value::U32(0));
        gguf::parse_bytes_keeping_arrays(&w.build(), "vocab").unwrap()
    }

    /// A writer's file as the reader sees it, without generating gigabytes of data: the reader
    /// reads only the header, and checks the tensors against the length it is told.
    fn header(w: &GgufWriter) -> Gguf {
        let bytes = w.header_bytes();
        gguf::read_from(std::io::Cursor::new(bytes), w.file_len(), "synthetic").unwrap()
    }

    #[test]
    fn unknown_shapes_list_the_known_ones() {
        let err = shape("llava-13b").unwrap_err().to_string();
        assert!(
            err.contains("qwen2.5-vl-3b") && err.contains("ui-tars-1.5-7b"),
            "{err}"
        );
        assert_eq!(shape("UI-TARS-1.5-7B").unwrap().name, "ui-tars-1.5-7b");
    }

    #[test]
    fn the_tokenizer_is_padded_with_the_added_tokens_in_place() {
        let keys = qwen_tokenizer(&fake_vocab(151_936), 152_064).unwrap();
        let get = |k: &str| keys.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let Some(Value::Strs(tokens)) = get("tokenizer.ggml.tokens") else {
            panic!("no tokens");
        };
        let Some(Value::I32s(types)) = get("tokenizer.ggml.token_type") else {
            panic!("no types");
        };
        assert_eq!((tokens.len(), types.len()), (152_064, 152_064));
        assert_eq!(tokens[100], "t100");
        // Padding added past the file's end is "unused" (5), as llama.cpp's converter pads.
        assert_eq!(tokens[152_000], "[PAD152000]");
        assert_eq!(types[152_000], 5);
        assert_eq!(tokens[151_652], "<|vision_start|>");
        assert_eq!(types[151_652], 3);
        assert_eq!(tokens[151_657], "<tool_call>");
        // The file's own padding stays as it is.
        assert_eq!(tokens[151_700], "[PAD151700]");
        assert_eq!(types[151_700], 1);
        assert_eq!(
            get("tokenizer.ggml.eos_token_id"),
            Some(&Value::U32(151_645))
        );
        let Some(Value::Strs(merges)) = get("tokenizer.ggml.merges") else {
            panic!("merges not copied");
        };
        assert_eq!(merges.len(), 300);
        assert!(qwen_tokenizer(&fake_vocab(200_000), 151_936).is_err());
    }

    /// The files' headers carry the published shapes, and the pair passes the same checks as
    /// a downloaded pair (projector width = embedding width). The data itself is not written.
    #[test]
    fn shapes_match_the_published_models() {
        let vocab = fake_vocab(151_643);
        for s in &SHAPES {
            let text = header(&s.text_gguf(&vocab).unwrap());
            let mmproj = header(&s.mmproj_gguf(Projector::F16));
            let embd = text.tensor("token_embd.weight").unwrap();
            assert_eq!(embd.dims, vec![s.text.n_embd, s.text.n_vocab]);
            assert_eq!(
                text.tensor("output.weight").is_none(),
                s.text.tied_embeddings
            );
            assert_eq!(
                text.tensors
                    .iter()
                    .filter(|t| t.name.ends_with("attn_q.weight"))
                    .count() as u64,
                s.text.n_layer
            );
            assert_eq!(
                mmproj.tensor("mm.2.weight").unwrap().dims,
                vec![4 * s.vision.n_embd, s.text.n_embd]
            );
            // What the store and the engine check before loading a pair.
            assert_eq!(
                text.input_embedding_width().unwrap().total,
                mmproj.projection_width().unwrap().total
            );
        }
        let t = &SHAPES[0];
        let params: u64 = header(&t.mmproj_gguf(Projector::F16))
            .tensors
            .iter()
            .map(|t| t.dims.iter().product::<u64>())
            .sum();
        // Qwen2.5-VL's vision tower and merger: about 670M parameters (1.3 GB in F16).
        assert!((600_000_000..700_000_000).contains(&params), "{params}");
    }
}
