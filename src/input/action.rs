//! `Action`: the canonical action. Its JSON form is the wire format everywhere (CLI `act`,
//! traces, policy `explain`, scripts), so its shape is fixed: internally tagged by `"action"`,
//! coordinates in physical screen pixels.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::chord::{Chord, ChordError, ChordKey, Modifier, NamedKey, text_keys, typeable};
use crate::screen::ScreenPoint;
use crate::trace::printable;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MouseButton {
    #[default]
    Left,
    Right,
    Middle,
}

impl MouseButton {
    fn is_left(&self) -> bool {
        *self == MouseButton::Left
    }
}

impl fmt::Display for MouseButton {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MouseButton::Left => "left",
            MouseButton::Right => "right",
            MouseButton::Middle => "middle",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Click {
        x: i32,
        y: i32,
        #[serde(default, skip_serializing_if = "MouseButton::is_left")]
        button: MouseButton,
    },
    DoubleClick {
        x: i32,
        y: i32,
        #[serde(default, skip_serializing_if = "MouseButton::is_left")]
        button: MouseButton,
    },
    TripleClick {
        x: i32,
        y: i32,
        #[serde(default, skip_serializing_if = "MouseButton::is_left")]
        button: MouseButton,
    },
    Move {
        x: i32,
        y: i32,
    },
    /// Press the left button at the first point, move through the rest, release at the last.
    Drag {
        path: Vec<[i32; 2]>,
    },
    /// Wheel notches at a point: `dy > 0` scrolls down, `dx > 0` scrolls right.
    Scroll {
        x: i32,
        y: i32,
        #[serde(default)]
        dx: i32,
        #[serde(default)]
        dy: i32,
    },
    Type {
        text: String,
    },
    Key {
        chord: String,
    },
    HoldKey {
        chord: String,
        ms: u64,
    },
    Wait {
        ms: u64,
    },
    Done {
        summary: String,
    },
    Fail {
        reason: String,
    },
    CallUser {
        question: String,
    },
}

/// An X selection that a paste inserts: CLIPBOARD (ctrl+v) or PRIMARY (the last selected
/// text, which a middle click inserts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    Clipboard,
    Primary,
}

