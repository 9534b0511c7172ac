//! The installed registry (`installed.toml` in the models directory): the models on this
//! machine, pulled from the catalog or added from files the user already had.
//!
//! A model is recorded only after its files are verified. Every change happens under an
//! exclusive lock and replaces the file atomically, like the grant store's: two `deskhand
//! models pull/add` may run at once, and each reads the registry, adds its entry and writes it
//! back, so without the lock the later write would silently drop the earlier one's model.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::catalog::toml_error_line;
use super::{StoreError, io_error};
use crate::model::family::FamilyId;

/// The installed registry's file name, inside the models directory.
pub const INSTALLED_FILE: &str = "installed.toml";

const INSTALLED_SCHEMA: u32 = 1;

const HEADER: &str = "# Models installed on this machine. Written by deskhand (`deskhand models pull/add`);\n\
                      # `deskhand models verify` checks every file against the sha256 recorded here.\n";

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

/// installed.toml at one path.
#[derive(Debug, Clone)]
pub(super) struct Registry {
    path: PathBuf,
}

impl Registry {
    pub(super) fn new(path: PathBuf) -> Registry {
        Registry { path }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The installed models (none when installed.toml does not exist yet). Reading needs no
    /// lock: the file is only ever replaced whole, so a reader sees the old list or the new.
    pub(super) fn load(&self) -> Result<Vec<InstalledModel>, StoreError> {
        let path = &self.path;
        let text = match fs::read_to_string(path) {
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

    /// Replace (or add) the entry for `model.name` and write installed.toml atomically.
    pub(super) fn record(&self, model: InstalledModel) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        // Read under the lock: another pull or add may have written since this one started.
        let mut models = self.load()?;
        models.retain(|m| m.name != model.name);
        models.push(model);
        models.sort_by(|a, b| a.name.cmp(&b.name));
        let doc = InstalledToml {
            schema_version: INSTALLED_SCHEMA,
            model: models,
        };
        let body = toml::to_string(&doc).map_err(|e| StoreError::Io {
            context: format!("cannot write {}", self.path.display()),
            source: io::Error::other(e.to_string()),
        })?;
        write_atomically(&self.path, format!("{HEADER}{body}").as_bytes())
    }

    /// Takes the registry's exclusive lock, held until the returned file is dropped. The lock
    /// is on a sidecar file because installed.toml itself is replaced by rename, and a lock on
    /// a replaced file no longer excludes anyone.
    fn lock(&self) -> Result<File, StoreError> {
        let dir = parent_dir(&self.path);
        fs::create_dir_all(dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
        let lock_path = sibling(&self.path, ".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(format!(
                "cannot open the lock file {} (it guards {}; check the directory's permissions)",
                lock_path.display(),
                self.path.display()
            )))?;
        file.lock().map_err(io_error(format!(
            "cannot lock {} (it guards {}; a file system without locks, such as some network mounts, cannot hold the models directory: set DESKHAND_MODELS_DIR to a local directory)",
            lock_path.display(),
            self.path.display()
        )))?;
        Ok(file)
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Write `bytes` to `path` atomically (`crate::files`), creating its directory. Callers that
/// read, change and write back must hold a lock around all three (see `Registry::record`);
/// this alone does not stop two writers from overwriting each other.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
    crate::files::write_bytes_atomically(path, bytes)
        .map_err(io_error(format!("cannot replace {}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn model(name: &str) -> InstalledModel {
        InstalledModel {
            name: name.to_string(),
            family: FamilyId::Qwen25Vl,
            source: Source::Added,
            sha256_origin: Sha256Origin::Computed,
            model_path: PathBuf::from(format!("/m/{name}.gguf")),
            model_sha256: "a".repeat(64),
            model_size: 1,
            mmproj_path: PathBuf::from(format!("/m/mmproj-{name}.gguf")),
            mmproj_sha256: "b".repeat(64),
            mmproj_size: 2,
        }
    }

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path().join("models").join(INSTALLED_FILE));
        (dir, registry)
    }

    fn names(registry: &Registry) -> Vec<String> {
        registry
            .load()
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect()
    }

    #[test]
    fn record_replaces_an_entry_of_the_same_name_and_keeps_the_others() {
        let (_dir, registry) = registry();
        assert!(registry.load().unwrap().is_empty());
        registry.record(model("b")).unwrap();
        registry.record(model("a")).unwrap();
        let mut changed = model("b");
        changed.model_size = 99;
        registry.record(changed.clone()).unwrap();
        assert_eq!(registry.load().unwrap(), vec![model("a"), changed]);
        let text = fs::read_to_string(registry.path()).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        // Nothing but the registry and its lock is left behind.
        let mut files: Vec<String> = fs::read_dir(parent_dir(registry.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["installed.toml", "installed.toml.lock"]);
    }

    #[test]
    fn concurrent_records_lose_nothing() {
        let (_dir, registry) = registry();
        let registry = Arc::new(registry);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let registry = Arc::clone(&registry);
                std::thread::spawn(move || {
                    for round in 0..5 {
                        registry.record(model(&format!("m{i}-{round}"))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut expected: Vec<String> = (0..8)
            .flat_map(|i| (0..5).map(move |round| format!("m{i}-{round}")))
            .collect();
        expected.sort();
        assert_eq!(names(&registry), expected);
    }

    #[test]
    fn a_record_waits_for_the_lock_and_then_keeps_what_the_holder_wrote() {
        let (_dir, registry) = registry();
        let registry = Arc::new(registry);
        let held = registry.lock().unwrap();
        let waiting = {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || registry.record(model("second")))
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "record must wait for the lock");
        // What the holder writes while the other waits must survive the other's write.
        let doc = InstalledToml {
            schema_version: INSTALLED_SCHEMA,
            model: vec![model("first")],
        };
        write_atomically(registry.path(), toml::to_string(&doc).unwrap().as_bytes()).unwrap();
        drop(held);
        waiting.join().unwrap().unwrap();
        assert_eq!(names(&registry), ["first", "second"]);
    }
}
