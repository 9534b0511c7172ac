//! deskhand's own windows on the display (the ask dialog). The executor never acts on a point
//! inside one, and a capture never shows one to the model: a model that could see the dialog
//! could be steered to click its "once" button.
//!
//! The registry is process-wide because the window that opens a dialog and the stages that
//! must respect it (the executor, the capture) do not share an owner.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Frame, ScreenPoint};

/// A rectangle of the desktop, in physical screen pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnArea {
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
}

impl OwnArea {
    pub fn contains(&self, p: ScreenPoint) -> bool {
        let dx = i64::from(p.x) - i64::from(self.x);
        let dy = i64::from(p.y) - i64::from(self.y);
        (0..i64::from(self.width)).contains(&dx) && (0..i64::from(self.height)).contains(&dy)
    }
}

static OPEN: Mutex<Vec<(u64, OwnArea)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn open_areas() -> std::sync::MutexGuard<'static, Vec<(u64, OwnArea)>> {
    // A panic elsewhere while holding the lock leaves a valid list; keep using it.
    OPEN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps an area registered while it lives.
#[derive(Debug)]
pub struct OwnWindow {
    id: u64,
}

impl OwnWindow {
    /// Registers `area` until the returned value is dropped. Register before the window is
    /// mapped, so there is no moment when it shows and is not guarded.
    pub fn register(area: OwnArea) -> OwnWindow {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        open_areas().push((id, area));
        OwnWindow { id }
    }

    /// Moves the registered area (the window manager placed the window elsewhere).
    pub fn moved_to(&self, area: OwnArea) {
        for (id, registered) in open_areas().iter_mut() {
            if *id == self.id {
                *registered = area;
            }
        }
    }
}

impl Drop for OwnWindow {
    fn drop(&mut self) {
        open_areas().retain(|(id, _)| *id != self.id);
    }
}

/// The areas deskhand's own windows cover now.
pub fn own_areas() -> Vec<OwnArea> {
    open_areas().iter().map(|(_, area)| *area).collect()
}

/// The point, if it lies in one of deskhand's own windows.
pub fn in_own_window(p: ScreenPoint) -> Option<OwnArea> {
    own_areas().into_iter().find(|a| a.contains(p))
}

/// Paints over every part of `frame` that shows one of deskhand's own windows, so the model
/// never sees one.
pub fn hide_own_windows(frame: &mut Frame) {
    let map = frame.map.clone();
    let (width, height) = frame.image.dimensions();
    for area in own_areas() {
        // The part of the area on the captured monitor, relative to its origin.
        let span = |start: i32, size: u32, origin: i32, screen: u32| {
            let lo = (i64::from(start) - i64::from(origin)).max(0);
            let hi =
                (i64::from(start) + i64::from(size) - i64::from(origin)).min(i64::from(screen));
            (lo < hi).then_some((lo, hi))
        };
        let (Some((x0, x1)), Some((y0, y1))) = (
            span(area.x, area.width, map.origin.x, map.screen_width),
            span(area.y, area.height, map.origin.y, map.screen_height),
        ) else {
            continue;
        };
        // Every frame pixel that shows any of it: round outwards.
        let to_frame = |v: i64, screen: u32, frame: u32, up: bool| -> u32 {
            let scaled = v * i64::from(frame);
            let screen = i64::from(screen.max(1));
            let pixel = if up {
                (scaled + screen - 1) / screen
            } else {
                scaled / screen
            };
            u32::try_from(pixel).unwrap_or(0)
        };
        let fx0 = to_frame(x0, map.screen_width, map.frame_width, false);
        let fx1 = to_frame(x1, map.screen_width, map.frame_width, true).min(width);
        let fy0 = to_frame(y0, map.screen_height, map.frame_height, false);
        let fy1 = to_frame(y1, map.screen_height, map.frame_height, true).min(height);
        for y in fy0..fy1 {
            for x in fx0..fx1 {
                frame.image.put_pixel(x, y, image::Rgb([0, 0, 0]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::screen::{FrameMap, MonitorInfo};

    #[test]
    fn a_registered_area_is_guarded_and_hidden_until_dropped() {
        let monitor = MonitorInfo::single("t", 200, 100);
        // Away from the points other tests act on: the registry is process-wide.
        let area = OwnArea {
            x: 150,
            y: 60,
            width: 40,
            height: 30,
        };
        let frame = || Frame {
            image: image::RgbImage::from_pixel(100, 50, image::Rgb([255, 255, 255])),
            map: FrameMap::new(&monitor, 100, 50),
        };
        {
            let _open = OwnWindow::register(area);
            assert_eq!(in_own_window(ScreenPoint::new(160, 70)), Some(area));
            assert_eq!(in_own_window(ScreenPoint::new(149, 70)), None);
            let mut shown = frame();
            hide_own_windows(&mut shown);
            // Screen (160, 70) is frame (80, 35): painted over; frame (10, 10) is not.
            assert_eq!(shown.image.get_pixel(80, 35), &image::Rgb([0, 0, 0]));
            assert_eq!(shown.image.get_pixel(10, 10), &image::Rgb([255, 255, 255]));
        }
        assert_eq!(in_own_window(ScreenPoint::new(160, 70)), None);
        // An area beside the monitor paints nothing.
        let _beside = OwnWindow::register(OwnArea {
            x: -300,
            y: 0,
            width: 100,
            height: 100,
        });
        let mut shown = frame();
        hide_own_windows(&mut shown);
        assert_eq!(shown.image.get_pixel(80, 35), &image::Rgb([255, 255, 255]));
        assert_eq!(shown.image.get_pixel(0, 0), &image::Rgb([255, 255, 255]));
    }
}
