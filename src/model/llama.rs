//! The default engine: llama.cpp in-process through deskhand's own safe layer over its C API
//! ([`super::ffi`]), with `mtmd` for images.
//!
//! One `LlamaEngine` loads the GGUF weights once; a `LlamaSession` holds the long-lived context
//! (and the vision projector) for one run. Each step keeps the system-and-task prefix in the KV
//! cache and evaluates only what follows it, and decoding is grammar-constrained so the reply
//! always parses.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use thiserror::Error;

use super::family::{Family, FamilyId};
use super::ffi::{
    self, Batch, Bitmap, ChunkType, Context, ContextParams, Model, ModelParams, Mtmd, MtmdInput,
    MtmdParams, Sampler, Token, TokenData, TokenDataArray, default_media_marker,
};
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
    ffi::system_info()
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
/// DESKHAND_LLAMA_LOG asks for it. It also gets the lines `ffi::Mtmd::encode_image_chunk`
/// writes around its encode, which are mtmd's own words for the same span.
fn mtmd_log(_level: ffi::LogLevel, line: &str) {
    let now = Instant::now();
    if PRINT_LLAMA_LOG.load(Ordering::Relaxed) {
        eprint!("{line}");
    }
    // A log callback must not unwind into C; a re-entrant borrow is skipped, not a panic.
    IMAGE_LOG.with(|log| {
        if let Ok(mut log) = log.try_borrow_mut() {
            log.read(line, now);
        }
    });
}

/// What mtmd reported on this thread since the last call, and starts counting again.
pub(crate) fn take_image_times() -> ImageTimes {
    IMAGE_LOG.with(|log| {
        log.try_borrow_mut()
            .map(|mut log| std::mem::take(&mut *log).times)
            .unwrap_or_default()
    })
}

/// What mtmd's log said about the images since the last look.
#[derive(Default, Debug, PartialEq)]
pub(crate) struct ImageTimes {
    /// Image slices encoded.
    pub(crate) encodes: usize,
    /// The encoder's own time for them.
    pub(crate) encode_ms: f64,
    /// Decoding their tokens into the cache.
    pub(crate) decode_ms: f64,
}

/// llama.cpp's global state may be initialised only once per process.
pub(crate) fn runtime() -> Result<&'static ffi::Backend, ModelError> {
    static RUNTIME: OnceLock<Result<ffi::Backend, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let mut runtime = ffi::Backend::init().map_err(|e| e.to_string())?;
            // llama.cpp logs every tensor it loads and mtmd every image it encodes; keep that
            // out of the user's terminal unless DESKHAND_LLAMA_LOG asks for it.
            if std::env::var_os("DESKHAND_LLAMA_LOG").is_none() {
                runtime.void_logs();
            } else {
                PRINT_LLAMA_LOG.store(true, Ordering::Relaxed);
            }
            ffi::set_mtmd_log(mtmd_log);
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

/// Says what the engine was doing when llama.cpp failed; other errors pass through.
fn engine(what: &str) -> impl FnOnce(ModelError) -> ModelError + '_ {
    move |e| match e {
        ModelError::Engine(message) => ModelError::Engine(format!("{what}: {message}")),
        other => other,
    }
}

/// Weights loaded once.
pub struct LlamaEngine {
    model: Model,
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
        let params = ModelParams {
            n_gpu_layers: Some(gpu_layers),
        };
        let model = Model::load(runtime, &config.model, &params)?;
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

