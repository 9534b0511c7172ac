//! The model catalog and the installed models.
//!
//! - The catalog (`models/catalog.toml`, built into the binary; `DESKHAND_CATALOG` names another
//!   file) says which GGUF and mmproj files make up each model, where they live on the Hugging
//!   Face Hub, their sha256 where it is published, the model family, the coordinate convention
//!   and the image-token budget.
//! - The installed registry (`installed.toml` in the models directory) lists the models on this
//!   machine: pulled from the catalog or added from files the user already had. It is written
//!   atomically, and a model is recorded only after its files are verified.
//!
//! The models directory is `<data dir>/models` (`~/.local/share/deskhand/models` on Linux), or
//! `DESKHAND_MODELS_DIR`. Downloads go to `<models dir>/<name>/<file>.partial` first, resume
//! with an HTTP Range request, are hashed while they stream, and are renamed into place only
//! when the sha256 matches.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model::family::FamilyId;
use crate::model::gguf::{self, EmbeddingWidth, Gguf, GgufError, ProjectionWidth};

/// The catalog that ships with deskhand.
pub const BUILTIN_CATALOG: &str = include_str!("../../models/catalog.toml");
/// How errors name the built-in catalog.
pub const BUILTIN_CATALOG_NAME: &str = "models/catalog.toml (built into deskhand)";
/// The Hugging Face Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The installed registry's file name, inside the models directory.
pub const INSTALLED_FILE: &str = "installed.toml";

const ENV_MODELS_DIR: &str = "DESKHAND_MODELS_DIR";
const ENV_CATALOG: &str = "DESKHAND_CATALOG";
const ENV_ENDPOINT: &str = "DESKHAND_HF_ENDPOINT";
const ENV_HF_TOKEN: &str = "HF_TOKEN";

const CATALOG_SCHEMA: u32 = 1;
const INSTALLED_SCHEMA: u32 = 1;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{file}:{line}: {message}")]
    Catalog {
        file: String,
        line: usize,
        message: String,
    },
    #[error(
        "{file}:{line}: {message}\n  (this file is written by deskhand; fix the line or delete the entry)"
    )]
    Registry {
        file: String,
        line: usize,
        message: String,
    },
    #[error("no model named {name:?} in the catalog; known models: {}. See `deskhand models list`.", .known.join(", "))]
    UnknownModel { name: String, known: Vec<String> },
    #[error("the {role} file {path} does not exist: check the path{hint}")]
    FileMissing {
        role: &'static str,
        path: PathBuf,
        hint: String,
    },
    #[error(
        "the {role} file {path} is not usable: {source}\n  Give the path of a complete GGUF file (LM Studio keeps them under ~/.lmstudio/models)."
    )]
    BadGguf {
        role: &'static str,
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    #[error(
        "{path} is an mmproj (vision projector, general.architecture = \"clip\"), not a language model: pass the language model GGUF as PATH and this file as --mmproj"
    )]
    NotAModel { path: PathBuf },
    #[error(
        "{path} is not an mmproj: its general.architecture is {arch:?}, an mmproj's is \"clip\". Pass the vision projector (usually named mmproj-*.gguf) as --mmproj"
    )]
    NotAnMmproj { path: PathBuf, arch: String },
    #[error("{model} has no vision: {reason}")]
    NoVision { model: PathBuf, reason: String },
    #[error("{0}")]
    WidthMismatch(Box<WidthMismatch>),
    #[error("cannot tell {what} of {path}: {why}")]
    UnknownWidth {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error(
        "cannot tell which model family {path} belongs to (general.architecture = {arch:?}, general.name = {name:?}); pass --family with one of: {families}",
        path = path.display(),
        families = crate::model::family::known_family_names()
    )]
    UnknownFamily {
        path: PathBuf,
        arch: String,
        name: String,
    },
    #[error("{0}")]
    BadName(String),
    #[error(
        "downloading {url} failed: {detail}\n  Check the network connection (and DESKHAND_HF_ENDPOINT if set), then run the same command again; a partial download is resumed."
    )]
    Network { url: String, detail: String },
    #[error("{url} answered HTTP {status}{hint}")]
    HttpStatus {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error(
        "the download of {file} stopped after {got} of {expected} bytes ({detail}); the partial file {partial} is kept: run the same command again to resume it"
    )]
    Interrupted {
        file: String,
        got: u64,
        expected: String,
        detail: String,
        partial: PathBuf,
    },
    #[error(
        "sha256 mismatch for {file}: expected {expected}, got {actual}. The bad file was deleted and nothing was installed. Run `deskhand models pull {name}` again; if it fails the same way, the file on the Hub is not the one the catalog pins: do not use it, report it, or register a file you trust with `deskhand models add`."
    )]
    Sha256Mismatch {
        name: String,
        file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "size mismatch for {file}: the catalog says {expected} bytes, the download has {actual}. The bad file was deleted and nothing was installed. Run `deskhand models pull {name}` again; if it fails the same way, the file on the Hub changed."
    )]
    SizeMismatch {
        name: String,
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot find a data directory for deskhand (is HOME set?); set {ENV_MODELS_DIR} to the directory for models"
    )]
    NoDataDir,
}

impl StoreError {
    /// Errors caused by what the user asked for or gave (exit status 2), as opposed to network
    /// and disk failures (exit status 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StoreError::Catalog { .. }
                | StoreError::UnknownModel { .. }
                | StoreError::FileMissing { .. }
                | StoreError::BadGguf { .. }
                | StoreError::NotAModel { .. }
                | StoreError::NotAnMmproj { .. }
                | StoreError::NoVision { .. }
                | StoreError::WidthMismatch { .. }
                | StoreError::UnknownWidth { .. }
                | StoreError::UnknownFamily { .. }
                | StoreError::BadName(_)
        )
    }
}

/// An mmproj whose output width is not the model's input width (what llama.cpp's mtmd refuses
/// with "mismatch between text model and mmproj").
#[derive(Debug)]
pub struct WidthMismatch {
    pub model: PathBuf,
    pub mmproj: PathBuf,
    pub text: EmbeddingWidth,
    pub vision: ProjectionWidth,
}

