//! deskhand's own safe layer over llama.cpp's C API (`llama-cpp-sys-2`, the vendored b11434).
//!
//! deskhand talks to the raw bindings instead of a safe wrapper crate because the next step of
//! the engine needs what those crates keep private: the `llama_context`, `llama_model` and
//! `mtmd_context` pointers, to encode a screenshot through the vision encoder once
//! ([`Mtmd::encode_image_chunk`]) and later prefill its tokens again from the kept embedding
//! ([`Mtmd::decode_image_embedding`]) when the KV cache must be rebuilt (M-RoPE positions
//! cannot be shifted).
//!
//! The layer is thin: one Rust type per llama.cpp object, freed on drop, and methods that map
//! one to one onto C calls. What it adds is what C leaves to the caller:
//! - lifetimes: a [`Context`], an [`Mtmd`] and a grammar [`Sampler`] borrow the [`Model`] they
//!   read, so none can outlive it; a [`Chunk`] borrows the [`Chunks`] that own it;
//! - checks before every call that would otherwise read out of bounds, throw a C++ exception
//!   across the FFI boundary or abort: token ids against the vocabulary, batch capacity,
//!   `n_batch > 0`, that a context and a projector belong to the same model, embedding sizes;
//! - errors as [`ModelError`], never a panic on what llama.cpp or the input decides.

use std::ffi::{CStr, CString, c_char, c_void};
use std::marker::PhantomData;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use llama_cpp_sys_2 as sys;

use super::ModelError;

fn engine_error(message: impl Into<String>) -> ModelError {
    ModelError::Engine(message.into())
}

fn file_error(path: &Path, problem: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// llama.cpp takes file names as UTF-8 C strings.
fn path_cstring(path: &Path) -> Result<CString, ModelError> {
    let text = path
        .to_str()
        .ok_or_else(|| file_error(path, "the path is not UTF-8"))?;
    CString::new(text).map_err(|_| file_error(path, "the path contains a NUL byte"))
}

// ---------------------------------------------------------------------------------------------
// Backend, logs and global facts

/// Proof that llama.cpp's global state (`llama_backend_init`) is set up. Loading a model takes
/// one, so nothing can run before it. It is never torn down: llama.cpp's backend may be
/// initialised once per process, and keeping it for the process's life costs nothing.
#[derive(Debug)]
pub struct Backend {
    _private: (),
}

static BACKEND_INITIALISED: AtomicBool = AtomicBool::new(false);

impl Backend {
    /// Initialises llama.cpp. A second call in the same process is an error: keep the first
    /// `Backend` (deskhand keeps it in a `OnceLock`).
    pub fn init() -> Result<Backend, ModelError> {
        if BACKEND_INITIALISED.swap(true, Ordering::SeqCst) {
            return Err(engine_error(
                "llama.cpp's backend is already initialised in this process",
            ));
        }
        // SAFETY: called once per process (guarded above), before any other llama.cpp call
        // made through this module.
        unsafe { sys::llama_backend_init() };
        Ok(Backend { _private: () })
    }

    /// Drops every line llama.cpp's core (model loading, contexts, ggml) would log.
    pub fn void_logs(&mut self) {
        // SAFETY: installs a callback that ignores all its arguments; the null user data is
        // never read.
        unsafe { sys::llama_log_set(Some(void_log), std::ptr::null_mut()) };
    }
}

unsafe extern "C" fn void_log(
    _level: sys::ggml_log_level,
    _text: *const c_char,
    _data: *mut c_void,
) {
}

/// The level of a log line, as ggml numbers them.
pub type LogLevel = sys::ggml_log_level;
/// ggml's level for informational lines (mtmd's timing lines are at this level).
pub const LOG_LEVEL_INFO: LogLevel = sys::GGML_LOG_LEVEL_INFO;

/// Receives each line mtmd (the projector and its helpers) logs, on the thread that called
/// into mtmd, with its trailing newline.
pub type LogSink = fn(LogLevel, &str);

/// Where mtmd's lines go; a plain function pointer, so the C callback needs no user data.
static MTMD_LOG_SINK: RwLock<Option<LogSink>> = RwLock::new(None);

/// Sends mtmd's log (the projector, the image encoder and the eval helpers) to `sink`, and
/// also the lines [`Mtmd::encode_image_chunk`] writes in the same words mtmd's own eval helper
/// uses, so a reader of the log sees one encode the same way on either path.
pub fn set_mtmd_log(sink: LogSink) {
    if let Ok(mut slot) = MTMD_LOG_SINK.write() {
        *slot = Some(sink);
    }
    // SAFETY: installs a callback that reads only its level and text arguments (the text is
    // checked for null); the null user data is never read.
    unsafe { sys::mtmd_helper_log_set(Some(mtmd_log_trampoline), std::ptr::null_mut()) };
}

unsafe extern "C" fn mtmd_log_trampoline(
    level: sys::ggml_log_level,
    text: *const c_char,
    _data: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: mtmd passes a NUL-terminated string that stays valid for the call.
    let line = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    emit_mtmd_log(level, &line);
}

fn emit_mtmd_log(level: LogLevel, line: &str) {
    // A poisoned lock only means a sink panicked once; the stored pointer is still whole.
    let sink = match MTMD_LOG_SINK.read() {
        Ok(slot) => *slot,
        Err(poisoned) => *poisoned.into_inner(),
    };
    if let Some(sink) = sink {
        sink(level, line);
    }
}

/// llama.cpp's own account of what it was built with and can use ("AVX512 = 1 | AMX_INT8 = 0
/// | ..."), per backend.
pub fn system_info() -> String {
    // SAFETY: llama.cpp returns a pointer to a static NUL-terminated string (or null).
    let text = unsafe { sys::llama_print_system_info() };
    if text.is_null() {
        return String::new();
    }
    // SAFETY: checked non-null above; the string is static and NUL-terminated.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

/// The text mtmd replaces with an image when it tokenizes a prompt (`<__media__>`).
pub fn default_media_marker() -> &'static str {
    const FALLBACK: &str = "<__media__>";
    // SAFETY: mtmd returns a pointer to a static NUL-terminated string literal.
    let marker = unsafe { sys::mtmd_default_marker() };
    if marker.is_null() {
        return FALLBACK;
    }
    // SAFETY: checked non-null above; the literal lives for the whole program.
    let marker: &'static CStr = unsafe { CStr::from_ptr(marker) };
    marker.to_str().unwrap_or(FALLBACK)
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// A token id of a model's vocabulary.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub sys::llama_token);

impl Token {
    pub const fn new(id: i32) -> Self {
        Token(id)
    }
}

// ---------------------------------------------------------------------------------------------
// Model and vocabulary

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct ModelParams {
    /// Layers to offload to the GPU; None keeps llama.cpp's default.
    pub n_gpu_layers: Option<u32>,
}

/// Loaded weights and vocabulary (`llama_model`), freed on drop.
#[derive(Debug)]
pub struct Model {
    raw: NonNull<sys::llama_model>,
    vocab: NonNull<sys::llama_vocab>,
}

// SAFETY: llama.cpp does not tie a model to the thread that loaded it.
unsafe impl Send for Model {}
// SAFETY: after loading, every llama.cpp function this module calls with a model treats it as
// read-only (they take `const llama_model *`; `llama_init_from_model` takes a non-const
// pointer but hands it to a constructor that takes `const llama_model &`), so shared use from
// several threads only reads.
unsafe impl Sync for Model {}

impl Model {
    /// Loads a GGUF model. `_backend` proves llama.cpp is initialised.
    pub fn load(
        _backend: &Backend,
        path: &Path,
        params: &ModelParams,
    ) -> Result<Model, ModelError> {
        let c_path = path_cstring(path)?;
        // SAFETY: returns a plain struct of defaults.
        let mut raw_params = unsafe { sys::llama_model_default_params() };
        if let Some(layers) = params.n_gpu_layers {
            // "All of them" is any number past the model's layer count.
            raw_params.n_gpu_layers = i32::try_from(layers).unwrap_or(i32::MAX);
        }
        // SAFETY: the path is a valid NUL-terminated string that outlives the call; the
        // parameters are llama.cpp's defaults with a plain integer changed, and their pointer
        // fields are the defaults' nulls.
        let raw = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), raw_params) };
        let raw =
            NonNull::new(raw).ok_or_else(|| file_error(path, "llama.cpp could not load it"))?;
        // SAFETY: `raw` is a model just loaded; the vocabulary lives inside it.
        let vocab = unsafe { sys::llama_model_get_vocab(raw.as_ptr()) };
        let Some(vocab) = NonNull::new(vocab.cast_mut()) else {
            // SAFETY: `raw` came from llama_model_load_from_file and is freed once, here.
            unsafe { sys::llama_model_free(raw.as_ptr()) };
            return Err(file_error(path, "llama.cpp loaded it without a vocabulary"));
        };
        Ok(Model { raw, vocab })
    }

    pub fn vocab(&self) -> Vocab<'_> {
        Vocab {
            raw: self.vocab,
            _model: PhantomData,
        }
    }

    /// The model's hidden width.
    pub fn n_embd(&self) -> i32 {
        // SAFETY: `self.raw` is a live model.
        unsafe { sys::llama_model_n_embd(self.raw.as_ptr()) }
    }

    /// The width of one input embedding row: what mtmd's projector must produce per image
    /// token (mtmd checks this at init) and what `mtmd_helper_decode_image_chunk` reads.
    pub fn n_embd_inp(&self) -> i32 {
        // SAFETY: `self.raw` is a live model.
        unsafe { sys::llama_model_n_embd_inp(self.raw.as_ptr()) }
    }

    /// The chat template the file carries (`tokenizer.chat_template`), if any.
    pub fn chat_template(&self) -> Option<String> {
        // SAFETY: `self.raw` is a live model; a null name asks for the default template. The
        // returned string, when not null, is owned by the model and NUL-terminated; it is
        // copied before the borrow ends.
        let raw = unsafe { sys::llama_model_chat_template(self.raw.as_ptr(), std::ptr::null()) };
        if raw.is_null() {
            return None;
        }
        // SAFETY: not null, NUL-terminated, alive as long as the model (see above).
        let text = unsafe { CStr::from_ptr(raw) };
        Some(text.to_string_lossy().into_owned()).filter(|t| !t.trim().is_empty())
    }

    /// Tokens in the vocabulary.
    pub fn n_vocab(&self) -> i32 {
        self.vocab().n_tokens()
    }

    /// A fresh context (KV cache, compute buffers) over this model.
    pub fn new_context(
        &self,
        _backend: &Backend,
        params: &ContextParams,
    ) -> Result<Context<'_>, ModelError> {
        // SAFETY: returns a plain struct of defaults.
        let mut raw_params = unsafe { sys::llama_context_default_params() };
        if let Some(n_ctx) = params.n_ctx {
            raw_params.n_ctx = n_ctx;
        }
        if let Some(n_batch) = params.n_batch {
            raw_params.n_batch = n_batch;
        }
        if let Some(n_ubatch) = params.n_ubatch {
            raw_params.n_ubatch = n_ubatch;
        }
        if let Some(threads) = params.n_threads {
            raw_params.n_threads = threads;
        }
        if let Some(threads) = params.n_threads_batch {
            raw_params.n_threads_batch = threads;
        }
        if let Some(flash) = params.flash_attention {
            raw_params.flash_attn_type = flash.raw();
        }
        // SAFETY: `self.raw` is a live model that outlives the context (the context borrows
        // `self`); the parameters are llama.cpp's defaults with plain numbers changed, their
        // pointer fields the defaults' nulls.
        let raw = unsafe { sys::llama_init_from_model(self.raw.as_ptr(), raw_params) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            engine_error(format!(
                "llama.cpp could not create a context (n_ctx {}, n_batch {}, n_ubatch {})",
                raw_params.n_ctx, raw_params.n_batch, raw_params.n_ubatch
            ))
        })?;
        Ok(Context { raw, model: self })
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from llama_model_load_from_file and is freed once; every
        // context, projector and grammar borrowing the model is gone (the borrow checker).
        unsafe { sys::llama_model_free(self.raw.as_ptr()) };
    }
}

