//! The model store: the catalog, the installed models and downloads, one concern a file.
//!
//! - `catalog`: `models/catalog.toml` (built into the binary; `DESKHAND_CATALOG` names another
//!   file), the models deskhand knows how to download.
//! - `installed`: `installed.toml` in the models directory, the models on this machine.
//! - `download`: resumable, hashed downloads from the Hugging Face Hub.
//! - The compatibility of a model and its projector is `crate::model::compat`'s, because the
//!   engine checks it too.
//!
//! The models directory is `<data dir>/models` (`~/.local/share/deskhand/models` on Linux), or
//! `DESKHAND_MODELS_DIR`.

mod catalog;
mod download;
mod installed;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use thiserror::Error;

use crate::model::compat::{self, CompatError, check_pair, guess_family};
use crate::model::family::FamilyId;

pub use catalog::{
    BUILTIN_CATALOG, BUILTIN_CATALOG_NAME, Catalog, CatalogFile, CatalogModel, Coordinates,
};
// The payload of `CompatError::WidthMismatch`, also at the path it had before the check moved.
pub use compat::WidthMismatch;
pub use download::{FileAction, partial_path, sha256_file};
pub use installed::{INSTALLED_FILE, InstalledModel, Sha256Origin, Source, write_atomically};

use catalog::check_name;
use installed::Registry;

/// The Hugging Face Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

const ENV_MODELS_DIR: &str = "DESKHAND_MODELS_DIR";
const ENV_CATALOG: &str = "DESKHAND_CATALOG";
const ENV_ENDPOINT: &str = "DESKHAND_HF_ENDPOINT";
const ENV_HF_TOKEN: &str = "HF_TOKEN";

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
    /// The model and projector do not make a loadable pair (`compat`'s checks).
    #[error(transparent)]
    Compat(#[from] CompatError),
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
                | StoreError::Compat(_)
                | StoreError::UnknownFamily { .. }
                | StoreError::BadName(_)
        )
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
        _ => {}
    }
}

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
    registry: Registry,
}

impl Store {
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let catalog = Catalog::load(config.catalog.as_deref())?;
        let registry = Registry::new(config.models_dir.join(INSTALLED_FILE));
        Ok(Store {
            config,
            catalog,
            registry,
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn models_dir(&self) -> &Path {
        &self.config.models_dir
    }

    pub fn registry_path(&self) -> PathBuf {
        self.registry.path().to_path_buf()
    }

    /// The installed models (none when installed.toml does not exist yet).
    pub fn installed(&self) -> Result<Vec<InstalledModel>, StoreError> {
        self.registry.load()
    }

    /// The installed model called `name`.
    pub fn find_installed(&self, name: &str) -> Result<Option<InstalledModel>, StoreError> {
        Ok(self.installed()?.into_iter().find(|m| m.name == name))
    }

    /// Replace (or add) the entry for `model.name`, under the registry's lock.
    fn record(&self, model: InstalledModel) -> Result<(), StoreError> {
        self.registry.record(model)
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
                compat::require_file(model_path, "model")?;
                let model = compat::read_gguf(model_path, "model")?;
                if model.is_mmproj() {
                    return Err(CompatError::NotAModel {
                        path: model_path.clone(),
                    }
                    .into());
                }
                return Err(CompatError::NoVision {
                    model: model_path.clone(),
                    reason: format!(
                        "no mmproj was given. deskhand needs the model's vision projector too: pass it with --mmproj FILE{}",
                        mmproj_suggestion(model_path)
                    ),
                }
                .into());
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

fn absolute(path: &Path) -> Result<PathBuf, StoreError> {
    fs::canonicalize(path).map_err(io_error(format!("cannot resolve {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_files() {
        assert_eq!(
            default_name(Path::new("/x/Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf")),
            "qwen2.5-vl-7b-instruct-q4_k_m"
        );
        assert_eq!(default_name(Path::new("My Model (1).gguf")), "my-model--1-");
        assert!(check_name(&default_name(Path::new("-.gguf"))).is_ok());
    }

    #[test]
    fn compatibility_errors_keep_their_text_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.gguf");
        let html = dir.path().join("page.gguf");
        fs::write(&html, b"<!doctype html>").unwrap();
        let cases = [
            (
                compat::require_file(&missing, "model").unwrap_err(),
                compat::require_file(&missing, "model").unwrap_err(),
            ),
            (
                compat::read_gguf(&html, "mmproj").unwrap_err(),
                compat::read_gguf(&html, "mmproj").unwrap_err(),
            ),
        ];
        for (compat_error, again) in cases {
            let text = compat_error.to_string();
            let store_error = StoreError::from(again);
            assert_eq!(store_error.to_string(), text);
            assert!(store_error.is_bad_input(), "{store_error}");
        }
        let err = StoreError::from(CompatError::NotAModel {
            path: missing.clone(),
        });
        assert!(
            matches!(err, StoreError::Compat(CompatError::NotAModel { .. })),
            "{err}"
        );
        let err = StoreError::from(CompatError::UnknownWidth {
            path: missing,
            what: "the projection width",
            why: "no key".into(),
        });
        assert!(
            matches!(err, StoreError::Compat(CompatError::UnknownWidth { .. })),
            "{err}"
        );
    }
}
