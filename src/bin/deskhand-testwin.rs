//! `deskhand-testwin`: a small X11 window that exists only so the display tests can check input.
//!
//! The tests drive the real desktop with synthetic mouse and keyboard input (XTest, through
//! enigo). To know that a click landed where it was aimed, or that a Unicode string arrived
//! intact, something on the other side has to record what the X server actually delivered. This
//! program is that something: it draws known targets (three coloured squares and a text field)
//! at positions it announces, and writes every click, scroll, drag, key, focus change and the
//! text typed so far to a JSON Lines log, one flushed line per event, that the test reads back.
//!
//! It talks to X with x11rb directly, with no toolkit, so that what it reports is exactly what
//! the server sent. Keys are translated from a cached copy of the keyboard mapping that is
//! refreshed on every `MappingNotify`, because input tools type characters that are not on the
//! keyboard by rebinding spare keycodes on the fly; querying the mapping when a key arrives would
//! race with the next rebinding.
//!
//! With `--mail` it is a mail composer instead: To, Subject and Body fields and a Send button,
//! titled as Thunderbird titles its composer, so that the policy's mail rules and unlocks can
//! be tried against a real window. A click on Send logs a `sent` event with the fields.
//!
//! Usage: `deskhand-testwin --log FILE [--display NAME] [--geometry WxH+X+Y] [--title TITLE]
//! [--banner TEXT] [--mail]`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde_json::{Value, json};
use x11rb::connection::Connection;
use x11rb::errors::{ConnectionError, ReplyError, ReplyOrIdError};
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    AtomEnum, ButtonPressEvent, ChangeGCAux, ClientMessageEvent, ConnectionExt as _, CreateGCAux,
    CreateWindowAux, EventMask, Font, Gcontext, InputFocus, KeyButMask, KeyPressEvent, Mapping,
    MotionNotifyEvent, NotifyDetail, PropMode, Rectangle, Screen, VisualClass, Window, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;
use xkeysym::Keysym;

/// Side of a target square, in pixels. The square spans `centre - 10 ..= centre + 10`.
const TARGET_SIZE: i32 = 21;
/// Height of the text field, in pixels.
const FIELD_HEIGHT: i32 = 30;
/// The band the banner is drawn in, window-relative: top and height, in pixels.
const BANNER_TOP: i32 = 20;
const BANNER_HEIGHT: i32 = 20;
/// The mail composer's fields, in Tab order, as its log names them.
const MAIL_FIELDS: [&str; 3] = ["to", "subject", "body"];
/// Where the composer's first field starts, window-relative, and the distance between fields.
const MAIL_LEFT: i32 = 90;
const MAIL_TOP: i32 = 60;
const MAIL_ROW: i32 = 40;
/// The Send button: x, y, width, height, window-relative.
const SEND_BUTTON: (i32, i32, i32, i32) = (MAIL_LEFT, MAIL_TOP + 3 * MAIL_ROW, 80, 28);

/// Command line of the test window.
#[derive(Parser, Debug)]
#[command(
    name = "deskhand-testwin",
    about = "An X11 window for deskhand's display tests: draws known targets and logs every \
             click, key and character it receives as JSON lines."
)]
struct Args {
    /// File to append the JSON Lines event log to (created if missing).
    #[arg(long, value_name = "FILE")]
    log: PathBuf,

    /// X display to connect to [default: $DISPLAY].
    #[arg(long, value_name = "NAME")]
    display: Option<String>,

    /// Window size and position, as WxH+X+Y (a negative offset counts from the right or
    /// bottom edge of the screen, as in X geometry strings).
    #[arg(long, value_name = "WxH+X+Y", default_value = "640x480+0+0", value_parser = parse_geometry)]
    geometry: Geometry,

    /// Window title (WM_NAME and _NET_WM_NAME).
    #[arg(long, value_name = "TITLE", default_value = "deskhand test window")]
    title: String,

    /// A line of text drawn in black near the top of the window (y 20..40, above the
    /// targets), so that screenshots show it; clipped to the window's width.
    #[arg(long, value_name = "TEXT")]
    banner: Option<String>,

    /// Be a mail composer: To, Subject and Body fields (Tab moves between them) and a Send
    /// button. The title follows the subject, "Write: SUBJECT - Thunderbird", and replaces
    /// --title; a click on Send logs a "sent" event with the three fields.
    #[arg(long)]
    mail: bool,
}

/// Thunderbird's composer title for `subject`.
fn mail_title(subject: &str) -> String {
    let subject = if subject.is_empty() {
        "(no subject)"
    } else {
        subject
    };
    format!("Write: {subject} - Thunderbird")
}

/// The composer's state: the fields' text and which one has the keyboard.
#[derive(Default)]
struct Mail {
    fields: [String; 3],
    focused: usize,
}

impl Mail {
    fn as_json(&self) -> Value {
        json!({
            "to": self.fields[0],
            "subject": self.fields[1],
            "body": self.fields[2],
        })
    }
}

/// An offset in a geometry string: `+N` counts from the left/top, `-N` from the right/bottom.
#[derive(Clone, Copy, Debug)]
enum Offset {
    FromStart(i32),
    FromEnd(i32),
}

impl Offset {
    /// The absolute coordinate for a window of `size` on a screen of `screen`.
    fn resolve(self, size: u16, screen: u16) -> i32 {
        match self {
            Offset::FromStart(v) => v,
            Offset::FromEnd(v) => i32::from(screen) - i32::from(size) - v,
        }
    }
}