/// A model's vocabulary, borrowed from the model.
#[derive(Debug, Clone, Copy)]
pub struct Vocab<'m> {
    raw: NonNull<sys::llama_vocab>,
    _model: PhantomData<&'m Model>,
}

// SAFETY: the vocabulary is read-only after loading, like the model that owns it (which is
// Sync for the same reason).
unsafe impl Send for Vocab<'_> {}
// SAFETY: as above.
unsafe impl Sync for Vocab<'_> {}

/// llama.cpp's "no such token".
const TOKEN_NULL: sys::llama_token = -1;

impl Vocab<'_> {
    fn ptr(&self) -> *const sys::llama_vocab {
        self.raw.as_ptr().cast_const()
    }

    pub fn n_tokens(&self) -> i32 {
        // SAFETY: the vocabulary is alive as long as the borrowed model.
        unsafe { sys::llama_vocab_n_tokens(self.ptr()) }
    }

    /// Whether `token` is an id of this vocabulary. llama.cpp looks ids up with bounds-checked
    /// C++ accessors that throw, and a C++ exception must not cross into Rust, so every call
    /// that takes a token id from outside checks it first.
    pub fn contains(&self, token: Token) -> bool {
        (0..self.n_tokens()).contains(&token.0)
    }

    fn check(&self, token: Token) -> Result<(), ModelError> {
        if self.contains(token) {
            Ok(())
        } else {
            Err(engine_error(format!(
                "token {} is not in the vocabulary of {} tokens",
                token.0,
                self.n_tokens()
            )))
        }
    }

    /// End of generation (end of sequence, end of turn...).
    pub fn is_eog(&self, token: Token) -> bool {
        // SAFETY: llama_vocab_is_eog only looks the id up in a set; any id is fine.
        unsafe { sys::llama_vocab_is_eog(self.ptr(), token.0) }
    }

    fn special(token: sys::llama_token) -> Option<Token> {
        (token != TOKEN_NULL && token >= 0).then_some(Token(token))
    }

    pub fn bos(&self) -> Option<Token> {
        // SAFETY: reads a field of the live vocabulary.
        Self::special(unsafe { sys::llama_vocab_bos(self.ptr()) })
    }

    pub fn eos(&self) -> Option<Token> {
        // SAFETY: reads a field of the live vocabulary.
        Self::special(unsafe { sys::llama_vocab_eos(self.ptr()) })
    }

    pub fn eot(&self) -> Option<Token> {
        // SAFETY: reads a field of the live vocabulary.
        Self::special(unsafe { sys::llama_vocab_eot(self.ptr()) })
    }

    /// The model's tokenization of `text`. `add_special` adds BOS and the like as the model's
    /// metadata says; `parse_special` reads special-token text (`<|im_start|>`) as those tokens.
    pub fn tokenize(
        &self,
        text: &[u8],
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<Token>, ModelError> {
        let text_len = i32::try_from(text.len())
            .map_err(|_| engine_error("the text is too long to tokenize (2 GiB or more)"))?;
        let mut tokens: Vec<Token> =
            Vec::with_capacity((text.len() / 2 + usize::from(add_special)).max(8));
        // The first call may report the size it needs; the second then has room.
        for _ in 0..2 {
            let capacity = tokens.capacity();
            let n_max = i32::try_from(capacity).unwrap_or(i32::MAX);
            // SAFETY: `text` is valid for `text_len` bytes; `tokens` has room for `n_max`
            // tokens (`Token` is `repr(transparent)` over `llama_token`), and llama.cpp writes
            // only when the result fits.
            let n = unsafe {
                sys::llama_tokenize(
                    self.ptr(),
                    text.as_ptr().cast::<c_char>(),
                    text_len,
                    tokens.as_mut_ptr().cast::<sys::llama_token>(),
                    n_max,
                    add_special,
                    parse_special,
                )
            };
            if n == i32::MIN {
                return Err(engine_error("the text has too many tokens to count"));
            }
            match usize::try_from(n) {
                Ok(written) if written <= capacity => {
                    // SAFETY: llama.cpp initialised the first `written` tokens.
                    unsafe { tokens.set_len(written) };
                    return Ok(tokens);
                }
                Ok(_) => break,
                Err(_) => tokens.reserve_exact(n.unsigned_abs() as usize),
            }
        }
        Err(engine_error(
            "llama.cpp's tokenizer asked for more room than it was given twice",
        ))
    }

    /// The bytes of one token. `special` renders control tokens (`<|im_end|>`) too; without it
    /// they are empty.
    pub fn token_to_piece(&self, token: Token, special: bool) -> Result<Vec<u8>, ModelError> {
        let mut bytes = Vec::with_capacity(8);
        self.token_to_piece_into(token, &mut bytes, special)?;
        Ok(bytes)
    }

    /// Appends the bytes of one token to `bytes`.
    pub fn token_to_piece_into(
        &self,
        token: Token,
        bytes: &mut Vec<u8>,
        special: bool,
    ) -> Result<(), ModelError> {
        self.check(token)?;
        for _ in 0..2 {
            let spare = bytes.spare_capacity_mut();
            let room = spare.len();
            // SAFETY: the token id was checked against the vocabulary; `spare` is writable
            // for `room` bytes and llama.cpp writes only when the piece fits.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.ptr(),
                    token.0,
                    spare.as_mut_ptr().cast::<c_char>(),
                    i32::try_from(room).unwrap_or(i32::MAX),
                    0,
                    special,
                )
            };
            match usize::try_from(n) {
                Ok(written) if written <= room => {
                    // SAFETY: llama.cpp initialised `written` bytes after the current length.
                    unsafe { bytes.set_len(bytes.len() + written) };
                    return Ok(());
                }
                Ok(_) => break,
                Err(_) => bytes.reserve(n.unsigned_abs() as usize),
            }
        }
        Err(engine_error(format!(
            "llama.cpp could not render token {}",
            token.0
        )))
    }

    /// The text of several tokens, as the model joins them.
    pub fn detokenize(
        &self,
        tokens: &[Token],
        remove_special: bool,
        unparse_special: bool,
    ) -> Result<Vec<u8>, ModelError> {
        for &token in tokens {
            self.check(token)?;
        }
        let n_tokens = i32::try_from(tokens.len())
            .map_err(|_| engine_error("too many tokens to detokenize"))?;
        let mut bytes: Vec<u8> = Vec::with_capacity((tokens.len() * 2).max(8));
        for _ in 0..2 {
            let room = bytes.capacity();
            // SAFETY: every token id was checked; `tokens` is valid for `n_tokens` ids
            // (`Token` is `repr(transparent)`); `bytes` has room for `room` bytes and
            // llama.cpp writes only when the text fits.
            let n = unsafe {
                sys::llama_detokenize(
                    self.ptr(),
                    tokens.as_ptr().cast::<sys::llama_token>(),
                    n_tokens,
                    bytes.as_mut_ptr().cast::<c_char>(),
                    i32::try_from(room).unwrap_or(i32::MAX),
                    remove_special,
                    unparse_special,
                )
            };
            match usize::try_from(n) {
                Ok(written) if written <= room => {
                    // SAFETY: llama.cpp initialised the first `written` bytes.
                    unsafe { bytes.set_len(written) };
                    return Ok(bytes);
                }
                Ok(_) => break,
                Err(_) => bytes.reserve_exact(n.unsigned_abs() as usize),
            }
        }
        Err(engine_error("llama.cpp could not detokenize the tokens"))
    }
}

// ---------------------------------------------------------------------------------------------
// Context, batches and logits

/// llama.cpp's flash-attention setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashAttention {
    /// llama.cpp decides per device (its default).
    Auto,
    Enabled,
    Disabled,
}

