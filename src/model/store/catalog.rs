//! The catalog (`models/catalog.toml`, built into the binary; `DESKHAND_CATALOG` names another
//! file): which GGUF and mmproj files make up each model, where they live on the Hugging Face
//! Hub, their sha256 where it is published, the model family, the coordinate convention and the
//! image-token budget.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{StoreError, io_error};
use crate::model::family::FamilyId;

/// The catalog that ships with deskhand.
pub const BUILTIN_CATALOG: &str = include_str!("../../../models/catalog.toml");
/// How errors name the built-in catalog.
pub const BUILTIN_CATALOG_NAME: &str = "models/catalog.toml (built into deskhand)";

const CATALOG_SCHEMA: u32 = 1;

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

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// A TOML error as "message" plus the line it points at.
pub(super) fn toml_error_line(text: &str, err: &toml::de::Error) -> (usize, String) {
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
pub(super) fn check_name(name: &str) -> Result<(), String> {
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

    pub(super) fn require(&self, name: &str) -> Result<&CatalogModel, StoreError> {
        self.get(name).ok_or_else(|| StoreError::UnknownModel {
            name: name.to_string(),
            known: self.models.iter().map(|m| m.name.clone()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
