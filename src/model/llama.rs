//! The default engine: llama.cpp in-process through `llama-cpp-2`, with `mtmd` for images.
//!
//! One `LlamaEngine` loads the GGUF weights once; a `LlamaSession` holds the long-lived context
//! (and the vision projector) for one run. Each step keeps the system-and-task prefix in the KV
//! cache and evaluates only what follows it, and decoding is grammar-constrained so the reply
//! always parses.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend as LlamaRuntime;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::mtmd::{
    MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunkType, MtmdInputText,
    mtmd_default_marker,
};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use thiserror::Error;

use super::conversation::{Piece, Rendered};
use super::family::{Family, FamilyId};
use super::kv::{CacheLine, Unit};
use super::{Backend, ModelError, Prompt, Reply, Timings, ms};
use crate::input::AbortSignal;
use crate::screen::{Frame, FrameTarget};

/// Where the engine's knobs come from (config file, CLI or tests).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model: PathBuf,
    /// The vision projector. Without one the engine runs text-only: frames still map the
    /// model's points to the screen, but the model does not see them.
    pub mmproj: Option<PathBuf>,
    pub family: FamilyId,
    /// Context length. llama.cpp's default of 512 does not hold one screenshot.
    pub n_ctx: u32,
    /// Tokens evaluated per call during prefill.
    pub n_batch: u32,
    /// Physical batch; at least the image tokens for models that decode images non-causally
    /// (Gemma 3: 256).
    pub n_ubatch: u32,
    /// CPU threads; None means the physical cores.
    pub threads: Option<i32>,
    /// Layers offloaded to the GPU; None means all of them in GPU builds, none otherwise.
    pub gpu_layers: Option<u32>,
    /// Image tokens per frame the family's resize aims for.
    pub image_token_budget: u32,
    /// The fewest and the most image tokens the model takes per image (the catalog's
    /// image_min_tokens and image_max_tokens). mtmd gets them, and `set_image_token_budget`
    /// keeps the budget inside them; None leaves mtmd the projector's own limits.
    pub image_min_tokens: Option<u32>,
    pub image_max_tokens: Option<u32>,
    /// Overrides the family's frame size (projectors with a fixed input size).
    pub frame_target: Option<FrameTarget>,
    /// Longest reply in tokens; the grammar bounds replies well below it.
    pub max_reply_tokens: usize,
}

impl EngineConfig {
    pub fn new(model: impl Into<PathBuf>, mmproj: Option<PathBuf>, family: FamilyId) -> Self {
        Self {
            model: model.into(),
            mmproj,
            family,
            n_ctx: 8192,
            n_batch: 2048,
            n_ubatch: 1024,
            threads: None,
            gpu_layers: None,
            image_token_budget: 1200,
            image_min_tokens: None,
            image_max_tokens: None,
            frame_target: None,
            max_reply_tokens: 512,
        }
    }

    /// The model's image-token range, with frames aimed at its top: the most detail the model
    /// was made to take.
    pub fn with_image_token_range(mut self, min: u32, max: u32) -> Self {
        self.image_min_tokens = Some(min);
        self.image_max_tokens = Some(max);
        self.image_token_budget = max;
        self
    }

    /// Aims frames at `tokens` image tokens (`--image-tokens`). It must be at least 1 and
    /// Size the context for a conversation showing up to `images` screenshots at the image
    /// budget, with room for the text of many turns; never smaller than the default. A
    /// conversation that outgrows it leaves its oldest turns out.
    pub fn fit_context(&mut self, images: usize) {
        let images = u32::try_from(images).unwrap_or(u32::MAX);
        let wanted = images
            .saturating_mul(self.image_token_budget)
            .saturating_add(CONTEXT_FOR_TEXT);
        // Rounded up to a multiple of 1024, as llama.cpp pads its cache anyway.
        self.n_ctx = self.n_ctx.max(wanted.div_ceil(1024).saturating_mul(1024));
    }

    /// inside the model's range where that is known: outside it, mtmd would resize the frame
    /// again, and the model's points would no longer be in the frame's pixels. `model` names
    /// the model in the error.
    pub fn set_image_token_budget(
        &mut self,
        tokens: i64,
        model: &str,
    ) -> Result<(), ImageTokensError> {
        let min = self.image_min_tokens.unwrap_or(1).max(1);
        let max = self.image_max_tokens;
        match u32::try_from(tokens) {
            Ok(n) if n >= min && max.is_none_or(|max| n <= max) => {
                self.image_token_budget = n;
                Ok(())
            }
            _ => Err(ImageTokensError {
                value: tokens,
                min,
                max,
                model: model.to_owned(),
            }),
        }
    }
}

/// Tokens of context kept for the conversation's text beyond its screenshots: the system
/// prompt (about 1,000 tokens), and replies and notes of some 150 tokens over tens of turns.
const CONTEXT_FOR_TEXT: u32 = 6144;

/// An image-token budget outside what the model takes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "--image-tokens {value}: {model} takes {} image tokens per frame; give a value in that range",
    range_text(*min, *max)
)]
pub struct ImageTokensError {
    pub value: i64,
    pub min: u32,
    pub max: Option<u32>,
    pub model: String,
}

fn range_text(min: u32, max: Option<u32>) -> String {
    match max {
        Some(max) => format!("{min} to {max}"),
        None => format!("{min} or more"),
    }
}