impl FlashAttention {
    fn raw(self) -> sys::llama_flash_attn_type {
        match self {
            FlashAttention::Auto => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::Enabled => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Disabled => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }
    }
}

/// How to create a context; every None keeps llama.cpp's default.
#[derive(Debug, Clone, Default)]
pub struct ContextParams {
    /// Context length in tokens; 0 means the model's training length. llama.cpp's default is
    /// 512, too small for one screenshot.
    pub n_ctx: Option<u32>,
    /// Most tokens one `decode` call may take.
    pub n_batch: Option<u32>,
    /// Physical batch: tokens computed at once inside a decode.
    pub n_ubatch: Option<u32>,
    /// Threads for single-token decoding.
    pub n_threads: Option<i32>,
    /// Threads for batches (prefill).
    pub n_threads_batch: Option<i32>,
    pub flash_attention: Option<FlashAttention>,
}

/// One context over a model (`llama_context`): its KV cache and compute state, freed on drop.
#[derive(Debug)]
pub struct Context<'m> {
    raw: NonNull<sys::llama_context>,
    model: &'m Model,
}

// SAFETY: a context is not tied to the thread that made it, and the model it borrows is Sync.
// It is not Sync: even reading logits synchronizes (mutates) the context, which is why every
// method that calls into it takes `&mut self`.
unsafe impl Send for Context<'_> {}

impl<'m> Context<'m> {
    /// The model this context runs.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn n_ctx(&self) -> u32 {
        // SAFETY: `self.raw` is a live context; this reads a parameter.
        unsafe { sys::llama_n_ctx(self.raw.as_ptr()) }
    }

    pub fn n_batch(&self) -> u32 {
        // SAFETY: as above.
        unsafe { sys::llama_n_batch(self.raw.as_ptr()) }
    }

    pub fn n_ubatch(&self) -> u32 {
        // SAFETY: as above.
        unsafe { sys::llama_n_ubatch(self.raw.as_ptr()) }
    }

    /// Evaluates a batch of tokens into the KV cache (and the logits the batch asks for).
    pub fn decode(&mut self, batch: &Batch) -> Result<(), ModelError> {
        if batch.is_empty() {
            return Err(engine_error("decoding an empty batch"));
        }
        // SAFETY: `self.raw` is a live context used by one caller at a time (`&mut self`);
        // the batch's arrays hold `n_tokens` initialised entries (Batch::add), each with at
        // most `n_seq_max` sequence ids; llama.cpp validates token ids and positions itself.
        let code = unsafe { sys::llama_decode(self.raw.as_ptr(), batch.raw) };
        match code {
            0 => Ok(()),
            code => Err(decode_error("decode", code)),
        }
    }

    /// The logits of output `i` of the last decode (-1: its last output), one per vocabulary
    /// token.
    pub fn logits_ith(&mut self, i: i32) -> Result<&[f32], ModelError> {
        let n_vocab = usize::try_from(self.model.n_vocab())
            .map_err(|_| engine_error("the model reports a negative vocabulary size"))?;
        // SAFETY: `self.raw` is a live context; llama.cpp synchronizes pending work (hence
        // `&mut self`) and returns null for an output the last batch did not ask for.
        let logits = unsafe { sys::llama_get_logits_ith(self.raw.as_ptr(), i) };
        if logits.is_null() {
            return Err(engine_error(format!(
                "no logits for output {i}: the last batch did not ask for them"
            )));
        }
        // SAFETY: a logits row holds one float per vocabulary token; it stays unchanged until
        // the next decode, which needs `&mut self` and so ends this borrow first.
        Ok(unsafe { std::slice::from_raw_parts(logits, n_vocab) })
    }

    /// Every vocabulary token with its logit at output `i`, for samplers.
    pub fn token_data_array_ith(&mut self, i: i32) -> Result<TokenDataArray, ModelError> {
        let data = self
            .logits_ith(i)?
            .iter()
            .zip(0..)
            .map(|(&logit, id)| TokenData::new(Token(id), logit, 0.0))
            .collect();
        Ok(TokenDataArray::new(data, false))
    }

    fn memory(&self) -> sys::llama_memory_t {
        // SAFETY: `self.raw` is a live context; the memory belongs to it (null when the context
        // has none, which the memory functions accept).
        unsafe { sys::llama_get_memory(self.raw.as_ptr()) }
    }

    /// Empties the KV cache (metadata and data).
    pub fn memory_clear(&mut self) {
        // SAFETY: the memory handle belongs to this live context (or is null, a no-op).
        unsafe { sys::llama_memory_clear(self.memory(), true) };
    }

    /// Removes positions `from..to` (`to` None: to the end) of sequence `seq_id` (None: every
    /// sequence) from the KV cache. An error when llama.cpp cannot remove part of a sequence
    /// (recurrent models keep only whole sequences).
    pub fn memory_seq_rm(
        &mut self,
        seq_id: Option<i32>,
        from: i32,
        to: Option<i32>,
    ) -> Result<(), ModelError> {
        // SAFETY: the memory handle belongs to this live context (or is null: "removed");
        // negative positions mean "from the start" / "to the end" to llama.cpp.
        let removed = unsafe {
            sys::llama_memory_seq_rm(self.memory(), seq_id.unwrap_or(-1), from, to.unwrap_or(-1))
        };
        if removed {
            Ok(())
        } else {
            Err(engine_error(format!(
                "the KV cache could not drop positions {from}.. of sequence {}",
                seq_id.unwrap_or(-1)
            )))
        }
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from llama_init_from_model and is freed once, before the
        // model it borrows.
        unsafe { sys::llama_free(self.raw.as_ptr()) };
    }
}

/// What `llama_decode`'s return codes mean (llama.h).
fn decode_error(what: &str, code: i32) -> ModelError {
    let meaning = match code {
        1 => "no room in the KV cache for the batch",
        2 => "aborted",
        // Among others: token ids outside the vocabulary, positions that do not continue
        // the sequence in the cache.
        -1 => "llama.cpp refused the batch as invalid",
        _ => "llama.cpp failed",
    };
    engine_error(format!("{what}: {meaning} (code {code})"))
}

/// Tokens to decode in one call (`llama_batch`), with their positions, sequences and whether
/// each wants logits.
#[derive(Debug)]
pub struct Batch {
    raw: sys::llama_batch,
    capacity: usize,
    n_seq_max: usize,
}

// SAFETY: the batch owns its malloc'd arrays outright; nothing in them is tied to a thread.
unsafe impl Send for Batch {}

impl Batch {
    /// Room for `capacity` tokens, each in up to `n_seq_max` sequences.
    pub fn new(capacity: usize, n_seq_max: usize) -> Result<Batch, ModelError> {
        let (Ok(n_tokens), Ok(n_seq)) = (i32::try_from(capacity), i32::try_from(n_seq_max)) else {
            return Err(engine_error(format!(
                "a batch of {capacity} tokens in {n_seq_max} sequences is too large"
            )));
        };
        if n_tokens == 0 || n_seq == 0 {
            return Err(engine_error(
                "a batch needs room for at least one token in one sequence",
            ));
        }
        // SAFETY: positive sizes; `embd` 0 allocates token ids, not embeddings.
        let raw = unsafe { sys::llama_batch_init(n_tokens, 0, n_seq) };
        let batch = Batch {
            raw,
            capacity,
            n_seq_max,
        };
        if raw.token.is_null()
            || raw.pos.is_null()
            || raw.n_seq_id.is_null()
            || raw.seq_id.is_null()
            || raw.logits.is_null()
        {
            // Dropping `batch` frees whatever was allocated (llama_batch_free skips nulls).
            return Err(engine_error("out of memory allocating a batch"));
        }
        Ok(batch)
    }

    pub fn len(&self) -> usize {
        usize::try_from(self.raw.n_tokens).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.raw.n_tokens = 0;
    }

    /// Appends a token at position `pos` in the sequences `seq_ids`; `logits` asks for its
    /// logits after the decode.
    pub fn add(
        &mut self,
        token: Token,
        pos: i32,
        seq_ids: &[i32],
        logits: bool,
    ) -> Result<(), ModelError> {
        let i = self.len();
        if i >= self.capacity {
            return Err(engine_error(format!(
                "the batch is full ({} tokens)",
                self.capacity
            )));
        }
        if seq_ids.is_empty() || seq_ids.len() > self.n_seq_max {
            return Err(engine_error(format!(
                "a token must be in 1 to {} sequences, not {}",
                self.n_seq_max,
                seq_ids.len()
            )));
        }
        // SAFETY: `i < capacity`, the length llama_batch_init allocated every per-token array
        // with; `seq_id[i]` points at room for `n_seq_max` ids and `seq_ids` is no longer.
        unsafe {
            self.raw.token.add(i).write(token.0);
            self.raw.pos.add(i).write(pos);
            // Cannot truncate: at most n_seq_max, which fitted an i32 in `new`.
            self.raw.n_seq_id.add(i).write(seq_ids.len() as i32);
            let seq = *self.raw.seq_id.add(i);
            if seq.is_null() {
                return Err(engine_error("out of memory in a batch"));
            }
            std::ptr::copy_nonoverlapping(seq_ids.as_ptr(), seq, seq_ids.len());
            self.raw.logits.add(i).write(i8::from(logits));
        }
        self.raw.n_tokens += 1;
        Ok(())
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from llama_batch_init and is freed once.
        unsafe { sys::llama_batch_free(self.raw) };
    }
}

// ---------------------------------------------------------------------------------------------
// Samplers

/// A candidate token and its logit (`llama_token_data`).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenData(sys::llama_token_data);

impl TokenData {
    pub fn new(token: Token, logit: f32, p: f32) -> Self {
        TokenData(sys::llama_token_data {
            id: token.0,
            logit,
            p,
        })
    }

    pub fn id(&self) -> Token {
        Token(self.0.id)
    }

    pub fn logit(&self) -> f32 {
        self.0.logit
    }