/// A parsed `WxH+X+Y` geometry.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    width: u16,
    height: u16,
    x: Offset,
    y: Offset,
}

fn parse_geometry(s: &str) -> Result<Geometry, String> {
    let bad = || format!("invalid geometry {s:?}: expected WxH or WxH+X+Y, e.g. 640x480+0+0");
    let size_end = s.find(['+', '-']).unwrap_or(s.len());
    let (size, offsets) = s.split_at(size_end);
    let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
    let width: u16 = w.parse().map_err(|_| bad())?;
    let height: u16 = h.parse().map_err(|_| bad())?;
    if width == 0 || height == 0 {
        return Err(format!(
            "invalid geometry {s:?}: width and height must be at least 1"
        ));
    }
    let (x, y) = if offsets.is_empty() {
        (Offset::FromStart(0), Offset::FromStart(0))
    } else {
        let (x, rest) = parse_offset(offsets).ok_or_else(bad)?;
        let (y, rest) = parse_offset(rest).ok_or_else(bad)?;
        if !rest.is_empty() {
            return Err(bad());
        }
        (x, y)
    };
    Ok(Geometry {
        width,
        height,
        x,
        y,
    })
}

/// Parses one `+N`, `-N` or `+-N` offset from the front of `s`, returning it and the rest.
fn parse_offset(s: &str) -> Option<(Offset, &str)> {
    let from_end = match s.chars().next()? {
        '+' => false,
        '-' => true,
        _ => return None,
    };
    let body = &s[1..];
    let negative = body.starts_with('-');
    let digits_start = usize::from(negative);
    let digits_len = body[digits_start..]
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(body.len() - digits_start);
    if digits_len == 0 {
        return None;
    }
    let end = digits_start + digits_len;
    let mut value: i32 = body[digits_start..end].parse().ok()?;
    if negative {
        value = -value;
    }
    let offset = if from_end {
        Offset::FromEnd(value)
    } else {
        Offset::FromStart(value)
    };
    Some((offset, &body[end..]))
}

/// Appends JSON lines to the log, one write and flush per line.
struct Logger {
    file: File,
}

impl Logger {
    fn log(&mut self, value: Value) -> Result<()> {
        let mut line = serde_json::to_string(&value).context("cannot serialise a log line")?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .context("cannot write to the log file")
    }
}

/// A cached copy of the core keyboard mapping.
struct KeyMap {
    min_keycode: u8,
    per_keycode: u8,
    keysyms: Vec<u32>,
}

impl KeyMap {
    fn fetch(conn: &RustConnection) -> Result<KeyMap, ReplyError> {
        let setup = conn.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let count = max.saturating_sub(min).saturating_add(1);
        let reply = conn.get_keyboard_mapping(min, count)?.reply()?;
        Ok(KeyMap {
            min_keycode: min,
            per_keycode: reply.keysyms_per_keycode,
            keysyms: reply.keysyms,
        })
    }

    /// The keysyms bound to `keycode`, all columns; empty if the keycode is unknown.
    fn row(&self, keycode: u8) -> &[u32] {
        let per = usize::from(self.per_keycode);
        let Some(index) = keycode.checked_sub(self.min_keycode) else {
            return &[];
        };
        let start = usize::from(index) * per;
        self.keysyms.get(start..start + per).unwrap_or(&[])
    }

    /// The keysym that a key event with this keycode and modifier state stands for.
    ///
    /// Group 1 only. Column 0 normally, column 1 with Shift (falling back to the upper-case
    /// form of column 0 when column 1 is empty); Num Lock selects the keypad column; Caps Lock
    /// upper-cases letters.
    fn keysym_for(&self, keycode: u8, state: u16) -> u32 {
        let row = self.row(keycode);
        let col0 = row.first().copied().unwrap_or(NO_SYMBOL);
        let col1 = row.get(1).copied().unwrap_or(NO_SYMBOL);
        let shift = state & u16::from(KeyButMask::SHIFT) != 0;
        let lock = state & u16::from(KeyButMask::LOCK) != 0;
        let num_lock = state & u16::from(KeyButMask::MOD2) != 0;

        if num_lock && col1 != NO_SYMBOL && Keysym::new(col1).is_keypad_key() {
            return if shift { col0 } else { col1 };
        }
        let chosen = if !shift {
            col0
        } else if col1 != NO_SYMBOL {
            col1
        } else {
            upper_case(col0)
        };
        if lock { upper_case(chosen) } else { chosen }
    }
}

const NO_SYMBOL: u32 = 0;

/// The upper-case keysym of a lower-case letter keysym; any other keysym unchanged.
fn upper_case(sym: u32) -> u32 {
    let Some(c) = Keysym::new(sym).key_char() else {
        return sym;
    };
    if !c.is_lowercase() {
        return sym;
    }
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) if u != c => {
            let k = Keysym::from_char(u);
            if k == Keysym::NoSymbol { sym } else { k.raw() }
        }
        _ => sym,
    }
}