/// mtmd's form of a token limit: -1 is "the projector's own".
fn mtmd_limit(limit: Option<u32>) -> i32 {
    limit.and_then(|n| i32::try_from(n).ok()).unwrap_or(-1)
}

/// True when this binary was built with a GPU backend.
pub const GPU_BUILD: bool = cfg!(any(feature = "cuda", feature = "vulkan", feature = "metal"));

/// The physical cores of this machine: llama.cpp runs best with one thread per core, and
/// hyper-threads only add contention.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let mut physical = String::new();
    for line in cpuinfo.lines() {
        if let Some((key, value)) = line.split_once(':') {
            match key.trim() {
                "physical id" => physical = value.trim().to_owned(),
                "core id" => {
                    cores.insert((physical.clone(), value.trim().to_owned()));
                }
                _ => {}
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// llama.cpp's own account of what it was built with and can use ("AVX512 = 1 | AMX_INT8 = 0
/// | ..."), per backend.
pub fn system_info() -> String {
    // SAFETY: llama.cpp returns a pointer to a static NUL-terminated string.
    unsafe {
        let text = llama_cpp_sys_2::llama_print_system_info();
        if text.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(text)
            .to_string_lossy()
            .into_owned()
    }
}

static PRINT_LLAMA_LOG: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// What mtmd's log said about the images this thread evaluated since the last
    /// [`take_image_times`]. mtmd logs from the calling thread, just before and just after it
    /// encodes a slice or decodes a batch of image tokens, so timing between those lines here
    /// measures the same spans as its own millisecond timers, to the microsecond and without
    /// counting another session's images.
    static IMAGE_LOG: std::cell::RefCell<ImageLog> = std::cell::RefCell::new(ImageLog::default());
}

#[derive(Default)]
struct ImageLog {
    encoding_since: Option<Instant>,
    decoding_since: Option<Instant>,
    times: ImageTimes,
}

impl ImageLog {
    /// Reads one line of mtmd's log: "encoding image slice...", "image slice encoded in 51 ms",
    /// "decoding image batch 1/1, n_tokens_batch = 64", "image decoded (batch 1/1) in 26 ms".
    fn read(&mut self, line: &str, now: Instant) {
        if line.starts_with("encoding ") && line.contains(" slice") {
            self.encoding_since = Some(now);
        } else if line.contains(" slice encoded in ") {
            self.times.encodes += 1;
            if let Some(since) = self.encoding_since.take() {
                self.times.encode_ms += ms(now.duration_since(since));
            }
        } else if line.starts_with("decoding ") && line.contains(" batch ") {
            self.decoding_since = Some(now);
        } else if line.contains(" decoded (batch ")
            && let Some(since) = self.decoding_since.take()
        {
            self.times.decode_ms += ms(now.duration_since(since));
        }
    }
}

/// mtmd's log, read for the spans of encoding and decoding images, and printed only when
/// DESKHAND_LLAMA_LOG asks for it.
unsafe extern "C" fn mtmd_log(
    _level: llama_cpp_sys_2::ggml_log_level,
    text: *const std::os::raw::c_char,
    _user_data: *mut std::os::raw::c_void,
) {
    let now = Instant::now();
    if text.is_null() {
        return;
    }
    // SAFETY: mtmd passes a NUL-terminated string valid for the call.
    let line = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
    if PRINT_LLAMA_LOG.load(Ordering::Relaxed) {
        eprint!("{line}");
    }
    // A log callback must not unwind into C; a re-entrant borrow is skipped, not a panic.
    IMAGE_LOG.with(|log| {
        if let Ok(mut log) = log.try_borrow_mut() {
            log.read(&line, now);
        }
    });
}

/// What mtmd reported on this thread since the last call, and starts counting again.
fn take_image_times() -> ImageTimes {
    IMAGE_LOG.with(|log| {
        log.try_borrow_mut()
            .map(|mut log| std::mem::take(&mut *log).times)
            .unwrap_or_default()
    })
}

/// What mtmd's log said about the images since the last look.
#[derive(Default, Debug, PartialEq)]
struct ImageTimes {
    /// Image slices encoded.
    encodes: usize,
    /// The encoder's own time for them.
    encode_ms: f64,
    /// Decoding their tokens into the cache.
    decode_ms: f64,
}

/// llama.cpp's global state may be initialised only once per process.
pub(crate) fn runtime() -> Result<&'static LlamaRuntime, ModelError> {
    static RUNTIME: OnceLock<Result<LlamaRuntime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let mut runtime = LlamaRuntime::init().map_err(|e| e.to_string())?;
            // llama.cpp logs every tensor it loads and mtmd every image it encodes; keep that
            // out of the user's terminal unless DESKHAND_LLAMA_LOG asks for it.
            if std::env::var_os("DESKHAND_LLAMA_LOG").is_none() {
                runtime.void_logs();
            } else {
                PRINT_LLAMA_LOG.store(true, Ordering::Relaxed);
            }
            // SAFETY: installs a callback that reads only its text argument; the null user
            // data is never read.
            unsafe { llama_cpp_sys_2::mtmd_helper_log_set(Some(mtmd_log), std::ptr::null_mut()) };
            Ok(runtime)
        })
        .as_ref()
        .map_err(|e| ModelError::Engine(format!("cannot initialise llama.cpp: {e}")))
}

fn file_error(path: &Path, problem: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

fn engine<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> ModelError + '_ {
    move |e| ModelError::Engine(format!("{what}: {e}"))
}