    pub fn p(&self) -> f32 {
        self.0.p
    }
}

/// Candidates for a sampler to filter or choose from.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenDataArray {
    data: Vec<TokenData>,
    selected: Option<usize>,
    sorted: bool,
}

impl TokenDataArray {
    pub fn new(data: Vec<TokenData>, sorted: bool) -> Self {
        TokenDataArray {
            data,
            selected: None,
            sorted,
        }
    }

    pub fn data(&self) -> &[TokenData] {
        &self.data
    }

    /// The token the last sampler chose, if it chose one.
    pub fn selected_token(&self) -> Option<Token> {
        self.data.get(self.selected?).map(TokenData::id)
    }
}

/// A llama.cpp sampler (`llama_sampler`): a grammar, greedy choice, or a chain of them. `'m`
/// is the model whose vocabulary a grammar reads.
#[derive(Debug)]
pub struct Sampler<'m> {
    raw: NonNull<sys::llama_sampler>,
    /// The vocabulary a grammar in this sampler looks ids up in; None when nothing does.
    vocab: Option<Vocab<'m>>,
}

// SAFETY: a sampler owns its state and is not tied to a thread; the vocabulary it may read is
// Sync. It is not Sync: applying and accepting mutate it (`&mut self`).
unsafe impl Send for Sampler<'_> {}

impl Sampler<'static> {
    /// Picks the most likely candidate.
    pub fn greedy() -> Result<Self, ModelError> {
        // SAFETY: no arguments; returns a new sampler or null.
        let raw = unsafe { sys::llama_sampler_init_greedy() };
        let raw = NonNull::new(raw).ok_or_else(|| engine_error("no greedy sampler"))?;
        Ok(Sampler { raw, vocab: None })
    }
}

impl<'m> Sampler<'m> {
    /// A GBNF grammar over `model`'s vocabulary, starting at rule `root`.
    pub fn grammar(model: &'m Model, grammar: &str, root: &str) -> Result<Self, ModelError> {
        if !grammar.contains(root) {
            return Err(engine_error(format!(
                "the grammar has no rule named {root:?}"
            )));
        }
        let (Ok(c_grammar), Ok(c_root)) = (CString::new(grammar), CString::new(root)) else {
            return Err(engine_error("the grammar contains a NUL byte"));
        };
        let vocab = model.vocab();
        // SAFETY: the vocabulary outlives the sampler (`'m`); both strings are valid and
        // NUL-terminated for the call (llama.cpp parses them before returning). The
        // `llama_rs_` wrapper turns a parse error's C++ exception into a null return.
        let raw = unsafe {
            sys::llama_rs_sampler_init_grammar(vocab.ptr(), c_grammar.as_ptr(), c_root.as_ptr())
        };
        let raw = NonNull::new(raw)
            .ok_or_else(|| engine_error("llama.cpp could not parse the grammar"))?;
        Ok(Sampler {
            raw,
            vocab: Some(vocab),
        })
    }

    /// Samplers applied in order; the chain owns them.
    pub fn chain(samplers: Vec<Sampler<'m>>) -> Result<Self, ModelError> {
        let params = sys::llama_sampler_chain_params { no_perf: false };
        // SAFETY: plain parameters; returns a new chain or null.
        let raw = unsafe { sys::llama_sampler_chain_init(params) };
        let raw = NonNull::new(raw).ok_or_else(|| engine_error("no sampler chain"))?;
        let mut chain = Sampler { raw, vocab: None };
        for sampler in samplers {
            chain.vocab = chain.vocab.or(sampler.vocab);
            let member = std::mem::ManuallyDrop::new(sampler);
            // SAFETY: both samplers are live; the chain takes ownership of `member` and frees
            // it with itself, so `member` is not dropped here.
            unsafe { sys::llama_sampler_chain_add(chain.raw.as_ptr(), member.raw.as_ptr()) };
        }
        Ok(chain)
    }

    /// Lets the sampler filter `candidates` (a grammar sets the logits of what it forbids to
    /// -inf) or choose one (`selected_token`).
    pub fn apply(&mut self, candidates: &mut TokenDataArray) -> Result<(), ModelError> {
        if let Some(vocab) = self.vocab
            && let Some(bad) = candidates.data.iter().find(|d| !vocab.contains(d.id()))
        {
            return Err(engine_error(format!(
                "candidate token {} is not in the vocabulary",
                bad.id().0
            )));
        }
        let size = candidates.data.len();
        let data = candidates.data.as_mut_ptr().cast::<sys::llama_token_data>();
        let mut raw = sys::llama_token_data_array {
            data,
            size,
            selected: candidates
                .selected
                .and_then(|s| i64::try_from(s).ok())
                .unwrap_or(-1),
            sorted: candidates.sorted,
        };
        // SAFETY: `raw` describes `size` initialised candidates (`TokenData` is
        // `repr(transparent)` over `llama_token_data`) whose ids are in the vocabulary a
        // grammar looks up; the sampler is live and used by one caller (`&mut self`).
        unsafe { sys::llama_sampler_apply(self.raw.as_ptr(), &mut raw) };
        // The samplers built here filter in place. One that answered with another buffer or
        // more candidates would leave nothing this array could own.
        if !std::ptr::eq(raw.data, data) || raw.size > size {
            return Err(engine_error(
                "the sampler returned candidates outside the array it was given",
            ));
        }
        candidates.data.truncate(raw.size);
        candidates.sorted = raw.sorted;
        candidates.selected = usize::try_from(raw.selected)
            .ok()
            .filter(|&s| s < candidates.data.len());
        Ok(())
    }

    /// Advances the sampler's state past `token` (a grammar moves on by its text). A token the
    /// grammar does not allow is an error, and the state is then unspecified: `reset` it.
    pub fn accept(&mut self, token: Token) -> Result<(), ModelError> {
        if let Some(vocab) = self.vocab {
            vocab.check(token)?;
            // llama.cpp aborts the process when a grammar accepts an end-of-generation token
            // it does not allow (no exception to catch); ask the grammar first.
            if vocab.is_eog(token) {
                let mut single = TokenDataArray::new(vec![TokenData::new(token, 0.0, 0.0)], false);
                self.apply(&mut single)?;
                if !single.data.first().is_some_and(|d| d.logit().is_finite()) {
                    return Err(engine_error(format!(
                        "the grammar does not allow the reply to end here (token {})",
                        token.0
                    )));
                }
            }
        }
        // SAFETY: the sampler is live; the id was checked against the vocabulary a grammar
        // reads; the `llama_rs_` wrapper turns a grammar's C++ exception for a rejected token
        // into a status.
        let status = unsafe { sys::llama_rs_sampler_accept(self.raw.as_ptr(), token.0) };
        if status == sys::LLAMA_RS_STATUS_OK {
            Ok(())
        } else {
            Err(engine_error(format!(
                "the grammar does not allow token {} here",
                token.0
            )))
        }
    }

    /// Back to the state before the first token.
    pub fn reset(&mut self) {
        // SAFETY: the sampler is live and used by one caller.
        unsafe { sys::llama_sampler_reset(self.raw.as_ptr()) };
    }

    /// Chooses a token from output `i`'s logits and accepts it: `llama_sampler_sample`, done
    /// through the checked `apply` and `accept` (the C version lets a grammar's exception
    /// escape).
    pub fn sample(&mut self, ctx: &mut Context<'_>, i: i32) -> Result<Token, ModelError> {
        let mut candidates = ctx.token_data_array_ith(i)?;
        self.apply(&mut candidates)?;
        let token = candidates
            .selected_token()
            .ok_or_else(|| engine_error("the sampler chose no token"))?;
        self.accept(token)?;
        Ok(token)
    }
}

impl Drop for Sampler<'_> {
    fn drop(&mut self) {
        // SAFETY: `self.raw` is owned by this wrapper (chain members are never dropped as
        // wrappers) and freed once.
        unsafe { sys::llama_sampler_free(self.raw.as_ptr()) };
    }
}

// ---------------------------------------------------------------------------------------------
// mtmd: the vision projector, images and prompt chunks

/// How to load a projector. `Default` is mtmd's own defaults.
#[derive(Debug, Clone)]
pub struct MtmdParams {
    pub use_gpu: bool,
    /// mtmd prints its own timings at the end when true.
    pub print_timings: bool,
    pub n_threads: i32,
    /// The text tokenize replaces with an image.
    pub media_marker: String,
    /// Runs one encode at init so the first real image is not the slow one.
    pub warmup: bool,
    /// The fewest and the most tokens per image; -1 keeps the projector's own limits.
    pub image_min_tokens: i32,
    pub image_max_tokens: i32,
}

impl Default for MtmdParams {
    fn default() -> Self {
        // SAFETY: returns a plain struct of defaults whose marker is a static string.
        let raw = unsafe { sys::mtmd_context_params_default() };
        MtmdParams {
            use_gpu: raw.use_gpu,
            print_timings: raw.print_timings,
            n_threads: raw.n_threads,
            media_marker: default_media_marker().to_owned(),
            warmup: raw.warmup,
            image_min_tokens: raw.image_min_tokens,
            image_max_tokens: raw.image_max_tokens,
        }
    }
}

/// A loaded vision projector (`mtmd_context`) for one text model, freed on drop.
#[derive(Debug)]
pub struct Mtmd<'m> {
    raw: NonNull<sys::mtmd_context>,
    model: &'m Model,
}

// SAFETY: an mtmd context is not tied to a thread, and the model it borrows is Sync. Not Sync:
// encoding and evaluating mutate it (`&mut self`).
unsafe impl Send for Mtmd<'_> {}