impl fmt::Display for WidthMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the mmproj {} does not fit the model {}: the mmproj produces image embeddings {} values wide \
             (from its {}) but the model's embedding_length is {}. Use the mmproj made for this model \
             (from the same repository)",
            self.mmproj.display(),
            self.model.display(),
            self.vision,
            self.vision.source,
            self.text
        )
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

// ---------------------------------------------------------------------------------------------
// The catalog
// ---------------------------------------------------------------------------------------------

/// How a model names points on the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Coordinates {
    /// Absolute pixels of the resized image the model was shown (Qwen2.5-VL, UI-TARS-1.5).
    #[serde(rename = "absolute-resized")]
    AbsoluteResized,
    /// 0 to 1000 on each axis, relative to the image (Qwen3-VL).
    #[serde(rename = "normalized-1000")]
    Normalized1000,
}

impl fmt::Display for Coordinates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Coordinates::AbsoluteResized => "absolute-resized",
            Coordinates::Normalized1000 => "normalized-1000",
        })
    }
}

/// One file of a catalog model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFile {
    /// The file's name in the Hub repository (and on disk).
    pub file: String,
    /// Exact size in bytes, where known.
    pub size: Option<u64>,
    /// Lowercase hex sha256, where published. Without it a pull is unverified.
    pub sha256: Option<String>,
}

/// One model of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogModel {
    pub name: String,
    pub family: FamilyId,
    /// Hugging Face repository, "owner/name".
    pub repo: String,
    /// Branch, tag or commit on the Hub.
    pub revision: String,
    pub model: CatalogFile,
    pub mmproj: CatalogFile,
    pub coordinates: Coordinates,
    /// Image-token budget per screenshot (llama.cpp's image_min_tokens / image_max_tokens).
    pub image_min_tokens: u32,
    pub image_max_tokens: u32,
    /// Approximate memory needed to run it (weights, projector and a working context), in GB.
    pub ram_gb: f32,
    pub notes: Option<String>,
}

impl CatalogModel {
    /// Both files, labelled.
    pub fn files(&self) -> [(&'static str, &CatalogFile); 2] {
        [("model", &self.model), ("mmproj", &self.mmproj)]
    }

    /// Total download size, when both sizes are known.
    pub fn download_size(&self) -> Option<u64> {
        Some(self.model.size? + self.mmproj.size?)
    }
}

/// The parsed catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Where it was read from, for messages.
    pub origin: String,
    pub models: Vec<CatalogModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    schema_version: toml::Spanned<u32>,
    #[serde(default)]
    model: Vec<toml::Spanned<RawModel>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: toml::Spanned<String>,
    family: FamilyId,
    repo: toml::Spanned<String>,
    revision: toml::Spanned<String>,
    coordinates: Coordinates,
    image_min_tokens: u32,
    image_max_tokens: toml::Spanned<u32>,
    ram_gb: toml::Spanned<f32>,
    #[serde(default)]
    notes: Option<String>,
    gguf: RawFile,
    mmproj: RawFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    file: toml::Spanned<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    sha256: Option<toml::Spanned<String>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// A TOML error as "message" plus the line it points at.
fn toml_error_line(text: &str, err: &toml::de::Error) -> (usize, String) {
    let line = err
        .span()
        .map_or(1, |span: Range<usize>| line_of(text, span.start));
    (line, err.message().trim().to_string())
}

fn is_safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.starts_with('.')
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A model name users type: lowercase letters, digits, '.', '_' and '-'.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err(format!(
            "the model name {name:?} must be 1 to 100 characters"
        ));
    }
    if name.starts_with(['.', '-'])
        || !name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
    {
        return Err(format!(
            "the model name {name:?} may hold only lowercase letters, digits, '.', '_' and '-', and must not start with '.' or '-'"
        ));
    }
    Ok(())
}

impl Catalog {
    /// The catalog: the file `path`, or the built-in one.
    pub fn load(path: Option<&Path>) -> Result<Catalog, StoreError> {
        match path {
            None => Catalog::parse(BUILTIN_CATALOG, BUILTIN_CATALOG_NAME),
            Some(path) => {
                let text = fs::read_to_string(path).map_err(io_error(format!(
                    "cannot read the catalog {}",
                    path.display()
                )))?;
                Catalog::parse(&text, &path.display().to_string())
            }
        }
    }