/// A short name for the non-character keys the tests use; `None` for others.
fn key_name(sym: u32) -> Option<&'static str> {
    use xkeysym::key;
    Some(match sym {
        key::Return => "Return",
        key::KP_Enter => "KP_Enter",
        key::Tab => "Tab",
        key::ISO_Left_Tab => "ISO_Left_Tab",
        key::BackSpace => "BackSpace",
        key::Escape => "Escape",
        key::Delete => "Delete",
        key::Insert => "Insert",
        key::Shift_L => "Shift_L",
        key::Shift_R => "Shift_R",
        key::Control_L => "Control_L",
        key::Control_R => "Control_R",
        key::Alt_L => "Alt_L",
        key::Alt_R => "Alt_R",
        key::Meta_L => "Meta_L",
        key::Meta_R => "Meta_R",
        key::Super_L => "Super_L",
        key::Super_R => "Super_R",
        key::Caps_Lock => "Caps_Lock",
        key::Num_Lock => "Num_Lock",
        key::Up => "Up",
        key::Down => "Down",
        key::Left => "Left",
        key::Right => "Right",
        key::Home => "Home",
        key::End => "End",
        key::Page_Up => "Page_Up",
        key::Page_Down => "Page_Down",
        key::F1 => "F1",
        key::F2 => "F2",
        key::F3 => "F3",
        key::F4 => "F4",
        key::F5 => "F5",
        key::F6 => "F6",
        key::F7 => "F7",
        key::F8 => "F8",
        key::F9 => "F9",
        key::F10 => "F10",
        key::F11 => "F11",
        key::F12 => "F12",
        key::space => "space",
        _ => return None,
    })
}

/// The character a keysym types: Return/KP_Enter give '\n', Tab gives '\t', and any other
/// keysym its Unicode character; control characters (BackSpace, Escape, Delete...) give `None`.
fn key_char(sym: u32) -> Option<char> {
    use xkeysym::key;
    match sym {
        key::Return | key::KP_Enter => Some('\n'),
        key::Tab | key::KP_Tab => Some('\t'),
        _ => Keysym::new(sym).key_char().filter(|c| !c.is_control()),
    }
}

/// Interned atoms the window needs.
struct Atoms {
    wm_protocols: u32,
    wm_delete_window: u32,
    net_wm_name: u32,
    net_wm_pid: u32,
    utf8_string: u32,
}

