//! A `Frame` is a screenshot sized for a model, plus the exact mapping between its pixels and
//! the physical pixels of the screen it came from.
//!
//! Every conversion between model space and screen space goes through [`FrameMap`]. Points are
//! checked against the frame: a point outside it is an error, never silently clamped, because a
//! clamped click lands on something the model did not name.

use std::fmt;

use fast_image_resize as fr;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::MonitorInfo;

/// A point in physical screen pixels, in the desktop's global coordinate space (on X11: the
/// root window). The `Action` wire format uses these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScreenPoint {
    pub x: i32,
    pub y: i32,
}

impl ScreenPoint {
    pub const fn new(x: i32, y: i32) -> Self {
        Self { x, y }
    }
}

impl fmt::Display for ScreenPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}

/// The coordinate conventions that models use for a point inside a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointFormat {
    /// Pixels of the frame the model saw: `0 <= x < frame width`. Integer values name the pixel
    /// whose top-left corner they are (UI-TARS, Qwen2.5-VL).
    FramePixels,
    /// 0–1000 along each side of the frame, both ends included (Qwen3-VL).
    Normalized1000,
    /// 0.0–1.0 along each side of the frame, both ends included.
    Fraction,
}

impl PointFormat {
    /// The position of value `v` as a fraction of a frame side of `len` pixels, or None when
    /// it lies outside. An integer frame-pixel value names that pixel, so its position is the
    /// pixel's centre; the 0–1000 and 0–1 ranges are closed at both ends.
    fn fraction_of_value(self, v: f64, len: u32) -> Option<f64> {
        let (f, inside) = match self {
            PointFormat::FramePixels => {
                let f = (v + 0.5) / f64::from(len);
                (f, (0.0..1.0).contains(&f))
            }
            PointFormat::Normalized1000 => (v / 1000.0, (0.0..=1000.0).contains(&v)),
            PointFormat::Fraction => (v, (0.0..=1.0).contains(&v)),
        };
        // NaN fails every range check, so it is rejected here too.
        inside.then_some(f)
    }

    fn value_at_fraction(self, f: f64, len: u32) -> f64 {
        match self {
            PointFormat::FramePixels => f * f64::from(len) - 0.5,
            PointFormat::Normalized1000 => f * 1000.0,
            PointFormat::Fraction => f,
        }
    }

    fn valid_range(self, len: u32) -> String {
        match self {
            PointFormat::FramePixels => format!("0..={}", len.saturating_sub(1)),
            PointFormat::Normalized1000 => "0..=1000".into(),
            PointFormat::Fraction => "0.0..=1.0".into(),
        }
    }
}

impl fmt::Display for PointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PointFormat::FramePixels => "frame pixels",
            PointFormat::Normalized1000 => "0-1000 normalized",
            PointFormat::Fraction => "0-1 fraction",
        })
    }
}

/// A point as a model names it, in one of the [`PointFormat`]s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelPoint {
    pub x: f64,
    pub y: f64,
    pub format: PointFormat,
}

impl ModelPoint {
    pub fn new(x: f64, y: f64, format: PointFormat) -> Self {
        Self { x, y, format }
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum MapError {
    #[error(
        "point ({x}, {y}) in {format} is outside the frame (x must be in {range_x}, y in {range_y}); it was not clamped"
    )]
    OutsideFrame {
        x: f64,
        y: f64,
        format: PointFormat,
        range_x: String,
        range_y: String,
    },
    #[error("screen point {point} is outside monitor {monitor} ({left},{top} {width}x{height})")]
    OutsideMonitor {
        point: ScreenPoint,
        monitor: String,
        left: i32,
        top: i32,
        width: u32,
        height: u32,
    },
}

