//! The run folder on disk. Trace lines are appended and fsync'd one by one, so a `kill -9`
//! loses at most the step in flight; frames are encoded on a thread of their own, so PNG
//! compression never holds up the loop.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::{Recorder, RunEnd, RunStart, StepRecord, TraceError, TraceLine};

pub const TRACE_FILE: &str = "trace.jsonl";

/// `DESKHAND_RUNS_DIR`, or `~/.local/share/deskhand/runs`.
pub fn runs_dir() -> Result<PathBuf, TraceError> {
    if let Some(dir) = std::env::var_os("DESKHAND_RUNS_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "deskhand")
        .map(|d| d.data_dir().join("runs"))
        .ok_or(TraceError::NoRunsDir)
}

/// The run folders under `runs` that hold a trace, oldest first. A missing `runs` has none.
pub fn run_folders(runs: &Path) -> Result<Vec<PathBuf>, TraceError> {
    let entries = match std::fs::read_dir(runs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TraceError::io("read", runs, e)),
    };
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join(TRACE_FILE).is_file())
        .collect();
    // Folder names start with the time, so name order is time order.
    folders.sort();
    Ok(folders)
}

type FrameJob = (PathBuf, image::RgbImage);

/// Frames waiting to be encoded at most.
const FRAMES_QUEUED: usize = 4;

pub struct TraceWriter {
    dir: PathBuf,
    trace: File,
    frames: Option<SyncSender<FrameJob>>,
    encoder: Option<JoinHandle<Vec<String>>>,
}

impl TraceWriter {
    /// Creates a new run folder under `runs`, named after the current time.
    pub fn create(runs: &Path) -> Result<TraceWriter, TraceError> {
        std::fs::create_dir_all(runs).map_err(|e| TraceError::io("create", runs, e))?;
        let stamp: String = super::now_rfc3339()
            .chars()
            .filter(char::is_ascii_digit)
            .take(14)
            .collect();
        let base = format!(
            "{}-{}",
            &stamp[..8.min(stamp.len())],
            &stamp[8.min(stamp.len())..]
        );
        let mut dir = runs.join(&base);
        let mut n = 1;
        // Two runs in one second get their own folders; create_dir fails on an existing one.
        while let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists || n > 1000 {
                return Err(TraceError::io("create", &dir, e));
            }
            n += 1;
            dir = runs.join(format!("{base}-{n}"));
        }
        let path = dir.join(TRACE_FILE);
        let trace = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| TraceError::io("create", &path, e))?;
        // Bounded: when PNG encoding falls behind, the loop waits rather than piling up
        // full-size frames in memory.
        let (frames, jobs) = sync_channel::<FrameJob>(FRAMES_QUEUED);
        let encoder = std::thread::Builder::new()
            .name("deskhand-frames".into())
            .spawn(move || {
                let mut failures = Vec::new();
                for (path, image) in jobs {
                    if let Err(e) = write_png(&path, &image) {
                        failures.push(format!("{}: {e}", path.display()));
                    }
                }
                failures
            })
            .map_err(|e| TraceError::io("start the frame writer for", &dir, e))?;
        Ok(TraceWriter {
            dir,
            trace,
            frames: Some(frames),
            encoder: Some(encoder),
        })
    }

    fn append(&mut self, line: &TraceLine) -> Result<(), TraceError> {
        let path = self.dir.join(TRACE_FILE);
        let mut text = serde_json::to_string(line).map_err(|e| TraceError::Parse {
            path: path.clone(),
            line: 0,
            problem: format!("cannot encode a trace line: {e}"),
        })?;
        text.push('\n');
        // One write call per line, then fsync: a reader never sees half a line unless the
        // machine dies mid-write, and then only the last one.
        self.trace
            .write_all(text.as_bytes())
            .and_then(|()| self.trace.sync_data())
            .map_err(|e| TraceError::io("append to", &path, e))
    }

    /// Waits for queued frames to be written; returns the ones that failed.
    fn finish_frames(&mut self) -> Vec<String> {
        self.frames = None;
        self.encoder
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default()
    }
}

impl Recorder for TraceWriter {
    fn start(&mut self, start: &RunStart) -> Result<(), TraceError> {
        self.append(&TraceLine::Start(start.clone()))
    }

    fn frame(&mut self, step: u32, image: &image::RgbImage) -> Result<String, TraceError> {
        let name = format!("step-{step:04}.png");
        if let Some(frames) = &self.frames {
            // A send fails only if the writer thread died; the trace still names the file and
            // the report shows it as missing.
            let _ = frames.send((self.dir.join(&name), image.clone()));
        }
        Ok(name)
    }

    fn step(&mut self, record: &StepRecord) -> Result<(), TraceError> {
        self.append(&TraceLine::Step(Box::new(record.clone())))
    }

    fn end(&mut self, end: &RunEnd) -> Result<(), TraceError> {
        for failure in self.finish_frames() {
            tracing::warn!("a frame was not saved: {failure}");
        }
        self.append(&TraceLine::End(end.clone()))?;
        super::write_report(&self.dir).map(|_| ())
    }

    fn dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        self.finish_frames();
    }
}

fn write_png(path: &Path, image: &image::RgbImage) -> Result<(), String> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    crate::files::write_atomically(path, |file| {
        let mut out = std::io::BufWriter::new(file);
        PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .map_err(std::io::Error::other)?;
        out.flush()
    })
    .map_err(|e| e.to_string())
}

/// Reads a run's `trace.jsonl`. A torn last line (a run killed mid-write) is skipped with a
/// warning in the second value; a bad line anywhere else is an error.
pub fn read_trace(path: &Path) -> Result<(Vec<TraceLine>, Vec<String>), TraceError> {
    let (lines, warnings) = read_jsonl(path)?;
    Ok((lines.into_iter().map(|(_, line)| line).collect(), warnings))
}

/// Records with their 1-based line numbers, and warnings about a torn last line.
pub type JsonLines<T> = (Vec<(usize, T)>, Vec<String>);

/// Reads a JSON Lines file as `T`s, each with its 1-based line number. Blank lines are skipped;
/// a last line that does not parse is a warning (a writer killed mid-line leaves one), any
/// other bad line an error naming `file:line`.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<JsonLines<T>, TraceError> {
    let file = File::open(path).map_err(|e| TraceError::io("open", path, e))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| TraceError::io("read", path, e))?;
    let mut parsed = Vec::new();
    let mut warnings = Vec::new();
    let last = lines.len();
    for (i, line) in lines.iter().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(line) {
            Ok(record) => parsed.push((number, record)),
            Err(e) if number == last => warnings.push(format!(
                "{}:{number}: the last line is incomplete ({e}); the run was probably killed mid-step",
                path.display()
            )),
            Err(e) => {
                return Err(TraceError::Parse {
                    path: path.to_path_buf(),
                    line: number,
                    problem: e.to_string(),
                });
            }
        }
    }
    Ok((parsed, warnings))
}
