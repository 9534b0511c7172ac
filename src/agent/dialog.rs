//! The ask as a small window of deskhand's own, for a run without a terminal (started from a
//! desktop shortcut, a launcher or a service with a display). Without it every ask of such a
//! run would be a refusal.
//!
//! The window shows what the terminal ask shows (the action, the window it reaches, the text
//! or chord as it will be sent, redacted by the caller, every reason that asks) and a crop of
//! the screenshot around the action's point with the point marked. It stays above other
//! windows, takes the keyboard focus, and is answered with the mouse or the keyboard: the
//! letter on each button, Tab and Return, or Escape for deny.
//!
//! The model must never act on it: while it is open its area is registered as one of
//! deskhand's own windows, so the executor refuses points inside it and a capture paints it
//! over (`screen::own`). It is destroyed, and the X server has confirmed that, before the
//! answer returns, so the next screenshot cannot show it.
//!
//! It talks to X with x11rb directly and draws with the core font `fixed`, so it needs nothing
//! that a bare X server lacks. Text the font cannot show (outside Latin-1) is drawn as `?`.

use std::time::{Duration, Instant};

use image::RgbImage;
use thiserror::Error;
use x11rb::connection::Connection;
use x11rb::errors::{ConnectError, ConnectionError, ReplyError, ReplyOrIdError};
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    AtomEnum, ChangeGCAux, ConfigureWindowAux, ConnectionExt as _, CreateGCAux, CreateWindowAux,
    EventMask, Font, Gcontext, ImageFormat, ImageOrder, InputFocus, PropMode, Rectangle, StackMode,
    Window, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::user::UserAnswer;
use crate::input::AbortSignal;
use crate::screen::{Frame, OwnArea, OwnWindow, ScreenPoint};

/// The WM_CLASS instance and class of the dialog, which tests and tools look for.
pub const DIALOG_CLASS: &str = "deskhand-ask";
/// A window property listing the buttons, `KEY:X,Y,W,H` separated by `;`, window-relative,
/// so that tests and assistive tools can find them without reading pixels.
pub const BUTTONS_PROPERTY: &str = "_DESKHAND_BUTTONS";

/// The most characters of text on one line of the dialog.
const MAX_COLUMNS: usize = 96;
/// The most lines of text; an ask with more says how many were left out.
const MAX_LINES: usize = 28;
/// The crop of the screenshot, in frame pixels, at most.
/// 320 × 180 × 4 bytes stays under the 256 KiB a request may hold without BIG-REQUESTS.
const CROP_WIDTH: u32 = 320;
const CROP_HEIGHT: u32 = 180;
const PAD: i32 = 12;
const BUTTON_GAP: i32 = 10;
/// How often the dialog looks at the abort signal while it waits.
const POLL: Duration = Duration::from_millis(20);
/// Keys and clicks this soon after the dialog appears are ignored: the dialog takes the
/// keyboard focus, and a person typing into another window must not answer it by accident
/// (an "o" meant for their document would be "once").
const ARMING_DELAY: Duration = Duration::from_millis(600);

/// One answer the dialog offers: the key that picks it, its word and what it means.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    pub key: char,
    pub word: &'static str,
    pub answer: UserAnswer,
}

/// What the dialog shows.
pub struct AskDialog {
    /// One fact a line (`ask_details`), already escaped and redacted.
    pub text: String,
    /// A crop of the screenshot with the action's points marked.
    pub picture: Option<RgbImage>,
    pub choices: Vec<Choice>,
}

#[derive(Debug, Error)]
pub enum DialogError {
    #[error("cannot connect to the X display {display:?}: {source}")]
    Connect {
        display: String,
        source: ConnectError,
    },
    #[error("the X display has no screen {0}")]
    NoScreen(usize),
    #[error("the core font \"fixed\" is not available: {0}")]
    Font(String),
    #[error("X protocol: {0}")]
    Protocol(String),
}

fn protocol(e: impl std::fmt::Display) -> DialogError {
    DialogError::Protocol(e.to_string())
}

impl From<ConnectionError> for DialogError {
    fn from(e: ConnectionError) -> Self {
        protocol(e)
    }
}

impl From<ReplyError> for DialogError {
    fn from(e: ReplyError) -> Self {
        protocol(e)
    }
}

impl From<ReplyOrIdError> for DialogError {
    fn from(e: ReplyOrIdError) -> Self {
        protocol(e)
    }
}

