//! The project's one GGUF writer: metadata, tensor directory and tensor data, little-endian,
//! GGUF v3 (v2 on request, for tests of the reader).
//!
//! It writes what deskhand generates itself: the tiny test VLM (`tiny.rs`), the real-shaped
//! random-weight models of `deskhand bench synth` (`synth.rs`, gigabytes, streamed to disk in
//! chunks) and the small fixtures the store's tests register. Tensor data is described, not
//! held: zeros, ones, seeded pseudo-random values or explicit values, stored as F32 or F16.
//! Quantized types are not written here; llama.cpp's quantizer makes them from an F16 file.
//!
//! Layout: `"GGUF"`, version, tensor count, key/value count, the key/values, the tensor infos
//! (name, dims, ggml type, offset from the data section), padding to the alignment, then each
//! tensor's data padded to the alignment. llama.cpp requires the offsets to be exactly the
//! running padded sizes.

use std::io::{self, BufWriter, Write};
use std::path::Path;

/// GGUF's default data alignment, also written as `general.alignment` by callers that want
/// the file to say so itself.
pub const ALIGNMENT: u64 = 32;

/// A metadata value (`gguf_type` numbers in [`Value::type_id`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    /// An array of strings.
    Strs(Vec<String>),
    /// An array of f32.
    F32s(Vec<f32>),
    /// An array of i32.
    I32s(Vec<i32>),
    /// An array of u32.
    U32s(Vec<u32>),
}

const GGUF_TYPE_UINT32: u32 = 4;
const GGUF_TYPE_INT32: u32 = 5;
const GGUF_TYPE_FLOAT32: u32 = 6;
const GGUF_TYPE_BOOL: u32 = 7;
const GGUF_TYPE_STRING: u32 = 8;
const GGUF_TYPE_ARRAY: u32 = 9;
const GGUF_TYPE_UINT64: u32 = 10;

impl Value {
    /// A value read by [`super::gguf`], for copying metadata (a tokenizer) from one file into
    /// another. None for the types this writer has no variant for, and for arrays the reader
    /// did not keep.
    pub fn from_read(value: &super::gguf::Value) -> Option<Value> {
        use super::gguf::Value as R;
        Some(match value {
            R::U32(v) => Value::U32(*v),
            R::I32(v) => Value::I32(*v),
            R::U64(v) => Value::U64(*v),
            R::F32(v) => Value::F32(*v),
            R::Bool(v) => Value::Bool(*v),
            R::String(s) => Value::Str(s.clone()),
            R::Array {
                values: Some(items),
                ..
            } => {
                // Every element must be of the first one's type.
                fn all<T>(items: &[R], f: impl Fn(&R) -> Option<T>) -> Option<Vec<T>> {
                    items.iter().map(f).collect()
                }
                match items.first() {
                    Some(R::String(_)) | None => {
                        Value::Strs(all(items, |v| v.as_str().map(str::to_owned))?)
                    }
                    Some(R::I32(_)) => Value::I32s(all(items, |v| match v {
                        R::I32(x) => Some(*x),
                        _ => None,
                    })?),
                    Some(R::F32(_)) => Value::F32s(all(items, |v| match v {
                        R::F32(x) => Some(*x),
                        _ => None,
                    })?),
                    Some(R::U32(_)) => Value::U32s(all(items, |v| match v {
                        R::U32(x) => Some(*x),
                        _ => None,
                    })?),
                    Some(_) => return None,
                }
            }
            _ => return None,
        })
    }
}

/// How a tensor's elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredType {
    F32,
    F16,
    /// ggml's Q8_0: blocks of 32 values, an F16 scale and 32 signed bytes. Rows must be a
    /// multiple of 32 long.
    Q8_0,
}

/// Values per Q8_0 block.
const Q8_0_BLOCK: u64 = 32;

impl StoredType {
    fn ggml_type(self) -> u32 {
        match self {
            StoredType::F32 => 0,
            StoredType::F16 => 1,
            StoredType::Q8_0 => 8,
        }
    }

