//! Downloads from the Hugging Face Hub. A file goes to `<models dir>/<name>/<file>.partial`
//! first, resumes with an HTTP Range request, is hashed while it streams, and is renamed into
//! place only when its size and sha256 match.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::catalog::{CatalogFile, CatalogModel};
use super::{Store, StoreError, io_error, remove_quietly};

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

impl Store {
    pub(super) fn client(&self) -> Result<reqwest::blocking::Client, StoreError> {
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
    pub(super) fn fetch(
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
    pub(super) fn hash_file(&self, path: &Path, label: &str) -> Result<(String, u64), StoreError> {
        let len = fs::metadata(path).map(|m| m.len()).ok();
        let bar = self.bar(len, label.to_string());
        let result = sha256_file(path, |n| bar.inc(n))
            .map_err(io_error(format!("cannot read {}", path.display())));
        bar.finish_and_clear();
        result
    }
}

/// `<dest>.partial`.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
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
}
