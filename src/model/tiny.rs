//! A tiny random-weight vision-language model that deskhand writes itself, so that tests can run
//! the whole llama.cpp path (model load, image encode, prefill, decode) without downloading
//! anything.
//!
//! [`write_tiny_vlm`] writes two GGUF files:
//! - a LLaMA-architecture text model (2 blocks, 64 wide, a 259-token byte vocabulary);
//! - a LLaVA-1.5-style vision projector (`clip`, projector type `mlp`): a 2-block ViT on
//!   112×112 images in 14×14 patches, and a two-layer MLP into the text model's width.
//!
//! Together they are well under 1 MB. The weights are pseudo-random, so the model's replies are
//! meaningless, but they are deterministic: the same call writes byte-identical files, and
//! greedy decoding gives the same tokens every time on the same build.
//!
//! The file layout follows the GGUF v3 specification and the key and tensor names that the
//! vendored llama.cpp reads: `src/llama-model.cpp` and `src/models/llama.cpp` for the text
//! model, `src/llama-vocab.cpp` for the tokenizer, `tools/mtmd/clip.cpp`, `clip-impl.h` and
//! `tools/mtmd/models/llava.cpp` for the projector.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::gguf_write::{GgufWriter, StoredType, TensorData, Value, name_seed};

/// The side of the square image the projector takes. Callers resize frames to exactly this size
/// so that llama.cpp's fixed-size preprocessor copies the pixels as they are instead of
/// letterboxing them. 112 = 8 patches of 14 px: 64 image tokens, enough to look like an image to
/// the code around it and few enough that a CPU encodes it in milliseconds.
pub const TINY_IMAGE_SIZE: u32 = 112;

/// The side of one vision patch in pixels (CLIP ViT-L/14 uses 14 as well).
pub const TINY_PATCH_SIZE: u32 = 14;

/// Image tokens per image: the `mlp` projector maps every patch to one token, so
/// `(TINY_IMAGE_SIZE / TINY_PATCH_SIZE)²`.
pub const TINY_IMAGE_TOKENS: usize =
    ((TINY_IMAGE_SIZE / TINY_PATCH_SIZE) * (TINY_IMAGE_SIZE / TINY_PATCH_SIZE)) as usize;

/// Tokens in the text model's vocabulary: `<unk> <s> </s>` and the 256 byte tokens.
pub const TINY_N_VOCAB: usize = 259;

/// The text model's embedding width, which is also the projector's output width.
pub const TINY_N_EMBD: usize = 64;

/// The text model's trained context length. Larger than any context the tests ask for, so that
/// llama.cpp does not warn that the context exceeds what the model was "trained" on; the KV
/// cache is sized by the context the caller asks for, not by this.
pub const TINY_CONTEXT_LENGTH: u32 = 8192;

/// Text model shape. Two blocks so that the per-layer loop and the KV cache see more than one
/// layer; `head_count_kv` below `head_count` so grouped-query attention is exercised as in
/// current models.
const TEXT_BLOCKS: usize = 2;
const TEXT_HEADS: usize = 4;
const TEXT_HEADS_KV: usize = 2;
const TEXT_HEAD_DIM: usize = TINY_N_EMBD / TEXT_HEADS;
const TEXT_FF: usize = 128;

/// Vision tower shape. The LLaVA graph stops at the second-to-last block (LLaVA-1.5 takes
/// its features from the penultimate CLIP layer), so two blocks are the fewest with which a
/// transformer block runs at all. `VISION_FF` must differ from `VISION_EMBD`: clip.cpp swaps
/// `ffn_up` and `ffn_down` of `mlp` projectors when `ffn_down`'s first dimension equals the
/// embedding width (a fix for old conversions).
const VISION_BLOCKS: usize = 2;
const VISION_EMBD: usize = 32;
const VISION_HEADS: usize = 2;
const VISION_FF: usize = 64;
const VISION_PATCHES: usize = TINY_IMAGE_TOKENS;

/// Magnitude of the random weights. Small enough that activations stay far from overflow with
/// or without the norms, large enough that different inputs give different outputs.
const WEIGHT_SCALE: f32 = 0.05;

/// Mixed into every tensor's seed. Changing it changes every weight (and the files' bytes).
const SEED: u64 = 0x6465_736b_6861_6e64; // "deskhand"

/// GGUF data alignment. 32 is the GGUF default; it is also written as `general.alignment` so
/// that the file says so itself.
const ALIGNMENT: u32 = super::gguf_write::ALIGNMENT as u32;