    /// Bytes for `n` elements.
    fn bytes_for(self, n: u64) -> u64 {
        match self {
            StoredType::F32 => n * 4,
            StoredType::F16 => n * 2,
            StoredType::Q8_0 => n.div_ceil(Q8_0_BLOCK) * (2 + Q8_0_BLOCK),
        }
    }
}

/// What a tensor holds; generated while the file is written, so a multi-gigabyte model never
/// sits in memory.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Zeros,
    /// Norm weights: 1.0 makes a norm a plain normalization.
    Ones,
    /// Uniform in `[-scale, scale)` from a splitmix64 stream seeded with `seed`.
    Random {
        scale: f32,
        seed: u64,
    },
    Values(Vec<f32>),
}

#[derive(Debug, Clone)]
struct TensorEntry {
    name: String,
    /// GGUF `ne`: the fastest-moving dimension first.
    ne: Vec<u64>,
    stored: StoredType,
    data: TensorData,
}

impl TensorEntry {
    fn elements(&self) -> u64 {
        self.ne.iter().product()
    }

    fn nbytes(&self) -> u64 {
        self.stored.bytes_for(self.elements())
    }
}

/// A GGUF file being described; [`GgufWriter::build`] or [`GgufWriter::write_file`] writes it.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    kvs: Vec<(String, Value)>,
    tensors: Vec<TensorEntry>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter {
            version: 3,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// The GGUF version written in the header (3 unless a test of the reader asks for 2).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Sets a key, replacing an earlier value of the same key.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.kvs.push((key.to_owned(), value)),
        }
    }

    /// Adds a tensor; `ne` is GGUF order, so a linear layer from `n_in` to `n_out` is
    /// `[n_in, n_out]`.
    pub fn add(&mut self, name: &str, ne: &[u64], stored: StoredType, data: TensorData) {
        self.tensors.push(TensorEntry {
            name: name.to_owned(),
            ne: ne.to_vec(),
            stored,
            data,
        });
    }

    /// Adds a key even if it is already there: the reader's tests write damaged files too.
    pub fn kv(mut self, key: &str, value: Value) -> Self {
        self.kvs.push((key.to_owned(), value));
        self
    }

    pub fn str(self, key: &str, value: &str) -> Self {
        self.kv(key, Value::Str(value.to_owned()))
    }

    pub fn u32(self, key: &str, value: u32) -> Self {
        self.kv(key, Value::U32(value))
    }

    pub fn bool(self, key: &str, value: bool) -> Self {
        self.kv(key, Value::Bool(value))
    }

    /// A zero-filled F32 tensor with these dimensions (`ne[0]` first).
    pub fn tensor(mut self, name: &str, dims: &[u64]) -> Self {
        self.add(name, dims, StoredType::F32, TensorData::Zeros);
        self
    }

    /// The header: everything before the first tensor's data.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // A Vec takes every byte; only a description `write_file` rejects (Q8_0 rows that do
        // not split into blocks) stops the header early.
        let _ = self.write_header(&mut out);
        out
    }

    /// The size of the file this writes.
    pub fn file_len(&self) -> u64 {
        let mut header = CountingWriter(0);
        // As in `header_bytes`: only a description `write_file` rejects stops early.
        let _ = self.write_header(&mut header);
        header.0 + self.data_len()
    }

    fn data_len(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.nbytes().next_multiple_of(ALIGNMENT))
            .sum()
    }

    /// The whole file in memory (small files: fixtures, the tiny VLM).
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // As in `header_bytes`: only a description `write_file` rejects stops early.
        let _ = self.write_to(&mut out, &mut |_| {});
        out
    }

    /// Writes the file to `path` atomically (`crate::files`): a reader never sees half a
    /// file, and a crash leaves the old one or none. `progress` gets the bytes written so far.
    pub fn write_file(&self, path: &Path, progress: &mut dyn FnMut(u64)) -> io::Result<()> {
        crate::files::write_atomically(path, |file| {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            self.write_to(&mut out, progress)?;
            out.flush()
        })
    }

    fn write_header(&self, out: &mut dyn Write) -> io::Result<u64> {
        let mut w = Counted { out, written: 0 };
        w.put(b"GGUF")?;
        w.put(&self.version.to_le_bytes())?;
        w.put(&(self.tensors.len() as u64).to_le_bytes())?;
        w.put(&(self.kvs.len() as u64).to_le_bytes())?;
        for (key, value) in &self.kvs {
            w.put_str(key)?;
            w.put_value(value)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            if t.stored == StoredType::Q8_0 && t.ne.first().is_none_or(|n| n % Q8_0_BLOCK != 0) {
                // ggml reads quantized rows in whole blocks and rejects such a file.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "tensor {} has rows of {:?} values, not a multiple of Q8_0's {Q8_0_BLOCK}",
                        t.name,
                        t.ne.first()
                    ),
                ));
            }
            w.put_str(&t.name)?;
            w.put(&(t.ne.len() as u32).to_le_bytes())?;
            for d in &t.ne {
                w.put(&d.to_le_bytes())?;
            }
            w.put(&t.stored.ggml_type().to_le_bytes())?;
            w.put(&offset.to_le_bytes())?;
            offset += t.nbytes().next_multiple_of(ALIGNMENT);
        }
        if !self.tensors.is_empty() {
            w.pad()?;
        }
        Ok(w.written)
    }

    /// Streams the file to `out`.
    pub fn write_to(&self, out: &mut dyn Write, progress: &mut dyn FnMut(u64)) -> io::Result<()> {
        let header = self.write_header(out)?;
        let mut w = Counted {
            out,
            written: header,
        };
        // Elements generated per write: 4 MiB of F32 at a time.
        const CHUNK: u64 = 1 << 20;
        let mut buf = Vec::with_capacity(CHUNK as usize * 4);
        let mut values = Vec::with_capacity(CHUNK as usize);
        for t in &self.tensors {
            let total = t.elements();
            let mut rng = match t.data {
                TensorData::Random { seed, .. } => Some(SplitMix64(seed)),
                _ => None,
            };
            let mut done = 0u64;
            while done < total {
                let n = CHUNK.min(total - done);
                values.clear();
                match &t.data {
                    TensorData::Zeros => values.resize(n as usize, 0.0),
                    TensorData::Ones => values.resize(n as usize, 1.0),
                    TensorData::Random { scale, .. } => {
                        if let Some(rng) = rng.as_mut() {
                            values.extend((0..n).map(|_| rng.uniform(*scale)));
                        }
                    }
                    TensorData::Values(v) => {
                        let start = done as usize;
                        let end = (done + n) as usize;
                        match v.get(start..end) {
                            Some(slice) => values.extend_from_slice(slice),
                            None => {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidInput,
                                    format!(
                                        "tensor {} has {} values for {} elements",
                                        t.name,
                                        v.len(),
                                        total
                                    ),
                                ));
                            }
                        }
                    }
                }
                buf.clear();
                match t.stored {
                    StoredType::F32 => {
                        for x in &values {
                            buf.extend_from_slice(&x.to_le_bytes());
                        }
                    }
                    StoredType::F16 => {
                        for x in &values {
                            buf.extend_from_slice(&f32_to_f16(*x).to_le_bytes());
                        }
                    }
                    // CHUNK is a multiple of the block, so blocks never straddle chunks.
                    StoredType::Q8_0 => {
                        for block in values.chunks(Q8_0_BLOCK as usize) {
                            put_q8_0_block(&mut buf, block);
                        }
                    }
                }
                w.put(&buf)?;
                done += n;
                progress(w.written);
            }
            w.pad()?;
        }
        progress(w.written);
        Ok(())
    }
}