/// Weights loaded once.
pub struct LlamaEngine {
    model: LlamaModel,
    config: EngineConfig,
    family: &'static dyn Family,
    threads: i32,
}

impl LlamaEngine {
    pub fn load(config: EngineConfig) -> Result<Self, ModelError> {
        for path in std::iter::once(&config.model).chain(config.mmproj.as_ref()) {
            if !path.is_file() {
                return Err(file_error(
                    path,
                    "not found; check the path, or install a model with `deskhand models pull NAME`",
                ));
            }
        }
        if let Some(mmproj) = &config.mmproj {
            // A non-GGUF, a projector without vision or of the wrong width is the user's to
            // fix; say so, naming both files, before llama.cpp gets a chance to fail obscurely.
            super::compat::check_pair(&config.model, mmproj)?;
        }
        let runtime = runtime()?;
        let gpu_layers = config
            .gpu_layers
            .unwrap_or(if GPU_BUILD { u32::MAX } else { 0 });
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let model = LlamaModel::load_from_file(runtime, &config.model, &params)
            .map_err(|e| file_error(&config.model, format!("llama.cpp could not load it: {e}")))?;
        let threads = config
            .threads
            .unwrap_or_else(|| i32::try_from(physical_cores()).unwrap_or(4));
        Ok(Self {
            model,
            family: config.family.family(),
            config,
            threads,
        })
    }

    pub fn family(&self) -> &'static dyn Family {
        self.family
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn threads(&self) -> i32 {
        self.threads
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// The frame size to capture for this model, so llama.cpp never has to letterbox.
    pub fn frame_target(&self) -> FrameTarget {
        self.config
            .frame_target
            .unwrap_or_else(|| self.family.frame_target(self.config.image_token_budget))
    }

    /// A fresh context (and vision projector) for one run.
    pub fn session(&self) -> Result<LlamaSession<'_>, ModelError> {
        let runtime = runtime()?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.config.n_ctx))
            .with_n_batch(self.config.n_batch)
            .with_n_ubatch(self.config.n_ubatch)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let ctx = self
            .model
            .new_context(runtime, params)
            .map_err(engine("cannot create a context"))?;
        let mtmd = match &self.config.mmproj {
            Some(path) => {
                let marker = CString::new(mtmd_default_marker()).map_err(engine("media marker"))?;
                let params = MtmdContextParams {
                    use_gpu: GPU_BUILD,
                    print_timings: false,
                    n_threads: self.threads,
                    media_marker: marker,
                    image_min_tokens: mtmd_limit(self.config.image_min_tokens),
                    image_max_tokens: mtmd_limit(self.config.image_max_tokens),
                };
                let mtmd = MtmdContext::init_from_file(
                    path.to_str()
                        .ok_or_else(|| file_error(path, "the path is not UTF-8"))?,
                    &self.model,
                    &params,
                )
                .map_err(|e| {
                    file_error(
                        path,
                        format!(
                            "llama.cpp could not load this vision projector for {}: {e}",
                            self.config.model.display()
                        ),
                    )
                })?;
                if !mtmd.support_vision() {
                    return Err(file_error(
                        path,
                        "this projector has no vision encoder; the model cannot see the screen",
                    ));
                }
                Some(mtmd)
            }
            None => None,
        };
        let grammar = LlamaSampler::grammar(&self.model, &self.family.grammar(), "root")
            .map_err(engine("the family's action grammar does not compile"))?;
        let char_tokens = single_char_tokens(&self.model);
        if char_tokens.is_none() {
            tracing::debug!(
                "this vocabulary lacks single-character tokens; grammar forcing is off"
            );
        }
        let vocab = self.model.vocab();
        let mut end_tokens = vec![vocab.eos(), vocab.eot()];
        end_tokens.retain(|t| t.0 >= 0);
        end_tokens.dedup();
        Ok(LlamaSession {
            engine: self,
            ctx,
            mtmd,
            grammar,
            char_tokens,
            end_tokens,
            cache: CacheLine::default(),
            previous_text_tokens: 0,
            previous_frames: Vec::new(),
            left_out_turns: 0,
            reuse: Reuse::Conversation,
            last_image_tokens: None,
            abort: None,
        })
    }
}

/// Longest run of grammar-forced text fed in one batch.
const MAX_FORCED_CHARS: usize = 64;

/// For every printable ASCII character, the vocabulary's single token that spells exactly
/// it; None when some character has none, because forcing is then unsafe (a character the
/// probe cannot see might be the one the grammar also allows).
fn single_char_tokens(model: &LlamaModel) -> Option<Vec<(LlamaToken, char)>> {
    let vocab = model.vocab();
    (' '..='~')
        .map(|c| {
            let tokens = vocab.tokenize(c.to_string().as_bytes(), false, false);
            match tokens.as_slice() {
                [t] if vocab.token_to_piece(*t, false, None) == c.to_string().as_bytes() => {
                    Some((*t, c))
                }
                _ => None,
            }
        })
        .collect()
}

/// The most likely token.
fn greedy(logits: &[f32]) -> LlamaToken {
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    LlamaToken::new(i32::try_from(best).unwrap_or(0))
}

fn check_room(
    n_ctx: usize,
    reply_tokens: usize,
    n_past: i32,
    more: usize,
) -> Result<(), ModelError> {
    let needed = usize::try_from(n_past).unwrap_or(0) + more + reply_tokens;
    if needed > n_ctx {
        return Err(ModelError::ContextFull { needed, n_ctx });
    }
    Ok(())
}