/// The files written by [`write_tiny_vlm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyVlm {
    /// The text model (`general.architecture = "llama"`).
    pub model: PathBuf,
    /// The vision projector (`general.architecture = "clip"`).
    pub mmproj: PathBuf,
}

#[derive(Debug, Error)]
pub enum TinyVlmError {
    #[error("cannot create directory {}: {source}", .path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// File name of the text model inside the directory given to [`write_tiny_vlm`].
pub const TINY_MODEL_FILE: &str = "tiny-vlm.gguf";
/// File name of the projector inside the directory given to [`write_tiny_vlm`].
pub const TINY_MMPROJ_FILE: &str = "mmproj-tiny-vlm.gguf";

/// Writes the tiny text model and its projector into `dir` (created if missing) and returns
/// their paths. Existing files of the same names are replaced.
///
/// Each file is first written under a name unique to this call and then renamed into place, so
/// concurrent callers writing to the same directory never see a half-written file.
pub fn write_tiny_vlm(dir: &Path) -> Result<TinyVlm, TinyVlmError> {
    std::fs::create_dir_all(dir).map_err(|source| TinyVlmError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let model = dir.join(TINY_MODEL_FILE);
    let mmproj = dir.join(TINY_MMPROJ_FILE);
    for (path, gguf) in [(&model, text_model()), (&mmproj, projector())] {
        gguf.0
            .write_file(path, &mut |_| {})
            .map_err(|source| TinyVlmError::Write {
                path: path.clone(),
                source,
            })?;
    }
    Ok(TinyVlm { model, mmproj })
}

/// The bytes of the text model file; [`write_tiny_vlm`] writes exactly these.
pub fn tiny_model_bytes() -> Vec<u8> {
    text_model().0.build()
}

/// The bytes of the projector file; [`write_tiny_vlm`] writes exactly these.
pub fn tiny_mmproj_bytes() -> Vec<u8> {
    projector().0.build()
}

// ---------------------------------------------------------------------------------------------
// The text model

/// A LLaMA model with a SentencePiece-style byte vocabulary.
///
/// The vocabulary is the smallest that llama.cpp's SPM tokenizer handles completely: the three
/// special tokens and one token per byte. Every string tokenizes (as bytes, SPM's fallback),
/// `byte_to_token('\n')` finds the newline token, and every token detokenizes.
///
/// `output.weight` is written although llama.cpp's LLaMA loader would tie the output projection
/// to `token_embd` without it: with tied random embeddings the residual stream keeps the input
/// token's own embedding on top, and greedy decoding just repeats the last prompt token. An
/// untied head (66 kB) gives replies that change from step to step, which is closer to what the
/// decode loop sees from a real model.
fn text_model() -> Gguf {
    let mut g = Gguf::new();
    g.kv("general.architecture", Value::Str("llama".into()));
    g.kv(
        "general.name",
        Value::Str("deskhand tiny vlm (random weights)".into()),
    );
    g.kv("general.alignment", Value::U32(ALIGNMENT));
    g.kv("llama.context_length", Value::U32(TINY_CONTEXT_LENGTH));
    g.kv("llama.embedding_length", Value::U32(TINY_N_EMBD as u32));
    g.kv("llama.block_count", Value::U32(TEXT_BLOCKS as u32));
    g.kv("llama.feed_forward_length", Value::U32(TEXT_FF as u32));
    g.kv("llama.attention.head_count", Value::U32(TEXT_HEADS as u32));
    g.kv(
        "llama.attention.head_count_kv",
        Value::U32(TEXT_HEADS_KV as u32),
    );
    g.kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    // llama.cpp checks that the LLaMA rope dimension equals the head dimension; written out so
    // the file does not depend on the default.
    g.kv(
        "llama.rope.dimension_count",
        Value::U32(TEXT_HEAD_DIM as u32),
    );
    g.kv("llama.rope.freq_base", Value::F32(10_000.0));

    let (tokens, types) = byte_vocab();
    g.kv("tokenizer.ggml.model", Value::Str("llama".into()));
    g.kv("tokenizer.ggml.tokens", Value::Strs(tokens));
    // With no multi-byte pieces there is nothing to merge, so every score is the same.
    g.kv(
        "tokenizer.ggml.scores",
        Value::F32s(vec![0.0; TINY_N_VOCAB]),
    );
    g.kv("tokenizer.ggml.token_type", Value::I32s(types));
    g.kv("tokenizer.ggml.unknown_token_id", Value::U32(0));
    g.kv("tokenizer.ggml.bos_token_id", Value::U32(1));
    g.kv("tokenizer.ggml.eos_token_id", Value::U32(2));
    g.kv("tokenizer.ggml.add_bos_token", Value::Bool(true));
    g.kv("tokenizer.ggml.add_eos_token", Value::Bool(false));
    // As Gemma 3's tokenizer: no space in front of the text after a special token. The engine
    // tokenizes the prompt's pieces one by one, and a prefix space would give each piece (and
    // each reply fed back) a leading space the whole text does not have.
    g.kv("tokenizer.ggml.add_space_prefix", Value::Bool(false));

    let d = TINY_N_EMBD;
    let kv = TEXT_HEADS_KV * TEXT_HEAD_DIM;
    // Shapes are GGUF `ne` order: the first dimension is the one that moves fastest, so a
    // linear layer from `n_in` to `n_out` is `[n_in, n_out]`.
    g.random("token_embd.weight", &[d, TINY_N_VOCAB]);
    g.ones("output_norm.weight", &[d]);
    g.random("output.weight", &[d, TINY_N_VOCAB]);
    for b in 0..TEXT_BLOCKS {
        g.ones(&format!("blk.{b}.attn_norm.weight"), &[d]);
        g.random(
            &format!("blk.{b}.attn_q.weight"),
            &[d, TEXT_HEADS * TEXT_HEAD_DIM],
        );
        g.random(&format!("blk.{b}.attn_k.weight"), &[d, kv]);
        g.random(&format!("blk.{b}.attn_v.weight"), &[d, kv]);
        g.random(
            &format!("blk.{b}.attn_output.weight"),
            &[TEXT_HEADS * TEXT_HEAD_DIM, d],
        );
        g.ones(&format!("blk.{b}.ffn_norm.weight"), &[d]);
        g.random(&format!("blk.{b}.ffn_gate.weight"), &[d, TEXT_FF]);
        g.random(&format!("blk.{b}.ffn_up.weight"), &[d, TEXT_FF]);
        g.random(&format!("blk.{b}.ffn_down.weight"), &[TEXT_FF, d]);
    }
    g
}

/// `<unk> <s> </s> <0x00> … <0xFF>` with their GGUF token types: 2 (unknown) for `<unk>`,
/// 3 (control) for `<s>` and `</s>`, 6 (byte) for the byte tokens. The `<0xNN>` spelling is the
/// one llama.cpp's `byte_to_token` looks up.
fn byte_vocab() -> (Vec<String>, Vec<i32>) {
    const UNKNOWN: i32 = 2;
    const CONTROL: i32 = 3;
    const BYTE: i32 = 6;
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut types = vec![UNKNOWN, CONTROL, CONTROL];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(BYTE);
    }
    (tokens, types)
}

// ---------------------------------------------------------------------------------------------
// The projector

/// A CLIP vision tower with a LLaVA-1.5 (`mlp`) projector.
///
/// Left out because clip.cpp treats them as optional: `v.class_embd` (without it the position
/// table has one row per patch), `v.patch_embd.bias`, `v.pre_ln` and `v.post_ln`. No
/// `clip.use_gelu` / `clip.use_silu`, so the tower uses CLIP's quick GELU, and no
/// `image_grid_pinpoints`, so llama.cpp uses its fixed-size preprocessor (one image, one
/// tile, `(image_size / patch_size)²` tokens).
fn projector() -> Gguf {
    let mut g = Gguf::new();
    g.kv("general.architecture", Value::Str("clip".into()));
    g.kv(
        "general.name",
        Value::Str("deskhand tiny vlm projector (random weights)".into()),
    );
    g.kv("general.alignment", Value::U32(ALIGNMENT));
    g.kv("clip.has_vision_encoder", Value::Bool(true));
    g.kv("clip.projector_type", Value::Str("mlp".into()));
    g.kv("clip.vision.image_size", Value::U32(TINY_IMAGE_SIZE));
    g.kv("clip.vision.patch_size", Value::U32(TINY_PATCH_SIZE));
    g.kv(
        "clip.vision.embedding_length",
        Value::U32(VISION_EMBD as u32),
    );
    g.kv(
        "clip.vision.feed_forward_length",
        Value::U32(VISION_FF as u32),
    );
    g.kv("clip.vision.block_count", Value::U32(VISION_BLOCKS as u32));
    g.kv(
        "clip.vision.attention.head_count",
        Value::U32(VISION_HEADS as u32),
    );
    g.kv("clip.vision.attention.layer_norm_epsilon", Value::F32(1e-5));
    // Required by clip.cpp although the mlp projector's width comes from `mm.2.weight`.
    g.kv("clip.vision.projection_dim", Value::U32(TINY_N_EMBD as u32));
    // CLIP's normalization constants, as in real LLaVA-1.5 projectors.
    g.kv(
        "clip.vision.image_mean",
        Value::F32s(vec![0.481_454_66, 0.457_827_5, 0.408_210_73]),
    );
    g.kv(
        "clip.vision.image_std",
        Value::F32s(vec![0.268_629_54, 0.261_302_6, 0.275_777_1]),
    );

    let p = TINY_PATCH_SIZE as usize;
    let d = VISION_EMBD;
    // The patch embedding is a convolution kernel: [kernel w, kernel h, in channels (RGB),
    // out channels].
    g.random("v.patch_embd.weight", &[p, p, 3, d]);
    g.random("v.position_embd.weight", &[d, VISION_PATCHES]);
    for b in 0..VISION_BLOCKS {
        g.ones(&format!("v.blk.{b}.ln1.weight"), &[d]);
        g.zeros(&format!("v.blk.{b}.ln1.bias"), &[d]);
        for proj in ["attn_q", "attn_k", "attn_v", "attn_out"] {
            g.random(&format!("v.blk.{b}.{proj}.weight"), &[d, d]);
            g.random(&format!("v.blk.{b}.{proj}.bias"), &[d]);
        }
        g.ones(&format!("v.blk.{b}.ln2.weight"), &[d]);
        g.zeros(&format!("v.blk.{b}.ln2.bias"), &[d]);
        g.random(&format!("v.blk.{b}.ffn_up.weight"), &[d, VISION_FF]);
        g.random(&format!("v.blk.{b}.ffn_up.bias"), &[VISION_FF]);
        g.random(&format!("v.blk.{b}.ffn_down.weight"), &[VISION_FF, d]);
        g.random(&format!("v.blk.{b}.ffn_down.bias"), &[d]);
    }
    // mm.0: vision width → text width, GELU, mm.2: text width → text width. llama.cpp checks
    // that mm.2's output width equals the text model's embedding width.
    g.random("mm.0.weight", &[d, TINY_N_EMBD]);
    g.random("mm.0.bias", &[TINY_N_EMBD]);
    g.random("mm.2.weight", &[TINY_N_EMBD, TINY_N_EMBD]);
    g.random("mm.2.bias", &[TINY_N_EMBD]);
    g
}

// ---------------------------------------------------------------------------------------------
// Weights

/// The tiny files' description: F32 tensors, every random one seeded by its name.
struct Gguf(GgufWriter);

impl Gguf {
    fn new() -> Self {
        Gguf(GgufWriter::new())
    }