/// A crop of `frame` around the first of `points` (screen pixels), with every point that
/// falls in it marked by a red ring; `None` when the first point is not on the frame.
pub fn crop_around(frame: &Frame, points: &[ScreenPoint]) -> Option<RgbImage> {
    let first = points.first()?;
    let (fx, fy) = frame.map.frame_pixel_of(*first).ok()?;
    let (w, h) = frame.image.dimensions();
    let (cw, ch) = (CROP_WIDTH.min(w), CROP_HEIGHT.min(h));
    let left = fx.saturating_sub(cw / 2).min(w - cw);
    let top = fy.saturating_sub(ch / 2).min(h - ch);
    let mut crop = image::imageops::crop_imm(&frame.image, left, top, cw, ch).to_image();
    for p in points {
        if let Ok((px, py)) = frame.map.frame_pixel_of(*p) {
            let (Some(x), Some(y)) = (px.checked_sub(left), py.checked_sub(top)) else {
                continue;
            };
            if x < cw && y < ch {
                mark(&mut crop, x, y);
            }
        }
    }
    Some(crop)
}

/// A red ring with a white rim around (x, y), and a red dot at its centre.
fn mark(image: &mut RgbImage, x: u32, y: u32) {
    const RADIUS: f64 = 10.0;
    let (w, h) = image.dimensions();
    let reach = RADIUS as i64 + 3;
    for dy in -reach..=reach {
        for dx in -reach..=reach {
            let (Some(px), Some(py)) = (
                u32::try_from(i64::from(x) + dx).ok().filter(|v| *v < w),
                u32::try_from(i64::from(y) + dy).ok().filter(|v| *v < h),
            ) else {
                continue;
            };
            let d = ((dx * dx + dy * dy) as f64).sqrt();
            if (d - RADIUS).abs() <= 1.5 || d <= 1.5 {
                image.put_pixel(px, py, image::Rgb([230, 0, 0]));
            } else if (d - RADIUS).abs() <= 2.5 {
                image.put_pixel(px, py, image::Rgb([255, 255, 255]));
            }
        }
    }
}

/// Text as the core font draws it: Latin-1, the dashes and arrow of the ask's own wording
/// spelled in ASCII, anything else as `?`.
fn latin1(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '—' | '–' => bytes.push(b'-'),
            '→' => bytes.extend_from_slice(b"->"),
            '…' => bytes.extend_from_slice(b"..."),
            c => bytes.push(u8::try_from(u32::from(c)).unwrap_or(b'?')),
        }
    }
    bytes
}

/// The dialog's text as lines of at most `MAX_COLUMNS` characters.
fn wrapped_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for line in text.lines() {
        let chars: Vec<char> = line.chars().collect();
        if chars.is_empty() {
            lines.push(String::new());
            continue;
        }
        let mut start = 0;
        while start < chars.len() {
            let indent = if start == 0 { "" } else { "      " };
            let room = MAX_COLUMNS - indent.len();
            let end = (start + room).min(chars.len());
            lines.push(format!(
                "{indent}{}",
                chars[start..end].iter().collect::<String>()
            ));
            start = end;
        }
    }
    if lines.len() > MAX_LINES {
        let left_out = lines.len() - (MAX_LINES - 1);
        lines.truncate(MAX_LINES - 1);
        lines.push(format!("  … and {left_out} more lines"));
    }
    lines
}

/// Pixel values for a TrueColor visual, from its channel masks.
struct Colours {
    red_mask: u32,
    green_mask: u32,
    blue_mask: u32,
}

impl Colours {
    fn channel(value: u8, mask: u32) -> u32 {
        if mask == 0 {
            return 0;
        }
        let shift = mask.trailing_zeros();
        let top = u64::from(mask >> shift);
        let scaled = (u64::from(value) * top + 127) / 255;
        (u32::try_from(scaled).unwrap_or(0) << shift) & mask
    }

    fn pixel(&self, [r, g, b]: [u8; 3]) -> u32 {
        Colours::channel(r, self.red_mask)
            | Colours::channel(g, self.green_mask)
            | Colours::channel(b, self.blue_mask)
    }
}

const BACKGROUND: [u8; 3] = [0xf2, 0xf2, 0xf2];
const TEXT: [u8; 3] = [0x10, 0x10, 0x10];
const BUTTON_FACE: [u8; 3] = [0xdd, 0xdd, 0xdd];
const FOCUS: [u8; 3] = [0x1f, 0x5f, 0xbf];
const HEADING: [u8; 3] = [0xa0, 0x10, 0x10];