struct Counted<'a> {
    out: &'a mut dyn Write,
    written: u64,
}

impl Counted<'_> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let to = self.written.next_multiple_of(ALIGNMENT);
        let zeros = [0u8; ALIGNMENT as usize];
        self.put(&zeros[..(to - self.written) as usize])
    }

    /// A GGUF string: u64 byte length, then the UTF-8 bytes, no terminator.
    fn put_str(&mut self, s: &str) -> io::Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }

    fn put_array_header(&mut self, element_type: u32, len: usize) -> io::Result<()> {
        self.put(&GGUF_TYPE_ARRAY.to_le_bytes())?;
        self.put(&element_type.to_le_bytes())?;
        self.put(&(len as u64).to_le_bytes())
    }

    fn put_value(&mut self, value: &Value) -> io::Result<()> {
        match value {
            Value::U32(v) => {
                self.put(&GGUF_TYPE_UINT32.to_le_bytes())?;
                self.put(&v.to_le_bytes())
            }
            Value::I32(v) => {
                self.put(&GGUF_TYPE_INT32.to_le_bytes())?;
                self.put(&v.to_le_bytes())
            }
            Value::U64(v) => {
                self.put(&GGUF_TYPE_UINT64.to_le_bytes())?;
                self.put(&v.to_le_bytes())
            }
            Value::F32(v) => {
                self.put(&GGUF_TYPE_FLOAT32.to_le_bytes())?;
                self.put(&v.to_le_bytes())
            }
            Value::Bool(v) => {
                self.put(&GGUF_TYPE_BOOL.to_le_bytes())?;
                self.put(&[u8::from(*v)])
            }
            Value::Str(s) => {
                self.put(&GGUF_TYPE_STRING.to_le_bytes())?;
                self.put_str(s)
            }
            Value::Strs(items) => {
                self.put_array_header(GGUF_TYPE_STRING, items.len())?;
                items.iter().try_for_each(|s| self.put_str(s))
            }
            Value::F32s(items) => {
                self.put_array_header(GGUF_TYPE_FLOAT32, items.len())?;
                items.iter().try_for_each(|v| self.put(&v.to_le_bytes()))
            }
            Value::I32s(items) => {
                self.put_array_header(GGUF_TYPE_INT32, items.len())?;
                items.iter().try_for_each(|v| self.put(&v.to_le_bytes()))
            }
            Value::U32s(items) => {
                self.put_array_header(GGUF_TYPE_UINT32, items.len())?;
                items.iter().try_for_each(|v| self.put(&v.to_le_bytes()))
            }
        }
    }
}

