//! Qwen2.5-VL and Qwen3-VL, with Qwen's `computer_use` function-calling tool.
//!
//! Reply format, from Qwen's computer-use cookbook tool (`computer_use`, registered with
//! qwen-agent in the Qwen2.5-VL cookbooks and used the same way for Qwen3-VL, and the Qwen
//! function-calling template's `<tool_call>` convention): optional free text, then
//!
//! ```text
//! <tool_call>
//! {"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [x, y]}}
//! </tool_call>
//! ```
//!
//! Actions: `key` (`"keys": ["ctrl", "c"]`), `type` (`"text"`), `mouse_move`, `left_click`,
//! `right_click`, `middle_click`, `double_click`, `triple_click` (`"coordinate"`),
//! `left_click_drag`, `scroll` and `hscroll` (`"pixels"`), `wait` (`"time"` in seconds),
//! `terminate` (`"status": "success" | "failure"`), `answer` (`"text"`), plus `call_user`
//! (`"text"`), a deskhand addition declared in the prompt so the model can ask instead of
//! guess.
//!
//! Points: Qwen2.5-VL names pixels of the resized screenshot ([`PointFormat::FramePixels`]);
//! Qwen3-VL names 0–1000 on each axis ([`PointFormat::Normalized1000`]; its tool tells it "The
//! screen's resolution is 1000x1000").
//!
//! Decisions:
//! - `left_click_drag` must name `"start_coordinate"` as well as `"coordinate"` (the end).
//!   Qwen's tool drags from wherever the pointer is; deskhand does not act on a position the
//!   model never named, so a drag without a start is a parse error, and the prompt declares
//!   `start_coordinate`.
//! - `scroll` needs a `"coordinate"` too, for the same reason (Qwen's tool scrolls at the
//!   pointer).
//! - `"pixels"`: positive scrolls up (Qwen's tool: "Positive values scroll up, negative values
//!   scroll down"); for `hscroll` positive scrolls right, as pyautogui's `hscroll` does. The
//!   amount becomes wheel notches at [`PIXELS_PER_NOTCH`], rounded, at least 1 and at most
//!   [`MAX_SCROLL_NOTCHES_PER_CALL`]: a model that writes pyautogui-style click counts (`-5`)
//!   gets one notch, which is slow but never overshoots, and one that writes `-500` gets 5.
//! - `wait` without `"time"` waits one second.
//! - `terminate` carries no text: its summary or reason is the thought. `answer` is `done`
//!   with the answer as its summary.
//! - What the syntax cannot say is written as the nearest thing it can (`render_reply`): a drag
//!   through several points as a drag from the first to the last, a scroll on both axes as its
//!   vertical part, a held key as a press.
//! - The tool takes an optional `"intent"` argument, a deskhand addition declared in the
//!   prompt: what the action is for when it sends, pays, buys, deletes, publishes, installs or
//!   logs in (`"intent": "send_email"`). It comes last in the arguments; the grammar lets the
//!   model write it or leave it out, and the policy only ever adds it to what it infers.

use serde_json::{Map, Value};

use crate::input::MouseButton;
use crate::model::conversation::{self, Instruction, Layout, Message, TurnView};
use crate::policy::Intent;
use crate::screen::{FrameTarget, ModelPoint, PointFormat};

use super::grammar::{self, Gbnf, one_of};
use super::keys::{chord_from_keys, key_names};
use super::{
    Family, FamilyId, ModelAction, ParseError, ParsedReply, finish_reply, format_coordinate,
    intent_from_json, quote,
};

/// Scroll distance of one wheel notch, in Qwen's `"pixels"`. A notch scrolls about three lines
/// of text in most toolkits, roughly 100 pixels at common sizes.
pub const PIXELS_PER_NOTCH: i32 = 100;
/// Most notches one `scroll` call may turn; the model can scroll again after it sees the
/// result.
pub const MAX_SCROLL_NOTCHES_PER_CALL: i32 = 10;