/// One run's context.
pub struct LlamaSession<'e> {
    engine: &'e LlamaEngine,
    ctx: LlamaContext<'e>,
    mtmd: Option<MtmdContext>,
    grammar: LlamaSampler,
    /// Probes for grammar-forced text; None disables forcing.
    char_tokens: Option<Vec<(LlamaToken, char)>>,
    end_tokens: Vec<LlamaToken>,
    /// What the KV cache holds: the last prompt and the reply decoded after it.
    cache: CacheLine,
    /// The previous prompt, for counting the tokens a step adds: its text tokens and the
    /// identities of its frames.
    previous_text_tokens: usize,
    previous_frames: Vec<u64>,
    /// The oldest turns left out of the prompt because the context was full.
    left_out_turns: usize,
    /// What the cache may keep from step to step.
    reuse: Reuse,
    /// The tokens the last image evaluated took.
    last_image_tokens: Option<usize>,
    /// The run's abort switch, looked at between prompt pieces and between tokens (an image
    /// encode, one call into llama.cpp, runs to its end).
    abort: Option<AbortSignal>,
}

/// A prompt as cache units, each image with the frame it shows.
type PromptUnits<'p> = Vec<(Unit, Option<&'p Frame>)>;

/// What the KV cache keeps from one step to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// All the new prompt shares with the cache: a step evaluates only what is new.
    Conversation,
    /// Only the text before the first screenshot (system prompt and task): every screenshot
    /// is encoded and everything after it evaluated again at every step. deskhand's design
    /// before the conversation, kept as `bench step`'s baseline.
    PrefixOnly,
}

/// A frame's identity for [`Timings::new_tokens`]: a hash of its size and pixels.
fn frame_id(frame: &Frame) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&frame.image.dimensions(), &mut h);
    std::hash::Hasher::write(&mut h, frame.image.as_raw());
    std::hash::Hasher::finish(&h)
}

/// The raw result of generating one reply.
pub struct Generated {
    pub text: String,
    pub timings: Timings,
}