impl Atoms {
    fn intern(conn: &RustConnection) -> Result<Atoms> {
        let names = [
            "WM_PROTOCOLS",
            "WM_DELETE_WINDOW",
            "_NET_WM_NAME",
            "_NET_WM_PID",
            "UTF8_STRING",
        ];
        let cookies = names
            .iter()
            .map(|name| conn.intern_atom(false, name.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut atoms = Vec::with_capacity(names.len());
        for (cookie, name) in cookies.into_iter().zip(names) {
            atoms.push(
                cookie
                    .reply()
                    .with_context(|| format!("cannot intern atom {name}"))?
                    .atom,
            );
        }
        Ok(Atoms {
            wm_protocols: atoms[0],
            wm_delete_window: atoms[1],
            net_wm_name: atoms[2],
            net_wm_pid: atoms[3],
            utf8_string: atoms[4],
        })
    }
}

/// Pixel values for the colours drawn.
struct Palette {
    white: u32,
    black: u32,
    gray: u32,
    red: u32,
    blue: u32,
    green: u32,
}

impl Palette {
    fn new(conn: &RustConnection, screen: &Screen) -> Palette {
        let visual = screen
            .allowed_depths
            .iter()
            .filter(|d| d.depth == screen.root_depth)
            .flat_map(|d| d.visuals.iter())
            .find(|v| v.visual_id == screen.root_visual);
        let true_color = visual.filter(|v| v.class == VisualClass::TRUE_COLOR);
        let pixel = |rgb: u32, fallback: u32| -> u32 {
            let [_, r, g, b] = rgb.to_be_bytes();
            if let Some(v) = true_color {
                return scale(r, v.red_mask) | scale(g, v.green_mask) | scale(b, v.blue_mask);
            }
            // Not TrueColor: ask the default colormap for the nearest colour.
            let widen = |c: u8| u16::from(c) * 0x101;
            match conn
                .alloc_color(screen.default_colormap, widen(r), widen(g), widen(b))
                .map_err(ReplyError::from)
                .and_then(|cookie| cookie.reply())
            {
                Ok(reply) => reply.pixel,
                Err(e) => {
                    eprintln!("deskhand-testwin: cannot allocate colour #{rgb:06x}: {e}");
                    fallback
                }
            }
        };
        Palette {
            white: screen.white_pixel,
            black: screen.black_pixel,
            gray: pixel(0x808080, screen.black_pixel),
            red: pixel(0xff0000, screen.black_pixel),
            blue: pixel(0x0000ff, screen.black_pixel),
            green: pixel(0x00c000, screen.black_pixel),
        }
    }
}

/// Scales an 8-bit colour component into the bits of a TrueColor channel mask.
fn scale(component: u8, mask: u32) -> u32 {
    if mask == 0 {
        return 0;
    }
    let shift = mask.trailing_zeros();
    let max = u64::from(mask >> shift);
    let value = (u64::from(component) * max + 127) / 255;
    (u32::try_from(value).unwrap_or(0) << shift) & mask
}

/// The core font used for the text field, if it could be opened.
struct TextFont {
    font: Font,
    char_width: i32,
    ascent: i32,
    descent: i32,
}

fn open_font(conn: &RustConnection) -> Option<TextFont> {
    let font = match conn.generate_id() {
        Ok(id) => id,
        Err(e) => {
            eprintln!("deskhand-testwin: cannot allocate a font id: {e}");
            return None;
        }
    };
    let opened = conn
        .open_font(font, b"fixed")
        .map_err(ReplyError::from)
        .and_then(|cookie| cookie.check());
    if let Err(e) = opened {
        eprintln!(
            "deskhand-testwin: cannot open the core font \"fixed\", text will not be drawn: {e}"
        );
        return None;
    }
    let metrics = conn
        .query_font(font)
        .map_err(ReplyError::from)
        .and_then(|cookie| cookie.reply());
    let (char_width, ascent, descent) = match metrics {
        Ok(m) => (
            i32::from(m.max_bounds.character_width).max(1),
            i32::from(m.font_ascent),
            i32::from(m.font_descent),
        ),
        Err(e) => {
            eprintln!("deskhand-testwin: cannot query the font \"fixed\", guessing its size: {e}");
            (6, 11, 2)
        }
    };
    Some(TextFont {
        font,
        char_width,
        ascent,
        descent,
    })
}

/// A target square: its name, colour and centre, window-relative.
struct Target {
    name: &'static str,
    pixel: u32,
    x: i32,
    y: i32,
}

/// What the event loop should do after an event.
enum Flow {
    Continue,
    Exit,
}

/// The window and everything it tracks.
struct App {
    conn: RustConnection,
    root: Window,
    window: Window,
    gc: Gcontext,
    font: Option<TextFont>,
    palette: Palette,
    atoms: Atoms,
    keymap: KeyMap,
    log: Logger,
    title: String,
    banner: Option<String>,
    width: i32,
    height: i32,
    text: String,
    ready: bool,
    mail: Option<Mail>,
}

impl App {
    fn targets(&self) -> Vec<Target> {
        if self.mail.is_some() {
            let (x, y, w, h) = SEND_BUTTON;
            return vec![Target {
                name: "send",
                pixel: self.palette.blue,
                x: x + w / 2,
                y: y + h / 2,
            }];
        }
        let (w, h) = (self.width, self.height);
        vec![
            Target {
                name: "red",
                pixel: self.palette.red,
                x: w / 4,
                y: h / 4,
            },
            Target {
                name: "blue",
                pixel: self.palette.blue,
                x: 3 * w / 4,
                y: h / 4,
            },
            Target {
                name: "green",
                pixel: self.palette.green,
                x: w / 4,
                y: 3 * h / 4,
            },
        ]
    }

    /// The composer's field `i`: x, y, width, height, window-relative.
    fn mail_field(&self, i: usize) -> (i32, i32, i32, i32) {
        let row = i32::try_from(i).unwrap_or(0);
        (
            MAIL_LEFT,
            MAIL_TOP + row * MAIL_ROW,
            (self.width - MAIL_LEFT - 20).max(0),
            FIELD_HEIGHT,
        )
    }

    /// The composer field under a window-relative point, if any.
    fn mail_field_at(&self, x: i32, y: i32) -> Option<usize> {
        (0..MAIL_FIELDS.len()).find(|&i| {
            let (fx, fy, fw, fh) = self.mail_field(i);
            x >= fx && x < fx + fw && y >= fy && y < fy + fh
        })
    }

    /// The text field's rectangle, window-relative: x, y, width, height.
    fn field(&self) -> (i32, i32, i32, i32) {
        (
            self.width / 2,
            3 * self.height / 4 - FIELD_HEIGHT / 2,
            (self.width / 2 - 20).max(0),
            FIELD_HEIGHT,
        )
    }

    /// The name of the target whose square contains the window-relative point, if any.
    fn target_at(&self, x: i32, y: i32) -> Option<&'static str> {
        if self.mail.is_some() {
            let (bx, by, bw, bh) = SEND_BUTTON;
            return (x >= bx && x < bx + bw && y >= by && y < by + bh).then_some("send");
        }
        let half = TARGET_SIZE / 2;
        self.targets()
            .into_iter()
            .find(|t| (x - t.x).abs() <= half && (y - t.y).abs() <= half)
            .map(|t| t.name)
    }

    fn set_foreground(&self, pixel: u32) -> Result<(), ConnectionError> {
        self.conn
            .change_gc(self.gc, &ChangeGCAux::new().foreground(pixel))?;
        Ok(())
    }

    fn fill(&self, x: i32, y: i32, width: i32, height: i32) -> Result<(), ConnectionError> {
        if width <= 0 || height <= 0 {
            return Ok(());
        }
        self.conn
            .poly_fill_rectangle(self.window, self.gc, &[rect(x, y, width, height)])?;
        Ok(())
    }

    /// Draws the whole window: background, targets, field and text.
    fn draw(&self) -> Result<(), ConnectionError> {
        self.set_foreground(self.palette.white)?;
        self.fill(0, 0, self.width, self.height)?;
        if self.mail.is_some() {
            self.draw_banner()?;
            return self.draw_mail();
        }
        let half = TARGET_SIZE / 2;
        for target in self.targets() {
            self.set_foreground(target.pixel)?;
            self.fill(target.x - half, target.y - half, TARGET_SIZE, TARGET_SIZE)?;
        }
        let (fx, fy, fw, fh) = self.field();
        if fw >= 2 {
            self.set_foreground(self.palette.gray)?;
            // An outline of width W spans W + 1 pixels: draw it one short so it covers exactly
            // the field's pixels.
            self.conn
                .poly_rectangle(self.window, self.gc, &[rect(fx, fy, fw - 1, fh - 1)])?;
        }
        self.draw_banner()?;
        self.draw_text()
    }

    /// Draws the banner, if any, in black on the white background near the top of the window,
    /// cut off at the window's right edge.
    fn draw_banner(&self) -> Result<(), ConnectionError> {
        let (Some(banner), Some(font)) = (&self.banner, &self.font) else {
            return Ok(());
        };
        let left = 4;
        // image_text8 takes at most 255 bytes; the window takes fewer when it is narrow.
        let room = usize::try_from((self.width - 2 * left) / font.char_width)
            .unwrap_or(0)
            .min(255);
        let bytes: Vec<u8> = banner.chars().map(latin1_glyph).take(room).collect();
        if bytes.is_empty() {
            return Ok(());
        }
        self.write(font, left, BANNER_TOP, BANNER_HEIGHT, &bytes)
    }

    /// Black Latin-1 text on white, left edge at `x`, centred in the band `top..top + height`.
    fn write(
        &self,
        font: &TextFont,
        x: i32,
        top: i32,
        height: i32,
        bytes: &[u8],
    ) -> Result<(), ConnectionError> {
        self.write_in(
            (self.palette.black, self.palette.white),
            font,
            x,
            top,
            height,
            bytes,
        )
    }

    /// `write` in other colours: (text, background).
    fn write_in(
        &self,
        (text, background): (u32, u32),
        font: &TextFont,
        x: i32,
        top: i32,
        height: i32,
        bytes: &[u8],
    ) -> Result<(), ConnectionError> {
        self.conn.change_gc(
            self.gc,
            &ChangeGCAux::new()
                .foreground(text)
                .background(background)
                .font(font.font),
        )?;
        let baseline = top + (height + font.ascent - font.descent) / 2;
        self.conn
            .image_text8(self.window, self.gc, clamp16(x), clamp16(baseline), bytes)?;
        Ok(())
    }

    /// The composer: each field with its label (the focused one outlined in black) and the
    /// Send button.
    fn draw_mail(&self) -> Result<(), ConnectionError> {
        let Some(mail) = &self.mail else {
            return Ok(());
        };
        for (i, label) in ["To:", "Subject:", "Body:"].into_iter().enumerate() {
            let (fx, fy, fw, fh) = self.mail_field(i);
            self.set_foreground(self.palette.white)?;
            self.fill(fx, fy, fw, fh)?;
            let outline = if i == mail.focused {
                self.palette.black
            } else {
                self.palette.gray
            };
            self.set_foreground(outline)?;
            self.conn
                .poly_rectangle(self.window, self.gc, &[rect(fx, fy, fw - 1, fh - 1)])?;
            if let Some(font) = &self.font {
                self.write(font, 8, fy, FIELD_HEIGHT, label.as_bytes())?;
                self.write_tail(font, (fx, fy, fw, fh), &mail.fields[i])?;
            }
        }
        let (bx, by, bw, bh) = SEND_BUTTON;
        self.set_foreground(self.palette.blue)?;
        self.fill(bx, by, bw, bh)?;
        if let Some(font) = &self.font {
            self.write_in(
                (self.palette.white, self.palette.blue),
                font,
                bx + (bw - 4 * font.char_width) / 2,
                by,
                bh,
                b"Send",
            )?;
        }
        Ok(())
    }

    /// Redraws the inside of the text field with the end of the text typed so far.
    fn draw_text(&self) -> Result<(), ConnectionError> {
        if self.mail.is_some() {
            return self.draw_mail();
        }
        let (fx, fy, fw, fh) = self.field();
        self.set_foreground(self.palette.white)?;
        self.fill(fx + 1, fy + 1, fw - 2, fh - 2)?;
        match &self.font {
            Some(font) => self.write_tail(font, (fx, fy, fw, fh), &self.text),
            None => Ok(()),
        }
    }

    /// The end of `text` that fits in the field (x, y, width, height), written inside it.
    fn write_tail(
        &self,
        font: &TextFont,
        (fx, fy, fw, fh): (i32, i32, i32, i32),
        text: &str,
    ) -> Result<(), ConnectionError> {
        let room = usize::try_from((fw - 8) / font.char_width)
            .unwrap_or(0)
            .min(255);
        let bytes: Vec<u8> = text.chars().map(latin1_glyph).collect();
        let visible = &bytes[bytes.len().saturating_sub(room)..];
        if visible.is_empty() {
            return Ok(());
        }
        self.write(font, fx + 4, fy, fh, visible)
    }

    fn focus_self(&self) -> Result<(), ConnectionError> {
        self.conn
            .set_input_focus(InputFocus::PARENT, self.window, x11rb::CURRENT_TIME)?;
        Ok(())
    }

    /// Once the window is mapped: draw, take the focus, and announce where everything is.
    fn become_ready(&mut self) -> Result<()> {
        // The server may have given the window another size than asked for.
        let geometry = self
            .conn
            .get_geometry(self.window)?
            .reply()
            .context("cannot read the window geometry")?;
        self.width = i32::from(geometry.width);
        self.height = i32::from(geometry.height);
        self.draw()?;
        self.focus_self()?;
        let origin = self
            .conn
            .translate_coordinates(self.window, self.root, 0, 0)?
            .reply()
            .context("cannot find the window's position on the screen")?;
        let (wx, wy) = (i32::from(origin.dst_x), i32::from(origin.dst_y));
        // A round trip, so that the drawing and the focus change are done before "ready".
        self.conn
            .get_input_focus()?
            .reply()
            .context("cannot synchronise with the X server")?;
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "root_x": wx + t.x,
                    "root_y": wy + t.y,
                    "size": TARGET_SIZE,
                })
            })
            .collect();
        let (fx, fy, fw, fh) = self.field();
        let mail_fields: Option<Value> = self.mail.as_ref().map(|_| {
            MAIL_FIELDS
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let (x, y, w, h) = self.mail_field(i);
                    (
                        (*name).to_owned(),
                        json!({"root_x": wx + x + w / 2, "root_y": wy + y + h / 2}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        });
        self.log.log(json!({
            "event": "ready",
            "pid": std::process::id(),
            "title": self.title,
            "window": {"x": wx, "y": wy, "width": self.width, "height": self.height},
            "targets": targets,
            "field": {"root_x": wx + fx, "root_y": wy + fy, "width": fw, "height": fh},
            "mail_fields": mail_fields,
        }))?;
        self.ready = true;
        Ok(())
    }

    fn on_button(&mut self, e: &ButtonPressEvent, pressed: bool) -> Result<()> {
        if pressed {
            self.focus_self()?;
        }
        let direction = match e.detail {
            4 => Some("up"),
            5 => Some("down"),
            6 => Some("left"),
            7 => Some("right"),
            _ => None,
        };
        if let Some(direction) = direction {
            if pressed {
                self.log.log(json!({
                    "event": "scroll",
                    "direction": direction,
                    "root_x": e.root_x,
                    "root_y": e.root_y,
                }))?;
            }
            return Ok(());
        }
        let (x, y) = (i32::from(e.event_x), i32::from(e.event_y));
        self.log.log(json!({
            "event": if pressed { "button_press" } else { "button_release" },
            "button": e.detail,
            "root_x": e.root_x,
            "root_y": e.root_y,
            "x": x,
            "y": y,
            "state": u16::from(e.state),
            "target": self.target_at(x, y),
        }))?;
        if pressed && e.detail == 1 {
            self.on_mail_click(x, y)?;
        }
        Ok(())
    }

    /// A left click in the composer: Send sends, a field takes the keyboard.
    fn on_mail_click(&mut self, x: i32, y: i32) -> Result<()> {
        if self.mail.is_none() {
            return Ok(());
        }
        if self.target_at(x, y) == Some("send") {
            let fields = self.mail.as_ref().map(Mail::as_json);
            return self.log.log(json!({"event": "sent", "mail": fields}));
        }
        if let Some(i) = self.mail_field_at(x, y) {
            self.focus_mail_field(i)?;
        }
        Ok(())
    }

    fn focus_mail_field(&mut self, i: usize) -> Result<()> {
        if let Some(mail) = &mut self.mail {
            mail.focused = i;
        }
        self.log
            .log(json!({"event": "mail_focus", "field": MAIL_FIELDS[i]}))?;
        Ok(self.draw_mail()?)
    }

    /// A key in the composer: Tab and Shift+Tab move between the fields, the rest edits the
    /// focused one; a new subject retitles the window.
    fn on_mail_key(&mut self, sym: u32, ch: Option<char>) -> Result<()> {
        let Some(mail) = &mut self.mail else {
            return Ok(());
        };
        let focused = mail.focused;
        if sym == xkeysym::key::Tab || sym == xkeysym::key::ISO_Left_Tab {
            let step = if sym == xkeysym::key::Tab { 1 } else { 2 };
            return self.focus_mail_field((focused + step) % MAIL_FIELDS.len());
        }
        let field = &mut mail.fields[focused];
        let changed = if sym == xkeysym::key::BackSpace {
            field.pop().is_some()
        } else if sym == xkeysym::key::Return && focused == 2 {
            field.push('\n');
            true
        } else if let Some(c) = ch.filter(|c| !c.is_control()) {
            field.push(c);
            true
        } else {
            false
        };
        if !changed {
            return Ok(());
        }
        let fields = mail.as_json();
        let title = (focused == 1).then(|| mail_title(&mail.fields[1]));
        self.log.log(json!({"event": "mail", "mail": fields}))?;
        if let Some(title) = title {
            set_title(&self.conn, self.window, &self.atoms, &title)?;
            self.log.log(json!({"event": "title", "title": title}))?;
            self.title = title;
        }
        Ok(self.draw_mail()?)
    }

    fn on_motion(&mut self, e: &MotionNotifyEvent) -> Result<()> {
        self.log.log(json!({
            "event": "motion",
            "root_x": e.root_x,
            "root_y": e.root_y,
            "state": u16::from(e.state),
        }))
    }

    fn on_key(&mut self, e: &KeyPressEvent, pressed: bool) -> Result<()> {
        let state = u16::from(e.state);
        let sym = self.keymap.keysym_for(e.detail, state);
        if !pressed {
            return self.log.log(json!({
                "event": "key_release",
                "keycode": e.detail,
                "keysym": sym,
                "state": state,
            }));
        }
        let ch = key_char(sym);
        self.log.log(json!({
            "event": "key_press",
            "keycode": e.detail,
            "keysym": sym,
            "name": key_name(sym),
            "char": ch.map(String::from),
            "state": state,
        }))?;
        let command = u16::from(KeyButMask::CONTROL | KeyButMask::MOD1 | KeyButMask::MOD4);
        if state & command != 0 {
            return Ok(());
        }
        if self.mail.is_some() {
            return self.on_mail_key(sym, ch);
        }
        let changed = if sym == xkeysym::key::BackSpace {
            self.text.pop().is_some()
        } else if let Some(c) = ch {
            self.text.push(c);
            true
        } else {
            false
        };
        if changed {
            self.log.log(json!({"event": "text", "text": self.text}))?;
            self.draw_text()?;
        }
        Ok(())
    }

    fn on_client_message(&self, e: &ClientMessageEvent) -> Flow {
        if e.window == self.window
            && e.type_ == self.atoms.wm_protocols
            && e.format == 32
            && e.data.as_data32()[0] == self.atoms.wm_delete_window
        {
            eprintln!("deskhand-testwin: closed by the window manager");
            return Flow::Exit;
        }
        Flow::Continue
    }

    fn handle(&mut self, event: Event) -> Result<Flow> {
        match event {
            Event::MapNotify(e) if e.window == self.window && !self.ready => {
                self.become_ready()?;
            }
            Event::Expose(e) if e.window == self.window && e.count == 0 => self.draw()?,
            Event::ConfigureNotify(e) if e.window == self.window => {
                let (w, h) = (i32::from(e.width), i32::from(e.height));
                if (w, h) != (self.width, self.height) {
                    self.width = w;
                    self.height = h;
                    self.draw()?;
                }
            }
            Event::ButtonPress(e) => self.on_button(&e, true)?,
            Event::ButtonRelease(e) => self.on_button(&e, false)?,
            Event::MotionNotify(e) => self.on_motion(&e)?,
            Event::KeyPress(e) => self.on_key(&e, true)?,
            Event::KeyRelease(e) => self.on_key(&e, false)?,
            Event::FocusIn(e) if e.event == self.window && e.detail != NotifyDetail::POINTER => {
                self.log.log(json!({"event": "focus_in"}))?;
            }
            Event::FocusOut(e) if e.event == self.window && e.detail != NotifyDetail::POINTER => {
                self.log.log(json!({"event": "focus_out"}))?;
            }
            Event::MappingNotify(e) if e.request == Mapping::KEYBOARD => {
                match KeyMap::fetch(&self.conn) {
                    Ok(map) => self.keymap = map,
                    Err(ReplyError::ConnectionError(e)) => return Err(e.into()),
                    Err(e) => eprintln!("deskhand-testwin: cannot refresh the keyboard map: {e}"),
                }
            }
            Event::ClientMessage(e) => return Ok(self.on_client_message(&e)),
            Event::DestroyNotify(e) if e.window == self.window => {
                eprintln!("deskhand-testwin: the window was destroyed");
                return Ok(Flow::Exit);
            }
            Event::Error(e) => eprintln!("deskhand-testwin: X error: {e:?}"),
            _ => {}
        }
        Ok(Flow::Continue)
    }
}

