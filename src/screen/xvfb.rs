//! A private virtual X display (Xvfb) for tests and benchmarks, so they never touch the
//! user's real desktop. Xvfb picks a free display number itself (`-displayfd`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
                let stderr = child
                    .wait_with_output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
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