    /// Parse catalog text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Catalog, StoreError> {
        let err = |line: usize, message: String| StoreError::Catalog {
            file: origin.to_string(),
            line,
            message,
        };
        let raw: RawCatalog = toml::from_str(text).map_err(|e| {
            let (line, message) = toml_error_line(text, &e);
            err(line, message)
        })?;
        if *raw.schema_version.get_ref() != CATALOG_SCHEMA {
            return Err(err(
                line_of(text, raw.schema_version.span().start),
                format!(
                    "schema_version {} is not supported (this deskhand reads {CATALOG_SCHEMA})",
                    raw.schema_version.get_ref()
                ),
            ));
        }
        let mut names = BTreeSet::new();
        let mut models = Vec::new();
        for entry in raw.model {
            let entry = entry.into_inner();
            let at = |span: Range<usize>| line_of(text, span.start);
            let name = entry.name.get_ref().clone();
            check_name(&name).map_err(|m| err(at(entry.name.span()), m))?;
            if !names.insert(name.clone()) {
                return Err(err(
                    at(entry.name.span()),
                    format!("the model name {name:?} appears twice"),
                ));
            }
            let repo = entry.repo.get_ref();
            let repo_ok = repo
                .split_once('/')
                .is_some_and(|(owner, repo)| is_safe_component(owner) && is_safe_component(repo));
            if !repo_ok {
                return Err(err(
                    at(entry.repo.span()),
                    format!("repo {repo:?} must be a Hugging Face repository, \"owner/name\""),
                ));
            }
            if !is_safe_component(entry.revision.get_ref()) {
                return Err(err(
                    at(entry.revision.span()),
                    format!(
                        "revision {:?} must be a branch, tag or commit name (letters, digits, '.', '_', '-')",
                        entry.revision.get_ref()
                    ),
                ));
            }
            let max_tokens = *entry.image_max_tokens.get_ref();
            if entry.image_min_tokens == 0 || entry.image_min_tokens > max_tokens {
                return Err(err(
                    at(entry.image_max_tokens.span()),
                    format!(
                        "the image-token budget {}..{} is empty: need 0 < image_min_tokens <= image_max_tokens",
                        entry.image_min_tokens, max_tokens
                    ),
                ));
            }
            let ram = *entry.ram_gb.get_ref();
            if !(ram.is_finite() && ram > 0.0) {
                return Err(err(
                    at(entry.ram_gb.span()),
                    format!("ram_gb must be a positive number of gigabytes, not {ram}"),
                ));
            }
            let file = |raw: RawFile| -> Result<CatalogFile, StoreError> {
                let name = raw.file.get_ref().clone();
                if !is_safe_component(&name) {
                    return Err(err(
                        at(raw.file.span()),
                        format!(
                            "file {name:?} must be a plain file name (letters, digits, '.', '_', '-', '+'; no '/')"
                        ),
                    ));
                }
                let sha256 = match raw.sha256 {
                    None => None,
                    Some(sha) => {
                        if !is_sha256_hex(sha.get_ref()) {
                            return Err(err(
                                at(sha.span()),
                                format!(
                                    "sha256 {:?} must be 64 lowercase hexadecimal digits",
                                    sha.get_ref()
                                ),
                            ));
                        }
                        Some(sha.into_inner())
                    }
                };
                Ok(CatalogFile {
                    file: name,
                    size: raw.size,
                    sha256,
                })
            };
            let model = file(entry.gguf)?;
            let mmproj = file(entry.mmproj)?;
            if model.file == mmproj.file {
                return Err(err(
                    at(entry.name.span()),
                    format!("model {name:?} names the same file as its gguf and its mmproj"),
                ));
            }
            models.push(CatalogModel {
                name,
                family: entry.family,
                repo: entry.repo.into_inner(),
                revision: entry.revision.into_inner(),
                model,
                mmproj,
                coordinates: entry.coordinates,
                image_min_tokens: entry.image_min_tokens,
                image_max_tokens: max_tokens,
                ram_gb: ram,
                notes: entry.notes,
            });
        }
        Ok(Catalog {
            origin: origin.to_string(),
            models,
        })
    }

    pub fn get(&self, name: &str) -> Option<&CatalogModel> {
        self.models.iter().find(|m| m.name == name)
    }

    fn require(&self, name: &str) -> Result<&CatalogModel, StoreError> {
        self.get(name).ok_or_else(|| StoreError::UnknownModel {
            name: name.to_string(),
            known: self.models.iter().map(|m| m.name.clone()).collect(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The installed registry
// ---------------------------------------------------------------------------------------------

/// How a model came to be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Downloaded from the catalog by `deskhand models pull`.
    Pulled,
    /// Registered from the user's own files by `deskhand models add`.
    Added,
}

/// Where the recorded sha256 came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sha256Origin {
    /// The file matched the sha256 the catalog pins.
    Catalog,
    /// Computed by deskhand when the file was pulled or added; nothing published to check it
    /// against. `verify` checks later changes against it.
    Computed,
}

/// One installed model (one `[[model]]` of installed.toml).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledModel {
    pub name: String,
    pub family: FamilyId,
    pub source: Source,
    pub sha256_origin: Sha256Origin,
    pub model_path: PathBuf,
    pub model_sha256: String,
    pub model_size: u64,
    pub mmproj_path: PathBuf,
    pub mmproj_sha256: String,
    pub mmproj_size: u64,
}

impl InstalledModel {
    /// Both files: (role, path, sha256, size).
    pub fn files(&self) -> [(&'static str, &Path, &str, u64); 2] {
        [
            (
                "model",
                &self.model_path,
                &self.model_sha256,
                self.model_size,
            ),
            (
                "mmproj",
                &self.mmproj_path,
                &self.mmproj_sha256,
                self.mmproj_size,
            ),
        ]
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstalledToml {
    schema_version: u32,
    #[serde(default)]
    model: Vec<InstalledModel>,
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

/// Where the store keeps things and where it downloads from.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub models_dir: PathBuf,
    /// A catalog file; `None` is the built-in catalog.
    pub catalog: Option<PathBuf>,
    /// The Hub's base URL, without a trailing slash.
    pub endpoint: String,
    /// A Hugging Face token for gated repositories (`HF_TOKEN`).
    pub token: Option<String>,
    /// Progress bars and notes on stderr.
    pub interactive: bool,
}

impl StoreConfig {
    /// The configuration for this user: `DESKHAND_MODELS_DIR` or `<data dir>/models`,
    /// `DESKHAND_CATALOG` or the built-in catalog, `DESKHAND_HF_ENDPOINT` or the Hub, `HF_TOKEN`.
    pub fn from_env() -> Result<StoreConfig, StoreError> {
        let nonempty = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
        let models_dir = match nonempty(ENV_MODELS_DIR) {
            Some(dir) => PathBuf::from(dir),
            None => directories::ProjectDirs::from("", "", "deskhand")
                .ok_or(StoreError::NoDataDir)?
                .data_dir()
                .join("models"),
        };
        Ok(StoreConfig {
            models_dir,
            catalog: nonempty(ENV_CATALOG).map(PathBuf::from),
            endpoint: nonempty(ENV_ENDPOINT)
                .and_then(|v| v.into_string().ok())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token: nonempty(ENV_HF_TOKEN).and_then(|v| v.into_string().ok()),
            interactive: true,
        })
    }

    /// A quiet configuration for `models_dir` (tests, embedding): built-in catalog, the Hub.
    pub fn new(models_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            models_dir: models_dir.into(),
            catalog: None,
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            interactive: false,
        }
    }
}

/// What `pull` did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileAction {
    Downloaded,
    /// A download continued from a partial file.
    Resumed {
        from: u64,
    },
    /// The file was already in place with the right sha256.
    AlreadyPresent,
}

/// The result of a pull.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    pub model: InstalledModel,
    /// (file name, what happened) for the model and the mmproj.
    pub files: Vec<(String, FileAction)>,
    /// Files the catalog has no sha256 for: recorded with the sha256 computed now.
    pub unverified: Vec<String>,
}

/// What `add` is given.
#[derive(Debug, Clone, Default)]
pub struct AddRequest {
    pub model: PathBuf,
    pub mmproj: Option<PathBuf>,
    pub family: Option<FamilyId>,
    pub name: Option<String>,
}

/// The state of one installed file, as `verify` found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStatus {
    Ok,
    Missing,
    Changed { expected: String, actual: String },
}