/// What size a captured screen is turned into before a model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FrameTarget {
    /// The captured size, unchanged.
    Original,
    /// Exactly this size (the aspect ratio may change; the mapping accounts for it per axis).
    Fixed { width: u32, height: u32 },
    /// At most `max_pixels` pixels, each side a multiple of `align`, aspect ratio kept as well
    /// as the alignment allows. This is the shape Qwen-family models need (`align` 28 or 32).
    MaxPixels { max_pixels: u64, align: u32 },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TargetError {
    #[error("frame size {width}x{height} is empty; both sides must be at least 1 pixel")]
    Empty { width: u32, height: u32 },
    #[error("alignment must be at least 1 pixel, got {0}")]
    ZeroAlign(u32),
    #[error(
        "max pixels {max_pixels} is smaller than one {align}x{align} block; raise --max-pixels to at least {min}"
    )]
    TooFewPixels {
        max_pixels: u64,
        align: u32,
        min: u64,
    },
}

impl FrameTarget {
    /// The frame size this target gives for a capture of `width` x `height`.
    pub fn frame_size(self, width: u32, height: u32) -> Result<(u32, u32), TargetError> {
        if width == 0 || height == 0 {
            return Err(TargetError::Empty { width, height });
        }
        match self {
            FrameTarget::Original => Ok((width, height)),
            FrameTarget::Fixed { width, height } => {
                if width == 0 || height == 0 {
                    return Err(TargetError::Empty { width, height });
                }
                Ok((width, height))
            }
            FrameTarget::MaxPixels { max_pixels, align } => {
                aligned_size(width, height, max_pixels, align)
            }
        }
    }
}

/// Each side rounded to a multiple of `align`, scaled down (never up beyond rounding) until the
/// area is at most `max_pixels`. Rounding first and shrinking second mirrors Qwen's
/// `smart_resize`, so the model sees the size it was trained on.
fn aligned_size(
    width: u32,
    height: u32,
    max_pixels: u64,
    align: u32,
) -> Result<(u32, u32), TargetError> {
    if align == 0 {
        return Err(TargetError::ZeroAlign(align));
    }
    let block = u64::from(align) * u64::from(align);
    if max_pixels < block {
        return Err(TargetError::TooFewPixels {
            max_pixels,
            align,
            min: block,
        });
    }
    let a = f64::from(align);
    let round_to = |v: f64| ((v / a).round().max(1.0) * a) as u32;
    let floor_to = |v: f64| ((v / a).floor().max(1.0) * a) as u32;
    let (w, h) = (f64::from(width), f64::from(height));
    let (mut fw, mut fh) = (round_to(w), round_to(h));
    if u64::from(fw) * u64::from(fh) > max_pixels {
        let beta = (w * h / max_pixels as f64).sqrt();
        fw = floor_to(w / beta);
        fh = floor_to(h / beta);
        // Flooring both sides keeps the area under the cap except when a side was already
        // at the one-block minimum; shrink the longer side until it fits.
        while u64::from(fw) * u64::from(fh) > max_pixels {
            if fw >= fh && fw > align {
                fw -= align;
            } else if fh > align {
                fh -= align;
            } else {
                break;
            }
        }
    }
    Ok((fw, fh))
}

/// The exact mapping between a frame's pixels and the physical screen pixels of the monitor
/// area it shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameMap {
    /// The monitor the frame shows (its name, for messages).
    pub monitor: String,
    /// Top-left of the captured area in physical screen pixels; may be negative.
    pub origin: ScreenPoint,
    /// Size of the captured area in physical pixels.
    pub screen_width: u32,
    pub screen_height: u32,
    /// Size of the frame the model sees.
    pub frame_width: u32,
    pub frame_height: u32,
    /// Physical pixels per logical pixel on this monitor (1.0, 1.25, 2.0, ...).
    pub scale_factor: f64,
}

impl FrameMap {
    pub fn new(monitor: &MonitorInfo, frame_width: u32, frame_height: u32) -> Self {
        Self {
            monitor: monitor.name.clone(),
            origin: ScreenPoint::new(monitor.x, monitor.y),
            screen_width: monitor.width,
            screen_height: monitor.height,
            frame_width,
            frame_height,
            scale_factor: monitor.scale_factor,
        }
    }

