//! Think: run a vision-language model on the local CPU or GPU and turn its reply into an
//! `Action`. Model families (prompt, image size, output syntax, coordinate convention) are data
//! plus a small parser each; decoding is grammar-constrained so a reply always parses.

pub mod compat;
pub mod conversation;
pub mod family;
pub mod ffi;
pub mod gguf;
pub mod gguf_write;
pub mod kv;
pub mod llama;
pub mod remote;
pub mod store;
pub mod synth;
pub mod template;
pub mod tiny;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::input::Action;
use crate::policy::Intent;

pub use conversation::{PastTurn, Prompt};
pub use family::{Family, FamilyId, ModelAction, ParseError, ParsedReply};

/// How long each part of a reply took, and how much work it was.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Preparing and encoding the images (the vision tower and projector).
    pub image_encode_ms: f64,
    /// The vision encoder alone, by llama.cpp's own timer (mtmd's "image slice encoded in"):
    /// `image_encode_ms` less the preprocessing (resizing, normalizing) around it.
    #[serde(default)]
    pub image_encoder_ms: f64,
    /// Images run through the vision encoder for this step.
    #[serde(default)]
    pub image_encodes: usize,
    pub image_tokens: usize,
    /// Evaluating the prompt into the KV cache: text and image tokens.
    pub prefill_ms: f64,
    /// The part of `prefill_ms` spent on image tokens.
    #[serde(default)]
    pub image_prefill_ms: f64,
    /// Tokens evaluated for this step (text and image).
    pub prefill_tokens: usize,
    /// Tokens of this step's prompt that were not in the previous step's: the text it grew by
    /// and the frames it did not have.
    #[serde(default)]
    pub new_tokens: usize,
    /// Tokens kept from the previous step's cache instead of being evaluated again.
    pub reused_tokens: usize,
    pub decode_ms: f64,
    pub decode_tokens: usize,
    /// The oldest turns left out of the prompt because the context was full (their text and
    /// screenshots; the task stays).
    #[serde(default)]
    pub left_out_turns: usize,
    /// Tokens the grammar forced and that were fed without sampling.
    pub forced_tokens: usize,
    /// The thought reached the thought budget (`EngineConfig::max_thought_tokens`) and was
    /// closed there, so the action follows.
    #[serde(default)]
    pub thought_cut: bool,
    /// A model server (`--engine`): building the request, the screenshots as PNG and base64
    /// inside the JSON. Zero for a model in this process.
    #[serde(default)]
    pub request_encode_ms: f64,
    /// A model server: the answer's wall time less the server's own prompt and decode times,
    /// so HTTP, the server reading the request and decoding its images, and any queueing.
    /// Zero for a model in this process, and for a server that reports no timings.
    #[serde(default)]
    pub http_overhead_ms: f64,
    pub total_ms: f64,
}

/// A model's reply, parsed and mapped to the screen.
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    pub raw: String,
    pub thought: Option<String>,
    /// In screen pixels, mapped through the prompt frame's `FrameMap`.
    pub action: Action,
    /// What the model declared the action is for (`ParsedReply::intent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    pub timings: Timings,
}

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model file {path}: {problem}")]
    File { path: String, problem: String },
    #[error("the model's reply did not parse: {0}")]
    Parse(#[from] ParseError),
    #[error("the model named a point outside the frame: {0}")]
    Map(#[from] crate::screen::MapError),
    #[error(transparent)]
    Compat(#[from] compat::CompatError),
    #[error("llama.cpp: {0}")]
    Engine(String),
    /// A model that is not in this process: a remote engine, an MCP client.
    #[error("{0}")]
    Remote(String),
    #[error(
        "the prompt needs {needed} tokens but the context holds {n_ctx}; raise n_ctx or lower the image budget"
    )]
    ContextFull { needed: usize, n_ctx: usize },
    #[error("stopped: the run was aborted")]
    Aborted,
    /// A reply the model finished that cannot be used; its text and cost are kept for the
    /// step's record.
    #[error("{}", .0.error)]
    Unusable(Box<UnusableReply>),
}

/// A finished reply that did not parse, or named a point outside the frame, with what it cost:
/// a failed step still shows where its time went.
#[derive(Debug)]
pub struct UnusableReply {
    pub raw: String,
    pub timings: Timings,
    /// Why it cannot be used: `ModelError::Parse` or `ModelError::Map`.
    pub error: ModelError,
}

/// The think stage's boundary.
pub trait Backend {
    fn reply(&mut self, prompt: &Prompt<'_>) -> Result<Reply, ModelError>;
}

/// A frame's identity across steps (for [`Timings::new_tokens`], the kept encodings, a model
/// server's encoded screenshots): a hash of its size and pixels.
pub(crate) fn frame_id(frame: &crate::screen::Frame) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&frame.image.dimensions(), &mut h);
    std::hash::Hasher::write(&mut h, frame.image.as_raw());
    std::hash::Hasher::finish(&h)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