const TOOL_CALL_OPEN: &str = "<tool_call>";
const TOOL_CALL_CLOSE: &str = "</tool_call>";
const TOOL_NAME: &str = "computer_use";
pub(super) const ACTION_NAMES: &str = "key, type, mouse_move, left_click, left_click_drag, right_click, middle_click, double_click, triple_click, scroll, hscroll, wait, terminate, answer, call_user";

/// One of the Qwen-VL families; they differ in point format, block size and prompt only.
pub struct QwenVl {
    id: FamilyId,
    format: PointFormat,
    /// Pixels per side of the block one image token covers.
    block: u32,
    prompt: &'static str,
}

pub(super) static QWEN25_VL: QwenVl = QwenVl {
    id: FamilyId::Qwen25Vl,
    format: PointFormat::FramePixels,
    block: 28,
    prompt: include_str!("../../../prompts/qwen25-vl.md"),
};

pub(super) static QWEN3_VL: QwenVl = QwenVl {
    id: FamilyId::Qwen3Vl,
    format: PointFormat::Normalized1000,
    block: 32,
    prompt: include_str!("../../../prompts/qwen3-vl.md"),
};

impl Family for QwenVl {
    fn id(&self) -> FamilyId {
        self.id
    }

    fn point_format(&self) -> PointFormat {
        self.format
    }

    fn frame_target(&self, image_token_budget: u32) -> FrameTarget {
        let block = u64::from(self.block);
        FrameTarget::MaxPixels {
            max_pixels: u64::from(image_token_budget) * block * block,
            align: self.block,
        }
    }

