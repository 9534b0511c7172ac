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

use super::conversation::{Piece, Rendered, TurnView};
use super::family::{Family, FamilyId};
use super::ffi::{
    self, Batch, Bitmap, ChunkType, Context, ContextParams, ImageEmbedding, Model, ModelParams,
    Mtmd, MtmdInput, MtmdParams, Sampler, Token, TokenData, TokenDataArray, default_media_marker,
};
use super::kv::{CacheLine, Unit};
use super::template::ChatTemplate;
use super::{Backend, ModelError, Prompt, Reply, Timings, UnusableReply, ms};
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
    /// Longest reply in tokens: the thought budget plus the longest action the grammars allow
    /// (500 characters to type) at about a token and a half a character. Only a model that
    /// spends more tokens a character than that (byte by byte) reaches it, and gets an error.
    pub max_reply_tokens: usize,
    /// Tokens of thought before the action: when a reply's thought reaches it, the family's
    /// text that ends a thought is fed ("\nAction: " for UI-TARS) and the action follows. The
    /// models write thoughts of their trained length; this only bounds a rambling one.
    pub max_thought_tokens: usize,
    /// Render the conversation with the chat template the model file carries, where it has
    /// one that renders it faithfully; false always uses the family's built-in layout.
    pub model_template: bool,
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
            max_reply_tokens: 1024,
            max_thought_tokens: 256,
            model_template: true,
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
/// The chat template `model` carries, compiled, with its BOS and EOS texts; None (and a
/// warning naming the file) when it has none or it does not compile.
fn model_template(model: &Model, path: &Path) -> Option<ChatTemplate> {
    let source = model.chat_template()?;
    let vocab = model.vocab();
    let text = |token: Option<Token>| {
        token
            .and_then(|t| vocab.token_to_piece(t, true).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    };
    match ChatTemplate::new(&source, &text(vocab.bos()), &text(vocab.eos())) {
        Ok(template) => Some(template),
        Err(e) => {
            tracing::warn!(
                "{}: {e}; the family's built-in layout is used instead",
                path.display()
            );
            None
        }
    }
}

pub struct LlamaEngine {
    model: Model,
    config: EngineConfig,
    family: &'static dyn Family,
    /// The model file's own chat template, compiled; None renders the family's layout.
    template: Option<ChatTemplate>,
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
        let template = if config.model_template {
            model_template(&model, &config.model)
        } else {
            None
        };
        tracing::info!(
            "prompts are laid out with {}",
            if template.is_some() {
                "the model file's own chat template"
            } else {
                "the family's built-in layout"
            }
        );
        Ok(Self {
            model,
            family: config.family.family(),
            template,
            config,
            threads,
        })
    }

    /// Where the prompt's layout comes from, for logs and reports.
    pub fn layout_source(&self) -> &'static str {
        if self.template.is_some() {
            "the model's own chat template"
        } else {
            "the family's built-in layout"
        }
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
            cache: CacheLine::default(),
            kept: std::collections::HashMap::new(),
            previous_text_tokens: 0,
            previous_frames: Vec::new(),
            left_out_turns: 0,
            template_warnings: TemplateWarnings::default(),
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

/// Decode `tokens` into sequence 0 from position `start`, `n_batch` at a time, with logits for
/// the last one; looks at `abort` between batches.
fn decode_tokens(
    ctx: &mut Context<'_>,
    tokens: &[Token],
    start: i32,
    n_batch: usize,
    abort: Option<&AbortSignal>,
) -> Result<(), ModelError> {
    let n_batch = n_batch.max(1);
    let mut pos = start;
    for (i, chunk) in tokens.chunks(n_batch).enumerate() {
        if abort.is_some_and(|a| a.reason().is_some()) {
            return Err(ModelError::Aborted);
        }
        let last_chunk = (i + 1) * n_batch >= tokens.len();
        let mut batch = Batch::new(chunk.len(), 1).map_err(engine("building a batch"))?;
        for (j, &token) in chunk.iter().enumerate() {
            batch
                .add(token, pos, &[0], last_chunk && j + 1 == chunk.len())
                .map_err(engine("building a batch"))?;
            pos += 1;
        }
        ctx.decode(&batch)
            .map_err(engine("evaluating the prompt"))?;
    }
    Ok(())
}

/// A screenshot as mtmd tokenized it, through the vision encoder once: the text tokens mtmd
/// puts around it (the model's image delimiters) and the encoder's output, which decodes into
/// the cache again at any position without another pass through the encoder.
struct KeptImage {
    parts: Vec<KeptPart>,
    /// Every token it puts in the cache, delimiters included.
    tokens: usize,
    image_tokens: usize,
}

enum KeptPart {
    Text(Vec<Token>),
    Image(ImageEmbedding),
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

/// One run's context.
pub struct LlamaSession<'e> {
    engine: &'e LlamaEngine,
    ctx: Context<'e>,
    mtmd: Option<Mtmd<'e>>,
    grammar: Sampler<'e>,
    /// Probes for grammar-forced text; None disables forcing.
    char_tokens: Option<Vec<(Token, char)>>,
    end_tokens: Vec<Token>,
    /// What the KV cache holds: the last prompt and the reply decoded after it.
    cache: CacheLine,
    /// The screenshots of the conversation, each encoded once, by frame id.
    kept: std::collections::HashMap<u64, KeptImage>,
    /// The previous prompt, for counting the tokens a step adds: its text tokens and the
    /// identities of its frames.
    previous_text_tokens: usize,
    previous_frames: Vec<u64>,
    /// The oldest turns left out of the prompt because the context was full.
    left_out_turns: usize,
    /// What the model's chat template has been warned about, so each is said once a session.
    template_warnings: TemplateWarnings,
    /// What the cache may keep from step to step.
    reuse: Reuse,
    /// The tokens the last image evaluated took.
    last_image_tokens: Option<usize>,
    /// The run's abort switch, looked at between prompt pieces and between tokens (an image
    /// encode, one call into llama.cpp, runs to its end).
    abort: Option<AbortSignal>,
}

/// The warnings about a model's chat template a session has given.
#[derive(Default)]
struct TemplateWarnings {
    /// It could not render a conversation; the built-in layout took over.
    refused: bool,
    /// A step's rendering did not extend the previous one.
    not_extending: bool,
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

    /// Forget what the cache holds and every kept screenshot, so the next step evaluates and
    /// encodes its whole prompt (the benchmarks' full-recompute baseline).
    pub fn forget_cache(&mut self) {
        self.ctx.memory_clear();
        self.cache.clear();
        self.kept.clear();
    }

    /// What the KV cache holds, unit by unit: the last prompt and the reply decoded after it.
    pub fn cache_units(&self) -> &[Unit] {
        self.cache.units()
    }

    /// The units `prompt` tokenizes into now, as the next `generate` will evaluate them.
    pub fn prompt_units(&mut self, prompt: &Prompt<'_>) -> Result<Vec<Unit>, ModelError> {
        Ok(self.fitted(prompt)?.0.into_iter().map(|(u, _)| u).collect())
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
        let tokens = |t: &str, bos: bool, special: bool| {
            vocab
                .tokenize(t.as_bytes(), bos, special)
                .map_err(engine("tokenizing the prompt"))
        };
        let as_units = |tokens: Vec<Token>| tokens.into_iter().map(|t| (Unit::Token(t.0), None));
        // The BOS token, where the model has one, comes from the tokenizer, not the text.
        let mut units: PromptUnits<'p> = as_units(tokens("", true, true)?).collect();
        for piece in &rendered.pieces {
            match piece {
                Piece::Markup(t) => units.extend(as_units(tokens(t, false, true)?)),
                Piece::Content(t) => units.extend(as_units(tokens(t, false, false)?)),
                Piece::Image { turn } if self.mtmd.is_some() => {
                    let frame = prompt.frame_of(first_turn + turn).ok_or_else(|| {
                        ModelError::Engine(format!("the prompt has no frame for turn {turn}"))
                    })?;
                    units.push((Unit::Image(super::frame_id(frame)), Some(frame)));
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
        let wanted: Vec<Unit> = units.iter().map(|(u, _)| *u).collect();
        let shared = self.cache.shared(&wanted);
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

    /// `turns` rendered with the model's chat template where it renders them faithfully,
    /// else (with a warning, once) with the family's built-in layout.
    fn render(&mut self, system: &str, task: &str, turns: &[TurnView<'_>]) -> Rendered {
        let family = self.engine.family;
        let messages = family.messages(system, task, turns);
        if let Some(template) = &self.engine.template {
            match template.render(&messages, default_media_marker()) {
                Ok(rendered) => {
                    self.check_extends(template, system, task, turns, &rendered);
                    return rendered;
                }
                Err(e) => {
                    if !self.template_warnings.refused {
                        tracing::warn!(
                            "{}: {e}; this step and any like it use the family's built-in layout",
                            self.engine.config.model.display()
                        );
                        self.template_warnings.refused = true;
                    }
                }
            }
        }
        family.layout().render(&messages)
    }

    /// Warns (once) when the template renders the conversation so that it does not extend
    /// the previous step's rendering: the cache keeps only what the two share, so each step
    /// then re-evaluates from the first difference, not only what is new. The previous step
    /// is rendered again with today's screenshots, so an eviction is not a difference.
    fn check_extends(
        &mut self,
        template: &ChatTemplate,
        system: &str,
        task: &str,
        turns: &[TurnView<'_>],
        rendered: &Rendered,
    ) {
        if self.template_warnings.not_extending || turns.len() < 2 {
            return;
        }
        let mut previous = turns[..turns.len() - 1].to_vec();
        if let Some(last) = previous.last_mut() {
            last.reply = None;
        }
        let messages = self.engine.family.messages(system, task, &previous);
        let Ok(before) = template.render(&messages, default_media_marker()) else {
            return;
        };
        let marker = default_media_marker();
        let (before, now) = (before.text(marker), rendered.text(marker));
        if !now.starts_with(&before) {
            let at = before
                .char_indices()
                .zip(now.chars())
                .find(|((_, a), b)| a != b)
                .map_or(before.len(), |((i, _), _)| i);
            tracing::warn!(
                "{}: the model's chat template rewrites earlier turns when a step is added \
                 (the text differs from character {at} on: {:?} became {:?}); each step \
                 re-evaluates from there instead of only what is new",
                self.engine.config.model.display(),
                before
                    .get(at..)
                    .unwrap_or_default()
                    .chars()
                    .take(40)
                    .collect::<String>(),
                now.get(at..)
                    .unwrap_or_default()
                    .chars()
                    .take(40)
                    .collect::<String>(),
            );
            self.template_warnings.not_extending = true;
        }
    }

    /// The conversation rendered to fit the context with room for a reply. When it does not
    /// fit, the oldest turns are left out (the task stays, at the top of the first turn kept),
    /// enough of them that the prompt fills at most half the context: it can then grow for
    /// many steps before the next cut, which re-evaluates everything.
    fn fitted<'p>(&mut self, prompt: &Prompt<'p>) -> Result<(PromptUnits<'p>, usize), ModelError> {
        let turns = prompt.turns();
        let n_ctx = self.ctx.n_ctx() as usize;
        let room = n_ctx.saturating_sub(self.engine.config.max_reply_tokens);
        let mut skip = self.left_out_turns.min(turns.len().saturating_sub(1));
        let mut target = room;
        loop {
            let rendered = self.render(&prompt.system, &prompt.task, &turns[skip..]);
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

    /// Evaluate `tokens` at the end of the cache in batches, with logits for the last one.
    fn eval_tokens(&mut self, tokens: &[Token]) -> Result<(), ModelError> {
        let n_ctx = self.ctx.n_ctx() as usize;
        let start = self.cache.end();
        check_room(
            n_ctx,
            self.engine.config.max_reply_tokens,
            start,
            tokens.len(),
        )?;
        decode_tokens(
            &mut self.ctx,
            tokens,
            start,
            self.engine.config.n_batch as usize,
            self.abort.as_ref(),
        )?;
        for &token in tokens {
            self.cache.push_token(token.0);
        }
        Ok(())
    }

    /// Run `frame` through mtmd's preprocessing and the vision encoder, once.
    fn encode_image(&mut self, frame: &Frame) -> Result<KeptImage, ModelError> {
        let mtmd = self
            .mtmd
            .as_mut()
            .ok_or_else(|| ModelError::Engine("an image, but no projector".into()))?;
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
        let mut kept = KeptImage {
            parts: Vec::new(),
            tokens: chunks.total_tokens(),
            image_tokens: 0,
        };
        for chunk in chunks.iter() {
            match chunk.chunk_type() {
                ChunkType::Text => kept
                    .parts
                    .push(KeptPart::Text(chunk.text_tokens().to_vec())),
                ChunkType::Image => {
                    kept.image_tokens += chunk.n_tokens();
                    let embedding = mtmd
                        .encode_image_chunk(chunk)
                        .map_err(engine("encoding the image"))?;
                    kept.parts.push(KeptPart::Image(embedding));
                }
                other => {
                    return Err(ModelError::Engine(format!(
                        "mtmd gave a {other:?} chunk for a screenshot"
                    )));
                }
            }
        }
        Ok(kept)
    }

    /// Put screenshot `id` at the end of the cache: from its kept encoding, or encoded now and
    /// kept while it stays in the conversation.
    fn eval_image(
        &mut self,
        id: u64,
        frame: &Frame,
        timings: &mut Timings,
    ) -> Result<(), ModelError> {
        if !self.kept.contains_key(&id) {
            let started = Instant::now();
            take_image_times();
            let kept = self.encode_image(frame)?;
            let ImageTimes {
                encodes, encode_ms, ..
            } = take_image_times();
            timings.image_encode_ms += ms(started.elapsed());
            timings.image_encoder_ms += encode_ms;
            timings.image_encodes += encodes.max(1);
            self.kept.insert(id, kept);
        }
        let Self {
            kept,
            mtmd,
            ctx,
            cache,
            engine: e,
            abort,
            ..
        } = self;
        let (Some(image), Some(mtmd)) = (kept.get(&id), mtmd.as_mut()) else {
            return Err(ModelError::Engine("the screenshot was not kept".into()));
        };
        let start = cache.end();
        let needed = image.tokens.max(
            image
                .parts
                .iter()
                .map(|p| match p {
                    KeptPart::Text(t) => t.len(),
                    KeptPart::Image(i) => usize::try_from(i.n_positions()).unwrap_or(0),
                })
                .sum(),
        );
        check_room(
            ctx.n_ctx() as usize,
            e.config.max_reply_tokens,
            start,
            needed,
        )?;
        let started = Instant::now();
        let n_batch = (e.config.n_batch as usize).max(1);
        let mut n_past = start;
        for part in &image.parts {
            match part {
                KeptPart::Text(tokens) => {
                    decode_tokens(ctx, tokens, n_past, n_batch, abort.as_ref())?;
                    n_past += i32::try_from(tokens.len()).unwrap_or(i32::MAX);
                }
                KeptPart::Image(embedding) => {
                    n_past = mtmd
                        .decode_image_embedding(
                            ctx,
                            embedding,
                            n_past,
                            0,
                            i32::try_from(n_batch).unwrap_or(i32::MAX),
                        )
                        .map_err(engine("decoding the image"))?;
                }
            }
        }
        timings.image_prefill_ms += ms(started.elapsed());
        timings.image_tokens += image.image_tokens;
        timings.prefill_tokens += image.tokens;
        cache.push_image(id, n_past - start, image.tokens);
        self.last_image_tokens = Some(image.tokens);
        if self.reuse == Reuse::PrefixOnly {
            // The design before the conversation encoded every screenshot of the prompt, even
            // two with the same pixels.
            self.kept.remove(&id);
        }
        Ok(())
    }

    /// Evaluate the prompt, reusing what the cache shares with it, and decode a reply.
    pub fn generate(&mut self, prompt: &Prompt<'_>) -> Result<Generated, ModelError> {
        let started = Instant::now();
        let mut timings = Timings::default();
        let (units, skipped) = self.fitted(prompt)?;
        timings.left_out_turns = skipped;
        let wanted: Vec<Unit> = units.iter().map(|(u, _)| *u).collect();
        let mut shared = self.cache.shared(&wanted);
        if self.reuse == Reuse::PrefixOnly {
            let first_image = wanted.iter().position(|u| matches!(u, Unit::Image(_)));
            shared = shared.min(first_image.unwrap_or(shared));
            self.kept.clear();
        }
        let cut = self.cache.truncate(shared);
        self.ctx
            .memory_seq_rm(Some(0), cut, None)
            .map_err(engine("truncating the cache"))?;
        timings.reused_tokens = self.cache.tokens_before(shared);

        // The rest: runs of tokens are prefill; images come from their kept encodings, or
        // are encoded now.
        let mut text_tokens = wanted[..shared]
            .iter()
            .filter(|u| matches!(u, Unit::Token(_)))
            .count();
        let mut i = shared;
        while i < units.len() {
            self.check_abort()?;
            let run: Vec<Token> = units[i..]
                .iter()
                .map_while(|(u, _)| match u {
                    Unit::Token(t) => Some(Token::new(*t)),
                    Unit::Image(_) => None,
                })
                .collect();
            if !run.is_empty() {
                self.eval_tokens(&run)?;
                timings.prefill_tokens += run.len();
                text_tokens += run.len();
                i += run.len();
                continue;
            }
            let (Unit::Image(id), Some(frame)) = units[i] else {
                return Err(ModelError::Engine("an image unit without its frame".into()));
            };
            let before = timings.prefill_tokens;
            self.eval_image(id, frame, &mut timings)?;
            // New unless the previous prompt showed these pixels as often: the same screen
            // again in a new turn is new to the conversation.
            let shown = |ids: &mut dyn Iterator<Item = u64>| ids.filter(|f| *f == id).count();
            let now = shown(&mut wanted[..=i].iter().filter_map(|u| match u {
                Unit::Image(f) => Some(*f),
                Unit::Token(_) => None,
            }));
            if now > shown(&mut self.previous_frames.iter().copied()) {
                timings.new_tokens += timings.prefill_tokens - before;
            }
            i += 1;
        }
        // The cache now holds exactly the prompt, as a fresh tokenization gives it.
        debug_assert_eq!(self.cache.units(), wanted.as_slice());
        let frame_ids: Vec<u64> = wanted
            .iter()
            .filter_map(|u| match u {
                Unit::Image(id) => Some(*id),
                Unit::Token(_) => None,
            })
            .collect();
        // Screenshots that left the conversation need not be kept.
        self.kept.retain(|id, _| frame_ids.contains(id));
        timings.prefill_ms = ms(started.elapsed()) - timings.image_encode_ms;
        // The conversation grows at its end, so the text not in the previous prompt is what
        // it grew by.
        timings.new_tokens += text_tokens.saturating_sub(self.previous_text_tokens);
        self.previous_text_tokens = text_tokens;
        self.previous_frames = frame_ids;

        let decode_started = Instant::now();
        let n_past = self.cache.end();
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
        let mut batch = Batch::new(1, 1).map_err(engine("building a batch"))?;
        while timings.decode_tokens < self.engine.config.max_reply_tokens {
            self.check_abort()?;
            let mut forced = self.forced_tokens()?;
            if forced.is_empty()
                && !timings.thought_cut
                && timings.decode_tokens >= self.engine.config.max_thought_tokens
            {
                let so_far = String::from_utf8_lossy(&bytes);
                if let Some(close) = self.engine.family.close_thought(&so_far) {
                    forced = self.force_text(close)?;
                    timings.thought_cut = true;
                }
            }
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

    /// `text` as the model's tokens, each accepted by the grammar, as far as the grammar
    /// allows it (the caller feeds them as forced tokens).
    fn force_text(&mut self, text: &str) -> Result<Vec<Token>, ModelError> {
        let tokens = self
            .engine
            .model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .map_err(engine("ending the thought"))?;
        let mut accepted = Vec::new();
        for token in tokens {
            let mut single = TokenDataArray::new(vec![TokenData::new(token, 0.0, 0.0)], false);
            self.grammar
                .apply(&mut single)
                .map_err(engine("ending the thought"))?;
            if !single.data().first().is_some_and(|d| d.logit().is_finite()) {
                break;
            }
            self.grammar
                .accept(token)
                .map_err(engine("ending the thought"))?;
            accepted.push(token);
        }
        Ok(accepted)
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
        self.cache.clear();
        let started = Instant::now();
        decode_tokens(
            &mut self.ctx,
            &tokens,
            0,
            self.engine.config.n_batch as usize,
            None,
        )?;
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
        let unusable = |error: ModelError, generated: Generated| {
            ModelError::Unusable(Box::new(UnusableReply {
                raw: generated.text,
                timings: generated.timings,
                error,
            }))
        };
        let parsed = match self.engine.family.parse(&generated.text) {
            Ok(parsed) => parsed,
            Err(e) => return Err(unusable(e.into(), generated)),
        };
        let action = match parsed.action.to_action(&prompt.frame.map) {
            Ok(action) => action,
            Err(e) => return Err(unusable(e.into(), generated)),
        };
        Ok(Reply {
            raw: generated.text,
            thought: parsed.thought,
            action,
            intent: parsed.intent,
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