    /// The physical screen pixel that a model point names.
    pub fn to_screen(&self, p: ModelPoint) -> Result<ScreenPoint, MapError> {
        let fx = p.format.fraction_of_value(p.x, self.frame_width);
        let fy = p.format.fraction_of_value(p.y, self.frame_height);
        let (Some(fx), Some(fy)) = (fx, fy) else {
            return Err(MapError::OutsideFrame {
                x: p.x,
                y: p.y,
                format: p.format,
                range_x: p.format.valid_range(self.frame_width),
                range_y: p.format.valid_range(self.frame_height),
            });
        };
        Ok(ScreenPoint::new(
            self.origin.x + fraction_to_pixel(fx, self.screen_width) as i32,
            self.origin.y + fraction_to_pixel(fy, self.screen_height) as i32,
        ))
    }

    /// A screen pixel expressed in a model format. The value names the centre of the screen
    /// pixel, so converting it back with [`FrameMap::to_screen`] returns the same pixel.
    pub fn from_screen(&self, s: ScreenPoint, format: PointFormat) -> Result<ModelPoint, MapError> {
        let (fx, fy) = self.screen_fraction(s)?;
        Ok(ModelPoint::new(
            format.value_at_fraction(fx, self.frame_width),
            format.value_at_fraction(fy, self.frame_height),
            format,
        ))
    }

    /// The frame pixel (integer indices, as a model would name it) that shows a screen pixel.
    pub fn frame_pixel_of(&self, s: ScreenPoint) -> Result<(u32, u32), MapError> {
        let (fx, fy) = self.screen_fraction(s)?;
        Ok((
            fraction_to_pixel(fx, self.frame_width),
            fraction_to_pixel(fy, self.frame_height),
        ))
    }

    /// The centre of a screen pixel as fractions of the captured area.
    fn screen_fraction(&self, s: ScreenPoint) -> Result<(f64, f64), MapError> {
        if !self.contains(s) {
            return Err(self.outside_monitor(s));
        }
        Ok((
            (f64::from(s.x - self.origin.x) + 0.5) / f64::from(self.screen_width),
            (f64::from(s.y - self.origin.y) + 0.5) / f64::from(self.screen_height),
        ))
    }

    /// Logical coordinates (what toolkits that are not DPI-aware use) of a screen pixel.
    /// The logical origin of a monitor is its physical origin divided by its scale.
    pub fn to_logical(&self, s: ScreenPoint) -> (f64, f64) {
        let k = self.scale_factor;
        (
            f64::from(self.origin.x) / k + f64::from(s.x - self.origin.x) / k,
            f64::from(self.origin.y) / k + f64::from(s.y - self.origin.y) / k,
        )
    }

    /// The physical pixel under a logical point on this monitor.
    pub fn from_logical(&self, lx: f64, ly: f64) -> Result<ScreenPoint, MapError> {
        let k = self.scale_factor;
        let px = self.origin.x + ((lx - f64::from(self.origin.x) / k) * k).round() as i32;
        let py = self.origin.y + ((ly - f64::from(self.origin.y) / k) * k).round() as i32;
        let s = ScreenPoint::new(px, py);
        if self.contains(s) {
            Ok(s)
        } else {
            Err(self.outside_monitor(s))
        }
    }

    pub fn contains(&self, s: ScreenPoint) -> bool {
        let dx = i64::from(s.x) - i64::from(self.origin.x);
        let dy = i64::from(s.y) - i64::from(self.origin.y);
        (0..i64::from(self.screen_width)).contains(&dx)
            && (0..i64::from(self.screen_height)).contains(&dy)
    }

    fn outside_monitor(&self, point: ScreenPoint) -> MapError {
        MapError::OutsideMonitor {
            point,
            monitor: self.monitor.clone(),
            left: self.origin.x,
            top: self.origin.y,
            width: self.screen_width,
            height: self.screen_height,
        }
    }
}

/// The pixel of a side of `len` pixels that contains position `f` (a fraction of the side).
/// The far edge (`f == 1.0`) belongs to the last pixel.
fn fraction_to_pixel(f: f64, len: u32) -> u32 {
    ((f * f64::from(len)).floor() as u32).min(len - 1)
}

