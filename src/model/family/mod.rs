//! Model families: how each vision-language model wants its prompt laid out, what size its
//! screenshots must be, which reply syntax it was trained on, and which coordinate convention
//! its points use.
//!
//! | family      | reply syntax                                         | points              |
//! |-------------|------------------------------------------------------|---------------------|
//! | `ui-tars`   | `Thought: …` / `Action: click(start_box='(x,y)')`    | frame pixels        |
//! | `qwen25-vl` | `<tool_call>{"name": "computer_use", …}</tool_call>` | frame pixels        |
//! | `qwen3-vl`  | the same tool call                                   | 0–1000 normalized   |
//! | `gemma3`    | `Thought: …` / deskhand's own `Action` JSON          | 0–1000 normalized   |
//!
//! A reply becomes a [`ModelAction`], whose points are still in the model's coordinate space;
//! [`ModelAction::to_action`] maps them onto the screen through the frame's [`FrameMap`], which
//! refuses points outside the frame. Replies are untrusted text: the parsers never panic, and a
//! reply they cannot read is a [`ParseError`] that quotes it.
//!
//! Each family also writes a GBNF grammar for llama.cpp. Decoding under it can only produce
//! text that the family's parser accepts; the tests check that by generating text from the
//! grammar and parsing it (see `gbnf_check`).
//!
//! Normalisations shared by the families, so that a parsed reply means one thing:
//! - key chords are stored in `Chord::normalized` form (`ctrl+shift+t`);
//! - a terminal action (`done`, `fail`, `call_user`) whose syntax carries no text, or carries
//!   empty text, takes the thought as its text, so the user sees why the model stopped;
//! - everything but the points is checked with `Action::validate` while parsing (chords parse,
//!   text is not empty, waits and scrolls are within limits).

mod gemma;
mod grammar;
mod keys;
mod qwen;
mod ui_tars;

#[cfg(test)]
mod gbnf_check;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::input::{Action, MouseButton};
use crate::model::conversation::{Layout, Message, Rendered, TurnView};
use crate::policy::Intent;
use crate::screen::{FrameMap, FrameTarget, MapError, ModelPoint, PointFormat};

pub use gemma::{Gemma3, action_json_with_intent};
pub use qwen::{MAX_SCROLL_NOTCHES_PER_CALL, PIXELS_PER_NOTCH, QwenVl};
pub use ui_tars::{UI_TARS_SCROLL_NOTCHES, UI_TARS_WAIT_MS, UiTars};

/// The model families deskhand knows. The kebab-case names are those of `models/catalog.toml`
/// and of `prompts/<name>.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FamilyId {
    UiTars,
    Qwen25Vl,
    Qwen3Vl,
    Gemma3,
}

impl FamilyId {
    pub const ALL: [FamilyId; 4] = [
        FamilyId::UiTars,
        FamilyId::Qwen25Vl,
        FamilyId::Qwen3Vl,
        FamilyId::Gemma3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FamilyId::UiTars => "ui-tars",
            FamilyId::Qwen25Vl => "qwen25-vl",
            FamilyId::Qwen3Vl => "qwen3-vl",
            FamilyId::Gemma3 => "gemma3",
        }
    }

    /// The family's prompt layout, grammar and parser.
    pub fn family(self) -> &'static dyn Family {
        match self {
            FamilyId::UiTars => &ui_tars::UI_TARS,
            FamilyId::Qwen25Vl => &qwen::QWEN25_VL,
            FamilyId::Qwen3Vl => &qwen::QWEN3_VL,
            FamilyId::Gemma3 => &gemma::GEMMA3,
        }
    }
}

impl fmt::Display for FamilyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unknown model family '{0}'; the known families are {known}", known = known_family_names())]
pub struct UnknownFamily(pub String);

pub(crate) fn known_family_names() -> String {
    FamilyId::ALL.map(FamilyId::name).join(", ")
}

impl FromStr for FamilyId {
    type Err = UnknownFamily;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        FamilyId::ALL
            .into_iter()
            .find(|id| id.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownFamily(s.to_owned()))
    }
}

/// One model family: prompt layout, image size, reply syntax and coordinate convention.
pub trait Family: Send + Sync {
    fn id(&self) -> FamilyId;

    /// The coordinate convention of the points in this family's replies.
    fn point_format(&self) -> PointFormat;

    /// The frame size the model should get, within an image-token budget, so that llama.cpp
    /// never letterboxes the screenshot (a letterboxed frame shifts every point the model
    /// names). Qwen2.5-VL and UI-TARS spend one token per 28x28 block, Qwen3-VL one per 32x32;
    /// Gemma 3 always takes a fixed 896x896 image (256 tokens), whatever the budget.
    fn frame_target(&self, image_token_budget: u32) -> FrameTarget;