impl LlamaSession<'_> {
    /// Stop generating, between prompt pieces and tokens, once `abort` is triggered.
    pub fn set_abort(&mut self, abort: AbortSignal) {
        self.abort = Some(abort);
    }

    fn check_abort(&self) -> Result<(), ModelError> {
        match &self.abort {
            Some(abort) if abort.reason().is_some() => Err(ModelError::Aborted),
            _ => Ok(()),
        }
    }

    /// What the cache may keep from step to step.
    pub fn set_reuse(&mut self, reuse: Reuse) {
        self.reuse = reuse;
    }

    /// Forget what the cache holds, so the next step evaluates its whole prompt (the
    /// benchmarks' full-recompute baseline).
    pub fn forget_cache(&mut self) {
        self.ctx.clear_kv_cache();
        self.cache.clear();
    }

    /// Evaluate `tokens` at the end of the cache in batches, with logits for the last one.
    fn eval_tokens(&mut self, tokens: &[LlamaToken]) -> Result<(), ModelError> {
        let n_ctx = self.ctx.n_ctx() as usize;
        check_room(
            n_ctx,
            self.engine.config.max_reply_tokens,
            self.cache.end(),
            tokens.len(),
        )?;
        let n_batch = (self.engine.config.n_batch as usize).max(1);
        for (i, chunk) in tokens.chunks(n_batch).enumerate() {
            self.check_abort()?;
            let last_chunk = (i + 1) * n_batch >= tokens.len();
            let mut batch = LlamaBatch::new(chunk.len(), 1);
            let start = self.cache.end();
            for (j, &token) in chunk.iter().enumerate() {
                let logits = last_chunk && j + 1 == chunk.len();
                let pos = start + i32::try_from(j).unwrap_or(i32::MAX);
                batch
                    .add(token, pos, &[0], logits)
                    .map_err(engine("building a batch"))?;
            }
            self.ctx
                .decode(&mut batch)
                .map_err(engine("evaluating the prompt"))?;
            for &token in chunk {
                self.cache.push_token(token.0);
            }
        }
        Ok(())
    }

    /// Evaluate one image at `n_past`; returns the new n_past, the tokens evaluated (the image's
    /// and the markers around it) and the image's own token count.
    fn eval_image(
        &mut self,
        frame: &Frame,
        n_past: i32,
    ) -> Result<(i32, usize, usize), ModelError> {
        let (n_ctx, reply_tokens) = (
            self.ctx.n_ctx() as usize,
            self.engine.config.max_reply_tokens,
        );
        let Some(mtmd) = self.mtmd.as_mut() else {
            return Ok((n_past, 0, 0));
        };
        let (w, h) = frame.image.dimensions();
        let bitmap = MtmdBitmap::from_image_data(w, h, frame.image.as_raw())
            .map_err(engine("passing the frame to llama.cpp"))?;
        let chunks = mtmd
            .tokenize(
                MtmdInputText {
                    text: mtmd_default_marker().to_owned(),
                    add_special: false,
                    parse_special: true,
                },
                &[&bitmap],
            )
            .map_err(engine("tokenizing the image"))?;
        let n_tokens = chunks.total_tokens();
        let image_tokens = (0..chunks.len())
            .filter_map(|i| chunks.get(i))
            .filter(|c| c.chunk_type() == MtmdInputChunkType::Image)
            .map(|c| c.n_tokens())
            .sum();
        let needed = usize::try_from(chunks.total_positions())
            .unwrap_or(n_tokens)
            .max(n_tokens);
        check_room(n_ctx, reply_tokens, n_past, needed)?;
        let n_batch = i32::try_from(self.engine.config.n_batch).unwrap_or(i32::MAX);
        let next = chunks
            .eval_chunks(mtmd, &mut self.ctx, n_past, 0, n_batch, true)
            .map_err(engine("encoding the image"))?;
        Ok((next, n_tokens, image_tokens))
    }

    /// The prompt as cache units, each image with its frame. Markup is tokenized with special
    /// tokens parsed, content as plain text; an image goes where its piece is, and nowhere
    /// else. Without a projector the images are left out.
    fn units<'p>(
        &self,
        rendered: &Rendered,
        prompt: &Prompt<'p>,
        first_turn: usize,
    ) -> Result<PromptUnits<'p>, ModelError> {
        let vocab = self.engine.model.vocab();
        let mut units = Vec::new();
        let text =
            |units: &mut Vec<(Unit, Option<&'p Frame>)>, t: &str, bos: bool, special: bool| {
                units.extend(
                    vocab
                        .tokenize(t.as_bytes(), bos, special)
                        .into_iter()
                        .map(|t| (Unit::Token(t.0), None)),
                );
            };
        // The BOS token, where the model has one, comes from the tokenizer, not the text.
        text(&mut units, "", true, true);
        for piece in &rendered.pieces {
            match piece {
                Piece::Markup(t) => text(&mut units, t, false, true),
                Piece::Content(t) => text(&mut units, t, false, false),
                Piece::Image { turn } if self.mtmd.is_some() => {
                    let frame = prompt.frame_of(first_turn + turn).ok_or_else(|| {
                        ModelError::Engine(format!("the prompt has no frame for turn {turn}"))
                    })?;
                    units.push((Unit::Image(frame_id(frame)), Some(frame)));
                }
                Piece::Image { .. } => {}
            }
        }
        Ok(units)
    }

    /// Positions the prompt needs: what the cache already measured, and for each image not in
    /// it what the last image took (a run's frames are all one size), or before any, its
    /// pixels at Qwen's 28x28 per token, at most the image budget.
    fn positions_needed(&self, units: &[(Unit, Option<&Frame>)]) -> usize {
        let budget = self.engine.config.image_token_budget as usize;
        let shared = self
            .cache
            .shared(&units.iter().map(|(u, _)| *u).collect::<Vec<_>>());
        let image = |frame: Option<&Frame>| {
            self.last_image_tokens.unwrap_or_else(|| {
                frame.map_or(budget, |f| {
                    let (w, h) = f.image.dimensions();
                    (w as usize * h as usize / (28 * 28) + 2).min(budget)
                })
            })
        };
        usize::try_from(self.cache.truncated_end(shared)).unwrap_or(0)
            + units[shared..]
                .iter()
                .map(|(u, frame)| match u {
                    Unit::Token(_) => 1,
                    Unit::Image(_) => image(*frame),
                })
                .sum::<usize>()
    }

    /// The conversation rendered to fit the context with room for a reply. When it does not
    /// fit, the oldest turns are left out (the task stays, at the top of the first turn kept),
    /// enough of them that the prompt fills at most half the context: it can then grow for
    /// many steps before the next cut, which re-evaluates everything.
    fn fitted<'p>(&mut self, prompt: &Prompt<'p>) -> Result<(PromptUnits<'p>, usize), ModelError> {
        let family = self.engine.family;
        let turns = prompt.turns();
        let n_ctx = self.ctx.n_ctx() as usize;
        let room = n_ctx.saturating_sub(self.engine.config.max_reply_tokens);
        let mut skip = self.left_out_turns.min(turns.len().saturating_sub(1));
        let mut target = room;
        loop {
            let rendered = family.render_conversation(&prompt.system, &prompt.task, &turns[skip..]);
            let units = self.units(&rendered, prompt, skip)?;
            let needed = self.positions_needed(&units);
            if needed <= target {
                if skip != self.left_out_turns {
                    tracing::info!(
                        "the context was full: the {skip} oldest turns are left out of the prompt"
                    );
                }
                self.left_out_turns = skip;
                return Ok((units, skip));
            }
            if skip + 1 >= turns.len() {
                return Err(ModelError::ContextFull {
                    needed: needed + self.engine.config.max_reply_tokens,
                    n_ctx,
                });
            }
            skip += 1;
            target = room / 2;
        }
    }

    /// Evaluate the prompt, reusing what the cache shares with it, and decode a reply.
    pub fn generate(&mut self, prompt: &Prompt<'_>) -> Result<Generated, ModelError> {
        let started = Instant::now();
        let mut timings = Timings::default();
        let prefill_started = Instant::now();
        let (units, skipped) = self.fitted(prompt)?;
        timings.left_out_turns = skipped;
        let wanted: Vec<Unit> = units.iter().map(|(u, _)| *u).collect();
        let mut shared = self.cache.shared(&wanted);
        if self.reuse == Reuse::PrefixOnly {
            let first_image = wanted.iter().position(|u| matches!(u, Unit::Image(_)));
            shared = shared.min(first_image.unwrap_or(shared));
        }
        let cut = self.cache.truncate(shared);
        self.ctx
            .clear_kv_cache_seq(Some(0), Some(u32::try_from(cut).unwrap_or(0)), None)
            .map_err(engine("truncating the cache"))?;
        timings.reused_tokens = self.cache.tokens_before(shared);

        // The rest: runs of tokens are prefill, images are image encoding.
        let mut image_time = 0.0;
        let mut frame_ids = Vec::new();
        let mut text_tokens = wanted[..shared]
            .iter()
            .filter(|u| matches!(u, Unit::Token(_)))
            .count();
        let mut i = shared;
        while i < units.len() {
            self.check_abort()?;
            let run = units[i..]
                .iter()
                .take_while(|(u, _)| matches!(u, Unit::Token(_)))
                .count();
            if run > 0 {
                let tokens: Vec<LlamaToken> = units[i..i + run]
                    .iter()
                    .filter_map(|(u, _)| match u {
                        Unit::Token(t) => Some(LlamaToken::new(*t)),
                        Unit::Image(_) => None,
                    })
                    .collect();
                self.eval_tokens(&tokens)?;
                timings.prefill_tokens += tokens.len();
                text_tokens += tokens.len();
                i += run;
                continue;
            }
            let (Unit::Image(id), Some(frame)) = units[i] else {
                return Err(ModelError::Engine("an image unit without its frame".into()));
            };
            let n_past = self.cache.end();
            let image_started = Instant::now();
            take_image_times();
            let (next, tokens, image_tokens) = self.eval_image(frame, n_past)?;
            let ImageTimes {
                encodes,
                encode_ms,
                decode_ms,
            } = take_image_times();
            self.cache.push_image(id, next - n_past, tokens);
            self.last_image_tokens = Some(tokens);
            timings.image_encoder_ms += encode_ms;
            // The image's time, less the part mtmd reports for decoding its tokens into the
            // cache, which is prefill; what remains is preprocessing and encoding.
            let wall = ms(image_started.elapsed());
            let image_prefill = decode_ms.min(wall);
            image_time += wall - image_prefill;
            timings.image_prefill_ms += image_prefill;
            timings.image_encodes += encodes.max(1);
            timings.image_tokens += image_tokens;
            timings.prefill_tokens += tokens;
            if !self.previous_frames.contains(&id) {
                timings.new_tokens += image_tokens;
            }
            i += 1;
        }
        for unit in &wanted[..shared] {
            if let Unit::Image(id) = unit {
                frame_ids.push(*id);
            }
        }
        frame_ids.extend(wanted[shared..].iter().filter_map(|u| match u {
            Unit::Image(id) => Some(*id),
            Unit::Token(_) => None,
        }));
        timings.image_encode_ms = image_time;
        timings.prefill_ms = ms(prefill_started.elapsed()) - image_time;
        // The conversation grows at its end, so the text not in the previous prompt is what
        // it grew by.
        timings.new_tokens += text_tokens.saturating_sub(self.previous_text_tokens);
        self.previous_text_tokens = text_tokens;
        self.previous_frames = frame_ids;
        let n_past = self.cache.end();

        let decode_started = Instant::now();
        // A reply cut short leaves its tokens in the cache, where the next prompt, which does
        // not share them, cuts it.
        let text = self.decode(n_past, &mut timings)?;
        timings.decode_ms = ms(decode_started.elapsed());
        timings.total_ms = ms(started.elapsed());
        Ok(Generated { text, timings })
    }

    /// Greedy decoding under the grammar. The grammar is asked about the greedy token first
    /// and filters the whole vocabulary only when it rejects it: most tokens of a JSON action
    /// are what the model wanted anyway, and filtering a 262k vocabulary is the slow part.
    fn decode(&mut self, mut n_past: i32, timings: &mut Timings) -> Result<String, ModelError> {
        self.grammar.reset();
        let vocab = self.engine.model.vocab();
        let mut bytes = Vec::new();
        let mut batch = LlamaBatch::new(1, 1);
        while timings.decode_tokens < self.engine.config.max_reply_tokens {
            self.check_abort()?;
            let forced = self.forced_tokens();
            if !forced.is_empty() {
                // Text the grammar leaves no choice about goes in as one batch, unsampled.
                let mut many = LlamaBatch::new(forced.len(), 1);
                for (i, &token) in forced.iter().enumerate() {
                    vocab.token_to_piece_into(token, &mut bytes, false, None);
                    many.add(token, n_past, &[0], i + 1 == forced.len())
                        .map_err(engine("building a batch"))?;
                    n_past += 1;
                }
                self.ctx.decode(&mut many).map_err(engine("decoding"))?;
                for &token in &forced {
                    self.cache.push_token(token.0);
                }
                timings.decode_tokens += forced.len();
                timings.forced_tokens += forced.len();
            }
            let token = self.pick()?;
            if vocab.is_eog(token) {
                return Ok(String::from_utf8_lossy(&bytes).into_owned());
            }
            self.grammar.accept(token);
            vocab.token_to_piece_into(token, &mut bytes, false, None);
            timings.decode_tokens += 1;
            batch.clear();
            batch
                .add(token, n_past, &[0], true)
                .map_err(engine("building a batch"))?;
            self.ctx.decode(&mut batch).map_err(engine("decoding"))?;
            self.cache.push_token(token.0);
            n_past += 1;
        }
        Err(ModelError::Engine(format!(
            "the reply did not end within {} tokens: {:?}",
            self.engine.config.max_reply_tokens,
            String::from_utf8_lossy(&bytes)
        )))
    }

    /// The tokens of the text the grammar forces next (a JSON key, the punctuation around
    /// it), already accepted by the grammar; empty when the model has a choice.
    ///
    /// The grammar is asked, one character at a time, which printable ASCII character may
    /// come next; while exactly one may (and the reply may not end), it is forced. The text is
    /// then tokenized the model's own way when that spells it exactly, else fed as the
    /// single-character tokens the grammar accepted.
    fn forced_tokens(&mut self) -> Vec<LlamaToken> {
        let Some(probes) = &self.char_tokens else {
            return Vec::new();
        };
        let vocab = self.engine.model.vocab();
        let mut text = String::new();
        let mut char_tokens = Vec::new();
        while text.len() < MAX_FORCED_CHARS {
            let mut candidates: Vec<LlamaTokenData> = probes
                .iter()
                .map(|&(t, _)| LlamaTokenData::new(t, 0.0, 0.0))
                .collect();
            candidates.extend(
                self.end_tokens
                    .iter()
                    .map(|&t| LlamaTokenData::new(t, 0.0, 0.0)),
            );
            let mut array = LlamaTokenDataArray::new(candidates, false);
            array.apply_sampler(&mut self.grammar);
            let mut allowed = array.data.iter().filter(|d| d.logit().is_finite());
            let (Some(only), None) = (allowed.next(), allowed.next()) else {
                break;
            };
            let Some(&(token, c)) = probes.iter().find(|(t, _)| *t == only.id()) else {
                break; // the reply may end here: the model decides
            };
            self.grammar.accept(token);
            text.push(c);
            char_tokens.push(token);
        }
        if text.is_empty() {
            return Vec::new();
        }
        let natural = vocab.tokenize(text.as_bytes(), false, false);
        let spelled: Vec<u8> = natural
            .iter()
            .flat_map(|&t| vocab.token_to_piece(t, false, None))
            .collect();
        if spelled == text.as_bytes() {
            natural
        } else {
            char_tokens
        }
    }

    /// The next token: the model's greedy choice if the grammar allows it, else the best
    /// token the grammar allows.
    fn pick(&mut self) -> Result<LlamaToken, ModelError> {
        // -1 is llama.cpp's index of the last output, which is where the logits are after
        // both the prompt and each one-token batch.
        let index = -1;
        let greedy = greedy(self.ctx.get_logits_ith(index));
        let mut single =
            LlamaTokenDataArray::new(vec![LlamaTokenData::new(greedy, 0.0, 0.0)], false);
        single.apply_sampler(&mut self.grammar);
        if single.data.first().is_some_and(|d| d.logit().is_finite()) {
            return Ok(greedy);
        }
        let mut all = self.ctx.token_data_array_ith(index);
        all.apply_sampler(&mut self.grammar);
        // Accepting a token the grammar rejects aborts inside llama.cpp, so an empty choice
        // must stop here.
        all.data
            .iter()
            .filter(|d| d.logit().is_finite())
            .max_by(|a, b| a.logit().total_cmp(&b.logit()))
            .map(LlamaTokenData::id)
            .ok_or_else(|| ModelError::Engine("the action grammar allows no next token".into()))
    }
}

