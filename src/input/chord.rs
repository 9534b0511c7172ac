//! Key chords such as `ctrl+shift+t`, `super`, `Return` or `F5`.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modifier {
    Ctrl,
    Alt,
    Shift,
    Super,
}

impl Modifier {
    fn name(self) -> &'static str {
        match self {
            Modifier::Ctrl => "ctrl",
            Modifier::Alt => "alt",
            Modifier::Shift => "shift",
            Modifier::Super => "super",
        }
    }
}

/// Keys that have a name rather than a character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NamedKey {
    Return,
    Tab,
    Escape,
    Backspace,
    Delete,
    Insert,
    Home,
    End,
    PageUp,
    PageDown,
    Up,
    Down,
    Left,
    Right,
    Space,
    Menu,
    Print,
    CapsLock,
    /// F1 to F24.
    F(u8),
}

impl NamedKey {
    fn name(self) -> String {
        match self {
            NamedKey::Return => "return".into(),
            NamedKey::Tab => "tab".into(),
            NamedKey::Escape => "escape".into(),
            NamedKey::Backspace => "backspace".into(),
            NamedKey::Delete => "delete".into(),
            NamedKey::Insert => "insert".into(),
            NamedKey::Home => "home".into(),
            NamedKey::End => "end".into(),
            NamedKey::PageUp => "pageup".into(),
            NamedKey::PageDown => "pagedown".into(),
            NamedKey::Up => "up".into(),
            NamedKey::Down => "down".into(),
            NamedKey::Left => "left".into(),
            NamedKey::Right => "right".into(),
            NamedKey::Space => "space".into(),
            NamedKey::Menu => "menu".into(),
            NamedKey::Print => "print".into(),
            NamedKey::CapsLock => "capslock".into(),
            NamedKey::F(n) => format!("f{n}"),
        }
    }
}

/// One key of a chord: a modifier pressed on its own, a named key, or a character key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChordKey {
    Modifier(Modifier),
    Named(NamedKey),
    Char(char),
}

impl ChordKey {
    /// The key that produces `c` when typed, for text entry: newline and tab are keys of
    /// their own, not characters, in every application.
    pub fn for_text(c: char) -> ChordKey {
        match c {
            '\n' | '\r' => ChordKey::Named(NamedKey::Return),
            '\t' => ChordKey::Named(NamedKey::Tab),
            c => ChordKey::Char(c),
        }
    }

    fn name(self) -> String {
        match self {
            ChordKey::Modifier(m) => m.name().into(),
            ChordKey::Named(n) => n.name(),
            ChordKey::Char('+') => "plus".into(),
            ChordKey::Char(c) => c.to_string(),
        }
    }
}

/// The keys that typing `text` sends, in order. This is what the executor presses and what
/// the policy judges, so that no spelling of a key (`\r` for Return) can reach the desktop
/// unseen. A Windows line end `\r\n` is one Return, as a person would type it. Text that
/// holds other control characters is refused by `Action::validate` before it gets here.
pub fn text_keys(text: &str) -> Vec<ChordKey> {
    let mut keys = Vec::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            chars.next();
        }
        keys.push(ChordKey::for_text(c));
    }
    keys
}

/// Whether `c` may appear in typed text: control characters other than newline, carriage
/// return and tab would reach applications as keys (Backspace, Delete, Escape) that no rule
/// saw as keys.
pub fn typeable(c: char) -> bool {
    !c.is_control() || matches!(c, '\n' | '\r' | '\t')
}

/// Modifiers held while one key is pressed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chord {
    /// Sorted and without repeats.
    pub modifiers: Vec<Modifier>,
    pub key: ChordKey,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChordError {
    #[error("empty key chord; write keys joined by '+', like 'ctrl+c' or 'Return'")]
    Empty,
    #[error("unknown key '{key}' in '{chord}'")]
    UnknownKey { key: String, chord: String },
    #[error("empty key name in '{0}' (use 'plus' for the + key)")]
    EmptyPart(String),
    #[error(
        "chord {chord:?} holds the control character U+{code:04X}; control characters are not keys here: name the key instead (backspace, delete, escape, return, tab)"
    )]
    ControlCharacter { chord: String, code: u32 },
    #[error(
        "chord '{chord}' presses two keys ('{first}' and '{second}'); one chord holds modifiers plus one key, so send them as two key actions"
    )]
    TwoKeys {
        chord: String,
        first: String,
        second: String,
    },
}