    /// The system text, from `prompts/<family>.md`.
    fn system_prompt(&self) -> &'static str;

    /// The conversation as chat messages: the system message, then per turn the user's
    /// (the instruction with the task in the first) and the model's reply.
    fn messages(&self, system: &str, task: &str, turns: &[TurnView<'_>]) -> Vec<Message>;

    /// The family's trained chat layout, for model files without a chat template.
    fn layout(&self) -> Layout;

    /// The conversation in the family's built-in layout, as pieces that keep the template's
    /// markup apart from the task, the replies and the loop's notes (see
    /// [`crate::model::conversation`]). A later step's rendering extends an earlier one's,
    /// except where screenshots have left the conversation, so the KV cache can keep it.
    fn render_conversation(&self, system: &str, task: &str, turns: &[TurnView<'_>]) -> Rendered {
        self.layout().render(&self.messages(system, task, turns))
    }

    /// The text that ends a thought and starts the action, when `reply` (the reply so far)
    /// is inside a thought; None once the action has begun. The engine feeds it when a
    /// thought reaches the thought budget.
    fn close_thought(&self, reply: &str) -> Option<&'static str>;

    /// A GBNF grammar (llama.cpp syntax, root rule `root`) that accepts exactly the family's
    /// reply syntax: an optional short thought, then exactly one action, then nothing.
    fn grammar(&self) -> String;

    /// Read a reply. Lenient about what an unconstrained model adds (whitespace, the other
    /// point spellings of its family), strict about meaning: one action, known names, points
    /// where the action needs them.
    fn parse(&self, text: &str) -> Result<ParsedReply, ParseError>;

    /// The reply text this family's model would write (for test doubles and round trips).
    /// An action the syntax cannot express is written as its nearest expressible form, and a
    /// declared intent is left out where the syntax has no place for it; each family
    /// documents which.
    fn render_reply(&self, reply: &ParsedReply) -> String;
}

/// A reply, read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedReply {
    /// The free text before the action, trimmed; `None` when there was none.
    pub thought: Option<String>,
    pub action: ModelAction,
    /// What the model said the action is for, where its syntax can say it (the `intent`
    /// argument of Qwen's tool, the `intent` field of Gemma's JSON); `None` when it declared
    /// nothing, or `other`. The policy adds it to the intents it infers itself, so a declared
    /// intent can only raise the risk of an action, never lower it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
}

impl ParsedReply {
    /// A reply that declares no intent.
    pub fn new(thought: Option<&str>, action: ModelAction) -> ParsedReply {
        ParsedReply {
            thought: thought.map(str::to_owned),
            action,
            intent: None,
        }
    }

    pub fn with_intent(mut self, intent: Option<Intent>) -> ParsedReply {
        self.intent = intent;
        self
    }
}

/// The intents a reply can declare, as the reply syntaxes spell them: every intent but
/// `other`, which declares nothing.
pub(crate) fn declarable_intents() -> Vec<&'static str> {
    Intent::ALL
        .into_iter()
        .filter(|i| *i != Intent::Other)
        .map(Intent::name)
        .collect()
}

/// A declared intent from the `intent` member of a reply's JSON: absent, `null` and `other`
/// declare nothing; any other value must name a known intent.
fn intent_from_json(value: Option<&Value>) -> Result<Option<Intent>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => {
            let intent: Intent = name.trim().to_ascii_lowercase().parse()?;
            Ok((intent != Intent::Other).then_some(intent))
        }
        Some(other) => Err(format!(
            "\"intent\" must be a string such as \"send_email\", got {other}"
        )),
    }
}

/// A reply that could not be read; the message quotes the text at fault.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    fn new(message: impl Into<String>) -> ParseError {
        ParseError(message.into())
    }
}

/// `text` shortened for an error message, quoted. Model output can be long; the start is
/// what identifies it.
fn quote(text: &str) -> String {
    const MAX_QUOTED_CHARS: usize = 160;
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    if chars.next().is_some() {
        format!("'{head}…'")
    } else {
        format!("'{head}'")
    }
}

/// An action with its points still in the model's coordinate space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ModelAction {
    Click {
        at: ModelPoint,
        button: MouseButton,
    },
    DoubleClick {
        at: ModelPoint,
    },
    TripleClick {
        at: ModelPoint,
    },
    Move {
        at: ModelPoint,
    },
    /// Press at the first point, move through the rest, release at the last.
    Drag {
        path: Vec<ModelPoint>,
    },
    /// Wheel notches: `dy > 0` scrolls down, `dx > 0` scrolls right (as in `Action`).
    Scroll {
        at: ModelPoint,
        dx: i32,
        dy: i32,
    },
    Type {
        text: String,
    },
    /// In `Chord::normalized` form.
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

