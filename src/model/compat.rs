//! Whether a model GGUF and a vision projector (mmproj) make a vision model that llama.cpp
//! will load, and which family a model belongs to.
//!
//! Both the model store (before it records a model) and the engine (before llama.cpp loads the
//! pair) ask, so the check lives here, apart from either: llama.cpp's own refusal ("mismatch
//! between text model and mmproj") names neither file nor the fix.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::model::family::FamilyId;
use crate::model::gguf::{self, EmbeddingWidth, Gguf, GgufError, ProjectionWidth};

/// Why a model and an mmproj do not make a loadable vision model. Every one is the user's to
/// fix: a wrong path, a wrong file or a projector made for another model.
#[derive(Debug, Error)]
pub enum CompatError {
    #[error("{}", text::file_missing(role, path, hint))]
    FileMissing {
        role: &'static str,
        path: PathBuf,
        hint: String,
    },
    #[error("{}", text::bad_gguf(role, path, source))]
    BadGguf {
        role: &'static str,
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    #[error("{}", text::not_a_model(path))]
    NotAModel { path: PathBuf },
    #[error("{}", text::not_an_mmproj(path, arch))]
    NotAnMmproj { path: PathBuf, arch: String },
    #[error("{}", text::no_vision(model, reason))]
    NoVision { model: PathBuf, reason: String },
    #[error("{0}")]
    WidthMismatch(Box<WidthMismatch>),
    #[error("{}", text::unknown_width(path, what, why))]
    UnknownWidth {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
}

/// The messages of `CompatError`: each names the file and says what to do.
mod text {
    use std::path::Path;

    use crate::model::gguf::GgufError;

    pub fn file_missing(role: &str, path: &Path, hint: &str) -> String {
        format!(
            "the {role} file {} does not exist: check the path{hint}",
            path.display()
        )
    }

    pub fn bad_gguf(role: &str, path: &Path, source: &GgufError) -> String {
        format!(
            "the {role} file {} is not usable: {source}\n  Give the path of a complete GGUF file (LM Studio keeps them under ~/.lmstudio/models).",
            path.display()
        )
    }

    pub fn not_a_model(path: &Path) -> String {
        format!(
            "{} is an mmproj (vision projector, general.architecture = \"clip\"), not a language model: pass the language model GGUF as PATH and this file as --mmproj",
            path.display()
        )
    }

    pub fn not_an_mmproj(path: &Path, arch: &str) -> String {
        format!(
            "{} is not an mmproj: its general.architecture is {arch:?}, an mmproj's is \"clip\". Pass the vision projector (usually named mmproj-*.gguf) as --mmproj",
            path.display()
        )
    }

    pub fn no_vision(model: &Path, reason: &str) -> String {
        format!("{} has no vision: {reason}", model.display())
    }

    pub fn unknown_width(path: &Path, what: &str, why: &str) -> String {
        format!("cannot tell {what} of {}: {why}", path.display())
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

pub(crate) fn require_file(path: &Path, role: &'static str) -> Result<(), CompatError> {
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
    Err(CompatError::FileMissing {
        role,
        path: path.to_path_buf(),
        hint,
    })
}

pub(crate) fn read_gguf(path: &Path, role: &'static str) -> Result<Gguf, CompatError> {
    gguf::read_file(path).map_err(|source| match source {
        GgufError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            CompatError::FileMissing {
                role,
                path: path.to_path_buf(),
                hint: String::new(),
            }
        }
        source => CompatError::BadGguf {
            role,
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Check that `model` is a language model GGUF and `mmproj` a vision projector that fits it,
/// the way llama.cpp's mtmd checks them when it loads the pair.
pub fn check_pair(model_path: &Path, mmproj_path: &Path) -> Result<(Gguf, Gguf), CompatError> {
    require_file(model_path, "model")?;
    require_file(mmproj_path, "mmproj")?;
    let model = read_gguf(model_path, "model")?;
    if model.is_mmproj() {
        return Err(CompatError::NotAModel {
            path: model_path.to_path_buf(),
        });
    }
    let mmproj = read_gguf(mmproj_path, "mmproj")?;
    if !mmproj.is_mmproj() {
        return Err(CompatError::NotAnMmproj {
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
        return Err(CompatError::NoVision {
            model: model_path.to_path_buf(),
            reason: format!(
                "its mmproj {} has {what}. Use the vision mmproj of this model",
                mmproj_path.display()
            ),
        });
    }
    let text = model
        .input_embedding_width()
        .ok_or_else(|| CompatError::UnknownWidth {
            path: model_path.to_path_buf(),
            what: "the embedding length",
            why: match model.architecture() {
                Some(arch) => format!("it has no {arch}.embedding_length key"),
                None => "it has no general.architecture key".into(),
            },
        })?;
    let vision = mmproj
        .projection_width()
        .ok_or_else(|| CompatError::UnknownWidth {
            path: mmproj_path.to_path_buf(),
            what: "the projection width",
            why: format!(
                "projector type {:?} has neither the tensor llama.cpp reads the width from nor clip.vision.projection_dim",
                mmproj.projector_type().unwrap_or("")
            ),
        })?;
    if text.total != vision.total {
        return Err(CompatError::WidthMismatch(Box::new(WidthMismatch {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::fixture::GgufWriter;

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
}
