//! UI-TARS-1.5 (ByteDance, a Qwen2.5-VL fine-tune).
//!
//! Reply format, from the model's published prompt templates and parser
//! (github.com/bytedance/UI-TARS: `README.md` "Prompt Usage Guide" / `COMPUTER_USE`,
//! `README_deploy.md` "Expected Output", `codes/ui_tars/action_parser.py`):
//!
//! ```text
//! Thought: I need to open the Color Management settings.
//! Action: click(start_box='(177,549)')
//! ```
//!
//! Actions: `click`, `left_double`, `right_single` (`start_box`), `drag` (`start_box`,
//! `end_box`), `hotkey(key='ctrl c')` (space-separated keys), `type(content='…')` (Python string
//! escapes; a trailing `\n` submits and is kept in the text, the executor types Return),
//! `scroll(start_box=…, direction='down'|'up'|'left'|'right')`, `wait()`,
//! `finished(content='…')` and `call_user()`. The parser also reads what the official parser
//! reads besides: `left_single` (click), `hover` (move), `select` (drag), `press` (key), the
//! argument names `point`, `start_point` and `end_point`, and the point spellings `(x,y)`,
//! `<|box_start|>(x,y)<|box_end|>`, `<point>x y</point>`, `[x, y]` and 4-number boxes
//! `(x1,y1,x2,y2)` (their centre).
//!
//! Points are pixels of the resized screenshot the model saw ([`PointFormat::FramePixels`]).
//!
//! Decisions:
//! - `scroll` moves [`UI_TARS_SCROLL_NOTCHES`] wheel notches, as the official parser does
//!   (`pyautogui.scroll(±5)`).
//! - `wait()` waits [`UI_TARS_WAIT_MS`]: the prompt tells the model it sleeps 5 s.
//! - `call_user()` carries no text: the thought is the question (module docs of `family`).
//! - What the syntax cannot say is written as the nearest thing it can (`render_reply`):
//!   a middle click as a click, a triple click as a double click, a move as `hover`,
//!   a drag through several points as a drag from the first to the last, a held key as a
//!   press, any wait as `wait()`, a failure as `call_user()` with the reason as the thought.
//! - No intent: UI-TARS keeps the action syntax it was trained on, which has no place for one,
//!   so its actions carry only the intents the policy infers.

use crate::input::MouseButton;
use crate::model::conversation::{self, Instruction, Layout, Message, TurnView};
use crate::screen::{FrameTarget, ModelPoint, PointFormat};

use super::grammar::{self, Gbnf, lit, one_of};
use super::keys::{chord_from_keys, key_names};
use super::{
    Family, FamilyId, ModelAction, ParseError, ParsedReply, coordinate, finish_reply,
    format_coordinate, quote,
};

/// Wheel notches of one `scroll(...)`: what UI-TARS's own parser sends.
/// What starts the action line; no line of a thought starts with it.
const ACTION_PREFIX: &str = "Action:";

pub const UI_TARS_SCROLL_NOTCHES: i32 = 5;
/// How long `wait()` waits: the published prompt says "Sleep for 5s".
pub const UI_TARS_WAIT_MS: u64 = 5_000;

/// Qwen2-VL's default system text, which UI-TARS keeps; its own instructions go in the user
/// turn, as in the published usage.
const CHATML_SYSTEM: &str = "You are a helpful assistant.";

pub struct UiTars;

pub(super) static UI_TARS: UiTars = UiTars;

const ACTION_NAMES: &str =
    "click, left_double, right_single, drag, hotkey, type, scroll, wait, finished, call_user";

impl Family for UiTars {
    fn id(&self) -> FamilyId {
        FamilyId::UiTars
    }

    fn point_format(&self) -> PointFormat {
        PointFormat::FramePixels
    }

    fn frame_target(&self, image_token_budget: u32) -> FrameTarget {
        // A Qwen2.5-VL vision tower: one token per 28x28 block.
        FrameTarget::MaxPixels {
            max_pixels: u64::from(image_token_budget) * 28 * 28,
            align: 28,
        }
    }