/// The button of one choice, window-relative.
struct Button {
    choice: Choice,
    rect: Rectangle,
}

impl Button {
    fn contains(&self, x: i32, y: i32) -> bool {
        let r = &self.rect;
        x >= i32::from(r.x)
            && y >= i32::from(r.y)
            && x < i32::from(r.x) + i32::from(r.width)
            && y < i32::from(r.y) + i32::from(r.height)
    }

    fn label(&self) -> String {
        format!("[{}] {}", self.choice.key, self.choice.word)
    }
}

struct Shown<'a> {
    conn: &'a RustConnection,
    root: Window,
    window: Window,
    gc: Gcontext,
    colours: Colours,
    char_width: i32,
    ascent: i32,
    line_height: i32,
    lines: Vec<String>,
    picture: Option<(Vec<u8>, u16, u16, u8)>,
    picture_top: i32,
    buttons: Vec<Button>,
    focused: usize,
}

impl Shown<'_> {
    fn fill(&self, colour: [u8; 3], rect: Rectangle) -> Result<(), ConnectionError> {
        self.conn.change_gc(
            self.gc,
            &ChangeGCAux::new().foreground(self.colours.pixel(colour)),
        )?;
        self.conn
            .poly_fill_rectangle(self.window, self.gc, &[rect])?;
        Ok(())
    }

    fn text(
        &self,
        x: i32,
        y: i32,
        colour: [u8; 3],
        back: [u8; 3],
        text: &str,
    ) -> Result<(), ConnectionError> {
        self.conn.change_gc(
            self.gc,
            &ChangeGCAux::new()
                .foreground(self.colours.pixel(colour))
                .background(self.colours.pixel(back)),
        )?;
        let bytes = latin1(text);
        // image_text8 takes at most 255 bytes.
        let bytes = &bytes[..bytes.len().min(255)];
        self.conn
            .image_text8(self.window, self.gc, clamp16(x), clamp16(y), bytes)?;
        Ok(())
    }

    fn draw(&self, width: u16, height: u16) -> Result<(), ConnectionError> {
        self.fill(BACKGROUND, rect(0, 0, width, height))?;
        let mut y = PAD + self.ascent;
        for (i, line) in self.lines.iter().enumerate() {
            let colour = if i == 0 { HEADING } else { TEXT };
            self.text(PAD, y, colour, BACKGROUND, line)?;
            y += self.line_height;
        }
        if let Some((data, w, h, depth)) = &self.picture {
            self.conn.put_image(
                ImageFormat::Z_PIXMAP,
                self.window,
                self.gc,
                *w,
                *h,
                clamp16(PAD),
                clamp16(self.picture_top),
                0,
                *depth,
                data,
            )?;
        }
        for (i, button) in self.buttons.iter().enumerate() {
            let r = button.rect;
            let border = if i == self.focused { FOCUS } else { TEXT };
            let thickness = if i == self.focused { 3 } else { 1 };
            self.fill(border, r)?;
            self.fill(
                BUTTON_FACE,
                rect(
                    i32::from(r.x) + thickness,
                    i32::from(r.y) + thickness,
                    r.width.saturating_sub(2 * thickness as u16),
                    r.height.saturating_sub(2 * thickness as u16),
                ),
            )?;
            let label = button.label();
            let text_width = self.char_width * label.chars().count() as i32;
            self.text(
                i32::from(r.x) + (i32::from(r.width) - text_width) / 2,
                i32::from(r.y) + (i32::from(r.height) + self.ascent) / 2 - 1,
                TEXT,
                BUTTON_FACE,
                &label,
            )?;
        }
        Ok(())
    }
}