/// A character as a byte of the Latin-1 "fixed" font: itself when printable, '?' otherwise.
fn latin1_glyph(c: char) -> u8 {
    match u32::from(c) {
        0x0a | 0x09 => b' ',
        cp @ (0x20..=0x7e | 0xa0..=0xff) => u8::try_from(cp).unwrap_or(b'?'),
        _ => b'?',
    }
}

fn clamp16(v: i32) -> i16 {
    i16::try_from(v.clamp(i32::from(i16::MIN), i32::from(i16::MAX))).unwrap_or(0)
}

fn rect(x: i32, y: i32, width: i32, height: i32) -> Rectangle {
    Rectangle {
        x: clamp16(x),
        y: clamp16(y),
        width: u16::try_from(width.clamp(0, i32::from(u16::MAX))).unwrap_or(0),
        height: u16::try_from(height.clamp(0, i32::from(u16::MAX))).unwrap_or(0),
    }
}

/// Whether an error means the X connection is gone (which ends the program successfully).
fn connection_lost(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<ConnectionError>()
            || matches!(
                cause.downcast_ref::<ReplyError>(),
                Some(ReplyError::ConnectionError(_))
            )
            || matches!(
                cause.downcast_ref::<ReplyOrIdError>(),
                Some(ReplyOrIdError::ConnectionError(_))
            )
    })
}

