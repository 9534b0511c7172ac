//! See: capture the screen, describe its monitors and active window, wait for it to settle,
//! and map coordinates between model frames and physical screen pixels.

mod frame;
mod own;
mod settle;
mod x11;
mod xvfb;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::input::Selection;

pub use frame::{
    Frame, FrameError, FrameMap, FrameTarget, MapError, ModelPoint, PixelOrder, PointFormat,
    RawCapture, ScreenPoint, TargetError,
};
pub use own::{OwnArea, OwnWindow, hide_own_windows, in_own_window, own_areas};
pub use settle::{SettleOptions, Settled, changed_fraction, wait_until_stable};
pub use x11::X11Screen;
pub use xvfb::{VirtualDisplay, VirtualDisplayError};

/// One monitor: an area of the desktop in physical pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorInfo {
    /// Position in the list `deskhand monitors` prints; `--monitor N` picks it.
    pub index: usize,
    pub name: String,
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
    /// Physical pixels per logical pixel.
    pub scale_factor: f64,
    pub primary: bool,
}

impl MonitorInfo {
    /// A single screen: the primary monitor, index 0, at the origin, unscaled (a private
    /// display, a benchmark's or a test's).
    pub fn single(name: &str, width: u32, height: u32) -> MonitorInfo {
        MonitorInfo {
            index: 0,
            name: name.to_owned(),
            x: 0,
            y: 0,
            width,
            height,
            scale_factor: 1.0,
            primary: true,
        }
    }

    pub fn contains(&self, p: ScreenPoint) -> bool {
        let dx = i64::from(p.x) - i64::from(self.x);
        let dy = i64::from(p.y) - i64::from(self.y);
        (0..i64::from(self.width)).contains(&dx) && (0..i64::from(self.height)).contains(&dy)
    }
}

/// The window that has the keyboard focus. The title is weak evidence (web pages set it);
/// the pid comes from the X server's own record of the client where it can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveWindow {
    /// The program's name: the process name when the pid is known, else the WM_CLASS class.
    pub app_name: String,
    pub title: String,
    pub pid: Option<u32>,
    pub wm_class: Option<String>,
    pub window_id: u32,
}

/// What one step of the loop sees: a frame, the active window, and how long the screen took
/// to settle.
#[derive(Debug, Clone)]
pub struct Observation {
    pub frame: Frame,
    pub active_window: Option<ActiveWindow>,
    pub settle_time: Duration,
    /// Whether the screen stopped changing before the settle timeout.
    pub settled: bool,
}

/// Settle the screen, capture `monitor` for the model, and read the active window: the see
/// stage of one step.
pub fn observe(
    screen: &mut dyn Screen,
    monitor: &MonitorInfo,
    target: FrameTarget,
    settle: SettleOptions,
) -> Result<Observation, ScreenError> {
    let settled = wait_until_stable(screen, monitor, target, settle)?;
    if !settled.stable {
        tracing::debug!(
            "screen still changing after {:?}; observing the latest frame",
            settled.elapsed
        );
    }
    Ok(Observation {
        frame: settled.frame,
        active_window: screen.active_window()?,
        settle_time: settled.elapsed,
        settled: settled.stable,
    })
}

#[derive(Debug, Error)]
pub enum ScreenError {
    #[error(
        "cannot connect to the X display {display:?}: {reason}. Is an X server running and DISPLAY set? (deskhand drives X11 desktops; under Wayland run it inside an X session or Xwayland)"
    )]
    Connect { display: String, reason: String },
    #[error("X server request failed: {0}")]
    Protocol(String),
    #[error("no monitor {index}: there are {count} (see `deskhand monitors`)")]
    NoSuchMonitor { index: usize, count: usize },
    #[error("the X server reports no monitors")]
    NoMonitors,
    #[error(
        "unsupported display format: depth {depth}, {bits_per_pixel} bits per pixel; deskhand needs a 24- or 32-bit TrueColor display"
    )]
    UnsupportedFormat { depth: u8, bits_per_pixel: u8 },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The see stage's boundary: what the agent loop needs from a display.
pub trait Screen {
    fn monitors(&self) -> Result<Vec<MonitorInfo>, ScreenError>;

    /// Capture a whole monitor and size it for a model.
    fn capture(&mut self, monitor: &MonitorInfo, target: FrameTarget)
    -> Result<Frame, ScreenError>;

    fn active_window(&self) -> Result<Option<ActiveWindow>, ScreenError>;

    /// The top-level client window at `point` (the topmost one there), which is what a click
    /// at that point reaches, whichever window has the keyboard focus.
    fn window_at(&self, point: ScreenPoint) -> Result<Option<ActiveWindow>, ScreenError>;

    /// The text a paste from `selection` would insert now: `Some("")` when nothing is
    /// selected, `None` when it cannot be read (no answer in time, not text, too large).
    fn selection_text(&self, selection: Selection) -> Result<Option<String>, ScreenError>;

    /// Whether Caps Lock is on now. Typed letters then arrive in the other case than the policy
    /// judged them (a lower-case key id becomes a real one), so nothing is typed while it is.
    /// A display that cannot have it says no.
    fn caps_lock(&self) -> Result<bool, ScreenError> {
        Ok(false)
    }

    /// The distinct windows under `points`, in order of first appearance.
    fn windows_at(&self, points: &[ScreenPoint]) -> Result<Vec<ActiveWindow>, ScreenError> {
        let mut windows: Vec<ActiveWindow> = Vec::new();
        for &point in points {
            if let Some(window) = self.window_at(point)?
                && windows.iter().all(|w| w.window_id != window.window_id)
            {
                windows.push(window);
            }
        }
        Ok(windows)
    }

    /// The monitor `--monitor N` names, or the primary one (the first if none is primary).
    fn monitor(&self, index: Option<usize>) -> Result<MonitorInfo, ScreenError> {
        let monitors = self.monitors()?;
        match index {
            Some(i) => monitors.get(i).cloned().ok_or(ScreenError::NoSuchMonitor {
                index: i,
                count: monitors.len(),
            }),
            None => monitors
                .iter()
                .find(|m| m.primary)
                .or_else(|| monitors.first())
                .cloned()
                .ok_or(ScreenError::NoMonitors),
        }
    }
}