/// A screenshot sized for a model, plus the mapping back to the screen.
#[derive(Debug, Clone)]
pub struct Frame {
    pub image: RgbImage,
    pub map: FrameMap,
}

/// A raw capture: packed 4-byte pixels straight from the display server. It borrows them, so
/// a capture read from shared memory is never copied whole.
pub struct RawCapture<'a> {
    pub width: u32,
    pub height: u32,
    /// 4 bytes a pixel, `width * height * 4` bytes, in `order`.
    pub pixels: &'a [u8],
    pub order: PixelOrder,
}

/// Byte order of a 4-byte pixel in a raw capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelOrder {
    /// B, G, R, unused (X11 TrueColor on little-endian servers).
    Bgrx,
    /// unused, R, G, B (X11 TrueColor on big-endian servers).
    Xrgb,
}

impl PixelOrder {
    fn rgb_offsets(self) -> [usize; 3] {
        match self {
            PixelOrder::Bgrx => [2, 1, 0],
            PixelOrder::Xrgb => [1, 2, 3],
        }
    }
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("capture buffer holds {got} bytes but {width}x{height} needs {want}")]
    BadBuffer {
        got: usize,
        want: usize,
        width: u32,
        height: u32,
    },
    #[error("resizing the capture failed: {0}")]
    Resize(String),
}

impl RawCapture<'_> {
    /// Turn the capture of `monitor` into a model frame of the `target` size.
    ///
    /// Resizing happens on the 4-byte pixels (channel order does not matter to a filter),
    /// and only the smaller result is converted to RGB: that is the cheaper order of the two.
    pub fn into_frame(
        self,
        monitor: &MonitorInfo,
        target: FrameTarget,
    ) -> Result<Frame, FrameError> {
        let want = self.width as usize * self.height as usize * 4;
        if self.pixels.len() != want {
            return Err(FrameError::BadBuffer {
                got: self.pixels.len(),
                want,
                width: self.width,
                height: self.height,
            });
        }
        let (fw, fh) = target.frame_size(self.width, self.height)?;
        let order = self.order;
        let image = if (fw, fh) == (self.width, self.height) {
            packed_to_rgb(self.pixels, fw, fh, order)
        } else {
            let resized = resize_packed(self.width, self.height, self.pixels, fw, fh)?;
            packed_to_rgb(&resized, fw, fh, order)
        };
        // The map describes the monitor area that was captured, which is the whole monitor.
        let map = FrameMap::new(monitor, fw, fh);
        Ok(Frame { image, map })
    }
}

fn resize_packed(
    width: u32,
    height: u32,
    pixels: &[u8],
    fw: u32,
    fh: u32,
) -> Result<Vec<u8>, FrameError> {
    let src = fr::images::ImageRef::new(width, height, pixels, fr::PixelType::U8x4)
        .map_err(|e| FrameError::Resize(e.to_string()))?;
    let mut dst = fr::images::Image::new(fw, fh, fr::PixelType::U8x4);
    // Bilinear convolution averages every source pixel under a destination pixel when
    // shrinking, so thin UI lines survive. The fourth byte is padding, not alpha: without
    // use_alpha(false) the resizer would premultiply by it (X11 sends 0) and blacken the frame.
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .use_alpha(false);
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| FrameError::Resize(e.to_string()))?;
    Ok(dst.into_vec())
}