    pub fn model(&self) -> &Model {
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
        // n_ctx 0 is the model's own length (what llama.cpp makes of 0); flash attention stays
        // llama.cpp's default.
        let params = ContextParams {
            n_ctx: Some(self.config.n_ctx),
            n_batch: Some(self.config.n_batch),
            n_ubatch: Some(self.config.n_ubatch),
            n_threads: Some(self.threads),
            n_threads_batch: Some(self.threads),
            flash_attention: None,
        };
        let ctx = self
            .model
            .new_context(runtime, &params)
            .map_err(engine("cannot create a context"))?;
        let mtmd = match &self.config.mmproj {
            Some(path) => {
                // Everything else (warm-up encode, flash attention, batch limits) stays mtmd's
                // default.
                let params = MtmdParams {
                    use_gpu: GPU_BUILD,
                    print_timings: false,
                    n_threads: self.threads,
                    media_marker: default_media_marker().to_owned(),
                    image_min_tokens: mtmd_limit(self.config.image_min_tokens),
                    image_max_tokens: mtmd_limit(self.config.image_max_tokens),
                    ..MtmdParams::default()
                };
                let mtmd =
                    Mtmd::init_from_file(path, &self.model, &params).map_err(|e| match e {
                        ModelError::Engine(e) => file_error(
                            path,
                            format!(
                                "llama.cpp could not load this vision projector for {}: {e}",
                                self.config.model.display()
                            ),
                        ),
                        other => other,
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
        let grammar = Sampler::grammar(&self.model, &self.family.grammar(), "root")
            .map_err(engine("the family's action grammar does not compile"))?;
        let char_tokens = single_char_tokens(&self.model)?;
        if char_tokens.is_none() {
            tracing::debug!(
                "this vocabulary lacks single-character tokens; grammar forcing is off"
            );
        }
        let vocab = self.model.vocab();
        let mut end_tokens: Vec<Token> = [vocab.eos(), vocab.eot()].into_iter().flatten().collect();
        end_tokens.dedup();
        Ok(LlamaSession {
            engine: self,
            ctx,
            mtmd,
            grammar,
            char_tokens,
            end_tokens,
            cached_prefix: None,
            previous_text_tokens: 0,
            previous_frames: Vec::new(),
            abort: None,
        })
    }
}

/// Longest run of grammar-forced text fed in one batch.
const MAX_FORCED_CHARS: usize = 64;

/// For every printable ASCII character, the vocabulary's single token that spells exactly
/// it; None when some character has none, because forcing is then unsafe (a character the
/// probe cannot see might be the one the grammar also allows).
fn single_char_tokens(model: &Model) -> Result<Option<Vec<(Token, char)>>, ModelError> {
    let vocab = model.vocab();
    let mut probes = Vec::new();
    for c in ' '..='~' {
        let text = c.to_string();
        let tokens = vocab.tokenize(text.as_bytes(), false, false)?;
        match tokens.as_slice() {
            [t] if vocab.token_to_piece(*t, false)? == text.as_bytes() => probes.push((*t, c)),
            _ => return Ok(None),
        }
    }
    Ok(Some(probes))
}

/// The most likely token.
fn greedy(logits: &[f32]) -> Token {
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    Token::new(i32::try_from(best).unwrap_or(0))
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

/// The prefix currently in the KV cache.
struct CachedPrefix {
    text: String,
    /// Position after the prefix (under M-RoPE a position count, not a token count).
    n_past: i32,
    tokens: usize,
}

/// One run's context.
pub struct LlamaSession<'e> {
    engine: &'e LlamaEngine,
    ctx: Context<'e>,
    mtmd: Option<Mtmd<'e>>,
    grammar: Sampler<'e>,
    /// Probes for grammar-forced text; None disables forcing.
    char_tokens: Option<Vec<(Token, char)>>,
    end_tokens: Vec<Token>,
    cached_prefix: Option<CachedPrefix>,
    /// The previous prompt, for counting the tokens a step adds: its text tokens and the
    /// identities of its frames.
    previous_text_tokens: usize,
    previous_frames: Vec<u64>,
    /// The run's abort switch, looked at between prompt pieces and between tokens (an image
    /// encode, one call into llama.cpp, runs to its end).
    abort: Option<AbortSignal>,
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

    /// Forget the cached prefix, so the next step evaluates everything (the benchmark's
    /// full-recompute baseline).
    pub fn forget_prefix(&mut self) {
        self.cached_prefix = None;
    }

    /// Evaluate text (no images) at `n_past` through mtmd, which tokenizes special tokens the
    /// same way as the image path. Returns the new n_past and the token count.
    fn eval_text(
        &mut self,
        text: &str,
        n_past: i32,
        add_special: bool,
    ) -> Result<(i32, usize), ModelError> {
        if text.is_empty() {
            return Ok((n_past, 0));
        }
        let (n_ctx, reply_tokens) = (
            self.ctx.n_ctx() as usize,
            self.engine.config.max_reply_tokens,
        );
        if let Some(mtmd) = self.mtmd.as_mut() {
            let chunks = mtmd
                .tokenize(
                    MtmdInput {
                        text,
                        add_special,
                        parse_special: true,
                    },
                    &[],
                )
                .map_err(engine("tokenizing the prompt"))?;
            let n_tokens = chunks.total_tokens();
            check_room(n_ctx, reply_tokens, n_past, n_tokens)?;
            let n_batch = i32::try_from(self.engine.config.n_batch).unwrap_or(i32::MAX);
            let next = mtmd
                .eval_chunks(&mut self.ctx, &chunks, n_past, 0, n_batch, true)
                .map_err(engine("evaluating the prompt"))?;
            return Ok((next, n_tokens));
        }
        let tokens = self
            .engine
            .model
            .vocab()
            .tokenize(text.as_bytes(), add_special, true)
            .map_err(engine("tokenizing the prompt"))?;
        check_room(n_ctx, reply_tokens, n_past, tokens.len())?;
        let mut n_past = n_past;
        let n_batch = self.engine.config.n_batch as usize;
        for (i, chunk) in tokens.chunks(n_batch.max(1)).enumerate() {
            let last_chunk = (i + 1) * n_batch >= tokens.len();
            let mut batch = Batch::new(chunk.len(), 1).map_err(engine("building a batch"))?;
            for (j, &token) in chunk.iter().enumerate() {
                let logits = last_chunk && j + 1 == chunk.len();
                batch
                    .add(token, n_past, &[0], logits)
                    .map_err(engine("building a batch"))?;
                n_past += 1;
            }
            self.ctx
                .decode(&batch)
                .map_err(engine("evaluating the prompt"))?;
        }
        Ok((n_past, tokens.len()))
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
        let bitmap = Bitmap::from_rgb(w, h, frame.image.as_raw())
            .map_err(engine("passing the frame to llama.cpp"))?;
        let chunks = mtmd
            .tokenize(
                MtmdInput {
                    text: default_media_marker(),
                    add_special: false,
                    parse_special: true,
                },
                &[&bitmap],
            )
            .map_err(engine("tokenizing the image"))?;
        let n_tokens = chunks.total_tokens();
        let image_tokens = chunks
            .iter()
            .filter(|c| c.chunk_type() == ChunkType::Image)
            .map(|c| c.n_tokens())
            .sum();
        let needed = usize::try_from(chunks.total_positions())
            .unwrap_or(n_tokens)
            .max(n_tokens);
        check_room(n_ctx, reply_tokens, n_past, needed)?;
        let n_batch = i32::try_from(self.engine.config.n_batch).unwrap_or(i32::MAX);
        let next = mtmd
            .eval_chunks(&mut self.ctx, &chunks, n_past, 0, n_batch, true)
            .map_err(engine("encoding the image"))?;
        Ok((next, n_tokens, image_tokens))
    }

    /// Evaluate the prompt (reusing the cached prefix when it matches) and decode a reply.
    pub fn generate(&mut self, prompt: &Prompt<'_>) -> Result<Generated, ModelError> {
        let started = Instant::now();
        let family = self.engine.family;
        let frames: Vec<&Frame> = if self.mtmd.is_some() {
            prompt
                .earlier_frames
                .iter()
                .copied()
                .chain(std::iter::once(prompt.frame))
                .collect()
        } else {
            Vec::new()
        };
        let marker = default_media_marker();
        let rendered = family.render(
            &prompt.system,
            &prompt.task,
            &prompt.history,
            frames.len(),
            marker,
        );
        let mut timings = Timings::default();

        // The prefix: reuse it when it is the one in the cache, else evaluate it afresh.
        let prefill_started = Instant::now();
        let mut n_past = match &self.cached_prefix {
            Some(cached) if cached.text == rendered.prefix => {
                self.ctx
                    .memory_seq_rm(Some(0), cached.n_past, None)
                    .map_err(engine("truncating the cache"))?;
                timings.reused_tokens = cached.tokens;
                cached.n_past
            }
            _ => {
                self.ctx.memory_clear();
                self.cached_prefix = None;
                let (n_past, tokens) = self.eval_text(&rendered.prefix, 0, true)?;
                timings.prefill_tokens += tokens;
                self.cached_prefix = Some(CachedPrefix {
                    text: rendered.prefix.clone(),
                    n_past,
                    tokens,
                });
                n_past
            }
        };

        // The rest, image by image: text segments are prefill, images are image encoding.
        let mut image_time = 0.0;
        let mut frame_ids = Vec::with_capacity(frames.len());
        let segments: Vec<&str> = rendered.rest.split(marker).collect();
        if segments.last().is_some_and(|s| s.is_empty()) {
            // mtmd computes no logits for image tokens, so decoding needs text after the last
            // image (every family's template opens the reply turn there).
            return Err(ModelError::Engine(format!(
                "the {} prompt ends with an image; the template must end with text",
                family.id()
            )));
        }
        for (i, segment) in segments.iter().enumerate() {
            self.check_abort()?;
            let (next, tokens) = self.eval_text(segment, n_past, false)?;
            n_past = next;
            timings.prefill_tokens += tokens;
            if let Some(frame) = frames.get(i).filter(|_| i + 1 < segments.len()) {
                self.check_abort()?;
                let image_started = Instant::now();
                take_image_times();
                let (next, tokens, image_tokens) = self.eval_image(frame, n_past)?;
                let ImageTimes {
                    encodes,
                    encode_ms,
                    decode_ms,
                } = take_image_times();
                timings.image_encoder_ms += encode_ms;
                // The image's time, less the part mtmd reports for decoding its tokens into
                // the cache, which is prefill; what remains is preprocessing and encoding.
                let wall = ms(image_started.elapsed());
                let image_prefill = decode_ms.min(wall);
                image_time += wall - image_prefill;
                timings.image_prefill_ms += image_prefill;
                timings.image_encodes += encodes.max(1);
                n_past = next;
                timings.image_tokens += image_tokens;
                timings.prefill_tokens += tokens;
                let id = frame_id(frame);
                if !self.previous_frames.contains(&id) {
                    timings.new_tokens += image_tokens;
                }
                frame_ids.push(id);
            }
        }
        timings.image_encode_ms = image_time;
        timings.prefill_ms = ms(prefill_started.elapsed()) - image_time;
        // Text is append-only from step to step (the history grows at the end), so the text
        // not in the previous prompt is what it grew by.
        let text_tokens =
            (timings.prefill_tokens + timings.reused_tokens).saturating_sub(timings.image_tokens);
        timings.new_tokens += text_tokens.saturating_sub(self.previous_text_tokens);
        self.previous_text_tokens = text_tokens;
        self.previous_frames = frame_ids;

        let decode_started = Instant::now();
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
        let mut batch = Batch::new(1, 1).map_err(engine("building a batch"))?;
        while timings.decode_tokens < self.engine.config.max_reply_tokens {
            self.check_abort()?;
            let forced = self.forced_tokens()?;
            if !forced.is_empty() {
                // Text the grammar leaves no choice about goes in as one batch, unsampled.
                let mut many = Batch::new(forced.len(), 1).map_err(engine("building a batch"))?;
                for (i, &token) in forced.iter().enumerate() {
                    vocab
                        .token_to_piece_into(token, &mut bytes, false)
                        .map_err(engine("decoding"))?;
                    many.add(token, n_past, &[0], i + 1 == forced.len())
                        .map_err(engine("building a batch"))?;
                    n_past += 1;
                }
                self.ctx.decode(&many).map_err(engine("decoding"))?;
                timings.decode_tokens += forced.len();
                timings.forced_tokens += forced.len();
            }
            let token = self.pick()?;
            if vocab.is_eog(token) {
                return Ok(String::from_utf8_lossy(&bytes).into_owned());
            }
            self.grammar.accept(token).map_err(engine("decoding"))?;
            vocab
                .token_to_piece_into(token, &mut bytes, false)
                .map_err(engine("decoding"))?;
            timings.decode_tokens += 1;
            batch.clear();
            batch
                .add(token, n_past, &[0], true)
                .map_err(engine("building a batch"))?;
            self.ctx.decode(&batch).map_err(engine("decoding"))?;
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
    fn forced_tokens(&mut self) -> Result<Vec<Token>, ModelError> {
        let Some(probes) = &self.char_tokens else {
            return Ok(Vec::new());
        };
        let vocab = self.engine.model.vocab();
        let mut text = String::new();
        let mut char_tokens = Vec::new();
        while text.len() < MAX_FORCED_CHARS {
            let mut candidates: Vec<TokenData> = probes
                .iter()
                .map(|&(t, _)| TokenData::new(t, 0.0, 0.0))
                .collect();
            candidates.extend(self.end_tokens.iter().map(|&t| TokenData::new(t, 0.0, 0.0)));
            let mut array = TokenDataArray::new(candidates, false);
            self.grammar
                .apply(&mut array)
                .map_err(engine("forcing grammar text"))?;
            let mut allowed = array.data().iter().filter(|d| d.logit().is_finite());
            let (Some(only), None) = (allowed.next(), allowed.next()) else {
                break;
            };
            let Some(&(token, c)) = probes.iter().find(|(t, _)| *t == only.id()) else {
                break; // the reply may end here: the model decides
            };
            self.grammar
                .accept(token)
                .map_err(engine("forcing grammar text"))?;
            text.push(c);
            char_tokens.push(token);
        }
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let natural = vocab
            .tokenize(text.as_bytes(), false, false)
            .map_err(engine("forcing grammar text"))?;
        let mut spelled = Vec::new();
        for &t in &natural {
            vocab
                .token_to_piece_into(t, &mut spelled, false)
                .map_err(engine("forcing grammar text"))?;
        }
        Ok(if spelled == text.as_bytes() {
            natural
        } else {
            char_tokens
        })
    }

    /// The next token: the model's greedy choice if the grammar allows it, else the best
    /// token the grammar allows.
    fn pick(&mut self) -> Result<Token, ModelError> {
        // -1 is llama.cpp's index of the last output, which is where the logits are after
        // both the prompt and each one-token batch.
        let index = -1;
        let greedy = greedy(self.ctx.logits_ith(index).map_err(engine("decoding"))?);
        let mut single = TokenDataArray::new(vec![TokenData::new(greedy, 0.0, 0.0)], false);
        self.grammar
            .apply(&mut single)
            .map_err(engine("decoding"))?;
        if single.data().first().is_some_and(|d| d.logit().is_finite()) {
            return Ok(greedy);
        }
        let mut all = self
            .ctx
            .token_data_array_ith(index)
            .map_err(engine("decoding"))?;
        self.grammar.apply(&mut all).map_err(engine("decoding"))?;
        // Accepting a token the grammar rejects is an error, so an empty choice must stop here.
        all.data()
            .iter()
            .filter(|d| d.logit().is_finite())
            .max_by(|a, b| a.logit().total_cmp(&b.logit()))
            .map(TokenData::id)
            .ok_or_else(|| ModelError::Engine("the action grammar allows no next token".into()))
    }
}

/// Raw engine speed, for `deskhand bench model`.
impl LlamaSession<'_> {
    /// Evaluate `n_tokens` prompt tokens in one go from an empty cache; returns the time.
    pub fn bench_prefill(&mut self, n_tokens: usize) -> Result<std::time::Duration, ModelError> {
        let tokens = self.bench_tokens(n_tokens)?;
        self.ctx.memory_clear();
        self.cached_prefix = None;
        let started = Instant::now();
        let n_batch = (self.engine.config.n_batch as usize).max(1);
        let mut n_past = 0;
        for (i, chunk) in tokens.chunks(n_batch).enumerate() {
            let last_chunk = (i + 1) * n_batch >= tokens.len();
            let mut batch = Batch::new(chunk.len(), 1).map_err(engine("building a batch"))?;
            for (j, &token) in chunk.iter().enumerate() {
                batch
                    .add(token, n_past, &[0], last_chunk && j + 1 == chunk.len())
                    .map_err(engine("building a batch"))?;
                n_past += 1;
            }
            self.ctx
                .decode(&batch)
                .map_err(engine("evaluating the prompt"))?;
        }
        Ok(started.elapsed())
    }

    /// Decode `n_tokens` one at a time after a short prompt, greedily and without stopping at
    /// end tokens; returns the time of the decode alone.
    pub fn bench_decode(&mut self, n_tokens: usize) -> Result<std::time::Duration, ModelError> {
        let prompt = self.bench_tokens(16)?;
        self.bench_prefill(prompt.len())?;
        let start = i32::try_from(prompt.len()).unwrap_or(16);
        let end = start.saturating_add(i32::try_from(n_tokens).unwrap_or(i32::MAX));
        let mut batch = Batch::new(1, 1).map_err(engine("building a batch"))?;
        let started = Instant::now();
        for n_past in start..end {
            let next = greedy(self.ctx.logits_ith(-1).map_err(engine("decoding"))?);
            batch.clear();
            batch
                .add(next, n_past, &[0], true)
                .map_err(engine("building a batch"))?;
            self.ctx.decode(&batch).map_err(engine("decoding"))?;
        }
        Ok(started.elapsed())
    }

    /// Ordinary text tokens to time the engine with (llama-bench uses random ones; any
    /// tokens cost the same).
    fn bench_tokens(&self, n: usize) -> Result<Vec<Token>, ModelError> {
        let text = "Open the settings window, find the network section and turn on the proxy. ";
        let vocab = self.engine.model.vocab();
        let mut tokens = vocab
            .tokenize(text.as_bytes(), false, false)
            .map_err(engine("tokenizing"))?;
        if tokens.is_empty() {
            tokens.push(Token::new(1));
        }
        Ok(tokens.iter().copied().cycle().take(n).collect())
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