impl<'m> Mtmd<'m> {
    /// Loads the projector at `path` for `model`. mtmd refuses a projector whose output width
    /// is not the model's input width.
    pub fn init_from_file(
        path: &Path,
        model: &'m Model,
        params: &MtmdParams,
    ) -> Result<Self, ModelError> {
        let c_path = path_cstring(path)?;
        let marker = CString::new(params.media_marker.as_str())
            .map_err(|_| engine_error("the media marker contains a NUL byte"))?;
        // SAFETY: returns a plain struct of defaults.
        let mut raw_params = unsafe { sys::mtmd_context_params_default() };
        raw_params.use_gpu = params.use_gpu;
        raw_params.print_timings = params.print_timings;
        raw_params.n_threads = params.n_threads;
        raw_params.media_marker = marker.as_ptr();
        raw_params.warmup = params.warmup;
        raw_params.image_min_tokens = params.image_min_tokens;
        raw_params.image_max_tokens = params.image_max_tokens;
        // SAFETY: the path and marker strings outlive the call (mtmd copies the marker); the
        // model outlives the projector (`'m`), which keeps a pointer to it for tokenizing; the
        // other parameters are mtmd's defaults. mtmd catches its own exceptions and returns
        // null.
        let raw =
            unsafe { sys::mtmd_init_from_file(c_path.as_ptr(), model.raw.as_ptr(), raw_params) };
        let raw =
            NonNull::new(raw).ok_or_else(|| engine_error("mtmd could not load the projector"))?;
        Ok(Mtmd { raw, model })
    }

    /// The model this projector feeds.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn support_vision(&self) -> bool {
        // SAFETY: `self.raw` is live; this reads a property.
        unsafe { sys::mtmd_support_vision(self.raw.as_ptr()) }
    }

    /// Whether the model places image tokens with M-RoPE (Qwen2/2.5/3-VL): their positions are
    /// 2-D, and an image's position count differs from its token count.
    pub fn decode_use_mrope(&self) -> bool {
        // SAFETY: as above.
        unsafe { sys::mtmd_decode_use_mrope(self.raw.as_ptr()) }
    }

    /// Whether image tokens are decoded with non-causal attention (Gemma 3).
    pub fn decode_use_non_causal(&self) -> bool {
        // SAFETY: as above; a null chunk asks about image chunks in general.
        unsafe { sys::mtmd_decode_use_non_causal(self.raw.as_ptr(), std::ptr::null()) }
    }

    /// Tokenizes `text` with one image per media marker in it, in order.
    pub fn tokenize(
        &self,
        input: MtmdInput<'_>,
        bitmaps: &[&Bitmap],
    ) -> Result<Chunks, ModelError> {
        let text =
            CString::new(input.text).map_err(|_| engine_error("the prompt contains a NUL byte"))?;
        let raw_text = sys::mtmd_input_text {
            text: text.as_ptr(),
            text_len: text.as_bytes().len(),
            add_special: input.add_special,
            parse_special: input.parse_special,
        };
        let chunks = Chunks::new()?;
        let pointers: Vec<*const sys::mtmd_bitmap> = bitmaps
            .iter()
            .map(|b| b.raw.as_ptr().cast_const())
            .collect();
        // SAFETY: the text, the bitmaps and the pointer array outlive the call; `chunks` is
        // a fresh list mtmd fills; tokenizing only reads the context (mtmd documents it as
        // thread-safe) and catches its own exceptions.
        let code = unsafe {
            sys::mtmd_tokenize(
                self.raw.as_ptr(),
                chunks.raw.as_ptr(),
                &raw const raw_text,
                pointers.as_ptr(),
                pointers.len(),
            )
        };
        match code {
            0 => Ok(chunks),
            1 => Err(engine_error(format!(
                "the prompt has a different number of media markers than the {} images",
                bitmaps.len()
            ))),
            2 => Err(engine_error("mtmd could not preprocess the image")),
            code => Err(engine_error(format!("mtmd_tokenize failed (code {code})"))),
        }
    }

    /// Mixing a context and a projector of two models would make mtmd read rows of one
    /// model's width from embeddings of the other's.
    fn check_context(&self, ctx: &Context<'_>, n_batch: i32) -> Result<(), ModelError> {
        if !std::ptr::eq(self.model, ctx.model) {
            return Err(engine_error(
                "the context and the projector belong to different models",
            ));
        }
        // mtmd asserts (aborts) on a batch size below 1.
        if n_batch < 1 {
            return Err(engine_error(format!(
                "n_batch must be positive, not {n_batch}"
            )));
        }
        Ok(())
    }

    /// Evaluates every chunk at `n_past` in sequence `seq_id` (text decoded, images encoded
    /// then decoded), `n_batch` tokens per decode; `logits_last` asks for the last token's
    /// logits. Returns the position after the chunks (under M-RoPE a position count, not a
    /// token count).
    pub fn eval_chunks(
        &mut self,
        ctx: &mut Context<'_>,
        chunks: &Chunks,
        n_past: i32,
        seq_id: i32,
        n_batch: i32,
        logits_last: bool,
    ) -> Result<i32, ModelError> {
        self.check_context(ctx, n_batch)?;
        let mut new_n_past = n_past;
        // SAFETY: the projector, the context and the chunks are live and of the same model
        // (checked), each used by this caller alone (`&mut`); `n_batch > 0`; the helper
        // writes one position to `new_n_past`.
        let code = unsafe {
            sys::mtmd_helper_eval_chunks(
                self.raw.as_ptr(),
                ctx.raw.as_ptr(),
                chunks.raw.as_ptr(),
                n_past,
                seq_id,
                n_batch,
                logits_last,
                &raw mut new_n_past,
            )
        };
        if code == 0 {
            Ok(new_n_past)
        } else {
            Err(engine_error(format!(
                "evaluating the prompt chunks failed (code {code})"
            )))
        }
    }

    /// Evaluates one chunk like [`Mtmd::eval_chunks`] (an image chunk is encoded again). Only
    /// the tests' reference path uses it: the engine decodes kept encodings instead.
    #[cfg(test)]
    pub fn eval_chunk(
        &mut self,
        ctx: &mut Context<'_>,
        chunk: Chunk<'_>,
        n_past: i32,
        seq_id: i32,
        n_batch: i32,
        logits_last: bool,
    ) -> Result<i32, ModelError> {
        self.check_context(ctx, n_batch)?;
        // The helper adds the text tokens it decodes to this, so it starts at `n_past`.
        let mut new_n_past = n_past;
        // SAFETY: as in eval_chunks, for one chunk that outlives the call.
        let code = unsafe {
            sys::mtmd_helper_eval_chunk_single(
                self.raw.as_ptr(),
                ctx.raw.as_ptr(),
                chunk.raw.as_ptr(),
                n_past,
                seq_id,
                n_batch,
                logits_last,
                &raw mut new_n_past,
            )
        };
        if code == 0 {
            Ok(new_n_past)
        } else {
            Err(engine_error(format!(
                "evaluating a prompt chunk failed (code {code})"
            )))
        }
    }

    /// Runs an image chunk through the vision encoder and projector once, and keeps the
    /// result: a copy of the chunk (its positions) and of the output embeddings, one row of
    /// the model's input width per image token. [`Mtmd::decode_image_embedding`] then puts
    /// the image into a KV cache from these, at any position, without encoding it again.
    ///
    /// Logs "encoding image slice..." and "image slice encoded in N ms" through the mtmd log
    /// (see [`set_mtmd_log`]), the lines mtmd's eval helper writes around the same call.
    pub fn encode_image_chunk(&mut self, chunk: Chunk<'_>) -> Result<ImageEmbedding, ModelError> {
        if chunk.chunk_type() != ChunkType::Image {
            return Err(engine_error(format!(
                "only image chunks can be encoded, not a {:?} chunk",
                chunk.chunk_type()
            )));
        }
        let n_tokens = chunk.n_tokens();
        let n_embd = usize::try_from(self.model.n_embd_inp())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| engine_error("the model reports no input width"))?;
        let len = n_tokens
            .checked_mul(n_embd)
            .filter(|&len| len > 0)
            .ok_or_else(|| engine_error(format!("an image of {n_tokens} tokens cannot be kept")))?;
        let owned = chunk.to_owned_chunk()?;

        emit_mtmd_log(LOG_LEVEL_INFO, "encoding image slice...\n");
        let started = Instant::now();
        // SAFETY: the projector is live and used by this caller alone (`&mut self`); the chunk
        // outlives the call; mtmd catches its own exceptions.
        let code = unsafe { sys::mtmd_encode_chunk(self.raw.as_ptr(), chunk.raw.as_ptr()) };
        if code != 0 {
            return Err(engine_error(format!(
                "the vision encoder failed (code {code})"
            )));
        }
        emit_mtmd_log(
            LOG_LEVEL_INFO,
            &format!(
                "image slice encoded in {} ms\n",
                started.elapsed().as_millis()
            ),
        );
        // SAFETY: the projector is live; this returns its output buffer.
        let embd = unsafe { sys::mtmd_get_output_embd(self.raw.as_ptr()) };
        if embd.is_null() {
            return Err(engine_error("the vision encoder produced no embeddings"));
        }
        // SAFETY: after a successful encode of an image chunk the buffer holds
        // `clip_n_mmproj_embd * n_tokens(chunk)` floats (mtmd_encode_impl resizes it so), and
        // mtmd_init_from_file refused any projector whose width differs from the model's
        // `n_embd_inp`, so `len` floats are there. They are copied out before anything else
        // can reuse the buffer (`&mut self` is held).
        let values = unsafe { std::slice::from_raw_parts(embd, len) }.to_vec();
        Ok(ImageEmbedding {
            chunk: owned,
            values,
            n_embd,
        })
    }

    /// Decodes a kept image embedding into `ctx` at `n_past` in sequence `seq_id`, `n_batch`
    /// tokens per decode, through mtmd's own helper: it gives the tokens their positions (2-D
    /// under M-RoPE, from the kept chunk) and switches to non-causal attention where the model
    /// needs it (Gemma 3; its `n_ubatch` must then hold the whole image). The vision encoder
    /// does not run. Returns the position after the image.
    pub fn decode_image_embedding(
        &mut self,
        ctx: &mut Context<'_>,
        embedding: &ImageEmbedding,
        n_past: i32,
        seq_id: i32,
        n_batch: i32,
    ) -> Result<i32, ModelError> {
        self.check_context(ctx, n_batch)?;
        // mtmd answers a text chunk with -1, which is also llama_decode's "invalid batch".
        if embedding.chunk().chunk_type() != ChunkType::Image {
            return Err(engine_error("the kept chunk is not an image"));
        }
        let width = usize::try_from(ctx.model.n_embd_inp()).unwrap_or(0);
        let expected = embedding.n_tokens().checked_mul(width);
        if embedding.n_embd != width || expected != Some(embedding.values.len()) {
            return Err(engine_error(format!(
                "the kept image is {} tokens of width {}, but this model takes width {width}",
                embedding.n_tokens(),
                embedding.n_embd
            )));
        }
        let mut new_n_past = n_past;
        // SAFETY: the projector and the context are live, of the same model (checked) and
        // used by this caller alone; the helper reads `n_tokens(chunk) * n_embd_inp(model)`
        // floats from `values`, exactly its length (checked), and never writes them (the
        // pointer is only non-const in the C signature); the kept chunk outlives the call;
        // `n_batch > 0`; no callback is passed.
        let code = unsafe {
            sys::mtmd_helper_decode_image_chunk(
                self.raw.as_ptr(),
                ctx.raw.as_ptr(),
                embedding.chunk.raw.as_ptr(),
                embedding.values.as_ptr().cast_mut(),
                n_past,
                seq_id,
                n_batch,
                &raw mut new_n_past,
                None,
                std::ptr::null_mut(),
            )
        };
        match code {
            0 => Ok(new_n_past),
            // The image is an image (checked), so the code is llama_decode's.
            code => Err(decode_error("decoding the kept image", code)),
        }
    }
}