fn packed_to_rgb(packed: &[u8], width: u32, height: u32, order: PixelOrder) -> RgbImage {
    let [r, g, b] = order.rgb_offsets();
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    for (out, px) in rgb.chunks_exact_mut(3).zip(packed.chunks_exact(4)) {
        out[0] = px[r];
        out[1] = px[g];
        out[2] = px[b];
    }
    // The length is width*height*3 by construction, so from_raw cannot fail here; fall back
    // to an empty image rather than panic if that ever changes.
    RgbImage::from_raw(width, height, rgb).unwrap_or_else(|| RgbImage::new(width, height))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn monitor(x: i32, y: i32, w: u32, h: u32, scale: f64) -> MonitorInfo {
        MonitorInfo {
            index: 0,
            name: "test".into(),
            x,
            y,
            width: w,
            height: h,
            scale_factor: scale,
            primary: true,
        }
    }

    #[test]
    fn aligned_size_matches_qwen_smart_resize_examples() {
        // 1920x1080 at the Qwen2.5-VL default cap of 12845056 px: only rounding to 28.
        assert_eq!(
            aligned_size(1920, 1080, 12_845_056, 28).unwrap(),
            (1932, 1092)
        );
        // Capped at about 1.2 MP: both sides multiples of 28, area under the cap.
        let (w, h) = aligned_size(1920, 1080, 1_200_000, 28).unwrap();
        assert_eq!((w % 28, h % 28), (0, 0));
        assert!(u64::from(w) * u64::from(h) <= 1_200_000);
        assert_eq!((w, h), (1456, 812));
        // Qwen3-VL blocks of 32.
        let (w, h) = aligned_size(2560, 1440, 1_048_576, 32).unwrap();
        assert_eq!((w % 32, h % 32), (0, 0));
        assert!(u64::from(w) * u64::from(h) <= 1_048_576);
    }

    #[test]
    fn aligned_size_rejects_impossible_targets() {
        assert_eq!(
            aligned_size(100, 100, 10, 28),
            Err(TargetError::TooFewPixels {
                max_pixels: 10,
                align: 28,
                min: 784
            })
        );
        assert_eq!(
            aligned_size(100, 100, 1000, 0),
            Err(TargetError::ZeroAlign(0))
        );
        assert!(FrameTarget::Original.frame_size(0, 10).is_err());
    }

    #[test]
    fn points_outside_the_frame_are_errors_not_clamped() {
        let map = FrameMap::new(&monitor(0, 0, 1920, 1080, 1.0), 1456, 812);
        for p in [
            ModelPoint::new(1456.0, 10.0, PointFormat::FramePixels),
            ModelPoint::new(-1.0, 10.0, PointFormat::FramePixels),
            ModelPoint::new(10.0, 1000.5, PointFormat::Normalized1000),
            ModelPoint::new(1.01, 0.5, PointFormat::Fraction),
            ModelPoint::new(f64::NAN, 0.5, PointFormat::Fraction),
        ] {
            let err = map.to_screen(p).unwrap_err();
            assert!(err.to_string().contains("outside the frame"), "{err}");
        }
        // The closed ranges include their far edge, which is the last pixel.
        assert_eq!(
            map.to_screen(ModelPoint::new(1000.0, 1000.0, PointFormat::Normalized1000))
                .unwrap(),
            ScreenPoint::new(1919, 1079)
        );
        let off = map
            .from_screen(ScreenPoint::new(1920, 5), PointFormat::Fraction)
            .unwrap_err();
        assert!(matches!(off, MapError::OutsideMonitor { .. }));
    }

    #[test]
    fn frame_pixels_map_onto_the_screen_area_they_show() {
        // A second monitor right of the first, at half resolution in the frame: each frame
        // pixel covers 2x2 screen pixels, and names the one under its centre.
        let map = FrameMap::new(&monitor(1280, 0, 1280, 1024, 1.0), 640, 512);
        let s = map
            .to_screen(ModelPoint::new(0.0, 0.0, PointFormat::FramePixels))
            .unwrap();
        assert_eq!(s, ScreenPoint::new(1281, 1));
        let s = map
            .to_screen(ModelPoint::new(639.0, 511.0, PointFormat::FramePixels))
            .unwrap();
        assert_eq!(s, ScreenPoint::new(1280 + 1279, 1023));
        assert_eq!(
            map.frame_pixel_of(ScreenPoint::new(2559, 1023)).unwrap(),
            (639, 511)
        );
        // A negative origin, as a monitor left of the primary has on other platforms.
        let map = FrameMap::new(&monitor(-1920, -200, 1920, 1080, 1.0), 1920, 1080);
        let s = map
            .to_screen(ModelPoint::new(0.5, 0.5, PointFormat::Fraction))
            .unwrap();
        assert_eq!(s, ScreenPoint::new(-960, 340));
    }

    fn arb_map() -> impl Strategy<Value = FrameMap> {
        (
            -5000i32..5000,
            -5000i32..5000,
            1u32..8000,
            1u32..5000,
            1u32..4000,
            1u32..4000,
            prop::sample::select(vec![1.0, 1.25, 1.5, 2.0, 3.0]),
        )
            .prop_map(|(x, y, w, h, fw, fh, k)| FrameMap::new(&monitor(x, y, w, h, k), fw, fh))
    }

    fn arb_format() -> impl Strategy<Value = PointFormat> {
        prop::sample::select(vec![
            PointFormat::FramePixels,
            PointFormat::Normalized1000,
            PointFormat::Fraction,
        ])
    }

    proptest! {
        // Screen -> model -> screen returns the same physical pixel, whatever the format,
        // origin, scale or resize.
        #[test]
        fn screen_round_trip_is_within_one_pixel(
            map in arb_map(), format in arb_format(), u in 0.0f64..1.0, v in 0.0f64..1.0
        ) {
            let s = ScreenPoint::new(
                map.origin.x + (u * f64::from(map.screen_width)) as i32,
                map.origin.y + (v * f64::from(map.screen_height)) as i32,
            );
            let m = map.from_screen(s, format).unwrap();
            let back = map.to_screen(m).unwrap();
            prop_assert!((back.x - s.x).abs() <= 1 && (back.y - s.y).abs() <= 1, "{s} -> {m:?} -> {back}");
        }

        // A model's integer frame pixel -> screen -> frame pixel is the same frame pixel, so
        // what the model pointed at is what gets clicked and drawn in the trace.
        #[test]
        fn frame_pixel_round_trip_is_exact(map in arb_map(), u in 0.0f64..1.0, v in 0.0f64..1.0) {
            let fx = (u * f64::from(map.frame_width)).floor();
            let fy = (v * f64::from(map.frame_height)).floor();
            let s = map.to_screen(ModelPoint::new(fx, fy, PointFormat::FramePixels)).unwrap();
            prop_assert!(map.contains(s));
            // When the frame is larger than the screen several frame pixels share a screen
            // pixel; the round trip then lands within one screen pixel's worth of frame pixels.
            let (bx, by) = map.frame_pixel_of(s).unwrap();
            let tol_x = (f64::from(map.frame_width) / f64::from(map.screen_width)).ceil();
            let tol_y = (f64::from(map.frame_height) / f64::from(map.screen_height)).ceil();
            prop_assert!((f64::from(bx) - fx).abs() <= tol_x.max(0.0) && (f64::from(by) - fy).abs() <= tol_y.max(0.0));
            if map.frame_width <= map.screen_width && map.frame_height <= map.screen_height {
                prop_assert_eq!((f64::from(bx), f64::from(by)), (fx, fy));
            }
        }

        // Logical <-> physical through the scale factor, with the monitor origin.
        #[test]
        fn logical_round_trip_is_within_one_pixel(map in arb_map(), u in 0.0f64..1.0, v in 0.0f64..1.0) {
            let s = ScreenPoint::new(
                map.origin.x + (u * f64::from(map.screen_width)) as i32,
                map.origin.y + (v * f64::from(map.screen_height)) as i32,
            );
            let (lx, ly) = map.to_logical(s);
            let back = map.from_logical(lx, ly).unwrap();
            prop_assert!((back.x - s.x).abs() <= 1 && (back.y - s.y).abs() <= 1);
        }

        #[test]
        fn aligned_sizes_respect_cap_and_alignment(
            w in 1u32..8000, h in 1u32..8000, align in prop::sample::select(vec![14u32, 28, 32]),
            cap in 50_000u64..4_000_000
        ) {
            let (fw, fh) = aligned_size(w, h, cap, align).unwrap();
            prop_assert_eq!(fw % align, 0);
            prop_assert_eq!(fh % align, 0);
            prop_assert!(fw >= align && fh >= align);
            // Only a side pinned at one block can push the area over the cap.
            if fw > align && fh > align {
                prop_assert!(u64::from(fw) * u64::from(fh) <= cap);
            }
        }
    }
}