/// One line of `verify`'s report.
#[derive(Debug, Clone)]
pub struct FileCheck {
    pub name: String,
    pub role: &'static str,
    pub path: PathBuf,
    pub status: FileStatus,
}

/// One row of `list`.
#[derive(Debug, Clone)]
pub struct ListRow {
    pub name: String,
    pub family: FamilyId,
    /// In the catalog (else added by the user).
    pub in_catalog: bool,
    pub download_size: Option<u64>,
    pub ram_gb: Option<f32>,
    /// The registry entry, if installed.
    pub installed: Option<InstalledModel>,
    /// Whether both installed files are present on disk (not re-hashed: see `verify`).
    pub files_present: bool,
}

/// The model store: catalog, installed registry, downloads.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    catalog: Catalog,
}

impl Store {
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let catalog = Catalog::load(config.catalog.as_deref())?;
        Ok(Store { config, catalog })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn models_dir(&self) -> &Path {
        &self.config.models_dir
    }

    pub fn registry_path(&self) -> PathBuf {
        self.config.models_dir.join(INSTALLED_FILE)
    }

    /// The installed models (none when installed.toml does not exist yet).
    pub fn installed(&self) -> Result<Vec<InstalledModel>, StoreError> {
        let path = self.registry_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(format!("cannot read {}", path.display()))(e)),
        };
        let file = path.display().to_string();
        let parsed: InstalledToml = toml::from_str(&text).map_err(|e| {
            let (line, message) = toml_error_line(&text, &e);
            StoreError::Registry {
                file: file.clone(),
                line,
                message,
            }
        })?;
        if parsed.schema_version != INSTALLED_SCHEMA {
            return Err(StoreError::Registry {
                file,
                line: 1,
                message: format!(
                    "schema_version {} is not supported (this deskhand reads {INSTALLED_SCHEMA})",
                    parsed.schema_version
                ),
            });
        }
        Ok(parsed.model)
    }

    /// The installed model called `name`.
    pub fn find_installed(&self, name: &str) -> Result<Option<InstalledModel>, StoreError> {
        Ok(self.installed()?.into_iter().find(|m| m.name == name))
    }

    /// Replace (or add) the entry for `model.name` and write installed.toml atomically.
    fn record(&self, model: InstalledModel) -> Result<(), StoreError> {
        let mut models = self.installed()?;
        models.retain(|m| m.name != model.name);
        models.push(model);
        models.sort_by(|a, b| a.name.cmp(&b.name));
        let doc = InstalledToml {
            schema_version: INSTALLED_SCHEMA,
            model: models,
        };
        let body = toml::to_string(&doc).map_err(|e| StoreError::Io {
            context: format!("cannot write {}", self.registry_path().display()),
            source: io::Error::other(e.to_string()),
        })?;
        let text = format!(
            "# Models installed on this machine. Written by deskhand (`deskhand models pull/add`);\n\
             # `deskhand models verify` checks every file against the sha256 recorded here.\n{body}"
        );
        write_atomically(&self.registry_path(), text.as_bytes())
    }

    // -----------------------------------------------------------------------------------------
    // pull
    // -----------------------------------------------------------------------------------------

    /// Download a catalog model's GGUF and mmproj, verify them, and record the model.
    pub fn pull(&self, name: &str) -> Result<PullOutcome, StoreError> {
        let entry = self.catalog.require(name)?.clone();
        let dir = self.config.models_dir.join(&entry.name);
        fs::create_dir_all(&dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
        let previous = self.find_installed(&entry.name)?;
        let client = self.client()?;

        let mut actions = Vec::new();
        let mut unverified = Vec::new();
        let mut results = Vec::new();
        for (role, file) in entry.files() {
            let dest = dir.join(&file.file);
            // Without a published sha256, a previous pull's computed one still tells whether
            // the file on disk is the one that was installed.
            let recorded = previous.as_ref().and_then(|p| {
                p.files()
                    .into_iter()
                    .find(|(r, path, _, _)| *r == role && *path == dest)
                    .map(|(_, _, sha, _)| sha.to_string())
            });
            if file.sha256.is_none() {
                unverified.push(file.file.clone());
                self.note(&format!(
                    "note: the catalog has no sha256 for {} ({}), so this download cannot be checked \
                     against a published hash. deskhand records the sha256 it computes now, and \
                     `deskhand models verify` checks the file against that from now on.",
                    file.file, entry.repo
                ));
            }
            let expected = file.sha256.clone().or(recorded);
            let (sha, size, action) = self.fetch(&client, &entry, role, file, &dest, expected)?;
            actions.push((file.file.clone(), action));
            results.push((dest, sha, size));
        }
        let [
            (model_path, model_sha256, model_size),
            (mmproj_path, mmproj_sha256, mmproj_size),
        ]: [_; 2] = results.try_into().map_err(|_| StoreError::Io {
            context: "internal error".into(),
            source: io::Error::other("expected two files"),
        })?;

        // The files are the ones the catalog names; check that they make a vision model
        // llama.cpp will load before calling the model installed.
        check_pair(&model_path, &mmproj_path)?;

        let installed = InstalledModel {
            name: entry.name.clone(),
            family: entry.family,
            source: Source::Pulled,
            sha256_origin: if unverified.is_empty() {
                Sha256Origin::Catalog
            } else {
                Sha256Origin::Computed
            },
            model_path,
            model_sha256,
            model_size,
            mmproj_path,
            mmproj_sha256,
            mmproj_size,
        };
        self.record(installed.clone())?;
        Ok(PullOutcome {
            model: installed,
            files: actions,
            unverified,
        })
    }

    fn client(&self) -> Result<reqwest::blocking::Client, StoreError> {
        reqwest::blocking::Client::builder()
            .user_agent(concat!("deskhand/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // The blocking client applies this to each wait (headers, every body read), so it
            // catches a stalled transfer without limiting a long download.
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| StoreError::Network {
                url: self.config.endpoint.clone(),
                detail: error_chain(&e),
            })
    }

    /// The Hub URL of a catalog file.
    pub fn file_url(&self, entry: &CatalogModel, file: &CatalogFile) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.config.endpoint.trim_end_matches('/'),
            entry.repo,
            entry.revision,
            file.file
        )
    }

    /// Put one file in place at `dest`, verified; returns (sha256, size, action).
    fn fetch(
        &self,
        client: &reqwest::blocking::Client,
        entry: &CatalogModel,
        role: &str,
        file: &CatalogFile,
        dest: &Path,
        expected: Option<String>,
    ) -> Result<(String, u64, FileAction), StoreError> {
        if dest.is_file() {
            if let Some(expected) = &expected {
                let (sha, size) = self.hash_file(dest, &format!("checking {}", file.file))?;
                if &sha == expected && file.size.is_none_or(|s| s == size) {
                    return Ok((sha, size, FileAction::AlreadyPresent));
                }
                self.note(&format!(
                    "{} is already in {} but its sha256 is {sha}, not {expected}: downloading it again",
                    file.file,
                    dest.parent().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
                ));
            }
            fs::remove_file(dest).map_err(io_error(format!("cannot remove {}", dest.display())))?;
        }

        let url = self.file_url(entry, file);
        let partial = partial_path(dest);
        let (sha, size, action) = self.download(client, &url, &partial, file, role)?;

        if let Some(want) = file.size.filter(|&want| want != size) {
            remove_quietly(&partial);
            return Err(StoreError::SizeMismatch {
                name: entry.name.clone(),
                file: file.file.clone(),
                expected: want,
                actual: size,
            });
        }
        if let Some(expected) = expected.filter(|e| *e != sha) {
            remove_quietly(&partial);
            return Err(StoreError::Sha256Mismatch {
                name: entry.name.clone(),
                file: file.file.clone(),
                expected,
                actual: sha,
            });
        }
        fs::rename(&partial, dest).map_err(io_error(format!(
            "cannot move {} to {}",
            partial.display(),
            dest.display()
        )))?;
        Ok((sha, size, action))
    }

    /// Download `url` into `partial`, resuming from its current length. Returns the sha256 and
    /// size of the whole file.
    fn download(
        &self,
        client: &reqwest::blocking::Client,
        url: &str,
        partial: &Path,
        file: &CatalogFile,
        role: &str,
    ) -> Result<(String, u64, FileAction), StoreError> {
        let network = |e: reqwest::Error| StoreError::Network {
            url: url.to_string(),
            detail: error_chain(&e),
        };
        // At most two requests: a resume the server refuses (416, wrong range) starts over once.
        for attempt in 0..2 {
            let offset = match fs::metadata(partial) {
                Ok(meta) if attempt == 0 => meta.len(),
                Ok(_) => {
                    remove_quietly(partial);
                    0
                }
                Err(_) => 0,
            };
            let mut request = client.get(url);
            if offset > 0 {
                request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
            }
            if let Some(token) = &self.config.token {
                request = request.bearer_auth(token);
            }
            let mut response = request.send().map_err(network)?;
            let status = response.status().as_u16();
            let content_range = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);

            let (start, total) = match status {
                206 => match content_range.as_deref().and_then(parse_content_range) {
                    Some((start, total)) if start == offset => (offset, total),
                    _ => {
                        self.note(&format!(
                            "the server answered the resume request for {} with an unexpected range ({}); starting over",
                            file.file,
                            content_range.as_deref().unwrap_or("none")
                        ));
                        drop(response);
                        remove_quietly(partial);
                        continue;
                    }
                },
                200 => {
                    if offset > 0 {
                        self.note(&format!(
                            "the server ignored the request to resume {} at byte {offset}; downloading it from the start",
                            file.file
                        ));
                    }
                    (0, response.content_length())
                }
                416 if offset > 0 => {
                    let total = content_range
                        .as_deref()
                        .and_then(|r| r.strip_prefix("bytes */"))
                        .and_then(|t| t.trim().parse::<u64>().ok());
                    if total == Some(offset) {
                        // The partial file is already complete.
                        let (sha, size) =
                            self.hash_file(partial, &format!("checking {}", file.file))?;
                        return Ok((sha, size, FileAction::Resumed { from: offset }));
                    }
                    drop(response);
                    remove_quietly(partial);
                    continue;
                }
                _ => {
                    return Err(StoreError::HttpStatus {
                        url: url.to_string(),
                        status,
                        hint: match status {
                            401 | 403 => {
                                ": the repository may be gated or private; accept its terms on the Hub and set HF_TOKEN"
                            }
                            404 => {
                                ": the file or revision is not on the Hub (a catalog error, or DESKHAND_HF_ENDPOINT points elsewhere)"
                            }
                            _ => "",
                        },
                    });
                }
            };

            let mut hasher = Sha256::new();
            let out = if start > 0 {
                self.hash_prefix(partial, start, &mut hasher, &file.file)?;
                OpenOptions::new().append(true).open(partial)
            } else {
                File::create(partial)
            }
            .map_err(io_error(format!("cannot write {}", partial.display())))?;
            let mut out = BufWriter::with_capacity(1 << 20, out);

            let expected_total = total.or(file.size);
            let bar = self.bar(expected_total, format!("{role} {}", file.file));
            bar.set_position(start);
            bar.reset_eta();
            let mut got = start;
            let mut buf = vec![0u8; 256 * 1024];
            let read_error = loop {
                match response.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => {
                        let chunk = &buf[..n];
                        out.write_all(chunk)
                            .map_err(io_error(format!("cannot write {}", partial.display())))?;
                        hasher.update(chunk);
                        got += n as u64;
                        bar.set_position(got);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Some(e),
                }
            };
            let flushed = out
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all());
            flushed.map_err(io_error(format!("cannot write {}", partial.display())))?;

            let short = total.is_some_and(|t| got < t);
            if read_error.is_some() || short {
                bar.abandon();
                return Err(StoreError::Interrupted {
                    file: file.file.clone(),
                    got,
                    expected: expected_total
                        .map_or("an unknown number of".into(), |t| t.to_string()),
                    detail: read_error.map_or_else(
                        || "the server closed the connection early".to_string(),
                        |e| error_chain(&e),
                    ),
                    partial: partial.to_path_buf(),
                });
            }
            bar.finish_and_clear();
            let sha = hex(&hasher.finalize());
            let action = if start > 0 {
                FileAction::Resumed { from: start }
            } else {
                FileAction::Downloaded
            };
            return Ok((sha, got, action));
        }
        Err(StoreError::Network {
            url: url.to_string(),
            detail: "the server refused to resume the download twice".into(),
        })
    }

    /// Feed the first `len` bytes of `path` to `hasher` (resuming a download).
    fn hash_prefix(
        &self,
        path: &Path,
        len: u64,
        hasher: &mut Sha256,
        label: &str,
    ) -> Result<(), StoreError> {
        let context = || format!("cannot read {}", path.display());
        let mut f = File::open(path).map_err(io_error(context()))?.take(len);
        let bar = self.bar(Some(len), format!("hashing the partial {label}"));
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io_error(context()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// sha256 and length of a file, with a progress bar when interactive.
    fn hash_file(&self, path: &Path, label: &str) -> Result<(String, u64), StoreError> {
        let len = fs::metadata(path).map(|m| m.len()).ok();
        let bar = self.bar(len, label.to_string());
        let result = sha256_file(path, |n| bar.inc(n))
            .map_err(io_error(format!("cannot read {}", path.display())));
        bar.finish_and_clear();
        result
    }

    fn bar(&self, len: Option<u64>, message: String) -> ProgressBar {
        if !self.config.interactive {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
        let template = if len.is_some() {
            "{msg}\n  [{bar:40.cyan/blue}] {bytes}/{total_bytes}  {binary_bytes_per_sec}  ETA {eta}"
        } else {
            "{msg}\n  {spinner} {bytes}  {binary_bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message);
        bar
    }

    fn note(&self, message: &str) {
        if self.config.interactive {
            eprintln!("{message}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // add
    // -----------------------------------------------------------------------------------------

    /// Register model files the user already has, after checking them.
    pub fn add(&self, request: &AddRequest) -> Result<InstalledModel, StoreError> {
        let model_path = &request.model;
        let mmproj_path = match &request.mmproj {
            Some(path) => path,
            None => {
                require_file(model_path, "model")?;
                let model = read_gguf(model_path, "model")?;
                if model.is_mmproj() {
                    return Err(StoreError::NotAModel {
                        path: model_path.clone(),
                    });
                }
                return Err(StoreError::NoVision {
                    model: model_path.clone(),
                    reason: format!(
                        "no mmproj was given. deskhand needs the model's vision projector too: pass it with --mmproj FILE{}",
                        mmproj_suggestion(model_path)
                    ),
                });
            }
        };
        let (model, _mmproj) = check_pair(model_path, mmproj_path)?;

        let family = match request.family {
            Some(family) => family,
            None => guess_family(&model, model_path).ok_or_else(|| StoreError::UnknownFamily {
                path: model_path.clone(),
                arch: model.architecture().unwrap_or("").to_string(),
                name: model.name().unwrap_or("").to_string(),
            })?,
        };
        let name = match &request.name {
            Some(name) => name.clone(),
            None => default_name(model_path),
        };
        check_name(&name)
            .map_err(|m| StoreError::BadName(format!("{m}; choose one with --name")))?;
        if self.catalog.get(&name).is_some() {
            return Err(StoreError::BadName(format!(
                "the name {name:?} belongs to a catalog model (`deskhand models pull {name}` installs it); choose another with --name"
            )));
        }

        let model_abs = absolute(model_path)?;
        let mmproj_abs = absolute(mmproj_path)?;
        let (model_sha256, model_size) =
            self.hash_file(&model_abs, &format!("hashing {}", model_abs.display()))?;
        let (mmproj_sha256, mmproj_size) =
            self.hash_file(&mmproj_abs, &format!("hashing {}", mmproj_abs.display()))?;
        let installed = InstalledModel {
            name,
            family,
            source: Source::Added,
            sha256_origin: Sha256Origin::Computed,
            model_path: model_abs,
            model_sha256,
            model_size,
            mmproj_path: mmproj_abs,
            mmproj_sha256,
            mmproj_size,
        };
        self.record(installed.clone())?;
        Ok(installed)
    }

    // -----------------------------------------------------------------------------------------
    // verify and list
    // -----------------------------------------------------------------------------------------

    /// Re-hash every installed file.
    pub fn verify(&self) -> Result<Vec<FileCheck>, StoreError> {
        let mut checks = Vec::new();
        for model in self.installed()? {
            for (role, path, sha, _) in model.files() {
                let status = if !path.is_file() {
                    FileStatus::Missing
                } else {
                    let label = format!("verifying {}", path.display());
                    match self.hash_file(path, &label) {
                        Ok((actual, _)) if actual == sha => FileStatus::Ok,
                        Ok((actual, _)) => FileStatus::Changed {
                            expected: sha.to_string(),
                            actual,
                        },
                        Err(StoreError::Io { source, .. })
                            if source.kind() == io::ErrorKind::NotFound =>
                        {
                            FileStatus::Missing
                        }
                        Err(e) => return Err(e),
                    }
                };
                checks.push(FileCheck {
                    name: model.name.clone(),
                    role,
                    path: path.to_path_buf(),
                    status,
                });
            }
        }
        Ok(checks)
    }

    /// The catalog, marked with what is installed, then the added models.
    pub fn list(&self) -> Result<Vec<ListRow>, StoreError> {
        let installed = self.installed()?;
        let present = |m: &InstalledModel| m.model_path.is_file() && m.mmproj_path.is_file();
        let mut rows: Vec<ListRow> = self
            .catalog
            .models
            .iter()
            .map(|c| {
                let inst = installed.iter().find(|m| m.name == c.name).cloned();
                ListRow {
                    name: c.name.clone(),
                    family: c.family,
                    in_catalog: true,
                    download_size: c.download_size(),
                    ram_gb: Some(c.ram_gb),
                    files_present: inst.as_ref().is_some_and(present),
                    installed: inst,
                }
            })
            .collect();
        for m in installed {
            if self.catalog.get(&m.name).is_none() {
                rows.push(ListRow {
                    name: m.name.clone(),
                    family: m.family,
                    in_catalog: false,
                    download_size: Some(m.model_size + m.mmproj_size),
                    ram_gb: None,
                    files_present: present(&m),
                    installed: Some(m),
                });
            }
        }
        Ok(rows)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation of model files
// ---------------------------------------------------------------------------------------------

fn require_file(path: &Path, role: &'static str) -> Result<(), StoreError> {
    if path.is_file() {
        return Ok(());
    }
    let hint = if path.is_dir() {
        ": it is a directory; give the .gguf file inside it".to_string()
    } else if path.is_relative() {
        format!(
            " (relative paths are taken from {})",
            std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "the current directory".into())
        )
    } else {
        String::new()
    };
    Err(StoreError::FileMissing {
        role,
        path: path.to_path_buf(),
        hint,
    })
}

fn read_gguf(path: &Path, role: &'static str) -> Result<Gguf, StoreError> {
    gguf::read_file(path).map_err(|source| match source {
        GgufError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            StoreError::FileMissing {
                role,
                path: path.to_path_buf(),
                hint: String::new(),
            }
        }
        source => StoreError::BadGguf {
            role,
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Check that `model` is a language model GGUF and `mmproj` a vision projector that fits it,
/// the way llama.cpp's mtmd checks them when it loads the pair.
pub fn check_pair(model_path: &Path, mmproj_path: &Path) -> Result<(Gguf, Gguf), StoreError> {
    require_file(model_path, "model")?;
    require_file(mmproj_path, "mmproj")?;
    let model = read_gguf(model_path, "model")?;
    if model.is_mmproj() {
        return Err(StoreError::NotAModel {
            path: model_path.to_path_buf(),
        });
    }
    let mmproj = read_gguf(mmproj_path, "mmproj")?;
    if !mmproj.is_mmproj() {
        return Err(StoreError::NotAnMmproj {
            path: mmproj_path.to_path_buf(),
            arch: mmproj.architecture().unwrap_or("").to_string(),
        });
    }
    if !mmproj.has_vision_encoder() {
        let what = if mmproj.get_bool("clip.has_audio_encoder") == Some(true) {
            "an audio encoder only"
        } else {
            "no vision encoder (clip.has_vision_encoder is not true)"
        };
        return Err(StoreError::NoVision {
            model: model_path.to_path_buf(),
            reason: format!(
                "its mmproj {} has {what}. Use the vision mmproj of this model",
                mmproj_path.display()
            ),
        });
    }
    let text = model
        .input_embedding_width()
        .ok_or_else(|| StoreError::UnknownWidth {
            path: model_path.to_path_buf(),
            what: "the embedding length",
            why: match model.architecture() {
                Some(arch) => format!("it has no {arch}.embedding_length key"),
                None => "it has no general.architecture key".into(),
            },
        })?;
    let vision = mmproj
        .projection_width()
        .ok_or_else(|| StoreError::UnknownWidth {
            path: mmproj_path.to_path_buf(),
            what: "the projection width",
            why: format!(
                "projector type {:?} has neither the tensor llama.cpp reads the width from nor clip.vision.projection_dim",
                mmproj.projector_type().unwrap_or("")
            ),
        })?;
    if text.total != vision.total {
        return Err(StoreError::WidthMismatch(Box::new(WidthMismatch {
            model: model_path.to_path_buf(),
            mmproj: mmproj_path.to_path_buf(),
            text,
            vision,
        })));
    }
    Ok((model, mmproj))
}

/// The family of a model from its GGUF metadata: qwen2vl is Qwen2.5-VL unless its name says
/// UI-TARS, qwen3vl is Qwen3-VL, gemma3 is Gemma 3.
pub fn guess_family(model: &Gguf, path: &Path) -> Option<FamilyId> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let says_ui_tars = [
        model.name(),
        model.get_str("general.basename"),
        model.get_str("general.finetune"),
        path.file_name().and_then(|n| n.to_str()),
    ]
    .into_iter()
    .flatten()
    .any(|s| squash(s).contains("uitars"));
    match model.architecture()? {
        "qwen2vl" if says_ui_tars => Some(FamilyId::UiTars),
        "qwen2vl" => Some(FamilyId::Qwen25Vl),
        "qwen3vl" | "qwen3vlmoe" => Some(FamilyId::Qwen3Vl),
        "gemma3" => Some(FamilyId::Gemma3),
        _ => None,
    }
}

/// A registry name from a file name: "Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf" ->
/// "qwen2.5-vl-7b-instruct-q4_k_m".
fn default_name(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let mut name: String = stem
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_start_matches(['.', '-']).to_string();
    name.truncate(100);
    if name.is_empty() {
        name = "model".into();
    }
    name
}

/// ", e.g. --mmproj <file>" when a likely mmproj sits next to the model.
fn mmproj_suggestion(model_path: &Path) -> String {
    let Some(dir) = model_path.parent() else {
        return String::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return String::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(str::to_ascii_lowercase)
                .is_some_and(|n| n.contains("mmproj") && n.ends_with(".gguf"))
        })
        .collect();
    found.sort();
    match found.as_slice() {
        [] => ". LM Studio and the Hub keep it next to the model, named mmproj-*.gguf".into(),
        [one] => format!(
            " (this one is next to the model: --mmproj {})",
            one.display()
        ),
        many => format!(
            " (next to the model: {})",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn absolute(path: &Path) -> Result<PathBuf, StoreError> {
    fs::canonicalize(path).map_err(io_error(format!("cannot resolve {}", path.display())))
}

/// `<dest>.partial`.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
        _ => {}
    }
}

/// "bytes START-END/TOTAL" -> (START, Some(TOTAL)); TOTAL "*" is unknown.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => {
            let t: u64 = t.parse().ok()?;
            if end >= t {
                return None;
            }
            Some(t)
        }
    };
    Some((start, total))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streaming sha256 of a file; `progress` gets each chunk's length.
pub fn sha256_file(path: &Path, mut progress: impl FnMut(u64)) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        progress(n as u64);
    }
    Ok((hex(&hasher.finalize()), total))
}

/// Write `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash leaves either the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        remove_quietly(&tmp);
        return Err(io_error(format!("cannot write {}", tmp.display()))(e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        remove_quietly(&tmp);
        return Err(io_error(format!("cannot replace {}", path.display()))(e));
    }
    // Make the rename itself durable where the platform allows opening a directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An error and its causes on one line (reqwest hides the useful part in the sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::fixture::GgufWriter;

    #[test]
    fn the_builtin_catalog_parses_and_covers_the_families() {
        let catalog = Catalog::load(None).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = catalog.models.iter().map(|m| m.name.as_str()).collect();
        for want in [
            "ui-tars-1.5-7b",
            "qwen2.5-vl-3b",
            "qwen2.5-vl-7b",
            "qwen3-vl-2b",
            "qwen3-vl-4b",
            "qwen3-vl-8b",
            "gemma-3-4b",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        for family in [
            FamilyId::UiTars,
            FamilyId::Qwen25Vl,
            FamilyId::Qwen3Vl,
            FamilyId::Gemma3,
        ] {
            assert!(catalog.models.iter().any(|m| m.family == family));
        }
        for m in &catalog.models {
            assert!(m.model.file.ends_with(".gguf") && m.mmproj.file.ends_with(".gguf"));
            assert!(m.mmproj.file.to_ascii_lowercase().contains("mmproj"));
        }
    }

    #[test]
    fn catalog_errors_name_the_file_and_line() {
        let text =
            "schema_version = 1\n\n[[model]]\nname = \"x\"\nfamily = \"qwen3-vl\"\nbogus = 1\n";
        let err = Catalog::parse(text, "my-catalog.toml").expect_err("unknown field");
        let msg = err.to_string();
        assert!(msg.starts_with("my-catalog.toml:"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
        assert!(err.is_bad_input());

        let good = |sha: &str| {
            format!(
                "schema_version = 1\n[[model]]\nname = \"m\"\nfamily = \"gemma3\"\nrepo = \"o/r\"\n\
                 revision = \"main\"\ncoordinates = \"normalized-1000\"\nimage_min_tokens = 256\n\
                 image_max_tokens = 256\nram_gb = 4.0\n[model.gguf]\nfile = \"m.gguf\"\n\
                 sha256 = \"{sha}\"\n[model.mmproj]\nfile = \"mmproj.gguf\"\n"
            )
        };
        let sha = "a".repeat(64);
        Catalog::parse(&good(&sha), "c.toml").expect("valid");
        let err = Catalog::parse(&good("ABC"), "c.toml").expect_err("bad sha");
        assert!(err.to_string().starts_with("c.toml:13:"), "{err}");

        let bad_family = good(&sha).replace("gemma3", "llava");
        let err = Catalog::parse(&bad_family, "c.toml").expect_err("bad family");
        assert!(err.to_string().starts_with("c.toml:4:"), "{err}");

        let traversal = good(&sha).replace("m.gguf", "../../etc/passwd");
        let err = Catalog::parse(&traversal, "c.toml").expect_err("path");
        assert!(err.to_string().contains("plain file name"), "{err}");
    }

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 0-10/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn family_guesses() {
        let g = |arch: &str, name: &str| {
            let bytes = GgufWriter::new()
                .str("general.architecture", arch)
                .str("general.name", name)
                .build();
            gguf::parse_bytes(&bytes, "x").expect("parses")
        };
        let p = Path::new("model.gguf");
        assert_eq!(
            guess_family(&g("qwen2vl", "Qwen2.5 VL 7B Instruct"), p),
            Some(FamilyId::Qwen25Vl)
        );
        assert_eq!(
            guess_family(&g("qwen2vl", "UI TARS 1.5 7B"), p),
            Some(FamilyId::UiTars)
        );
        assert_eq!(
            guess_family(
                &g("qwen2vl", "model"),
                Path::new("UI-TARS-1.5-7B.Q4_K_M.gguf")
            ),
            Some(FamilyId::UiTars)
        );
        assert_eq!(guess_family(&g("qwen3vl", "x"), p), Some(FamilyId::Qwen3Vl));
        assert_eq!(guess_family(&g("gemma3", "x"), p), Some(FamilyId::Gemma3));
        assert_eq!(guess_family(&g("llama", "x"), p), None);
    }

    #[test]
    fn names_from_files() {
        assert_eq!(
            default_name(Path::new("/x/Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf")),
            "qwen2.5-vl-7b-instruct-q4_k_m"
        );
        assert_eq!(default_name(Path::new("My Model (1).gguf")), "my-model--1-");
        assert!(check_name(&default_name(Path::new("-.gguf"))).is_ok());
    }
}