    fn kv(&mut self, key: &str, value: Value) {
        self.0.set(key, value);
    }

    fn shape(ne: &[usize]) -> Vec<u64> {
        ne.iter().map(|&n| n as u64).collect()
    }

    /// Uniform in ±[`WEIGHT_SCALE`], seeded by the tensor's name.
    fn random(&mut self, name: &str, ne: &[usize]) {
        let data = TensorData::Random {
            scale: WEIGHT_SCALE,
            seed: name_seed(name, SEED),
        };
        self.0.add(name, &Self::shape(ne), StoredType::F32, data);
    }

    fn ones(&mut self, name: &str, ne: &[usize]) {
        self.0
            .add(name, &Self::shape(ne), StoredType::F32, TensorData::Ones);
    }

    /// Norm biases.
    fn zeros(&mut self, name: &str, ne: &[usize]) {
        self.0
            .add(name, &Self::shape(ne), StoredType::F32, TensorData::Zeros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_deterministic_and_aligned() {
        let a = tiny_model_bytes();
        assert_eq!(a, tiny_model_bytes());
        assert_eq!(tiny_mmproj_bytes(), tiny_mmproj_bytes());
        assert_eq!(&a[..4], b"GGUF");
        assert_eq!(a.len() % ALIGNMENT as usize, 0);
    }

    #[test]
    fn random_weights_stay_in_range() {
        let mut rng = crate::model::gguf_write::SplitMix64(name_seed("x", SEED));
        for _ in 0..10_000 {
            let v = rng.uniform(WEIGHT_SCALE);
            assert!((-WEIGHT_SCALE..WEIGHT_SCALE).contains(&v));
        }
    }

    #[test]
    fn image_tokens_follow_the_patch_grid() {
        assert_eq!(TINY_IMAGE_SIZE % TINY_PATCH_SIZE, 0);
        assert_eq!(TINY_IMAGE_TOKENS, 64);
    }
}