/// Raw engine speed, for `deskhand bench model`.
impl LlamaSession<'_> {
    /// Evaluate `n_tokens` prompt tokens in one go from an empty cache; returns the time.
    pub fn bench_prefill(&mut self, n_tokens: usize) -> Result<std::time::Duration, ModelError> {
        let tokens = self.bench_tokens(n_tokens);
        self.ctx.clear_kv_cache();
        self.cache.clear();
        let started = Instant::now();
        let n_batch = (self.engine.config.n_batch as usize).max(1);
        let mut n_past = 0;
        for (i, chunk) in tokens.chunks(n_batch).enumerate() {
            let last_chunk = (i + 1) * n_batch >= tokens.len();
            let mut batch = LlamaBatch::new(chunk.len(), 1);
            for (j, &token) in chunk.iter().enumerate() {
                batch
                    .add(token, n_past, &[0], last_chunk && j + 1 == chunk.len())
                    .map_err(engine("building a batch"))?;
                n_past += 1;
            }
            self.ctx
                .decode(&mut batch)
                .map_err(engine("evaluating the prompt"))?;
        }
        Ok(started.elapsed())
    }

    /// Decode `n_tokens` one at a time after a short prompt, greedily and without stopping at
    /// end tokens; returns the time of the decode alone.
    pub fn bench_decode(&mut self, n_tokens: usize) -> Result<std::time::Duration, ModelError> {
        let prompt = self.bench_tokens(16);
        self.bench_prefill(prompt.len())?;
        let start = i32::try_from(prompt.len()).unwrap_or(16);
        let end = start.saturating_add(i32::try_from(n_tokens).unwrap_or(i32::MAX));
        let mut batch = LlamaBatch::new(1, 1);
        let started = Instant::now();
        for n_past in start..end {
            let next = greedy(self.ctx.get_logits_ith(-1));
            batch.clear();
            batch
                .add(next, n_past, &[0], true)
                .map_err(engine("building a batch"))?;
            self.ctx.decode(&mut batch).map_err(engine("decoding"))?;
        }
        Ok(started.elapsed())
    }

    /// Ordinary text tokens to time the engine with (llama-bench uses random ones; any
    /// tokens cost the same).
    fn bench_tokens(&self, n: usize) -> Vec<LlamaToken> {
        let text = "Open the settings window, find the network section and turn on the proxy. ";
        let vocab = self.engine.model.vocab();
        let mut tokens = vocab.tokenize(text.as_bytes(), false, false);
        if tokens.is_empty() {
            tokens.push(LlamaToken::new(1));
        }
        tokens.iter().copied().cycle().take(n).collect()
    }
}