    fn system_prompt(&self) -> &'static str {
        self.prompt
    }

    fn messages(&self, system: &str, task: &str, turns: &[TurnView<'_>]) -> Vec<Message> {
        let instruction = Instruction {
            before: "Task: ",
            task,
            after: "\n",
        };
        conversation::messages(system, &instruction, turns)
    }

    fn layout(&self) -> Layout {
        Layout::ChatMl
    }

    fn close_thought(&self, reply: &str) -> Option<&'static str> {
        // The free text before the tool call is one line.
        (!reply.is_empty() && !reply.starts_with("<tool_call>") && !reply.contains('\n'))
            .then_some("\n")
    }

    fn grammar(&self) -> String {
        let coordinate_rule = match self.format {
            PointFormat::Normalized1000 => "norm-coord",
            PointFormat::FramePixels | PointFormat::Fraction => "frame-coord",
        };
        let mut g = Gbnf::new();
        g.rule(
            "root",
            r#"thought? "<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": " action intent? "}}\n</tool_call>""#,
        )
        .rule(
            "thought",
            &format!(
                r#"thought-char{{1,{}}} "\n""#,
                grammar::THOUGHT_MAX_CHARS
            ),
        )
        .rule(
            "action",
            "point-action | drag | scroll | type | key-press | wait | terminate | answer | call-user",
        )
        .rule(
            "point-action",
            &format!(
                r#""\"" {} "\", \"coordinate\": " point"#,
                one_of(&[
                    "left_click",
                    "right_click",
                    "middle_click",
                    "double_click",
                    "triple_click",
                    "mouse_move"
                ])
            ),
        )
        .rule(
            "drag",
            r#""\"left_click_drag\", \"start_coordinate\": " point ", \"coordinate\": " point"#,
        )
        .rule(
            "scroll",
            &format!(
                r#""\"" {} "\", \"coordinate\": " point ", \"pixels\": " pixels"#,
                one_of(&["scroll", "hscroll"])
            ),
        )
        .rule("pixels", r#""-"? [1-9] [0-9]{0,3}"#)
        .rule("type", r#""\"type\", \"text\": " type-text"#)
        .rule(
            "key-press",
            r#""\"key\", \"keys\": [" ( "\"" modifier "\", " ){0,3} "\"" key "\"]""#,
        )
        // Whole seconds up to the executor's one-minute limit.
        .rule("wait", r#""\"wait\", \"time\": " ( [0-9] | [1-5] [0-9] | "60" )"#)
        .rule(
            "terminate",
            &format!(
                r#""\"terminate\", \"status\": \"" {} "\"""#,
                one_of(&["success", "failure"])
            ),
        )
        .rule("answer", r#""\"answer\", \"text\": " message"#)
        .rule("call-user", r#""\"call_user\", \"text\": " message"#)
        .rule(
            "point",
            &format!(r#""[" {coordinate_rule} ", " {coordinate_rule} "]""#),
        );
        grammar::intent_rule(&mut g, ", \"intent\": \"");
        grammar::json_string_rule(&mut g, "type-text", 1, grammar::TYPE_MAX_CHARS);
        grammar::json_string_rule(&mut g, "message", 0, grammar::MESSAGE_MAX_CHARS);
        grammar::json_char_rule(&mut g);
        // A '<' would start the tool call; the thought has none.
        grammar::thought_char_rule(&mut g, "<");
        grammar::key_rules(&mut g);
        match self.format {
            PointFormat::Normalized1000 => grammar::norm_coord_rule(&mut g),
            PointFormat::FramePixels | PointFormat::Fraction => grammar::frame_coord_rule(&mut g),
        }
        g.finish()
    }

    fn parse(&self, text: &str) -> Result<ParsedReply, ParseError> {
        let Some(open) = text.find(TOOL_CALL_OPEN) else {
            return Err(ParseError::new(format!(
                "no {TOOL_CALL_OPEN} in the reply {}",
                quote(text)
            )));
        };
        let before = text[..open].trim();
        let after_open = &text[open + TOOL_CALL_OPEN.len()..];
        // A reply cut off before the closing tag is read up to its end.
        let (body, after) = match after_open.find(TOOL_CALL_CLOSE) {
            Some(end) => (
                &after_open[..end],
                &after_open[end + TOOL_CALL_CLOSE.len()..],
            ),
            None => (after_open, ""),
        };
        if !after.trim().is_empty() {
            return Err(ParseError::new(format!(
                "only one tool call per reply, but text follows it: {}",
                quote(after.trim())
            )));
        }
        let body = body.trim();
        let call: Value = serde_json::from_str(body).map_err(|e| {
            ParseError::new(format!("the tool call is not JSON ({e}): {}", quote(body)))
        })?;
        let (action, intent) = self.model_action(&call, body)?;
        let thought = before.strip_prefix("Thought:").unwrap_or(before);
        finish_reply(thought, action, intent)
    }

    fn render_reply(&self, reply: &ParsedReply) -> String {
        let point =
            |p: &ModelPoint| format!("[{}, {}]", format_coordinate(p.x), format_coordinate(p.y));
        let mut thought = reply.thought.clone();
        let mut arguments = match &reply.action {
            ModelAction::Click { at, button } => {
                let name = match button {
                    MouseButton::Left => "left_click",
                    MouseButton::Right => "right_click",
                    MouseButton::Middle => "middle_click",
                };
                format!(r#""action": "{name}", "coordinate": {}"#, point(at))
            }
            ModelAction::DoubleClick { at } => {
                format!(r#""action": "double_click", "coordinate": {}"#, point(at))
            }
            ModelAction::TripleClick { at } => {
                format!(r#""action": "triple_click", "coordinate": {}"#, point(at))
            }
            ModelAction::Move { at } => {
                format!(r#""action": "mouse_move", "coordinate": {}"#, point(at))
            }
            ModelAction::Drag { path } => match (path.first(), path.last()) {
                (Some(start), Some(end)) => format!(
                    r#""action": "left_click_drag", "start_coordinate": {}, "coordinate": {}"#,
                    point(start),
                    point(end)
                ),
                _ => r#""action": "left_click_drag""#.to_owned(),
            },
            ModelAction::Scroll { at, dx, dy } => {
                if *dy != 0 || *dx == 0 {
                    format!(
                        r#""action": "scroll", "coordinate": {}, "pixels": {}"#,
                        point(at),
                        -dy * PIXELS_PER_NOTCH
                    )
                } else {
                    format!(
                        r#""action": "hscroll", "coordinate": {}, "pixels": {}"#,
                        point(at),
                        dx * PIXELS_PER_NOTCH
                    )
                }
            }
            ModelAction::Type { text } => {
                format!(r#""action": "type", "text": {}"#, json_string(text))
            }
            ModelAction::Key { chord } | ModelAction::HoldKey { chord, .. } => {
                let keys: Vec<String> = key_names(chord).iter().map(|k| json_string(k)).collect();
                format!(r#""action": "key", "keys": [{}]"#, keys.join(", "))
            }
            ModelAction::Wait { ms } => {
                let seconds = if ms % 1000 == 0 {
                    (ms / 1000).to_string()
                } else {
                    format!("{}", *ms as f64 / 1000.0)
                };
                format!(r#""action": "wait", "time": {seconds}"#)
            }
            ModelAction::Done { summary } => {
                if summary.is_empty() || thought.as_deref() == Some(summary.as_str()) {
                    r#""action": "terminate", "status": "success""#.to_owned()
                } else {
                    format!(r#""action": "answer", "text": {}"#, json_string(summary))
                }
            }
            ModelAction::Fail { reason } => {
                if thought.is_none() && !reason.is_empty() {
                    thought = Some(reason.clone());
                }
                r#""action": "terminate", "status": "failure""#.to_owned()
            }
            ModelAction::CallUser { question } => {
                format!(
                    r#""action": "call_user", "text": {}"#,
                    json_string(question)
                )
            }
        };
        if let Some(intent) = reply.intent {
            arguments.push_str(&format!(r#", "intent": "{intent}""#));
        }
        let call = format!(
            "{TOOL_CALL_OPEN}\n{{\"name\": \"{TOOL_NAME}\", \"arguments\": {{{arguments}}}}}\n{TOOL_CALL_CLOSE}"
        );
        match thought {
            Some(t) if !t.trim().is_empty() => format!("{}\n{call}", t.trim()),
            _ => call,
        }
    }
}

impl QwenVl {
    /// The action a tool call names, and the intent it declares.
    fn model_action(
        &self,
        call: &Value,
        raw: &str,
    ) -> Result<(ModelAction, Option<Intent>), ParseError> {
        let error = |problem: String| ParseError::new(format!("{problem} in {}", quote(raw)));
        let name = call.get("name").and_then(Value::as_str);
        if name != Some(TOOL_NAME) {
            return Err(error(format!(
                "the tool call must name \"{TOOL_NAME}\", not {}",
                name.map_or_else(|| "nothing".to_owned(), |n| format!("\"{n}\""))
            )));
        }
        // Some servers and fine-tunes write the arguments as a JSON string.
        let parsed_from_string;
        let arguments = match call.get("arguments") {
            Some(Value::String(text)) => {
                parsed_from_string = serde_json::from_str::<Value>(text)
                    .map_err(|e| error(format!("the arguments string is not JSON ({e})")))?;
                &parsed_from_string
            }
            Some(value) => value,
            None => return Err(error("the tool call has no \"arguments\"".to_owned())),
        };
        let Some(args) = arguments.as_object() else {
            return Err(error("\"arguments\" is not an object".to_owned()));
        };
        let Some(action) = args.get("action").and_then(Value::as_str) else {
            return Err(error("the arguments have no \"action\"".to_owned()));
        };
        let intent = intent_from_json(args.get("intent")).map_err(error)?;
        let point = |key: &str| self.point(args, action, key).map_err(error);
        let text = |key: &str| {
            args.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let action = match action {
            "left_click" => ModelAction::Click {
                at: point("coordinate")?,
                button: MouseButton::Left,
            },
            "right_click" => ModelAction::Click {
                at: point("coordinate")?,
                button: MouseButton::Right,
            },
            "middle_click" => ModelAction::Click {
                at: point("coordinate")?,
                button: MouseButton::Middle,
            },
            "double_click" => ModelAction::DoubleClick {
                at: point("coordinate")?,
            },
            "triple_click" => ModelAction::TripleClick {
                at: point("coordinate")?,
            },
            "mouse_move" => ModelAction::Move {
                at: point("coordinate")?,
            },
            "left_click_drag" => {
                if !args.contains_key("start_coordinate") {
                    return Err(error(
                        "left_click_drag needs \"start_coordinate\" as well as \"coordinate\" (deskhand does not drag from wherever the pointer happens to be)".to_owned(),
                    ));
                }
                ModelAction::Drag {
                    path: vec![point("start_coordinate")?, point("coordinate")?],
                }
            }
            "scroll" | "hscroll" => {
                let pixels = args.get("pixels").and_then(Value::as_f64).unwrap_or(0.0);
                if pixels == 0.0 {
                    return Err(error(format!("{action} needs non-zero \"pixels\"")));
                }
                let notches = notches(pixels);
                let at = point("coordinate")?;
                if action == "scroll" {
                    // Positive pixels scroll up; a positive dy scrolls down.
                    ModelAction::Scroll {
                        at,
                        dx: 0,
                        dy: -notches,
                    }
                } else {
                    ModelAction::Scroll {
                        at,
                        dx: notches,
                        dy: 0,
                    }
                }
            }
            "type" => ModelAction::Type { text: text("text") },
            "key" => {
                let chord = match args.get("keys") {
                    Some(Value::Array(keys)) => {
                        let names: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
                        if names.len() != keys.len() {
                            return Err(error("\"keys\" must be a list of strings".to_owned()));
                        }
                        chord_from_keys(names, raw)?
                    }
                    Some(Value::String(keys)) => chord_from_keys(keys.split_whitespace(), raw)?,
                    _ => return Err(error("key needs \"keys\": [\"ctrl\", \"c\"]".to_owned())),
                };
                ModelAction::Key { chord }
            }
            "wait" => {
                let seconds = match args.get("time") {
                    None => 1.0,
                    Some(time) => time.as_f64().filter(|s| *s >= 0.0).ok_or_else(|| {
                        error("wait \"time\" must be seconds, 0 or more".to_owned())
                    })?,
                };
                // Out-of-range values saturate; validation then rejects them as too long.
                ModelAction::Wait {
                    ms: (seconds * 1000.0).round() as u64,
                }
            }
            "terminate" => match args.get("status").and_then(Value::as_str) {
                Some("success") => ModelAction::Done {
                    summary: String::new(),
                },
                Some("failure") => ModelAction::Fail {
                    reason: String::new(),
                },
                _ => {
                    return Err(error(
                        "terminate needs \"status\": \"success\" or \"failure\"".to_owned(),
                    ));
                }
            },
            "answer" => ModelAction::Done {
                summary: text("text"),
            },
            "call_user" => ModelAction::CallUser {
                question: text("text"),
            },
            other => {
                return Err(error(format!(
                    "unknown computer_use action \"{other}\"; expected one of {ACTION_NAMES}"
                )));
            }
        };
        Ok((action, intent))
    }

    /// The `[x, y]` under `key`, in this family's point format.
    fn point(
        &self,
        args: &Map<String, Value>,
        action: &str,
        key: &str,
    ) -> Result<ModelPoint, String> {
        let Some(value) = args.get(key) else {
            return Err(format!("{action} needs \"{key}\": [x, y]"));
        };
        match value.as_array().map(Vec::as_slice) {
            Some([x, y]) => match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => Ok(ModelPoint::new(x, y, self.format)),
                _ => Err(format!("\"{key}\" must hold two numbers, got {value}")),
            },
            _ => Err(format!("\"{key}\" must be [x, y], got {value}")),
        }
    }
}

/// Wheel notches for a scroll of `pixels` (see the module documentation), with its sign.
fn notches(pixels: f64) -> i32 {
    let count = (pixels.abs() / f64::from(PIXELS_PER_NOTCH))
        .round()
        .clamp(1.0, f64::from(MAX_SCROLL_NOTCHES_PER_CALL)) as i32;
    if pixels < 0.0 { -count } else { count }
}

/// A JSON string literal. Serializing a string cannot fail.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}