impl Drop for Mtmd<'_> {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from mtmd_init_from_file and is freed once, before the model.
        unsafe { sys::mtmd_free(self.raw.as_ptr()) };
    }
}

/// A prompt for [`Mtmd::tokenize`].
#[derive(Debug, Clone, Copy)]
pub struct MtmdInput<'a> {
    pub text: &'a str,
    /// Adds BOS and the like as the model's metadata says.
    pub add_special: bool,
    /// Reads special-token text as those tokens.
    pub parse_special: bool,
}

/// An RGB image for mtmd (`mtmd_bitmap`), freed on drop.
#[derive(Debug)]
pub struct Bitmap {
    raw: NonNull<sys::mtmd_bitmap>,
}

// SAFETY: a bitmap owns a copy of its pixels and is only read after creation.
unsafe impl Send for Bitmap {}
// SAFETY: as above; the methods here only read it.
unsafe impl Sync for Bitmap {}

impl Bitmap {
    /// An image of `width` × `height` pixels from RGB888 bytes, row by row.
    pub fn from_rgb(width: u32, height: u32, rgb: &[u8]) -> Result<Self, ModelError> {
        let expected = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3));
        if width == 0 || height == 0 || expected != Some(rgb.len()) {
            return Err(engine_error(format!(
                "an RGB image of {width}x{height} pixels needs {} bytes, not {}",
                expected.map_or_else(|| "more than usize".to_owned(), |n| n.to_string()),
                rgb.len()
            )));
        }
        // SAFETY: `rgb` holds exactly width * height * 3 bytes (checked); mtmd copies them.
        let raw = unsafe { sys::mtmd_bitmap_init(width, height, rgb.as_ptr()) };
        let raw = NonNull::new(raw).ok_or_else(|| engine_error("mtmd could not take the image"))?;
        Ok(Bitmap { raw })
    }

    pub fn width(&self) -> u32 {
        // SAFETY: the bitmap is live; this reads a field.
        unsafe { sys::mtmd_bitmap_get_nx(self.raw.as_ptr()) }
    }

    pub fn height(&self) -> u32 {
        // SAFETY: as above.
        unsafe { sys::mtmd_bitmap_get_ny(self.raw.as_ptr()) }
    }
}

impl Drop for Bitmap {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from mtmd_bitmap_init and is freed once.
        unsafe { sys::mtmd_bitmap_free(self.raw.as_ptr()) };
    }
}

/// A tokenized prompt: text and image chunks in order (`mtmd_input_chunks`), freed on drop.
#[derive(Debug)]
pub struct Chunks {
    raw: NonNull<sys::mtmd_input_chunks>,
}

// SAFETY: the list owns its chunks (token ids, preprocessed pixels) and refers to no context;
// after tokenizing it is only read.
unsafe impl Send for Chunks {}
// SAFETY: as above; every method here only reads.
unsafe impl Sync for Chunks {}

impl Chunks {
    fn new() -> Result<Self, ModelError> {
        // SAFETY: no arguments; returns an empty list or null.
        let raw = unsafe { sys::mtmd_input_chunks_init() };
        let raw = NonNull::new(raw).ok_or_else(|| engine_error("no chunk list"))?;
        Ok(Chunks { raw })
    }

    pub fn len(&self) -> usize {
        // SAFETY: the list is live.
        unsafe { sys::mtmd_input_chunks_size(self.raw.as_ptr()) }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<Chunk<'_>> {
        if i >= self.len() {
            return None;
        }
        // SAFETY: `i` is in bounds; the chunk lives as long as the list (the borrow).
        let raw = unsafe { sys::mtmd_input_chunks_get(self.raw.as_ptr(), i) };
        NonNull::new(raw.cast_mut()).map(|raw| Chunk {
            raw,
            _owner: PhantomData,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = Chunk<'_>> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// Tokens of all chunks.
    pub fn total_tokens(&self) -> usize {
        // SAFETY: the list is live.
        unsafe { sys::mtmd_helper_get_n_tokens(self.raw.as_ptr()) }
    }

    /// Positions of all chunks (under M-RoPE fewer than tokens).
    pub fn total_positions(&self) -> i32 {
        // SAFETY: the list is live.
        unsafe { sys::mtmd_helper_get_n_pos(self.raw.as_ptr()) }
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from mtmd_input_chunks_init and is freed once, with its chunks.
        unsafe { sys::mtmd_input_chunks_free(self.raw.as_ptr()) };
    }
}

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkType {
    Text,
    Image,
    Audio,
    /// A kind this layer does not know (a newer mtmd).
    Other(sys::mtmd_input_chunk_type),
}

/// One chunk, borrowed from the [`Chunks`] or [`OwnedChunk`] that owns it.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    raw: NonNull<sys::mtmd_input_chunk>,
    _owner: PhantomData<&'a ()>,
}

impl<'a> Chunk<'a> {
    fn ptr(&self) -> *const sys::mtmd_input_chunk {
        self.raw.as_ptr().cast_const()
    }

    pub fn chunk_type(&self) -> ChunkType {
        // SAFETY: the chunk is live for `'a`; this reads a field.
        match unsafe { sys::mtmd_input_chunk_get_type(self.ptr()) } {
            sys::MTMD_INPUT_CHUNK_TYPE_TEXT => ChunkType::Text,
            sys::MTMD_INPUT_CHUNK_TYPE_IMAGE => ChunkType::Image,
            sys::MTMD_INPUT_CHUNK_TYPE_AUDIO => ChunkType::Audio,
            other => ChunkType::Other(other),
        }
    }

    /// Tokens the chunk puts into the KV cache.
    pub fn n_tokens(&self) -> usize {
        // SAFETY: as above.
        unsafe { sys::mtmd_input_chunk_get_n_tokens(self.ptr()) }
    }

    /// Positions the chunk takes (under M-RoPE an image takes fewer than its tokens).
    pub fn n_positions(&self) -> i32 {
        // SAFETY: as above.
        unsafe { sys::mtmd_input_chunk_get_n_pos(self.ptr()) }
    }

    /// The token ids of a text chunk; empty for other chunks.
    pub fn text_tokens(&self) -> &'a [Token] {
        if self.chunk_type() != ChunkType::Text {
            return &[];
        }
        let mut n = 0usize;
        // SAFETY: the chunk is live for `'a`; mtmd writes the count to `n`.
        let tokens = unsafe { sys::mtmd_input_chunk_get_tokens_text(self.ptr(), &raw mut n) };
        if tokens.is_null() || n == 0 {
            return &[];
        }
        // SAFETY: the chunk's token vector holds `n` ids and lives as long as the chunk (`'a`);
        // `Token` is `repr(transparent)` over `llama_token`.
        unsafe { std::slice::from_raw_parts(tokens.cast::<Token>(), n) }
    }

    /// The image's id, when it has one (mtmd sets none for bitmaps without one).
    pub fn id(&self) -> Option<String> {
        // SAFETY: the chunk is live; the id is a NUL-terminated string inside it, or null.
        let id = unsafe { sys::mtmd_input_chunk_get_id(self.ptr()) };
        if id.is_null() {
            return None;
        }
        // SAFETY: checked non-null; valid while the chunk is.
        Some(unsafe { CStr::from_ptr(id) }.to_string_lossy().into_owned())
    }

    /// A copy the caller owns (`mtmd_input_chunk_copy`), independent of the list.
    pub fn to_owned_chunk(&self) -> Result<OwnedChunk, ModelError> {
        // SAFETY: the chunk is live; the copy is a new allocation the caller owns.
        let raw = unsafe { sys::mtmd_input_chunk_copy(self.ptr()) };
        let raw = NonNull::new(raw).ok_or_else(|| engine_error("mtmd could not copy a chunk"))?;
        Ok(OwnedChunk { raw })
    }
}

/// A chunk that outlives its prompt, freed on drop.
#[derive(Debug)]
pub struct OwnedChunk {
    raw: NonNull<sys::mtmd_input_chunk>,
}

// SAFETY: the copy owns all its data (token ids, preprocessed pixels, id) and refers to no
// context; it is only read after copying.
unsafe impl Send for OwnedChunk {}
// SAFETY: as above.
unsafe impl Sync for OwnedChunk {}

impl OwnedChunk {
    pub fn chunk(&self) -> Chunk<'_> {
        Chunk {
            raw: self.raw,
            _owner: PhantomData,
        }
    }
}