impl Backend for LlamaSession<'_> {
    fn reply(&mut self, prompt: &Prompt<'_>) -> Result<Reply, ModelError> {
        let generated = self.generate(prompt)?;
        let parsed = self.engine.family.parse(&generated.text)?;
        let action = parsed.action.to_action(&prompt.frame.map)?;
        Ok(Reply {
            raw: generated.text,
            thought: parsed.thought,
            action,
            timings: generated.timings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog_config() -> EngineConfig {
        EngineConfig::new("m.gguf", Some("mmproj.gguf".into()), FamilyId::Qwen25Vl)
            .with_image_token_range(256, 1280)
    }

    #[test]
    fn image_times_are_the_spans_between_mtmds_log_lines_not_its_rounded_milliseconds() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + std::time::Duration::from_micros(us);
        let mut log = ImageLog::default();
        log.read("encoding image slice...\n", at(0));
        // mtmd's own figure says 0 ms; the span says 0.4 ms.
        log.read("image slice encoded in 0 ms\n", at(400));
        log.read("decoding image batch 1/1, n_tokens_batch = 4\n", at(500));
        log.read("image decoded (batch 1/1) in 1 ms\n", at(700));
        log.read("encoding image slice...\n", at(1000));
        log.read("image slice encoded in 1 ms\n", at(2000));
        // A line outside a pair, or one it does not know, changes nothing.
        log.read("image decoded (batch 1/1) in 5 ms\n", at(3000));
        log.read("something else\n", at(4000));
        assert_eq!(log.times.encodes, 2);
        assert!((log.times.encode_ms - 1.4).abs() < 1e-9, "{:?}", log.times);
        assert!((log.times.decode_ms - 0.2).abs() < 1e-9, "{:?}", log.times);
    }

    #[test]
    fn image_times_are_counted_per_thread_and_taken_once() {
        IMAGE_LOG.with(|log| {
            let mut log = log.borrow_mut();
            let now = Instant::now();
            log.read("encoding image slice...\n", now);
            log.read(
                "image slice encoded in 3 ms\n",
                now + std::time::Duration::from_millis(3),
            );
        });
        let elsewhere = std::thread::spawn(take_image_times).join().ok();
        assert_eq!(elsewhere, Some(ImageTimes::default()));
        let here = take_image_times();
        assert_eq!(here.encodes, 1);
        assert!((here.encode_ms - 3.0).abs() < 1e-9);
        assert_eq!(take_image_times(), ImageTimes::default());
    }

    #[test]
    fn a_model_given_by_path_keeps_the_default_budget_and_mtmd_its_own_limits() {
        let config = EngineConfig::new("m.gguf", None, FamilyId::Qwen25Vl);
        assert_eq!(config.image_token_budget, 1200);
        assert_eq!(
            (config.image_min_tokens, config.image_max_tokens),
            (None, None)
        );
        assert_eq!(mtmd_limit(config.image_min_tokens), -1);
        assert_eq!(mtmd_limit(config.image_max_tokens), -1);
    }

    #[test]
    fn a_model_range_sets_the_budget_to_its_top_and_reaches_mtmd() {
        let config = catalog_config();
        assert_eq!(config.image_token_budget, 1280);
        assert_eq!(mtmd_limit(config.image_min_tokens), 256);
        assert_eq!(mtmd_limit(config.image_max_tokens), 1280);
        // The family sizes frames from the budget: 1280 tokens of 28x28 pixels.
        assert_eq!(
            config
                .family
                .family()
                .frame_target(config.image_token_budget),
            FrameTarget::MaxPixels {
                max_pixels: 1280 * 28 * 28,
                align: 28
            }
        );
    }

    #[test]
    fn the_budget_must_lie_in_the_model_range() {
        let mut config = catalog_config();
        for ok in [256, 700, 1280] {
            config.set_image_token_budget(ok, "qwen2.5-vl-3b").unwrap();
            assert_eq!(i64::from(config.image_token_budget), ok);
        }
        for bad in [-5, 0, 1, 255, 1281, i64::from(u32::MAX) + 1] {
            let err = config
                .set_image_token_budget(bad, "qwen2.5-vl-3b")
                .unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("--image-tokens {bad}:")),
                "{text}"
            );
            assert!(text.contains("256 to 1280"), "{text}");
            assert!(text.contains("qwen2.5-vl-3b"), "{text}");
            // A refused value leaves the last good one.
            assert_eq!(config.image_token_budget, 1280);
        }
    }

    #[test]
    fn without_a_range_any_positive_budget_goes() {
        let mut config = EngineConfig::new("/m/x.gguf", None, FamilyId::Qwen3Vl);
        config.set_image_token_budget(1, "/m/x.gguf").unwrap();
        config.set_image_token_budget(5000, "/m/x.gguf").unwrap();
        assert_eq!(config.image_token_budget, 5000);
        assert_eq!(config.image_max_tokens, None);
        let err = config.set_image_token_budget(0, "/m/x.gguf").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--image-tokens 0: /m/x.gguf takes 1 or more image tokens per frame; give a value in that range"
        );
    }
}
