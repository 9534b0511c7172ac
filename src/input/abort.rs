//! The abort path: Ctrl-C, SIGTERM, or the pointer parked in a screen corner stops deskhand
//! and releases every held key and button.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Exit status after an abort, as shells report a death by SIGINT.
pub const ABORT_EXIT_CODE: i32 = 130;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// The real pointer was parked in a screen corner.
    CornerFailsafe,
    /// The user chose to abort at a prompt.
    User,
    /// The corner failsafe's watcher lost its X connection, so the failsafe no longer works.
    FailsafeLost,
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbortReason::Interrupt => "interrupted (SIGINT)",
            AbortReason::Terminate => "terminated (SIGTERM)",
            AbortReason::CornerFailsafe => "pointer parked in a screen corner (failsafe)",
            AbortReason::User => "aborted by the user",
            AbortReason::FailsafeLost => {
                "the corner failsafe lost its X connection and can no longer stop the run"
            }
        })
    }
}

/// A shared, one-way switch: once triggered it stays triggered, and the first reason wins.
#[derive(Debug, Clone, Default)]
pub struct AbortSignal {
    triggered: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<AbortReason>>>,
}

impl AbortSignal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self, reason: AbortReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.triggered.store(true, Ordering::SeqCst);
    }

    pub fn reason(&self) -> Option<AbortReason> {
        if !self.triggered.load(Ordering::SeqCst) {
            return None;
        }
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// On SIGINT or SIGTERM during a run: trigger `signal` and release what `release` knows is
/// held, then leave the stopping to the loop, which notices the signal between its stages,
/// ends the trace once, writes the report and exits with 130. A second signal exits at once.
/// The work runs on a thread of its own, so input is released even while the main thread is
/// busy (capturing, or decoding a model's reply).
pub fn stop_on_signals(signal: AbortSignal, release: Releaser) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("deskhand-abort".into())
        .spawn(move || {
            for sig in signals.forever() {
                let reason = if sig == SIGTERM {
                    AbortReason::Terminate
                } else {
                    AbortReason::Interrupt
                };
                if signal.reason().is_some() {
                    let released = release();
                    eprintln!(
                        "deskhand: {reason} again; released {released} held key(s)/button(s); exiting now"
                    );
                    std::process::exit(ABORT_EXIT_CODE);
                }
                signal.trigger(reason);
                let released = release();
                eprintln!(
                    "deskhand: {reason}; released {released} held key(s)/button(s); stopping after the current stage (Ctrl-C again exits at once)"
                );
            }
        })?;
    Ok(())
}

/// Something that can release every held input from another thread.
pub type Releaser = Arc<dyn Fn() -> usize + Send + Sync>;

/// On SIGINT or SIGTERM: trigger `signal`, release what `release` knows is held, and exit the
/// process with code 130 (for single actions, which have no trace to end). The work runs on a thread of its own, so it happens even while the
/// main thread is busy (capturing, or decoding a model's reply).
pub fn exit_on_signals(signal: AbortSignal, release: Releaser) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("deskhand-abort".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let reason = if sig == SIGTERM {
                    AbortReason::Terminate
                } else {
                    AbortReason::Interrupt
                };
                signal.trigger(reason);
                let released = release();
                eprintln!("deskhand: {reason}; released {released} held key(s)/button(s); exiting");
                std::process::exit(ABORT_EXIT_CODE);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_stays() {
        let s = AbortSignal::new();
        assert_eq!(s.reason(), None);
        let clone = s.clone();
        clone.trigger(AbortReason::CornerFailsafe);
        s.trigger(AbortReason::Interrupt);
        assert_eq!(s.reason(), Some(AbortReason::CornerFailsafe));
    }
}