impl ModelAction {
    /// The action in screen pixels. A point outside the frame is an error, never clamped.
    pub fn to_action(&self, map: &FrameMap) -> Result<Action, MapError> {
        self.with_points(|p| map.to_screen(p).map(|s| (s.x, s.y)))
    }

    /// The same action with every point replaced by `point(p)`; the one place that knows
    /// which variants carry points.
    fn with_points<E>(
        &self,
        mut point: impl FnMut(ModelPoint) -> Result<(i32, i32), E>,
    ) -> Result<Action, E> {
        Ok(match self {
            ModelAction::Click { at, button } => {
                let (x, y) = point(*at)?;
                Action::Click {
                    x,
                    y,
                    button: *button,
                }
            }
            ModelAction::DoubleClick { at } => {
                let (x, y) = point(*at)?;
                Action::DoubleClick {
                    x,
                    y,
                    button: MouseButton::Left,
                }
            }
            ModelAction::TripleClick { at } => {
                let (x, y) = point(*at)?;
                Action::TripleClick {
                    x,
                    y,
                    button: MouseButton::Left,
                }
            }
            ModelAction::Move { at } => {
                let (x, y) = point(*at)?;
                Action::Move { x, y }
            }
            ModelAction::Drag { path } => Action::Drag {
                path: path
                    .iter()
                    .map(|p| point(*p).map(|(x, y)| [x, y]))
                    .collect::<Result<_, _>>()?,
            },
            ModelAction::Scroll { at, dx, dy } => {
                let (x, y) = point(*at)?;
                Action::Scroll {
                    x,
                    y,
                    dx: *dx,
                    dy: *dy,
                }
            }
            ModelAction::Type { text } => Action::Type { text: text.clone() },
            ModelAction::Key { chord } => Action::Key {
                chord: chord.clone(),
            },
            ModelAction::HoldKey { chord, ms } => Action::HoldKey {
                chord: chord.clone(),
                ms: *ms,
            },
            ModelAction::Wait { ms } => Action::Wait { ms: *ms },
            ModelAction::Done { summary } => Action::Done {
                summary: summary.clone(),
            },
            ModelAction::Fail { reason } => Action::Fail {
                reason: reason.clone(),
            },
            ModelAction::CallUser { question } => Action::CallUser {
                question: question.clone(),
            },
        })
    }

    /// The action with its raw model coordinates standing in for screen pixels. Only for
    /// checks that do not look at points, and for the JSON family, whose wire format is
    /// `Action`'s with 0–1000 coordinates.
    fn with_raw_points(&self) -> Action {
        // `as` saturates and turns NaN into 0; the points of this Action are never used as
        // positions.
        let raw = |p: ModelPoint| {
            Ok::<_, std::convert::Infallible>((p.x.round() as i32, p.y.round() as i32))
        };
        let Ok(action) = self.with_points(raw);
        action
    }

    /// Everything `Action::validate` checks that does not need the frame: chords parse, text
    /// is not empty, sizes are within limits.
    fn validated(self) -> Result<ModelAction, ParseError> {
        self.with_raw_points()
            .validate()
            .map_err(|e| ParseError::new(e.to_string()))?;
        Ok(self)
    }

    /// A terminal action with empty text takes the thought as its text (see the module
    /// documentation).
    fn with_thought_as_text(self, thought: Option<&str>) -> ModelAction {
        let thought = thought.unwrap_or_default().to_owned();
        match self {
            ModelAction::Done { summary } if summary.is_empty() => {
                ModelAction::Done { summary: thought }
            }
            ModelAction::Fail { reason } if reason.is_empty() => {
                ModelAction::Fail { reason: thought }
            }
            ModelAction::CallUser { question } if question.is_empty() => {
                ModelAction::CallUser { question: thought }
            }
            other => other,
        }
    }
}

/// The common tail of every parser: the thought trimmed (empty means none), terminal text
/// filled in, limits checked.
fn finish_reply(
    thought: &str,
    action: ModelAction,
    intent: Option<Intent>,
) -> Result<ParsedReply, ParseError> {
    let thought = thought.trim();
    let thought = (!thought.is_empty()).then(|| thought.to_owned());
    let action = action
        .with_thought_as_text(thought.as_deref())
        .validated()?;
    Ok(ParsedReply {
        thought,
        action,
        intent,
    })
}

/// A number as a model point coordinate: finite, or an error quoting it.
fn coordinate(text: &str) -> Result<f64, ParseError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| ParseError::new(format!("{} is not a coordinate", quote(text))))
}

/// A coordinate as the model writes it: integers without a decimal point.
fn format_coordinate(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