    fn system_prompt(&self) -> &'static str {
        include_str!("../../../prompts/ui-tars.md")
    }

    fn messages(&self, system: &str, task: &str, turns: &[TurnView<'_>]) -> Vec<Message> {
        // The prompt file ends with "## User Instruction"; the task follows it, as in the
        // published COMPUTER_USE template, with Qwen's default system turn before it.
        let before = format!("{}\n", system.trim_end());
        let instruction = Instruction {
            before: &before,
            task,
            after: "\n",
        };
        conversation::messages(CHATML_SYSTEM, &instruction, turns)
    }

    fn layout(&self) -> Layout {
        Layout::ChatMl
    }

    fn close_thought(&self, reply: &str) -> Option<&'static str> {
        (reply.starts_with("Thought: ") && !reply.contains("\nAction: ")).then_some("\nAction: ")
    }

    fn grammar(&self) -> String {
        let mut g = Gbnf::new();
        g.rule("root", r#"thought? "Action: " action"#)
            .rule(
                "thought",
                // A small plan over a few lines, as the model was trained to write; the engine's
                // thought budget (tokens) ends a longer one.
                // The later lines are a rule of their own: llama.cpp refuses a repeated group
                // that itself expands into more than 2,000 rules (12 lines × 300 characters).
                // No later line starts "Action:", so the first one that does is the action,
                // and the engine can tell a thought from an action by the text alone.
                &format!(
                    r#""Thought: " thought-char{{1,{n}}} "\n" thought-line{{0,{l}}}"#,
                    n = grammar::THOUGHT_MAX_CHARS,
                    l = grammar::THOUGHT_MAX_LINES
                ),
            )
            // After a later line's start, which may take up to 7 characters ("Action" and
            // one more): no line longer than the first may be.
            .rule(
                "thought-rest",
                &format!(
                    r#"thought-char{{0,{}}} "\n""#,
                    grammar::THOUGHT_MAX_CHARS - ACTION_PREFIX.len()
                ),
            )
            .rule(
                "action",
                "click | left-double | right-single | drag | hotkey | type | scroll | wait | finished | call-user",
            )
            .rule("click", r#""click(start_box='" point "')""#)
            .rule("left-double", r#""left_double(start_box='" point "')""#)
            .rule("right-single", r#""right_single(start_box='" point "')""#)
            .rule(
                "drag",
                r#""drag(start_box='" point "', end_box='" point "')""#,
            )
            .rule("hotkey", r#""hotkey(key='" ( modifier " " ){0,3} key "')""#)
            .rule(
                "type",
                &format!(
                    r#""type(content='" py-char{{1,{}}} "')""#,
                    grammar::TYPE_MAX_CHARS
                ),
            )
            .rule(
                "scroll",
                &format!(
                    r#""scroll(start_box='" point "', direction='" {} "')""#,
                    one_of(&["down", "up", "left", "right"])
                ),
            )
            .rule("wait", &lit("wait()"))
            .rule(
                "finished",
                &format!(
                    r#""finished(content='" py-char{{0,{}}} "')""#,
                    grammar::MESSAGE_MAX_CHARS
                ),
            )
            .rule("call-user", &lit("call_user()"))
            .rule("point", r#""(" frame-coord "," frame-coord ")""#)
            // Python string content: no bare quote, backslash, line break or other control
            // character (typed, a control character would reach applications as a key).
            .rule("py-char", r#"[^'\\\x00-\x1F\x7F-\x9F] | "\\" ['"\\nrt]"#);
        grammar::thought_char_rule(&mut g, "");
        grammar::line_without_prefix_rule(
            &mut g,
            "thought-line",
            ACTION_PREFIX,
            "thought-rest",
            "",
        );
        grammar::key_rules(&mut g);
        grammar::frame_coord_rule(&mut g);
        g.finish()
    }

    fn parse(&self, text: &str) -> Result<ParsedReply, ParseError> {
        let Some((before, action_text)) = split_at_action_line(text) else {
            return Err(ParseError::new(format!(
                "no 'Action:' line in the UI-TARS reply {}",
                quote(text)
            )));
        };
        let before = before.trim();
        let thought = before.strip_prefix("Thought:").unwrap_or(before);
        let (call, after) = parse_call(action_text)?;
        if !after.trim().is_empty() {
            return Err(ParseError::new(format!(
                "only one action per reply, but text follows it: {}",
                quote(after.trim())
            )));
        }
        finish_reply(thought, model_action(&call, action_text)?, None)
    }

    fn render_reply(&self, reply: &ParsedReply) -> String {
        let box_arg =
            |p: &ModelPoint| format!("'({},{})'", format_coordinate(p.x), format_coordinate(p.y));
        let mut thought = reply.thought.clone();
        let call = match &reply.action {
            ModelAction::Click { at, button } => match button {
                MouseButton::Right => format!("right_single(start_box={})", box_arg(at)),
                MouseButton::Left | MouseButton::Middle => {
                    format!("click(start_box={})", box_arg(at))
                }
            },
            ModelAction::DoubleClick { at } | ModelAction::TripleClick { at } => {
                format!("left_double(start_box={})", box_arg(at))
            }
            ModelAction::Move { at } => format!("hover(start_box={})", box_arg(at)),
            ModelAction::Drag { path } => match (path.first(), path.last()) {
                (Some(start), Some(end)) => format!(
                    "drag(start_box={}, end_box={})",
                    box_arg(start),
                    box_arg(end)
                ),
                _ => "drag()".to_owned(),
            },
            ModelAction::Scroll { at, dx, dy } => {
                let direction = if *dy > 0 {
                    "down"
                } else if *dy < 0 {
                    "up"
                } else if *dx > 0 {
                    "right"
                } else if *dx < 0 {
                    "left"
                } else {
                    "down"
                };
                format!("scroll(start_box={}, direction='{direction}')", box_arg(at))
            }
            ModelAction::Type { text } => format!("type(content={})", python_string(text)),
            ModelAction::Key { chord } | ModelAction::HoldKey { chord, .. } => {
                format!("hotkey(key={})", python_string(&key_names(chord).join(" ")))
            }
            ModelAction::Wait { .. } => "wait()".to_owned(),
            // A summary that is the thought was taken from it (an empty `content`): written
            // empty again, since a thought may run longer than `content` may.
            ModelAction::Done { summary } if thought.as_deref().map(str::trim) == Some(summary) => {
                "finished(content='')".to_owned()
            }
            ModelAction::Done { summary } => {
                format!("finished(content={})", python_string(summary))
            }
            ModelAction::Fail { reason: text } | ModelAction::CallUser { question: text } => {
                if thought.is_none() && !text.is_empty() {
                    thought = Some(text.clone());
                }
                "call_user()".to_owned()
            }
        };
        match thought {
            Some(t) if !t.trim().is_empty() => format!("Thought: {}\nAction: {call}", t.trim()),
            _ => format!("Action: {call}"),
        }
    }
}

/// The reply split at the first line that starts with `Action:`: the text before that line,
/// and the text after `Action:` (the action may span lines when its content has raw line
/// breaks).
fn split_at_action_line(text: &str) -> Option<(&str, &str)> {
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let indent = line.len() - line.trim_start().len();
        if line[indent..].starts_with("Action:") {
            let action_start = line_start + indent + "Action:".len();
            return Some((&text[..line_start], &text[action_start..]));
        }
        line_start += line.len();
    }
    None
}

/// `name(key='value', …)` as UI-TARS writes it.
struct Call {
    name: String,
    args: Vec<(String, String)>,
}

impl Call {
    /// The value of the first argument with one of `names` (UI-TARS versions differ in
    /// argument names: `start_box`, `point`, `start_point`).
    fn arg(&self, names: &[&str]) -> Option<&str> {
        self.args
            .iter()
            .find(|(key, _)| names.contains(&key.as_str()))
            .map(|(_, value)| value.as_str())
    }
}

/// A cursor over the action text; positions are byte offsets at character boundaries.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, wanted: char) -> bool {
        if self.peek() == Some(wanted) {
            self.pos += wanted.len_utf8();
            true
        } else {
            false
        }
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn identifier(&mut self) -> &'a str {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    /// Whether a quote here closes the string: only when what follows can follow an argument.
    /// UI-TARS sometimes leaves a quote inside `content` unescaped, and its own parser takes
    /// the content up to the last `')`; this reads such a quote as text.
    fn closes_string(&self) -> bool {
        let after = self.rest().trim_start();
        after.is_empty() || after.starts_with(',') || after.starts_with(')')
    }

    /// A Python string literal (either quote), unescaped.
    fn string(&mut self, quote_char: char) -> Result<String, ParseError> {
        let start = self.pos;
        let mut value = String::new();
        loop {
            let Some(c) = self.bump() else {
                return Err(ParseError::new(format!(
                    "unterminated string {}",
                    quote(&self.text[start..])
                )));
            };
            match c {
                '\\' => match self.bump() {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some('r') => value.push('\r'),
                    Some(e @ ('\\' | '\'' | '"')) => value.push(e),
                    // Python keeps the backslash of an escape it does not know.
                    Some(other) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => value.push('\\'),
                },
                c if c == quote_char && self.closes_string() => return Ok(value),
                c => value.push(c),
            }
        }
    }

    /// An argument value: a string, a bracketed tuple or list, or a bare word or number.
    fn value(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some(q @ ('\'' | '"')) => {
                self.bump();
                self.string(q)
            }
            Some(open @ ('(' | '[')) => {
                let close = if open == '(' { ')' } else { ']' };
                let rest = self.rest();
                let Some(end) = rest.find(close) else {
                    return Err(ParseError::new(format!(
                        "unclosed {open} in {}",
                        quote(rest)
                    )));
                };
                self.pos += end + 1;
                Ok(rest[..=end].to_owned())
            }
            _ => {
                let rest = self.rest();
                let len = rest.find([',', ')']).unwrap_or(rest.len());
                self.pos += len;
                Ok(rest[..len].trim().to_owned())
            }
        }
    }
}

/// Reads one call at the start of `text`; returns it and the text after it. A missing final
/// `)` at the very end is forgiven (a reply cut off by the token limit), as UI-TARS's own
/// parser does.
fn parse_call(text: &str) -> Result<(Call, &str), ParseError> {
    let mut cursor = Cursor { text, pos: 0 };
    cursor.skip_whitespace();
    let name = cursor.identifier().to_owned();
    if name.is_empty() {
        return Err(ParseError::new(format!(
            "expected an action like click(start_box='(x,y)') after 'Action:', got {}",
            quote(text.trim())
        )));
    }
    cursor.skip_whitespace();
    if !cursor.eat('(') {
        return Err(ParseError::new(format!(
            "expected '(' after {name} in {}",
            quote(text.trim())
        )));
    }
    let mut args = Vec::new();
    loop {
        cursor.skip_whitespace();
        if cursor.eat(')') || cursor.peek().is_none() {
            break;
        }
        let key = cursor.identifier().to_owned();
        cursor.skip_whitespace();
        if key.is_empty() || !cursor.eat('=') {
            return Err(ParseError::new(format!(
                "expected name='value' arguments in {}",
                quote(text.trim())
            )));
        }
        cursor.skip_whitespace();
        let value = cursor.value()?;
        args.push((key, value));
        cursor.skip_whitespace();
        if cursor.eat(',') {
            continue;
        }
        if cursor.eat(')') || cursor.peek().is_none() {
            break;
        }
        return Err(ParseError::new(format!(
            "expected ',' or ')' at {} in {}",
            quote(cursor.rest()),
            quote(text.trim())
        )));
    }
    Ok((Call { name, args }, cursor.rest()))
}

fn model_action(call: &Call, raw: &str) -> Result<ModelAction, ParseError> {
    let raw = raw.trim();
    let start = || -> Result<ModelPoint, ParseError> {
        let text = call
            .arg(&["start_box", "point", "start_point"])
            .ok_or_else(|| {
                ParseError::new(format!("{} needs start_box in {}", call.name, quote(raw)))
            })?;
        box_point(text)
    };
    Ok(match call.name.as_str() {
        "click" | "left_single" => ModelAction::Click {
            at: start()?,
            button: MouseButton::Left,
        },
        "right_single" => ModelAction::Click {
            at: start()?,
            button: MouseButton::Right,
        },
        "left_double" => ModelAction::DoubleClick { at: start()? },
        "hover" => ModelAction::Move { at: start()? },
        "drag" | "select" => {
            let end = call.arg(&["end_box", "end_point"]).ok_or_else(|| {
                ParseError::new(format!("{} needs end_box in {}", call.name, quote(raw)))
            })?;
            ModelAction::Drag {
                path: vec![start()?, box_point(end)?],
            }
        }
        "hotkey" | "press" => {
            let keys = call.arg(&["key", "hotkey"]).ok_or_else(|| {
                ParseError::new(format!("{} needs key in {}", call.name, quote(raw)))
            })?;
            ModelAction::Key {
                chord: chord_from_keys(keys.split_whitespace(), raw)?,
            }
        }
        "type" => ModelAction::Type {
            text: call.arg(&["content"]).unwrap_or_default().to_owned(),
        },
        "scroll" => {
            let direction = call.arg(&["direction"]).unwrap_or_default();
            let n = UI_TARS_SCROLL_NOTCHES;
            let (dx, dy) = match direction.trim().to_ascii_lowercase().as_str() {
                "down" => (0, n),
                "up" => (0, -n),
                "right" => (n, 0),
                "left" => (-n, 0),
                _ => {
                    return Err(ParseError::new(format!(
                        "scroll direction must be down, up, left or right, got {} in {}",
                        quote(direction),
                        quote(raw)
                    )));
                }
            };
            ModelAction::Scroll {
                at: start()?,
                dx,
                dy,
            }
        }
        "wait" => ModelAction::Wait {
            ms: UI_TARS_WAIT_MS,
        },
        "finished" => ModelAction::Done {
            summary: call.arg(&["content"]).unwrap_or_default().to_owned(),
        },
        "call_user" => ModelAction::CallUser {
            question: String::new(),
        },
        other => {
            return Err(ParseError::new(format!(
                "unknown UI-TARS action '{other}' in {}; expected one of {ACTION_NAMES}",
                quote(raw)
            )));
        }
    })
}

/// A point in any of UI-TARS's spellings: `(x,y)`, `<|box_start|>(x,y)<|box_end|>`,
/// `<point>x y</point>`, `[x, y]`, or a box of four numbers, whose centre it is.
fn box_point(text: &str) -> Result<ModelPoint, ParseError> {
    let inner = text.replace("<|box_start|>", "").replace("<|box_end|>", "");
    let inner = inner.trim();
    let inner = [
        ("<point>", "</point>"),
        ("<bbox>", "</bbox>"),
        ("(", ")"),
        ("[", "]"),
    ]
    .iter()
    .find_map(|(open, close)| inner.strip_prefix(open)?.strip_suffix(close))
    .unwrap_or(inner);
    let numbers: Vec<f64> = inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .map(coordinate)
        .collect::<Result<_, _>>()
        .map_err(|e| ParseError::new(format!("{e} in the point {}", quote(text))))?;
    let (x, y) = match numbers[..] {
        [x, y] => (x, y),
        [x1, y1, x2, y2] => ((x1 + x2) / 2.0, (y1 + y2) / 2.0),
        _ => {
            return Err(ParseError::new(format!(
                "a point needs 2 numbers (or 4 for a box), got {}",
                quote(text)
            )));
        }
    };
    Ok(ModelPoint::new(x, y, PointFormat::FramePixels))
}

/// A single-quoted Python string literal with the escapes UI-TARS's prompt asks for.
fn python_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}
