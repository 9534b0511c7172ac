//! Settle: after an action, capture until the screen stops changing, instead of sleeping a
//! fixed two seconds the way other agents do.

use std::time::{Duration, Instant};

use super::{Frame, FrameTarget, MonitorInfo, Screen, ScreenError};

#[derive(Debug, Clone, Copy)]
pub struct SettleOptions {
    /// How many consecutive captures must match the one before them.
    pub stable_frames: u32,
    /// Pause between captures.
    pub interval: Duration,
    /// Give up waiting after this long and return the latest frame.
    pub timeout: Duration,
    /// Share of frame pixels that may differ between two captures that still count as the
    /// same screen: a blinking caret or a ticking clock must not hold the loop forever.
    pub max_changed_fraction: f64,
}

impl Default for SettleOptions {
    fn default() -> Self {
        Self {
            stable_frames: 2,
            interval: Duration::from_millis(25),
            timeout: Duration::from_millis(3000),
            max_changed_fraction: 0.0001,
        }
    }
}

/// The frame the screen settled on.
#[derive(Debug, Clone)]
pub struct Settled {
    pub frame: Frame,
    /// From the call to the capture that completed the run of stable frames.
    pub elapsed: Duration,
    /// False when the timeout passed before the screen was stable.
    pub stable: bool,
    pub captures: u32,
}

/// Capture `monitor` until `stable_frames` consecutive captures are unchanged, or until the
/// timeout passes.
pub fn wait_until_stable(
    screen: &mut dyn Screen,
    monitor: &MonitorInfo,
    target: FrameTarget,
    options: SettleOptions,
) -> Result<Settled, ScreenError> {
    let started = Instant::now();
    let mut previous = screen.capture(monitor, target)?;
    let mut captures = 1;
    let mut unchanged = 0;
    loop {
        if unchanged >= options.stable_frames {
            return Ok(Settled {
                frame: previous,
                elapsed: started.elapsed(),
                stable: true,
                captures,
            });
        }
        if started.elapsed() + options.interval > options.timeout {
            return Ok(Settled {
                frame: previous,
                elapsed: started.elapsed(),
                stable: false,
                captures,
            });
        }
        std::thread::sleep(options.interval);
        let next = screen.capture(monitor, target)?;
        captures += 1;
        if changed_fraction(&previous, &next) <= options.max_changed_fraction {
            unchanged += 1;
        } else {
            unchanged = 0;
        }
        previous = next;
    }
}

/// Share of pixels that differ between two frames (1.0 when their sizes differ).
pub fn changed_fraction(a: &Frame, b: &Frame) -> f64 {
    if a.image.dimensions() != b.image.dimensions() {
        return 1.0;
    }
    let total = a.image.as_raw().len() / 3;
    if total == 0 {
        return 0.0;
    }
    let differing = a
        .image
        .as_raw()
        .chunks_exact(3)
        .zip(b.image.as_raw().chunks_exact(3))
        .filter(|(p, q)| p != q)
        .count();
    differing as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::screen::{ActiveWindow, FrameMap};
    use image::RgbImage;

    /// A screen whose content changes for the first `busy` captures, then stays put.
    struct Animated {
        busy: u32,
        calls: u32,
    }

    impl Screen for Animated {
        fn monitors(&self) -> Result<Vec<MonitorInfo>, ScreenError> {
            Ok(vec![monitor()])
        }
        fn capture(&mut self, m: &MonitorInfo, _: FrameTarget) -> Result<Frame, ScreenError> {
            self.calls += 1;
            let shade = self.calls.min(self.busy) as u8;
            Ok(Frame {
                image: RgbImage::from_pixel(8, 8, image::Rgb([shade, 0, 0])),
                map: FrameMap::new(m, 8, 8),
            })
        }
        fn active_window(&self) -> Result<Option<ActiveWindow>, ScreenError> {
            Ok(None)
        }
        fn window_at(
            &self,
            _: crate::screen::ScreenPoint,
        ) -> Result<Option<ActiveWindow>, ScreenError> {
            Ok(None)
        }
        fn selection_text(
            &self,
            _: crate::input::Selection,
        ) -> Result<Option<String>, ScreenError> {
            Ok(None)
        }
    }

    #[test]
    fn an_observation_says_whether_the_screen_settled() {
        let options = SettleOptions {
            timeout: Duration::from_millis(200),
            ..SettleOptions::default()
        };
        let mut busy = Animated {
            busy: u32::MAX,
            calls: 0,
        };
        let observed =
            crate::screen::observe(&mut busy, &monitor(), FrameTarget::Original, options).unwrap();
        // The wait gives up one interval early, so the time alone says "settled".
        assert!(observed.settle_time < options.timeout);
        assert!(!observed.settled);
        let mut calm = Animated { busy: 1, calls: 0 };
        let observed =
            crate::screen::observe(&mut calm, &monitor(), FrameTarget::Original, options).unwrap();
        assert!(observed.settled);
    }

    fn monitor() -> MonitorInfo {
        MonitorInfo::single("m", 8, 8)
    }

    fn fast(stable_frames: u32, timeout_ms: u64) -> SettleOptions {
        SettleOptions {
            stable_frames,
            interval: Duration::from_millis(1),
            timeout: Duration::from_millis(timeout_ms),
            max_changed_fraction: 0.0,
        }
    }

    #[test]
    fn waits_for_k_unchanged_captures_after_the_last_change() {
        let mut screen = Animated { busy: 5, calls: 0 };
        let settled = wait_until_stable(
            &mut screen,
            &monitor(),
            FrameTarget::Original,
            fast(3, 5000),
        )
        .unwrap();
        assert!(settled.stable);
        // Captures 1..=5 change, then 3 more must match: 8 in all.
        assert_eq!(settled.captures, 8);
        assert_eq!(settled.frame.image.get_pixel(0, 0)[0], 5);
    }

    #[test]
    fn gives_up_at_the_timeout_and_says_so() {
        let mut screen = Animated {
            busy: u32::MAX,
            calls: 0,
        };
        let settled =
            wait_until_stable(&mut screen, &monitor(), FrameTarget::Original, fast(2, 30)).unwrap();
        assert!(!settled.stable);
        assert!(settled.elapsed < Duration::from_millis(500));
    }
}