/// One Q8_0 block the way ggml's reference quantizer makes it: the scale maps the largest
/// magnitude to 127, and each value is rounded to the nearest step.
fn put_q8_0_block(out: &mut Vec<u8>, block: &[f32]) {
    let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let d = amax / 127.0;
    let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    for i in 0..Q8_0_BLOCK as usize {
        let x = block.get(i).copied().unwrap_or(0.0);
        out.push((x * inverse).round().clamp(-127.0, 127.0) as i8 as u8);
    }
}

/// Counts bytes instead of writing them.
struct CountingWriter(u64);

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// splitmix64: a 64-bit generator with a one-word state, good enough for weights and trivially
/// reproducible on every platform.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[-scale, scale)`, from the top 24 bits (exactly representable in an f32).
    pub fn uniform(&mut self, scale: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32;
        (unit * 2.0 - 1.0) * scale
    }
}

/// FNV-1a over a tensor's name, mixed with `seed`: each tensor gets its own stream, so adding
/// or reordering tensors does not change the others' values.
pub fn name_seed(name: &str, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ seed
}

/// IEEE half precision, rounded to nearest even; overflow saturates to infinity, and NaN stays
/// NaN. Random weights are far inside the range, but norms and scales must convert exactly.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mantissa != 0 { 0x200 } else { 0 };
    }
    let half_exp = exp - 127 + 15;
    if half_exp >= 0x1f {
        return sign | 0x7c00;
    }
    if half_exp <= 0 {
        // Subnormal (or zero) in half precision.
        if half_exp < -10 {
            return sign;
        }
        let m = mantissa | 0x80_0000;
        let shift = (14 - half_exp) as u32;
        let half_m = m >> shift;
        let rest = m & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        let round_up = rest > halfway || (rest == halfway && half_m & 1 == 1);
        return sign | (half_m + u32::from(round_up)) as u16;
    }
    let half_m = mantissa >> 13;
    let rest = mantissa & 0x1fff;
    let round_up = rest > 0x1000 || (rest == 0x1000 && half_m & 1 == 1);
    // A carry out of the mantissa correctly bumps the exponent.
    sign | (((half_exp as u32) << 10) + half_m + u32::from(round_up)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf;

    #[test]
    fn f16_conversion_is_exact_where_it_must_be() {
        assert_eq!(f32_to_f16(0.0), 0x0000);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(0.5), 0x3800);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_f16(f32::NAN) & 0x7c00, 0x7c00);
        // The smallest subnormal, and a value that rounds to it.
        assert_eq!(f32_to_f16(5.960_464_5e-8), 0x0001);
        // 1 + 2^-11 is halfway between 1 and the next half: ties go to even (1.0).
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02);
        // 0.02 as numpy's float16 stores it.
        assert_eq!(f32_to_f16(0.02), 0x251f);
    }

    #[test]
    fn a_written_file_reads_back_with_its_layout() {
        let mut w = GgufWriter::new()
            .str("general.architecture", "llama")
            .kv("general.alignment", Value::U32(32))
            .kv(
                "tokenizer.ggml.tokens",
                Value::Strs(vec!["a".into(), "b".into()]),
            );
        w.add("a", &[3, 5], StoredType::F16, TensorData::Ones);
        w.add(
            "b",
            &[7],
            StoredType::F32,
            TensorData::Random {
                scale: 0.1,
                seed: 9,
            },
        );
        let bytes = w.build();
        assert_eq!(bytes.len() as u64, w.file_len());
        let g = gguf::parse_bytes(&bytes, "test").unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        let a = g.tensor("a").unwrap();
        assert_eq!((a.dims.clone(), a.ggml_type, a.offset), (vec![3, 5], 1, 0));
        let b = g.tensor("b").unwrap();
        assert_eq!((b.ggml_type, b.offset), (0, 32)); // 30 bytes of F16, padded to 32
        // The last tensor's data ends 4 bytes before the file: 28 bytes of F32, padded.
        assert_eq!(g.data_end + 4, bytes.len() as u64);
        let first_a = g.data_offset as usize;
        assert_eq!(&bytes[first_a..first_a + 2], &0x3c00u16.to_le_bytes());
        // The same description writes the same bytes.
        assert_eq!(bytes, w.build());
    }

    #[test]
    fn q8_0_blocks_hold_a_scale_and_32_bytes() {
        let mut w = GgufWriter::new();
        let values: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 32.0).collect();
        w.add("q", &[64], StoredType::Q8_0, TensorData::Values(values));
        let bytes = w.build();
        let g = gguf::parse_bytes(&bytes, "q8").unwrap();
        assert_eq!(g.tensor("q").unwrap().ggml_type, 8);
        let data = &bytes[g.data_offset as usize..];
        // Block 0 holds -1.0 ..= -1/32: its scale is 1/127, and -1.0 is stored as -127.
        assert_eq!(&data[..2], &f32_to_f16(1.0 / 127.0).to_le_bytes());
        assert_eq!(data[2] as i8, -127);
        // 2 + 32 bytes a block, two blocks, padded to 32.
        assert_eq!(g.data_end - g.data_offset, 68);
    }

    #[test]
    fn q8_0_rows_must_split_into_blocks() {
        let mut w = GgufWriter::new();
        w.add("odd", &[3420, 2], StoredType::Q8_0, TensorData::Zeros);
        let err = w.write_to(&mut Vec::new(), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("odd"), "{err}");
    }

    #[test]
    fn copying_read_metadata_keeps_arrays() {
        let w = GgufWriter::new()
            .kv("t", Value::Strs((0..300).map(|i| i.to_string()).collect()))
            .kv("y", Value::I32s((0..300).collect()));
        let read = gguf::parse_bytes_keeping_arrays(&w.build(), "test").unwrap();
        let t = Value::from_read(read.get("t").unwrap()).unwrap();
        assert_eq!(t, Value::Strs((0..300).map(|i| i.to_string()).collect()));
        let y = Value::from_read(read.get("y").unwrap()).unwrap();
        assert_eq!(y, Value::I32s((0..300).collect()));
    }

    #[test]
    fn write_file_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let w = GgufWriter::new().tensor("x", &[1000]);
        let mut seen = 0;
        w.write_file(&path, &mut |n| seen = n).unwrap();
        assert_eq!(seen, w.file_len());
        assert_eq!(std::fs::read(&path).unwrap(), w.build());
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1);
    }
}