impl Chord {
    pub fn parse(text: &str) -> Result<Chord, ChordError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ChordError::Empty);
        }
        let mut modifiers = Vec::new();
        let mut key: Option<ChordKey> = None;
        let parts = split_chord(trimmed);
        let last = parts.len() - 1;
        for (i, part) in parts.iter().enumerate() {
            let part = part.trim();
            if part.is_empty() {
                return Err(ChordError::EmptyPart(trimmed.to_owned()));
            }
            // A control character as a key name would be sent as the key it stands for
            // (U+0008 as BackSpace), under a spelling no policy rule names.
            if let Some(c) = part.chars().find(|c| c.is_control()) {
                return Err(ChordError::ControlCharacter {
                    chord: trimmed.to_owned(),
                    code: u32::from(c),
                });
            }
            let parsed = parse_key(part).ok_or_else(|| ChordError::UnknownKey {
                key: part.to_owned(),
                chord: trimmed.to_owned(),
            })?;
            match parsed {
                // A modifier before the last part holds; as the last part it is the key
                // itself ("super" opens the launcher, "shift" alone is a keypress).
                ChordKey::Modifier(m) if i < last || key.is_some() => {
                    if !modifiers.contains(&m) {
                        modifiers.push(m);
                    }
                }
                k => {
                    if let Some(first) = key {
                        return Err(ChordError::TwoKeys {
                            chord: trimmed.to_owned(),
                            first: first.name(),
                            second: k.name(),
                        });
                    }
                    key = Some(k);
                }
            }
        }
        let Some(key) = key else {
            return Err(ChordError::Empty);
        };
        modifiers.sort();
        if let ChordKey::Modifier(m) = key {
            modifiers.retain(|&held| held != m);
        }
        Ok(Chord { modifiers, key })
    }

    /// The canonical spelling, e.g. `ctrl+shift+t`: modifiers in a fixed order, names in
    /// lower case. Policies match on this form.
    pub fn normalized(&self) -> String {
        let mut parts: Vec<String> = self.modifiers.iter().map(|m| m.name().to_owned()).collect();
        parts.push(self.key.name());
        parts.join("+")
    }

    /// Keys in the order they go down; they come up in reverse.
    pub fn press_order(&self) -> Vec<ChordKey> {
        let mut keys: Vec<ChordKey> = self
            .modifiers
            .iter()
            .map(|&m| ChordKey::Modifier(m))
            .collect();
        keys.push(self.key);
        keys
    }
}

impl fmt::Display for Chord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized())
    }
}

/// Split on '+', where a '+' that would leave an empty name is the plus key itself
/// ("ctrl++", "+").
fn split_chord(text: &str) -> Vec<String> {
    if text == "+" {
        return vec!["+".into()];
    }
    if let Some(head) = text.strip_suffix("++") {
        let mut parts = split_chord(head);
        parts.push("+".into());
        return parts;
    }
    text.split('+').map(str::to_owned).collect()
}