/// Limits that keep one action from running away; a model that asks for more is wrong.
pub const MAX_WAIT_MS: u64 = 60_000;
pub const MAX_HOLD_MS: u64 = 10_000;
pub const MAX_SCROLL_NOTCHES: i32 = 50;
pub const MAX_TEXT_CHARS: usize = 10_000;
pub const MAX_DRAG_POINTS: usize = 1_000;
/// The largest pointer travel, each way, that toolkits still treat as a click (Qt's default
/// start-drag distance; GTK's is 8).
pub const DRAG_THRESHOLD_PX: i64 = 10;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ActionError {
    #[error("invalid action JSON: {0}")]
    Json(String),
    #[error(transparent)]
    Chord(#[from] ChordError),
    #[error("{action}: {problem}")]
    Invalid {
        action: &'static str,
        problem: String,
    },
}

impl Action {
    /// Parse the wire format. Unknown actions and unknown or missing fields are errors.
    pub fn from_json(text: &str) -> Result<Action, ActionError> {
        let action: Action =
            serde_json::from_str(text).map_err(|e| ActionError::Json(e.to_string()))?;
        action.validate()?;
        Ok(action)
    }

    /// The same action with every text the model wrote (what it types, its summary, reason or
    /// question) passed through `redact`, for records and suggestions.
    pub fn with_text_redacted(&self, redact: impl Fn(&str) -> String) -> Action {
        match self {
            Action::Type { text } => Action::Type { text: redact(text) },
            Action::Done { summary } => Action::Done {
                summary: redact(summary),
            },
            Action::Fail { reason } => Action::Fail {
                reason: redact(reason),
            },
            Action::CallUser { question } => Action::CallUser {
                question: redact(question),
            },
            other => other.clone(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `"action"` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Click { .. } => "click",
            Action::DoubleClick { .. } => "double_click",
            Action::TripleClick { .. } => "triple_click",
            Action::Move { .. } => "move",
            Action::Drag { .. } => "drag",
            Action::Scroll { .. } => "scroll",
            Action::Type { .. } => "type",
            Action::Key { .. } => "key",
            Action::HoldKey { .. } => "hold_key",
            Action::Wait { .. } => "wait",
            Action::Done { .. } => "done",
            Action::Fail { .. } => "fail",
            Action::CallUser { .. } => "call_user",
        }
    }

    /// Every screen point the action touches.
    pub fn points(&self) -> Vec<ScreenPoint> {
        match self {
            Action::Click { x, y, .. }
            | Action::DoubleClick { x, y, .. }
            | Action::TripleClick { x, y, .. }
            | Action::Move { x, y }
            | Action::Scroll { x, y, .. } => vec![ScreenPoint::new(*x, *y)],
            Action::Drag { path } => path.iter().map(|[x, y]| ScreenPoint::new(*x, *y)).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether this is a drag that toolkits take for a click: one whose points all stay within
    /// `DRAG_THRESHOLD_PX` of where the button went down. GTK starts a drag only past 8 px and
    /// Qt past 10 px; below that the release lands on the pressed widget and activates it.
    pub fn is_click_like_drag(&self) -> bool {
        match self {
            Action::Drag { path } => path.first().is_some_and(|&[x0, y0]| {
                path.iter().all(|&[x, y]| {
                    (i64::from(x) - i64::from(x0)).abs() <= DRAG_THRESHOLD_PX
                        && (i64::from(y) - i64::from(y0)).abs() <= DRAG_THRESHOLD_PX
                })
            }),
            _ => false,
        }
    }

    /// The text this action enters into a focused text field, as the keys that are sent
    /// spell it: typed text with every Return as `\n`, or the character, Return, Tab or
    /// Space of a key action without ctrl, alt or super. Detectors, command inference and the
    /// per-window record of typed text all read this, so typing key by key counts as typing.
    pub fn typed_text(&self) -> Option<String> {
        let key_text = |key: ChordKey| match key {
            ChordKey::Char(c) => Some(c),
            ChordKey::Named(NamedKey::Return) => Some('\n'),
            ChordKey::Named(NamedKey::Tab) => Some('\t'),
            ChordKey::Named(NamedKey::Space) => Some(' '),
            _ => None,
        };
        match self {
            Action::Type { text } => {
                Some(text_keys(text).into_iter().filter_map(key_text).collect())
            }
            Action::Key { .. } | Action::HoldKey { .. } => {
                let chord = self.chord().ok().flatten()?;
                let plain = chord.modifiers.iter().all(|m| *m == Modifier::Shift);
                let shifted = chord.modifiers.contains(&Modifier::Shift);
                let c = key_text(chord.key).filter(|_| plain)?;
                Some(if shifted {
                    c.to_uppercase().collect()
                } else {
                    c.to_string()
                })
            }
            _ => None,
        }
    }

    /// The selections this action pastes, if it is a paste: ctrl+v and ctrl+shift+v (terminals)
    /// paste CLIPBOARD; shift+Insert pastes CLIPBOARD in GTK and Qt and PRIMARY in xterm, so
    /// both; a middle click pastes PRIMARY.
    pub fn pastes(&self) -> &'static [Selection] {
        match self {
            Action::Click {
                button: MouseButton::Middle,
                ..
            }
            | Action::DoubleClick {
                button: MouseButton::Middle,
                ..
            }
            | Action::TripleClick {
                button: MouseButton::Middle,
                ..
            } => &[Selection::Primary],
            Action::Key { .. } | Action::HoldKey { .. } => {
                match self
                    .chord()
                    .ok()
                    .flatten()
                    .map(|c| c.normalized())
                    .as_deref()
                {
                    Some("ctrl+v" | "ctrl+shift+v") => &[Selection::Clipboard],
                    Some("shift+insert") => &[Selection::Clipboard, Selection::Primary],
                    _ => &[],
                }
            }
            _ => &[],
        }
    }

    /// The parsed chord of `key` and `hold_key`.
    pub fn chord(&self) -> Result<Option<Chord>, ChordError> {
        match self {
            Action::Key { chord } | Action::HoldKey { chord, .. } => Chord::parse(chord).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether the action would touch the desktop: everything but waiting and the actions
    /// that end the task or hand it to the user.
    pub fn touches_desktop(&self) -> bool {
        !matches!(self, Action::Wait { .. }) && !self.is_terminal()
    }

    /// Whether the action ends the task or hands it to the user instead of touching input.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Action::Done { .. } | Action::Fail { .. } | Action::CallUser { .. }
        )
    }

    /// Checks that do not need a display: chords parse, sizes are in range.
    pub fn validate(&self) -> Result<(), ActionError> {
        let invalid = |problem: String| ActionError::Invalid {
            action: self.kind(),
            problem,
        };
        self.chord()?;
        match self {
            Action::Drag { path } if path.len() < 2 => Err(invalid(format!(
                "a drag path needs at least 2 points, got {}",
                path.len()
            ))),
            Action::Drag { path } if path.len() > MAX_DRAG_POINTS => Err(invalid(format!(
                "a drag path may have at most {MAX_DRAG_POINTS} points, got {}",
                path.len()
            ))),
            Action::Scroll { dx: 0, dy: 0, .. } => {
                Err(invalid("dx and dy are both 0; nothing to scroll".into()))
            }
            Action::Scroll { dx, dy, .. }
                if dx.unsigned_abs() > MAX_SCROLL_NOTCHES as u32
                    || dy.unsigned_abs() > MAX_SCROLL_NOTCHES as u32 =>
            {
                Err(invalid(format!(
                    "at most {MAX_SCROLL_NOTCHES} notches each way, got dx={dx} dy={dy}"
                )))
            }
            Action::Type { text } if text.is_empty() => Err(invalid("text is empty".into())),
            Action::Type { text } if text.chars().any(|c| !typeable(c)) => {
                let (at, c) = text
                    .chars()
                    .enumerate()
                    .find(|(_, c)| !typeable(*c))
                    .unwrap_or((0, '\0'));
                Err(invalid(format!(
                    "text holds the control character U+{:04X} at character {}; send keys such as Delete, Backspace or Escape with a key action, where the policy sees them",
                    u32::from(c),
                    at + 1
                )))
            }
            Action::Type { text } if text.chars().count() > MAX_TEXT_CHARS => {
                Err(invalid(format!(
                    "text has {} characters; at most {MAX_TEXT_CHARS} per action",
                    text.chars().count()
                )))
            }
            Action::HoldKey { ms, .. } if *ms > MAX_HOLD_MS => Err(invalid(format!(
                "ms is {ms}; a key may be held at most {MAX_HOLD_MS} ms"
            ))),
            Action::Wait { ms } if *ms > MAX_WAIT_MS => Err(invalid(format!(
                "ms is {ms}; a wait may last at most {MAX_WAIT_MS} ms"
            ))),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Action {
    /// A short human description in screen pixels, for `deskhand act` and progress lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Click { x, y, button } => write!(f, "{button} click at ({x}, {y})"),
            Action::DoubleClick { x, y, button } => {
                write!(f, "{button} double click at ({x}, {y})")
            }
            Action::TripleClick { x, y, button } => {
                write!(f, "{button} triple click at ({x}, {y})")
            }
            Action::Move { x, y } => write!(f, "move pointer to ({x}, {y})"),
            Action::Drag { path } => {
                let (first, last) = (path.first(), path.last());
                match (first, last) {
                    (Some([x0, y0]), Some([x1, y1])) => write!(
                        f,
                        "drag from ({x0}, {y0}) to ({x1}, {y1}) through {} points",
                        path.len()
                    ),
                    _ => write!(f, "drag along an empty path"),
                }
            }
            Action::Scroll { x, y, dx, dy } => write!(f, "scroll dx={dx} dy={dy} at ({x}, {y})"),
            Action::Type { text } => write!(f, "type {} characters", text.chars().count()),
            Action::Key { chord } => write!(f, "press {}", normalized_or_raw(chord)),
            Action::HoldKey { chord, ms } => {
                write!(f, "hold {} for {ms} ms", normalized_or_raw(chord))
            }
            Action::Wait { ms } => write!(f, "wait {ms} ms"),
            Action::Done { summary } => write!(f, "done: {}", printable(summary)),
            Action::Fail { reason } => write!(f, "fail: {}", printable(reason)),
            Action::CallUser { question } => write!(f, "ask the user: {}", printable(question)),
        }
    }
}

fn normalized_or_raw(chord: &str) -> String {
    Chord::parse(chord).map_or_else(|_| chord.to_owned(), |c| c.normalized())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wire_format_matches_the_documented_shapes() {
        let cases = [
            (
                r#"{"action":"click","x":100,"y":200}"#,
                Action::Click {
                    x: 100,
                    y: 200,
                    button: MouseButton::Left,
                },
            ),
            (
                r#"{"action":"click","x":100,"y":200,"button":"right"}"#,
                Action::Click {
                    x: 100,
                    y: 200,
                    button: MouseButton::Right,
                },
            ),
            (
                r#"{"action":"type","text":"héllo"}"#,
                Action::Type {
                    text: "héllo".into(),
                },
            ),
            (
                r#"{"action":"key","chord":"ctrl+shift+t"}"#,
                Action::Key {
                    chord: "ctrl+shift+t".into(),
                },
            ),
            (
                r#"{"action":"scroll","x":640,"y":400,"dx":0,"dy":-3}"#,
                Action::Scroll {
                    x: 640,
                    y: 400,
                    dx: 0,
                    dy: -3,
                },
            ),
            (
                r#"{"action":"drag","path":[[10,10],[200,200]]}"#,
                Action::Drag {
                    path: vec![[10, 10], [200, 200]],
                },
            ),
            (
                r#"{"action":"done","summary":"…"}"#,
                Action::Done {
                    summary: "…".into(),
                },
            ),
            (
                r#"{"action":"hold_key","chord":"shift","ms":300}"#,
                Action::HoldKey {
                    chord: "shift".into(),
                    ms: 300,
                },
            ),
            (
                r#"{"action":"call_user","question":"which account?"}"#,
                Action::CallUser {
                    question: "which account?".into(),
                },
            ),
        ];
        for (json, action) in cases {
            assert_eq!(Action::from_json(json).unwrap(), action, "{json}");
            assert_eq!(action.to_json(), json, "serializes back to the same text");
        }
    }

    #[test]
    fn unknown_actions_and_fields_are_rejected() {
        let err = Action::from_json(r#"{"action":"clik","x":1,"y":2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `clik`"), "{err}");
        let err = Action::from_json(r#"{"action":"click","x":1,"y":2,"buton":"right"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `buton`"), "{err}");
        let err = Action::from_json(r#"{"action":"click","x":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `y`"), "{err}");
        assert!(Action::from_json("not json").is_err());
        let err = Action::from_json(r#"{"action":"key","chord":"ctlr+c"}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown key 'ctlr' in 'ctlr+c'");
        assert!(Action::from_json(r#"{"action":"drag","path":[[1,1]]}"#).is_err());
        assert!(Action::from_json(r#"{"action":"scroll","x":1,"y":1}"#).is_err());
        assert!(Action::from_json(r#"{"action":"wait","ms":600000}"#).is_err());
        assert!(Action::from_json(r#"{"action":"type","text":""}"#).is_err());
        let err = Action::from_json(r#"{"action":"type","text":"ok\u007f"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("U+007F at character 3"), "{err}");
        assert!(Action::from_json(r#"{"action":"type","text":"\u001b:q!"}"#).is_err());
        assert!(Action::from_json(r#"{"action":"type","text":"a\r\nb\tc\n"}"#).is_ok());
    }

    #[test]
    fn short_drags_are_clicks() {
        let drag = |path: Vec<[i32; 2]>| Action::Drag { path };
        assert!(drag(vec![[100, 100], [100, 100]]).is_click_like_drag());
        assert!(drag(vec![[100, 100], [101, 100]]).is_click_like_drag());
        assert!(drag(vec![[100, 100], [110, 90], [105, 100]]).is_click_like_drag());
        assert!(!drag(vec![[100, 100], [111, 100]]).is_click_like_drag());
        // A path that wanders away and comes back has dragged something.
        assert!(!drag(vec![[100, 100], [300, 100], [100, 100]]).is_click_like_drag());
        assert!(!Action::Move { x: 1, y: 1 }.is_click_like_drag());
    }

    #[test]
    fn pastes_are_known_by_their_gesture() {
        let key = |chord: &str| Action::Key {
            chord: chord.into(),
        };
        assert_eq!(key("ctrl+v").pastes(), [Selection::Clipboard]);
        assert_eq!(key("Control+Shift+V").pastes(), [Selection::Clipboard]);
        assert_eq!(
            key("shift+Insert").pastes(),
            [Selection::Clipboard, Selection::Primary]
        );
        let middle = Action::Click {
            x: 1,
            y: 1,
            button: MouseButton::Middle,
        };
        assert_eq!(middle.pastes(), [Selection::Primary]);
        assert!(key("ctrl+c").pastes().is_empty());
        assert!(
            Action::Click {
                x: 1,
                y: 1,
                button: MouseButton::Left
            }
            .pastes()
            .is_empty()
        );
    }

    #[test]
    fn typed_text_is_what_reaches_a_text_field() {
        let key = |chord: &str| Action::Key {
            chord: chord.into(),
        };
        let typed = |text: &str| Action::Type { text: text.into() };
        assert_eq!(typed("ls\r\n").typed_text().as_deref(), Some("ls\n"));
        assert_eq!(typed("a\rb").typed_text().as_deref(), Some("a\nb"));
        assert_eq!(key("h").typed_text().as_deref(), Some("h"));
        assert_eq!(key("shift+h").typed_text().as_deref(), Some("H"));
        assert_eq!(key("Return").typed_text().as_deref(), Some("\n"));
        assert_eq!(key("space").typed_text().as_deref(), Some(" "));
        assert_eq!(key("ctrl+h").typed_text(), None);
        assert_eq!(key("Delete").typed_text(), None);
        assert_eq!(Action::Wait { ms: 1 }.typed_text(), None);
    }

    fn arb_action() -> impl Strategy<Value = Action> {
        let point = (-4000i32..8000, -4000i32..8000);
        let button = prop::sample::select(vec![
            MouseButton::Left,
            MouseButton::Right,
            MouseButton::Middle,
        ]);
        prop_oneof![
            (point.clone(), button.clone()).prop_map(|((x, y), button)| Action::Click {
                x,
                y,
                button
            }),
            (point.clone(), button).prop_map(|((x, y), button)| Action::DoubleClick {
                x,
                y,
                button
            }),
            point.clone().prop_map(|(x, y)| Action::Move { x, y }),
            prop::collection::vec(prop::array::uniform2(-100i32..3000), 2..6)
                .prop_map(|path| Action::Drag { path }),
            (point, -5i32..5, 1i32..5).prop_map(|((x, y), dx, dy)| Action::Scroll { x, y, dx, dy }),
            "\\PC{1,40}".prop_map(|text| Action::Type { text }),
            prop::sample::select(vec!["ctrl+c", "super", "Return", "F5", "alt+shift+tab"])
                .prop_map(|c| Action::Key {
                    chord: c.to_owned()
                }),
            (0u64..MAX_WAIT_MS).prop_map(|ms| Action::Wait { ms }),
            ".{0,30}".prop_map(|summary| Action::Done { summary }),
        ]
    }

    proptest! {
        #[test]
        fn json_round_trips(action in arb_action()) {
            let json = action.to_json();
            prop_assert_eq!(Action::from_json(&json).unwrap(), action);
        }
    }
}