/// The title as Latin-1 for WM_NAME: characters outside Latin-1 become '?'.
fn latin1_title(title: &str) -> Vec<u8> {
    title
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// Sets the window's title, as WM_NAME (Latin-1) and _NET_WM_NAME (UTF-8).
fn set_title(conn: &RustConnection, window: Window, atoms: &Atoms, title: &str) -> Result<()> {
    conn.change_property8(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_NAME,
        AtomEnum::STRING,
        &latin1_title(title),
    )?;
    conn.change_property8(
        PropMode::REPLACE,
        window,
        atoms.net_wm_name,
        atoms.utf8_string,
        title.as_bytes(),
    )?;
    Ok(())
}

fn set_properties(
    conn: &RustConnection,
    window: Window,
    atoms: &Atoms,
    args: &Args,
    title: &str,
    (x, y): (i32, i32),
) -> Result<()> {
    set_title(conn, window, atoms, title)?;
    conn.change_property8(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_CLASS,
        AtomEnum::STRING,
        b"deskhand-testwin\0DeskhandTestwin\0",
    )?;
    conn.change_property32(
        PropMode::REPLACE,
        window,
        atoms.net_wm_pid,
        AtomEnum::CARDINAL,
        &[std::process::id()],
    )?;
    conn.change_property32(
        PropMode::REPLACE,
        window,
        atoms.wm_protocols,
        AtomEnum::ATOM,
        &[atoms.wm_delete_window],
    )?;
    // WM_NORMAL_HINTS: USPosition | USSize | PPosition | PSize, so a window manager places
    // the window exactly where it was asked to be.
    let mut hints = [0u32; 18];
    hints[0] = 1 | 2 | 4 | 8;
    hints[1] = x as u32;
    hints[2] = y as u32;
    hints[3] = u32::from(args.geometry.width);
    hints[4] = u32::from(args.geometry.height);
    conn.change_property32(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_NORMAL_HINTS,
        AtomEnum::WM_SIZE_HINTS,
        &hints,
    )?;
    // WM_HINTS: InputHint set, input = True (the window wants keyboard focus).
    let mut wm_hints = [0u32; 9];
    wm_hints[0] = 1;
    wm_hints[1] = 1;
    conn.change_property32(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_HINTS,
        AtomEnum::WM_HINTS,
        &wm_hints,
    )?;
    Ok(())
}

fn run(args: Args) -> Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .with_context(|| format!("cannot open the log file {}", args.log.display()))?;
    let log = Logger { file };

    let display_name = args
        .display
        .clone()
        .or_else(|| std::env::var("DISPLAY").ok())
        .unwrap_or_default();
    if display_name.is_empty() {
        bail!("no X display: pass --display or set DISPLAY");
    }
    let (conn, screen_num) = x11rb::connect(Some(&display_name))
        .with_context(|| format!("cannot connect to X display {display_name:?}"))?;
    let screen = conn
        .setup()
        .roots
        .get(screen_num)
        .ok_or_else(|| anyhow!("X display {display_name:?} has no screen {screen_num}"))?
        .clone();

    let geometry = args.geometry;
    let x = geometry.x.resolve(geometry.width, screen.width_in_pixels);
    let y = geometry.y.resolve(geometry.height, screen.height_in_pixels);

    let atoms = Atoms::intern(&conn)?;
    let palette = Palette::new(&conn, &screen);
    let keymap = KeyMap::fetch(&conn).context("cannot read the keyboard mapping")?;

    let window = conn.generate_id()?;
    let events = EventMask::EXPOSURE
        | EventMask::STRUCTURE_NOTIFY
        | EventMask::BUTTON_PRESS
        | EventMask::BUTTON_RELEASE
        | EventMask::BUTTON_MOTION
        | EventMask::KEY_PRESS
        | EventMask::KEY_RELEASE
        | EventMask::FOCUS_CHANGE;
    conn.create_window(
        screen.root_depth,
        window,
        screen.root,
        clamp16(x),
        clamp16(y),
        geometry.width,
        geometry.height,
        0,
        WindowClass::INPUT_OUTPUT,
        screen.root_visual,
        &CreateWindowAux::new()
            .background_pixel(palette.white)
            .border_pixel(palette.black)
            .event_mask(events),
    )?
    .check()
    .context("cannot create the window")?;
    let title = if args.mail {
        mail_title("")
    } else {
        args.title.clone()
    };
    set_properties(&conn, window, &atoms, &args, &title, (x, y))?;

    let gc = conn.generate_id()?;
    conn.create_gc(
        gc,
        window,
        &CreateGCAux::new()
            .foreground(palette.black)
            .background(palette.white)
            .graphics_exposures(0),
    )?
    .check()
    .context("cannot create a graphics context")?;
    let font = open_font(&conn);

    conn.map_window(window)?;
    conn.flush()?;

    let mut app = App {
        root: screen.root,
        window,
        gc,
        font,
        palette,
        atoms,
        keymap,
        log,
        title,
        banner: args.banner,
        width: i32::from(geometry.width),
        height: i32::from(geometry.height),
        text: String::new(),
        ready: false,
        mail: args.mail.then(Mail::default),
        conn,
    };

    loop {
        let event = match app.conn.wait_for_event() {
            Ok(event) => event,
            Err(e) => {
                eprintln!("deskhand-testwin: the X connection closed: {e}");
                return Ok(());
            }
        };
        let flow = app.handle(event).and_then(|flow| {
            app.conn.flush()?;
            Ok(flow)
        });
        match flow {
            Ok(Flow::Continue) => {}
            Ok(Flow::Exit) => return Ok(()),
            Err(e) if connection_lost(&e) => {
                eprintln!("deskhand-testwin: the X connection closed: {e:#}");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// SIGTERM and SIGINT end the program with status 0; every log line is already written.
extern "C" fn exit_on_signal(_signal: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

fn install_signal_handlers() {
    let handler = exit_on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only calls the async-signal-safe _exit.
        let previous = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            eprintln!("deskhand-testwin: cannot install a handler for signal {signal}");
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    install_signal_handlers();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deskhand-testwin: {e:#}");
            ExitCode::FAILURE
        }
    }
}