impl Drop for OwnedChunk {
    fn drop(&mut self) {
        // SAFETY: `self.raw` came from mtmd_input_chunk_copy and is freed once.
        unsafe { sys::mtmd_input_chunk_free(self.raw.as_ptr()) };
    }
}

/// An image encoded once: the chunk it came from (for its positions and attention mode) and
/// the projector's output, `n_tokens × n_embd` floats, row by row.
#[derive(Debug)]
pub struct ImageEmbedding {
    chunk: OwnedChunk,
    values: Vec<f32>,
    n_embd: usize,
}

impl ImageEmbedding {
    pub fn chunk(&self) -> Chunk<'_> {
        self.chunk.chunk()
    }

    /// Image tokens (rows).
    pub fn n_tokens(&self) -> usize {
        self.chunk.chunk().n_tokens()
    }

    /// Positions the image takes in the KV cache.
    pub fn n_positions(&self) -> i32 {
        self.chunk.chunk().n_positions()
    }

    /// Width of a row: the model's input width.
    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    pub fn values(&self) -> &[f32] {
        &self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitmap_must_be_exactly_width_times_height_rgb_bytes() {
        assert!(Bitmap::from_rgb(2, 2, &[0; 12]).is_ok());
        for (w, h, len) in [
            (2, 2, 11),
            (2, 2, 13),
            (0, 0, 0),
            (0, 5, 0),
            (u32::MAX, 3, 9),
        ] {
            let err = Bitmap::from_rgb(w, h, &vec![0; len])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{w}x{h}")), "{err}");
        }
        let bitmap = Bitmap::from_rgb(3, 1, &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        assert_eq!((bitmap.width(), bitmap.height()), (3, 1));
    }

    #[test]
    fn a_batch_refuses_what_it_has_no_room_for() {
        assert!(Batch::new(0, 1).is_err());
        assert!(Batch::new(1, 0).is_err());
        assert!(Batch::new(usize::MAX, 1).is_err());
        let mut batch = Batch::new(2, 1).unwrap();
        assert!(batch.is_empty());
        batch.add(Token(1), 0, &[0], false).unwrap();
        // More sequences than the batch was made for, or none.
        assert!(batch.add(Token(1), 1, &[0, 1], false).is_err());
        assert!(batch.add(Token(1), 1, &[], false).is_err());
        batch.add(Token(2), 1, &[0], true).unwrap();
        assert!(batch.add(Token(3), 2, &[0], true).is_err());
        assert_eq!(batch.len(), 2);
        batch.clear();
        assert!(batch.is_empty());
        batch.add(Token(3), 0, &[0], true).unwrap();
    }

    #[test]
    fn greedy_selects_the_highest_logit_and_a_chain_applies_its_members() {
        let mut greedy = Sampler::greedy().unwrap();
        let mut candidates = TokenDataArray::new(
            vec![
                TokenData::new(Token(0), 0.5, 0.0),
                TokenData::new(Token(1), 2.0, 0.0),
                TokenData::new(Token(2), -1.0, 0.0),
            ],
            false,
        );
        greedy.apply(&mut candidates).unwrap();
        assert_eq!(candidates.selected_token(), Some(Token(1)));
        greedy.accept(Token(7)).unwrap();

        let mut chain = Sampler::chain(vec![Sampler::greedy().unwrap()]).unwrap();
        let mut candidates = TokenDataArray::new(vec![TokenData::new(Token(4), 0.0, 0.0)], false);
        chain.apply(&mut candidates).unwrap();
        assert_eq!(candidates.selected_token(), Some(Token(4)));
        let mut none = TokenDataArray::new(Vec::new(), false);
        chain.apply(&mut none).unwrap();
        assert_eq!(none.selected_token(), None);
    }

    #[test]
    fn the_default_marker_is_mtmds() {
        assert_eq!(default_media_marker(), "<__media__>");
        assert_eq!(MtmdParams::default().media_marker, "<__media__>");
    }

    // -----------------------------------------------------------------------------------------
    // The kept-embedding path on the tiny generated VLM (a llama text model and an LLaVA-style
    // mlp projector, 64 image tokens per image).

    use crate::model::llama::take_image_times;
    use crate::model::tiny::{TINY_IMAGE_SIZE, TINY_IMAGE_TOKENS, TINY_N_EMBD, write_tiny_vlm};

    const N_BATCH: i32 = 512;
    const DECODE_STEPS: usize = 8;

    struct Tiny {
        dir: tempfile::TempDir,
        model: Model,
        mmproj: std::path::PathBuf,
    }

    fn tiny() -> Tiny {
        let dir = tempfile::tempdir().unwrap();
        let files = write_tiny_vlm(dir.path()).unwrap();
        // The engine's runtime: llama.cpp initialised once, and mtmd's log going to the
        // per-thread image log that `take_image_times` reads.
        let backend = crate::model::llama::runtime().unwrap();
        let model = Model::load(backend, &files.model, &ModelParams::default()).unwrap();
        Tiny {
            dir,
            model,
            mmproj: files.mmproj,
        }
    }

    fn context(model: &Model) -> Context<'_> {
        let backend = crate::model::llama::runtime().unwrap();
        let params = ContextParams {
            n_ctx: Some(2048),
            n_batch: Some(N_BATCH as u32),
            n_ubatch: Some(N_BATCH as u32),
            n_threads: Some(2),
            n_threads_batch: Some(2),
            flash_attention: None,
        };
        model.new_context(backend, &params).unwrap()
    }

    fn projector<'m>(tiny: &Tiny, model: &'m Model) -> Mtmd<'m> {
        let params = MtmdParams {
            use_gpu: false,
            print_timings: false,
            n_threads: 2,
            ..MtmdParams::default()
        };
        Mtmd::init_from_file(&tiny.mmproj, model, &params).unwrap()
    }

    /// A screen-like picture: a gradient, a title bar and a window whose place depends on
    /// `seed`, so two seeds give two different images.
    fn picture(seed: u32) -> Bitmap {
        let side = TINY_IMAGE_SIZE;
        let mut rgb = Vec::new();
        for y in 0..side {
            for x in 0..side {
                let px = if y < side / 8 {
                    [40, 44, 52]
                } else if (x + seed * 13) % side < side / 2 && (y + seed * 7) % side > side / 3 {
                    [240, 240, 240]
                } else {
                    [
                        (x * 255 / side) as u8,
                        (y * 255 / side) as u8,
                        (seed * 60) as u8,
                    ]
                };
                rgb.extend_from_slice(&px);
            }
        }
        Bitmap::from_rgb(side, side, &rgb).unwrap()
    }

    fn tokenize(mtmd: &Mtmd<'_>, text: &str, images: &[&Bitmap]) -> Chunks {
        let text = text.replace("{img}", default_media_marker());
        let input = MtmdInput {
            text: &text,
            add_special: true,
            parse_special: true,
        };
        mtmd.tokenize(input, images).unwrap()
    }

    /// Greedy decoding from the logits of the last output, `DECODE_STEPS` tokens at `n_past`.
    fn greedy_tokens(ctx: &mut Context<'_>, mut n_past: i32) -> Vec<Token> {
        let mut batch = Batch::new(1, 1).unwrap();
        let mut tokens = Vec::new();
        for _ in 0..DECODE_STEPS {
            let logits = ctx.logits_ith(-1).unwrap();
            let best = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap();
            let token = Token(i32::try_from(best).unwrap());
            tokens.push(token);
            batch.clear();
            batch.add(token, n_past, &[0], true).unwrap();
            ctx.decode(&batch).unwrap();
            n_past += 1;
        }
        tokens
    }

    /// What mtmd's own path gives for `chunks` from an empty cache: the position after them,
    /// the last logits and the greedy continuation.
    fn reference(
        mtmd: &mut Mtmd<'_>,
        ctx: &mut Context<'_>,
        chunks: &Chunks,
    ) -> (i32, Vec<f32>, Vec<Token>) {
        ctx.memory_clear();
        let n_past = mtmd.eval_chunks(ctx, chunks, 0, 0, N_BATCH, true).unwrap();
        let logits = ctx.logits_ith(-1).unwrap().to_vec();
        (n_past, logits, greedy_tokens(ctx, n_past))
    }

    /// Evaluates `chunks` from `n_past`, taking each image from `kept` in order instead of
    /// encoding it.
    fn eval_with_kept(
        mtmd: &mut Mtmd<'_>,
        ctx: &mut Context<'_>,
        chunks: &Chunks,
        kept: &[&ImageEmbedding],
        mut n_past: i32,
    ) -> i32 {
        let mut images = kept.iter();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            n_past = match chunk.chunk_type() {
                ChunkType::Text => mtmd
                    .eval_chunk(ctx, chunk, n_past, 0, N_BATCH, i == last)
                    .unwrap(),
                ChunkType::Image => {
                    let embedding = images.next().unwrap();
                    assert_eq!(embedding.n_tokens(), chunk.n_tokens());
                    mtmd.decode_image_embedding(ctx, embedding, n_past, 0, N_BATCH)
                        .unwrap()
                }
                other => panic!("unexpected {other:?} chunk"),
            };
        }
        n_past
    }

    fn image_chunks(chunks: &Chunks) -> Vec<Chunk<'_>> {
        chunks
            .iter()
            .filter(|c| c.chunk_type() == ChunkType::Image)
            .collect()
    }

    #[test]
    fn kept_image_embeddings_give_the_logits_and_tokens_of_mtmds_own_eval() {
        let tiny = tiny();
        let model = &tiny.model;
        let mut ctx = context(model);
        let mut mtmd = projector(&tiny, model);
        let (first, second) = (picture(1), picture(2));
        let prompt = "look: {img} then {img}\nanswer:";
        let chunks = tokenize(&mtmd, prompt, &[&first, &second]);
        let (want_n_past, want_logits, want_tokens) = reference(&mut mtmd, &mut ctx, &chunks);

        // Each image through the encoder once; the counter reads mtmd's log on this thread.
        take_image_times();
        let images = image_chunks(&chunks);
        assert_eq!(images.len(), 2);
        let kept: Vec<ImageEmbedding> = images
            .iter()
            .map(|&c| mtmd.encode_image_chunk(c).unwrap())
            .collect();
        assert_eq!(take_image_times().encodes, 2);
        for embedding in &kept {
            assert_eq!(embedding.n_tokens(), TINY_IMAGE_TOKENS);
            assert_eq!(embedding.n_embd(), TINY_N_EMBD);
            assert_eq!(embedding.values().len(), TINY_IMAGE_TOKENS * TINY_N_EMBD);
            assert_eq!(embedding.chunk().chunk_type(), ChunkType::Image);
        }
        // Another image through the encoder overwrites mtmd's own output buffer: what the
        // kept embeddings hold is a copy.
        let other = tokenize(&mtmd, "{img}", &[&picture(3)]);
        let other = mtmd.encode_image_chunk(image_chunks(&other)[0]).unwrap();
        assert_ne!(other.values(), kept[1].values());
        take_image_times();

        ctx.memory_clear();
        let n_past = eval_with_kept(&mut mtmd, &mut ctx, &chunks, &[&kept[0], &kept[1]], 0);
        let times = take_image_times();
        assert_eq!(times.encodes, 0, "no image was encoded again: {times:?}");
        assert!(times.decode_ms > 0.0, "the images were decoded: {times:?}");
        assert_eq!(n_past, want_n_past);
        let logits = ctx.logits_ith(-1).unwrap().to_vec();
        assert_eq!(logits.len(), model.n_vocab() as usize);
        // Bit for bit: the same floats went through the same decodes.
        assert!(
            logits
                .iter()
                .zip(&want_logits)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "the logits differ from mtmd's own eval"
        );
        assert_eq!(greedy_tokens(&mut ctx, n_past), want_tokens);

        // The images matter: in the other order the logits change.
        ctx.memory_clear();
        eval_with_kept(&mut mtmd, &mut ctx, &chunks, &[&kept[1], &kept[0]], 0);
        assert_ne!(ctx.logits_ith(-1).unwrap(), &want_logits[..]);
    }

    #[test]
    fn a_kept_image_decodes_again_at_an_earlier_position_after_seq_rm_without_encoding() {
        let tiny = tiny();
        let model = &tiny.model;
        let mut ctx = context(model);
        let mut mtmd = projector(&tiny, model);
        let (dropped, kept_picture) = (picture(4), picture(5));
        // The conversation first holds two screenshots; then the older one is dropped, and
        // everything after the shared prefix must be evaluated again: the newer screenshot
        // moves to an earlier position.
        let before = tokenize(
            &mtmd,
            "task: find the button.{img} step one.{img}\nanswer:",
            &[&dropped, &kept_picture],
        );
        let after = tokenize(
            &mtmd,
            "task: find the button.{img}\nanswer:",
            &[&kept_picture],
        );
        let (want_n_past, want_logits, want_tokens) = reference(&mut mtmd, &mut ctx, &after);

        ctx.memory_clear();
        take_image_times();
        let images = image_chunks(&before);
        let first = mtmd.encode_image_chunk(images[0]).unwrap();
        let second = mtmd.encode_image_chunk(images[1]).unwrap();
        eval_with_kept(&mut mtmd, &mut ctx, &before, &[&first, &second], 0);
        assert_eq!(take_image_times().encodes, 2);

        // Keep the shared text prefix (the same first chunk in both prompts), drop the rest.
        let prefix = before.get(0).unwrap();
        assert_eq!(prefix.text_tokens(), after.get(0).unwrap().text_tokens());
        let n_prefix = i32::try_from(prefix.n_tokens()).unwrap();
        let old_position = n_prefix + first.n_positions() + before.get(2).unwrap().n_positions();
        ctx.memory_seq_rm(Some(0), n_prefix, None).unwrap();

        let mut n_past = n_prefix;
        n_past = mtmd
            .decode_image_embedding(&mut ctx, &second, n_past, 0, N_BATCH)
            .unwrap();
        assert_eq!(n_past, n_prefix + TINY_IMAGE_TOKENS as i32);
        assert!(
            n_prefix < old_position,
            "the image moved to an earlier position"
        );
        let tail = after.get(2).unwrap();
        n_past = mtmd
            .eval_chunk(&mut ctx, tail, n_past, 0, N_BATCH, true)
            .unwrap();
        let times = take_image_times();
        assert_eq!(
            times.encodes, 0,
            "the kept image was not encoded again: {times:?}"
        );
        assert!(times.decode_ms > 0.0, "{times:?}");

        assert_eq!(n_past, want_n_past);
        let logits = ctx.logits_ith(-1).unwrap().to_vec();
        assert!(
            logits
                .iter()
                .zip(&want_logits)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "the logits differ from mtmd's own eval of the shortened prompt"
        );
        assert_eq!(greedy_tokens(&mut ctx, n_past), want_tokens);

        // A position that leaves a gap after the cached prefix is llama.cpp's to refuse, and
        // the refusal arrives as an error.
        ctx.memory_seq_rm(Some(0), n_prefix, None).unwrap();
        let err = mtmd
            .decode_image_embedding(&mut ctx, &second, n_prefix + 1, 0, N_BATCH)
            .unwrap_err()
            .to_string();
        assert!(err.contains("code -1"), "{err}");
    }

    #[test]
    fn kept_images_are_refused_where_they_would_be_read_wrongly() {
        let tiny = tiny();
        let model = &tiny.model;
        let mut mtmd = projector(&tiny, model);
        let chunks = tokenize(&mtmd, "see {img} now", &[&picture(6)]);
        let text = chunks.get(0).unwrap();
        assert_eq!(text.chunk_type(), ChunkType::Text);
        let err = mtmd.encode_image_chunk(text).unwrap_err().to_string();
        assert!(err.contains("only image chunks"), "{err}");
        let kept = mtmd.encode_image_chunk(image_chunks(&chunks)[0]).unwrap();

        // A context of another model (the same file loaded again) is refused: its widths are
        // not checked against this projector's.
        let backend = crate::model::llama::runtime().unwrap();
        let twin = Model::load(
            backend,
            &tiny.dir.path().join(crate::model::tiny::TINY_MODEL_FILE),
            &ModelParams::default(),
        )
        .unwrap();
        let mut other = context(&twin);
        let err = mtmd
            .decode_image_embedding(&mut other, &kept, 0, 0, N_BATCH)
            .unwrap_err()
            .to_string();
        assert!(err.contains("different models"), "{err}");

        let mut ctx = context(model);
        for bad in [0, -3] {
            let err = mtmd
                .decode_image_embedding(&mut ctx, &kept, 0, 0, bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("n_batch"), "{err}");
        }
        // A batch of 10 splits the 64 image tokens into 7 decodes, and still ends at 64.
        assert_eq!(
            mtmd.decode_image_embedding(&mut ctx, &kept, 0, 0, 10)
                .unwrap(),
            TINY_IMAGE_TOKENS as i32
        );
    }

    #[test]
    fn the_vocabulary_refuses_ids_it_does_not_have() {
        let tiny = tiny();
        let vocab = tiny.model.vocab();
        let n = vocab.n_tokens();
        assert!(vocab.token_to_piece(Token(n), false).is_err());
        assert!(vocab.token_to_piece(Token(-1), false).is_err());
        assert!(
            vocab
                .detokenize(&[Token(1), Token(n + 5)], false, false)
                .is_err()
        );
        let mut grammar = Sampler::grammar(&tiny.model, "root ::= \"a\"", "root").unwrap();
        let mut candidates = TokenDataArray::new(vec![TokenData::new(Token(n), 0.0, 0.0)], false);
        assert!(grammar.apply(&mut candidates).is_err());
        assert!(grammar.accept(Token(n)).is_err());
        // A grammar that does not parse is an error, not an exception through Rust.
        assert!(Sampler::grammar(&tiny.model, "root ::= (", "root").is_err());
        assert!(Sampler::grammar(&tiny.model, "start ::= \"a\"", "root").is_err());
    }

    #[test]
    fn a_grammar_refuses_tokens_and_an_end_it_does_not_allow() {
        let tiny = tiny();
        let vocab = tiny.model.vocab();
        // The byte tokens that spell exactly "a" and "b" (tokenizing would add SPM's space).
        let spelling = |text: &[u8]| {
            (0..vocab.n_tokens())
                .map(Token)
                .find(|&t| vocab.token_to_piece(t, false).unwrap() == text)
                .unwrap()
        };
        let (a, b) = (spelling(b"a"), spelling(b"b"));
        let eos = vocab.eos().unwrap();
        let mut grammar = Sampler::grammar(&tiny.model, "root ::= \"ab\"", "root").unwrap();
        // Before "ab" the reply may not end; llama.cpp would abort the process on this accept.
        let err = grammar.accept(eos).unwrap_err().to_string();
        assert!(err.contains("not allow the reply to end"), "{err}");
        grammar.reset();
        // llama.cpp throws a C++ exception for a rejected token; it arrives as an error.
        assert!(grammar.accept(b).is_err());
        grammar.reset();
        grammar.accept(a).unwrap();
        let mut candidates = TokenDataArray::new(
            vec![TokenData::new(a, 1.0, 0.0), TokenData::new(b, 0.0, 0.0)],
            false,
        );
        grammar.apply(&mut candidates).unwrap();
        let allowed: Vec<Token> = candidates
            .data()
            .iter()
            .filter(|d| d.logit().is_finite())
            .map(TokenData::id)
            .collect();
        assert_eq!(allowed, vec![b]);
        grammar.accept(b).unwrap();
        grammar.accept(eos).unwrap();
    }
}