fn clamp16(v: i32) -> i16 {
    v.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

fn rect(x: i32, y: i32, width: u16, height: u16) -> Rectangle {
    Rectangle {
        x: clamp16(x),
        y: clamp16(y),
        width,
        height,
    }
}

/// Interns `name`.
fn atom(conn: &RustConnection, name: &str) -> Result<u32, DialogError> {
    Ok(conn.intern_atom(false, name.as_bytes())?.reply()?.atom)
}

/// Shows `dialog` on `display` and waits for an answer, or for `abort` (which answers
/// `Abort`). The window is gone when this returns.
pub fn show(
    display: &str,
    dialog: &AskDialog,
    abort: Option<&AbortSignal>,
) -> Result<UserAnswer, DialogError> {
    let (conn, screen_num) =
        x11rb::connect(Some(display)).map_err(|source| DialogError::Connect {
            display: display.to_owned(),
            source,
        })?;
    let screen = conn
        .setup()
        .roots
        .get(screen_num)
        .cloned()
        .ok_or(DialogError::NoScreen(screen_num))?;
    // Where the keyboard was before the dialog takes it, to give it back when the dialog
    // closes: the window the person was asked about stays the one the action reaches.
    let focus_before = conn.get_input_focus().ok().and_then(|c| c.reply().ok());
    let visual = screen
        .allowed_depths
        .iter()
        .flat_map(|d| d.visuals.iter())
        .find(|v| v.visual_id == screen.root_visual)
        .ok_or_else(|| protocol("the root visual is not described"))?;
    let colours = Colours {
        red_mask: visual.red_mask,
        green_mask: visual.green_mask,
        blue_mask: visual.blue_mask,
    };

    let font: Font = conn.generate_id()?;
    conn.open_font(font, b"fixed")?
        .check()
        .map_err(|e| DialogError::Font(e.to_string()))?;
    let metrics = conn.query_font(font)?.reply()?;
    let char_width = i32::from(metrics.max_bounds.character_width).max(1);
    let ascent = i32::from(metrics.font_ascent);
    let line_height = ascent + i32::from(metrics.font_descent) + 3;

    let mut lines = vec!["deskhand asks before this action".to_owned()];
    lines.extend(wrapped_lines(&dialog.text));
    let longest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as i32;
    let picture = dialog.picture.as_ref().and_then(|p| {
        z_pixmap(&conn, screen.root_depth, &colours, p).map(|data| {
            (
                data,
                u16::try_from(p.width()).unwrap_or(0),
                u16::try_from(p.height()).unwrap_or(0),
                screen.root_depth,
            )
        })
    });
    let text_height = line_height * lines.len() as i32;
    let picture_top = PAD + text_height + PAD;
    let picture_height = picture.as_ref().map_or(0, |p| i32::from(p.2) + PAD);
    let button_height = line_height + 14;
    let button_top = picture_top + picture_height;
    let mut buttons = Vec::new();
    let mut x = PAD;
    for choice in &dialog.choices {
        let label_chars = format!("[{}] {}", choice.key, choice.word).chars().count() as i32;
        let width = label_chars * char_width + 24;
        buttons.push(Button {
            choice: *choice,
            rect: rect(x, button_top, width as u16, button_height as u16),
        });
        x += width + BUTTON_GAP;
    }
    let content_width = (longest * char_width)
        .max(picture.as_ref().map_or(0, |p| i32::from(p.1)))
        .max(x - BUTTON_GAP - PAD);
    let width = u16::try_from(content_width + 2 * PAD).unwrap_or(u16::MAX);
    let height = u16::try_from(button_top + button_height + PAD).unwrap_or(u16::MAX);
    let left = (i32::from(screen.width_in_pixels) - i32::from(width)).max(0) / 2;
    let top = (i32::from(screen.height_in_pixels) - i32::from(height)).max(0) / 3;

    let window = conn.generate_id()?;
    conn.create_window(
        screen.root_depth,
        window,
        screen.root,
        clamp16(left),
        clamp16(top),
        width,
        height,
        1,
        WindowClass::INPUT_OUTPUT,
        screen.root_visual,
        &CreateWindowAux::new()
            .background_pixel(colours.pixel(BACKGROUND))
            .border_pixel(colours.pixel(TEXT))
            .event_mask(
                EventMask::EXPOSURE
                    | EventMask::STRUCTURE_NOTIFY
                    | EventMask::BUTTON_PRESS
                    | EventMask::BUTTON_RELEASE
                    | EventMask::KEY_PRESS,
            ),
    )?
    .check()?;
    // Registered before it is mapped, so it is never visible and unguarded.
    let guard = OwnWindow::register(OwnArea {
        x: left,
        y: top,
        width: u32::from(width) + 2,
        height: u32::from(height) + 2,
    });
    let result = (|| -> Result<UserAnswer, DialogError> {
        set_properties(&conn, window, width, height, &buttons)?;
        let gc = conn.generate_id()?;
        conn.create_gc(
            gc,
            window,
            &CreateGCAux::new()
                .font(font)
                .foreground(colours.pixel(TEXT))
                .background(colours.pixel(BACKGROUND))
                .graphics_exposures(0),
        )?
        .check()?;
        let focused = buttons
            .iter()
            .position(|b| {
                matches!(
                    b.choice.answer,
                    UserAnswer::Answer(crate::policy::Answer::Deny)
                )
            })
            .unwrap_or(0);
        let mut shown = Shown {
            conn: &conn,
            root: screen.root,
            window,
            gc,
            colours,
            char_width,
            ascent,
            line_height,
            lines,
            picture,
            picture_top,
            buttons,
            focused,
        };
        conn.map_window(window)?;
        conn.configure_window(
            window,
            &ConfigureWindowAux::new().stack_mode(StackMode::ABOVE),
        )?;
        conn.flush()?;
        let answer = wait_for_answer(&conn, &mut shown, &guard, (width, height), abort);
        let _ = conn.free_gc(gc);
        answer
    })();
    let _ = conn.destroy_window(window);
    let _ = conn.close_font(font);
    // A round trip: once it returns, the server has destroyed the window, so no capture
    // taken after this can show it.
    let focus_after = conn.get_input_focus().ok().and_then(|c| c.reply().ok());
    // Destroying the focused dialog reverts the focus to its parent, the root: then, and only
    // then (not if the person has since focused something else), it goes back where it was.
    let reverted = focus_after.is_some_and(|f| {
        f.focus == screen.root || f.focus == x11rb::NONE || f.focus == POINTER_ROOT
    });
    if let Some(before) = focus_before.filter(|b| reverted && b.focus != screen.root) {
        let _ = conn
            .set_input_focus(before.revert_to, before.focus, x11rb::CURRENT_TIME)
            .map(|c| c.check());
    }
    drop(guard);
    result
}

/// The focus value that follows the pointer (`PointerRoot` in the protocol).
const POINTER_ROOT: u32 = 1;

/// The picture in the server's Z-pixmap layout, when the root depth draws 32 bits a pixel
/// (every TrueColor desktop today); `None` otherwise, and the dialog goes without it.
fn z_pixmap(
    conn: &RustConnection,
    depth: u8,
    colours: &Colours,
    picture: &RgbImage,
) -> Option<Vec<u8>> {
    let setup = conn.setup();
    let format = setup.pixmap_formats.iter().find(|f| f.depth == depth)?;
    if format.bits_per_pixel != 32 {
        return None;
    }
    let lsb = setup.image_byte_order == ImageOrder::LSB_FIRST;
    let mut data = Vec::with_capacity(picture.as_raw().len() / 3 * 4);
    for pixel in picture.pixels() {
        let value = colours.pixel(pixel.0);
        data.extend_from_slice(&if lsb {
            value.to_le_bytes()
        } else {
            value.to_be_bytes()
        });
    }
    // Without BIG-REQUESTS a request holds at most 256 KiB; the crop's size keeps under it.
    (data.len() + 64 < 256 * 1024).then_some(data)
}

fn set_properties(
    conn: &RustConnection,
    window: Window,
    width: u16,
    height: u16,
    buttons: &[Button],
) -> Result<(), DialogError> {
    let title = "deskhand asks";
    let utf8 = atom(conn, "UTF8_STRING")?;
    conn.change_property8(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_NAME,
        AtomEnum::STRING,
        title.as_bytes(),
    )?;
    conn.change_property8(
        PropMode::REPLACE,
        window,
        atom(conn, "_NET_WM_NAME")?,
        utf8,
        title.as_bytes(),
    )?;
    let class = format!("{DIALOG_CLASS}\0deskhand\0");
    conn.change_property8(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_CLASS,
        AtomEnum::STRING,
        class.as_bytes(),
    )?;
    // Properties whose value is one atom: the window type, "above", and the close button.
    for (property, value) in [
        ("_NET_WM_WINDOW_TYPE", "_NET_WM_WINDOW_TYPE_DIALOG"),
        ("_NET_WM_STATE", "_NET_WM_STATE_ABOVE"),
        ("WM_PROTOCOLS", "WM_DELETE_WINDOW"),
    ] {
        conn.change_property32(
            PropMode::REPLACE,
            window,
            atom(conn, property)?,
            AtomEnum::ATOM,
            &[atom(conn, value)?],
        )?;
    }
    // WM_HINTS: input (flag 1) true, so window managers give it the keyboard.
    conn.change_property32(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_HINTS,
        AtomEnum::WM_HINTS,
        &[1, 1, 0, 0, 0, 0, 0, 0, 0],
    )?;
    // WM_NORMAL_HINTS: min size (16) and max size (32) equal, so it is not resized.
    let (w, h) = (u32::from(width), u32::from(height));
    conn.change_property32(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_NORMAL_HINTS,
        AtomEnum::WM_SIZE_HINTS,
        &[16 | 32, 0, 0, 0, 0, w, h, w, h, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )?;
    conn.change_property32(
        PropMode::REPLACE,
        window,
        atom(conn, "_NET_WM_PID")?,
        AtomEnum::CARDINAL,
        &[std::process::id()],
    )?;
    let listed: Vec<String> = buttons
        .iter()
        .map(|b| {
            format!(
                "{}:{},{},{},{}",
                b.choice.key, b.rect.x, b.rect.y, b.rect.width, b.rect.height
            )
        })
        .collect();
    conn.change_property8(
        PropMode::REPLACE,
        window,
        atom(conn, BUTTONS_PROPERTY)?,
        AtomEnum::STRING,
        listed.join(";").as_bytes(),
    )?;
    Ok(())
}

/// The keysyms of every keycode, without shift and with it.
struct Keys {
    min_keycode: u8,
    per_keycode: usize,
    keysyms: Vec<u32>,
}

impl Keys {
    fn fetch(conn: &RustConnection) -> Result<Keys, DialogError> {
        let setup = conn.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let reply = conn
            .get_keyboard_mapping(min, max.saturating_sub(min).saturating_add(1))?
            .reply()?;
        Ok(Keys {
            min_keycode: min,
            per_keycode: usize::from(reply.keysyms_per_keycode).max(1),
            keysyms: reply.keysyms,
        })
    }

    fn keysym(&self, keycode: u8) -> u32 {
        let index = usize::from(keycode.saturating_sub(self.min_keycode)) * self.per_keycode;
        self.keysyms.get(index).copied().unwrap_or(0)
    }
}

const XK_TAB: u32 = 0xff09;
const XK_ISO_LEFT_TAB: u32 = 0xfe20;
const XK_RETURN: u32 = 0xff0d;
const XK_KP_ENTER: u32 = 0xff8d;
const XK_ESCAPE: u32 = 0xff1b;
const XK_SPACE: u32 = 0x20;
const XK_LEFT: u32 = 0xff51;
const XK_RIGHT: u32 = 0xff53;

fn wait_for_answer(
    conn: &RustConnection,
    shown: &mut Shown<'_>,
    guard: &OwnWindow,
    (width, height): (u16, u16),
    abort: Option<&AbortSignal>,
) -> Result<UserAnswer, DialogError> {
    let keys = Keys::fetch(conn)?;
    let delete = atom(conn, "WM_DELETE_WINDOW")?;
    let deny = UserAnswer::Answer(crate::policy::Answer::Deny);
    let mut pressed_on: Option<usize> = None;
    // From when the dialog is viewable; until then nothing can reach it anyway.
    let mut shown_at: Option<Instant> = None;
    let armed = |shown_at: Option<Instant>| shown_at.is_some_and(|t| t.elapsed() >= ARMING_DELAY);
    loop {
        if abort.is_some_and(|a| a.reason().is_some()) {
            return Ok(UserAnswer::Abort);
        }
        let Some(event) = conn.poll_for_event()? else {
            std::thread::sleep(POLL);
            continue;
        };
        match event {
            Event::Expose(e) if e.count == 0 => {
                shown.draw(width, height)?;
                conn.flush()?;
            }
            Event::MapNotify(_) => {
                shown_at = Some(Instant::now());
                // Viewable now, so it can take the keyboard.
                conn.set_input_focus(InputFocus::PARENT, shown.window, x11rb::CURRENT_TIME)?;
                conn.flush()?;
            }
            Event::ConfigureNotify(_) => {
                // The window manager may have moved it: guard where it is now.
                if let Ok(at) = conn
                    .translate_coordinates(shown.window, shown.root, 0, 0)?
                    .reply()
                {
                    guard.moved_to(OwnArea {
                        x: i32::from(at.dst_x) - 1,
                        y: i32::from(at.dst_y) - 1,
                        width: u32::from(width) + 2,
                        height: u32::from(height) + 2,
                    });
                }
            }
            Event::ButtonPress(_) | Event::KeyPress(_) if !armed(shown_at) => {
                pressed_on = None;
            }
            Event::ButtonPress(e) if e.detail == 1 => {
                pressed_on = shown
                    .buttons
                    .iter()
                    .position(|b| b.contains(i32::from(e.event_x), i32::from(e.event_y)));
            }
            // A click is a press and a release on the same button, as toolkits have it.
            Event::ButtonRelease(e) if e.detail == 1 => {
                let released_on = shown
                    .buttons
                    .iter()
                    .position(|b| b.contains(i32::from(e.event_x), i32::from(e.event_y)));
                if let (Some(a), Some(b)) = (pressed_on, released_on)
                    && a == b
                {
                    return Ok(shown.buttons[a].choice.answer);
                }
                pressed_on = None;
            }
            Event::KeyPress(e) => {
                let keysym = keys.keysym(e.detail);
                let shift =
                    u16::from(e.state) & u16::from(x11rb::protocol::xproto::KeyButMask::SHIFT) != 0;
                let count = shown.buttons.len();
                match keysym {
                    XK_ESCAPE => return Ok(deny),
                    XK_RETURN | XK_KP_ENTER | XK_SPACE => {
                        if let Some(button) = shown.buttons.get(shown.focused) {
                            return Ok(button.choice.answer);
                        }
                    }
                    XK_TAB | XK_ISO_LEFT_TAB | XK_LEFT | XK_RIGHT if count > 0 => {
                        let back = keysym == XK_ISO_LEFT_TAB
                            || keysym == XK_LEFT
                            || (keysym == XK_TAB && shift);
                        shown.focused = if back {
                            (shown.focused + count - 1) % count
                        } else {
                            (shown.focused + 1) % count
                        };
                        shown.draw(width, height)?;
                        conn.flush()?;
                    }
                    other => {
                        let letter = char::from_u32(other).map(|c| c.to_ascii_lowercase());
                        if let Some(button) =
                            shown.buttons.iter().find(|b| Some(b.choice.key) == letter)
                        {
                            return Ok(button.choice.answer);
                        }
                    }
                }
            }
            Event::ClientMessage(e) if e.data.as_data32()[0] == delete => return Ok(deny),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::screen::{FrameMap, MonitorInfo};

    #[test]
    fn long_text_is_wrapped_and_capped() {
        let long = "x".repeat(MAX_COLUMNS * 2 + 5);
        let lines = wrapped_lines(&long);
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.chars().count() <= MAX_COLUMNS));
        let many = "line\n".repeat(MAX_LINES + 10);
        let lines = wrapped_lines(&many);
        assert_eq!(lines.len(), MAX_LINES);
        assert!(lines[MAX_LINES - 1].contains("11 more lines"), "{lines:?}");
        assert_eq!(latin1("é中"), vec![0xe9, b'?']);
        assert_eq!(latin1("a — b → c"), b"a - b -> c".to_vec());
    }

    #[test]
    fn the_crop_is_centred_on_the_point_and_marks_it() {
        let monitor = MonitorInfo::single("t", 2000, 1000);
        let frame = Frame {
            image: RgbImage::from_pixel(1000, 500, image::Rgb([255, 255, 255])),
            map: FrameMap::new(&monitor, 1000, 500),
        };
        // Screen (1000, 500) is frame (500, 250): the crop's centre.
        let crop = crop_around(&frame, &[ScreenPoint::new(1000, 500)]).unwrap();
        assert_eq!(crop.dimensions(), (CROP_WIDTH, CROP_HEIGHT));
        let (cx, cy) = (CROP_WIDTH / 2, CROP_HEIGHT / 2);
        assert_eq!(crop.get_pixel(cx, cy), &image::Rgb([230, 0, 0]));
        assert_eq!(crop.get_pixel(cx + 10, cy), &image::Rgb([230, 0, 0]));
        assert_eq!(crop.get_pixel(cx + 5, cy), &image::Rgb([255, 255, 255]));
        // Near a corner the crop stays inside the frame.
        let corner = crop_around(&frame, &[ScreenPoint::new(2, 2)]).unwrap();
        assert_eq!(corner.dimensions(), (CROP_WIDTH, CROP_HEIGHT));
        assert_eq!(corner.get_pixel(1, 1), &image::Rgb([230, 0, 0]));
        assert!(crop_around(&frame, &[ScreenPoint::new(5000, 5)]).is_none());
        assert!(crop_around(&frame, &[]).is_none());
    }
}
