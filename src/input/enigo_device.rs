//! The real input device: enigo, which on X11 injects events through the XTest extension.

use std::time::{Duration, Instant};

use enigo::{Axis, Button, Coordinate, Direction, Enigo, Key, Keyboard, Mouse, Settings};

use super::action::MouseButton;
use super::chord::{ChordKey, Modifier, NamedKey};
use super::executor::{DeviceError, InputDevice};
use crate::screen::ScreenPoint;

/// How long applications get to read a rebound key's mapping before enigo unbinds it.
///
/// Characters that are not on the keyboard are typed by binding a spare keycode to them.
/// An application learns of the binding by an event and then asks the server for the map; if
/// the binding is gone by the time its request is served, the key reads as nothing. enigo
/// unbinds its spare keycodes when it is dropped, so the drop waits this long after the last
/// such key.
const REBOUND_KEY_GRACE: Duration = Duration::from_millis(150);

pub struct EnigoDevice {
    enigo: Enigo,
    last_rebound_key: Option<Instant>,
}

impl EnigoDevice {
    /// Connect to the X display `display`, or to $DISPLAY when None.
    pub fn connect(display: Option<&str>) -> Result<Self, DeviceError> {
        let settings = Settings {
            x11_display: display.map(str::to_owned),
            // The executor releases what it holds itself; enigo doing it too is a second net.
            release_keys_when_dropped: true,
            // enigo's default asks the X server to hold every button event back 12 ms, which
            // made a click 35 ms and a 16-notch scroll 400 ms. The executor paces what needs
            // pacing itself (the gap inside double clicks, the steps of a drag).
            linux_delay: 0,
            ..Settings::default()
        };
        let enigo = Enigo::new(&settings).map_err(|e| {
            DeviceError(format!(
                "cannot open the input device on display {:?}: {e}",
                display
                    .map(str::to_owned)
                    .or_else(|| std::env::var("DISPLAY").ok())
                    .unwrap_or_default()
            ))
        })?;
        Ok(Self {
            enigo,
            last_rebound_key: None,
        })
    }
}

impl Drop for EnigoDevice {
    fn drop(&mut self) {
        if let Some(at) = self.last_rebound_key {
            std::thread::sleep(REBOUND_KEY_GRACE.saturating_sub(at.elapsed()));
        }
    }
}

fn direction(down: bool) -> Direction {
    if down {
        Direction::Press
    } else {
        Direction::Release
    }
}

fn device_error(what: &str, e: enigo::InputError) -> DeviceError {
    DeviceError(format!("{what}: {e}"))
}

/// X keysyms for named keys. `Key::Other` takes a keysym on X11, which names the key exactly
/// whatever the keyboard layout.
fn enigo_key(key: ChordKey) -> Key {
    use xkeysym::key as ks;
    let sym = match key {
        ChordKey::Modifier(Modifier::Ctrl) => ks::Control_L,
        ChordKey::Modifier(Modifier::Alt) => ks::Alt_L,
        ChordKey::Modifier(Modifier::Shift) => ks::Shift_L,
        ChordKey::Modifier(Modifier::Super) => ks::Super_L,
        ChordKey::Named(n) => match n {
            NamedKey::Return => ks::Return,
            NamedKey::Tab => ks::Tab,
            NamedKey::Escape => ks::Escape,
            NamedKey::Backspace => ks::BackSpace,
            NamedKey::Delete => ks::Delete,
            NamedKey::Insert => ks::Insert,
            NamedKey::Home => ks::Home,
            NamedKey::End => ks::End,
            NamedKey::PageUp => ks::Page_Up,
            NamedKey::PageDown => ks::Page_Down,
            NamedKey::Up => ks::Up,
            NamedKey::Down => ks::Down,
            NamedKey::Left => ks::Left,
            NamedKey::Right => ks::Right,
            NamedKey::Space => ks::space,
            NamedKey::Menu => ks::Menu,
            NamedKey::Print => ks::Print,
            NamedKey::CapsLock => ks::Caps_Lock,
            NamedKey::F(n) => ks::F1 + u32::from(n.saturating_sub(1)),
        },
        ChordKey::Char(c) => return Key::Unicode(c),
    };
    Key::Other(sym)
}

impl InputDevice for EnigoDevice {
    fn move_to(&mut self, p: ScreenPoint) -> Result<(), DeviceError> {
        self.enigo
            .move_mouse(p.x, p.y, Coordinate::Abs)
            .map_err(|e| device_error("moving the pointer", e))
    }

    fn button(&mut self, button: MouseButton, down: bool) -> Result<(), DeviceError> {
        let b = match button {
            MouseButton::Left => Button::Left,
            MouseButton::Right => Button::Right,
            MouseButton::Middle => Button::Middle,
        };
        self.enigo
            .button(b, direction(down))
            .map_err(|e| device_error("pressing a mouse button", e))
    }

    fn key(&mut self, key: ChordKey, down: bool) -> Result<(), DeviceError> {
        // Any character beyond printable ASCII may need a spare keycode (see REBOUND_KEY_GRACE).
        if matches!(key, ChordKey::Char(c) if !c.is_ascii_graphic()) {
            self.last_rebound_key = Some(Instant::now());
        }
        self.enigo
            .key(enigo_key(key), direction(down))
            .map_err(|e| device_error(&format!("sending key {key:?}"), e))
    }

    fn scroll(&mut self, dx: i32, dy: i32) -> Result<(), DeviceError> {
        if dy != 0 {
            self.enigo
                .scroll(dy, Axis::Vertical)
                .map_err(|e| device_error("scrolling", e))?;
        }
        if dx != 0 {
            self.enigo
                .scroll(dx, Axis::Horizontal)
                .map_err(|e| device_error("scrolling", e))?;
        }
        Ok(())
    }

    fn pointer(&mut self) -> Result<ScreenPoint, DeviceError> {
        let (x, y) = self
            .enigo
            .location()
            .map_err(|e| device_error("reading the pointer", e))?;
        Ok(ScreenPoint::new(x, y))
    }
}