fn parse_key(part: &str) -> Option<ChordKey> {
    let mut chars = part.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        // A single character is that character's key; shift is never implied, so an upper
        // case ASCII letter names the same key as its lower case.
        return Some(ChordKey::Char(c.to_ascii_lowercase()));
    }
    let lower = part.to_ascii_lowercase();
    let modifier = match lower.as_str() {
        "ctrl" | "control" => Some(Modifier::Ctrl),
        "alt" | "option" => Some(Modifier::Alt),
        "shift" => Some(Modifier::Shift),
        "super" | "win" | "windows" | "meta" | "cmd" | "command" | "logo" => Some(Modifier::Super),
        _ => None,
    };
    if let Some(m) = modifier {
        return Some(ChordKey::Modifier(m));
    }
    let named = match lower.as_str() {
        "return" | "enter" => NamedKey::Return,
        "tab" => NamedKey::Tab,
        "escape" | "esc" => NamedKey::Escape,
        "backspace" | "back_space" => NamedKey::Backspace,
        "delete" | "del" => NamedKey::Delete,
        "insert" | "ins" => NamedKey::Insert,
        "home" => NamedKey::Home,
        "end" => NamedKey::End,
        "pageup" | "page_up" | "prior" | "pgup" => NamedKey::PageUp,
        "pagedown" | "page_down" | "next" | "pgdn" => NamedKey::PageDown,
        "up" => NamedKey::Up,
        "down" => NamedKey::Down,
        "left" => NamedKey::Left,
        "right" => NamedKey::Right,
        "space" => NamedKey::Space,
        "menu" => NamedKey::Menu,
        "print" | "printscreen" => NamedKey::Print,
        "capslock" | "caps_lock" => NamedKey::CapsLock,
        "plus" => return Some(ChordKey::Char('+')),
        "minus" => return Some(ChordKey::Char('-')),
        f if f.starts_with('f') => {
            let n: u8 = f[1..].parse().ok()?;
            if !(1..=24).contains(&n) {
                return None;
            }
            NamedKey::F(n)
        }
        _ => return None,
    };
    Some(ChordKey::Named(named))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_common_forms() {
        let c = Chord::parse("ctrl+shift+t").unwrap();
        assert_eq!(c.modifiers, vec![Modifier::Ctrl, Modifier::Shift]);
        assert_eq!(c.key, ChordKey::Char('t'));
        assert_eq!(
            Chord::parse("super").unwrap().key,
            ChordKey::Modifier(Modifier::Super)
        );
        assert_eq!(
            Chord::parse("Return").unwrap().key,
            ChordKey::Named(NamedKey::Return)
        );
        assert_eq!(
            Chord::parse("F5").unwrap().key,
            ChordKey::Named(NamedKey::F(5))
        );
        assert_eq!(Chord::parse("ctrl++").unwrap().normalized(), "ctrl+plus");
        assert_eq!(Chord::parse("ctrl+plus").unwrap().normalized(), "ctrl+plus");
        assert_eq!(Chord::parse("+").unwrap().key, ChordKey::Char('+'));
        assert_eq!(
            Chord::parse("shift+ctrl+T").unwrap().normalized(),
            "ctrl+shift+t"
        );
        assert_eq!(
            Chord::parse(" Control + Alt + Delete ")
                .unwrap()
                .normalized(),
            "ctrl+alt+delete"
        );
        assert_eq!(
            Chord::parse("ctrl+shift").unwrap().normalized(),
            "ctrl+shift"
        );
        assert_eq!(Chord::parse("ctrl+ä").unwrap().key, ChordKey::Char('ä'));
    }

    #[test]
    fn control_characters_are_not_keys() {
        for chord in [
            "ctrl+alt+\u{8}",
            "ctrl+alt+\u{7f}",
            "\u{1b}",
            "ctrl+\u{0}",
            "alt+\u{9b}",
        ] {
            assert!(
                matches!(
                    Chord::parse(chord),
                    Err(ChordError::ControlCharacter { .. })
                ),
                "{chord:?}"
            );
        }
        let message = Chord::parse("ctrl+alt+\u{8}").unwrap_err().to_string();
        assert!(message.contains("U+0008"), "{message}");
        assert!(message.contains("backspace"), "{message}");
    }

    #[test]
    fn typed_text_becomes_the_keys_that_are_sent() {
        assert_eq!(
            text_keys("a\rb\r\nc\n\t"),
            vec![
                ChordKey::Char('a'),
                ChordKey::Named(NamedKey::Return),
                ChordKey::Char('b'),
                ChordKey::Named(NamedKey::Return),
                ChordKey::Char('c'),
                ChordKey::Named(NamedKey::Return),
                ChordKey::Named(NamedKey::Tab),
            ]
        );
        assert!(typeable('\n') && typeable('\r') && typeable('\t') && typeable('é'));
        assert!(!typeable('\u{7f}') && !typeable('\u{8}') && !typeable('\u{1b}'));
    }

    #[test]
    fn press_order_puts_modifiers_first() {
        let c = Chord::parse("alt+ctrl+F4").unwrap();
        assert_eq!(
            c.press_order(),
            vec![
                ChordKey::Modifier(Modifier::Ctrl),
                ChordKey::Modifier(Modifier::Alt),
                ChordKey::Named(NamedKey::F(4))
            ]
        );
    }

    #[test]
    fn bad_chords_are_clear_errors() {
        assert_eq!(
            Chord::parse("ctlr+c").unwrap_err().to_string(),
            "unknown key 'ctlr' in 'ctlr+c'"
        );
        assert_eq!(Chord::parse("").unwrap_err(), ChordError::Empty);
        assert!(matches!(
            Chord::parse("ctrl+a+b").unwrap_err(),
            ChordError::TwoKeys { .. }
        ));
        assert!(matches!(
            Chord::parse("ctrl+ +a").unwrap_err(),
            ChordError::EmptyPart(_)
        ));
        assert!(matches!(
            Chord::parse("F25").unwrap_err(),
            ChordError::UnknownKey { .. }
        ));
        assert!(matches!(
            Chord::parse("F").unwrap(),
            Chord {
                key: ChordKey::Char('f'),
                ..
            }
        ));
    }
}
