//! A private virtual X display (Xvfb) for tests and benchmarks, so they never touch the
//! user's real desktop. Xvfb picks a free display number itself (`-displayfd`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum VirtualDisplayError {
    #[error("cannot start Xvfb: {0}. Install it (Debian: apt-get install xvfb) or run .ci/run")]
    Spawn(std::io::Error),
    #[error("Xvfb did not report a display number within {0:?} (stderr: {1})")]
    NoDisplay(Duration, String),
}

pub struct VirtualDisplay {
    child: Child,
    name: String,
}

/// Reads `from` to its end, keeping only its last `keep` bytes in `tail`.
fn keep_tail(mut from: impl Read, tail: &Mutex<VecDeque<u8>>, keep: usize) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = from.read(&mut chunk) {
        if n == 0 {
            break;
        }
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.extend(&chunk[..n]);
        let excess = tail.len().saturating_sub(keep);
        tail.drain(..excess);
    }
}

/// How much of Xvfb's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 16 * 1024;

impl VirtualDisplay {
    /// Start Xvfb with one `width` x `height` 24-bit screen.
    pub fn start(width: u32, height: u32) -> Result<Self, VirtualDisplayError> {
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0"])
            .arg(format!("{width}x{height}x24"))
            // -noreset: the server would otherwise forget monitors and settings whenever its
            // last client disconnects, which between two test steps is often.
            .args(["-noreset", "-nolisten", "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(VirtualDisplayError::Spawn)?;
        // Xvfb writes warnings to stderr for as long as it runs; a pipe nobody reads fills up
        // and then blocks the server. Keep reading it, and keep only its last lines.
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = Arc::clone(&stderr_tail);
            std::thread::spawn(move || keep_tail(stderr, &tail, STDERR_TAIL_BYTES));
        }
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
        }
        let wait = Duration::from_secs(20);
        match rx.recv_timeout(wait) {
            Ok(line) if !line.trim().is_empty() => {
                let name = format!(":{}", line.trim());
                Ok(Self { child, name })
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                // Give the reader a moment to take in what Xvfb said before it died.
                std::thread::sleep(Duration::from_millis(50));
                let tail = stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
                let (a, b) = tail.as_slices();
                let stderr = String::from_utf8_lossy(&[a, b].concat()).into_owned();
                Err(VirtualDisplayError::NoDisplay(
                    wait,
                    stderr.trim().to_owned(),
                ))
            }
        }
    }

    /// The display name, like ":3".
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for VirtualDisplay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_read_to_its_end_and_only_its_tail_is_kept() {
        // Far more than a pipe holds: unread, it would block the writer.
        let said: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let tail = Mutex::new(VecDeque::new());
        keep_tail(&said[..], &tail, 16 * 1024);
        let kept: Vec<u8> = tail.into_inner().unwrap().into_iter().collect();
        assert_eq!(kept.len(), 16 * 1024);
        assert_eq!(&kept[..], &said[said.len() - 16 * 1024..]);
    }
}
