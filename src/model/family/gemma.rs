//! Gemma 3: a general vision-language model with no training for GUI grounding.
//!
//! Gemma 3 was not trained to name screen positions, so its clicks are estimates; it is here
//! because it is small, well supported by llama.cpp and has a real tokenizer for the tests,
//! not because it operates a desktop well. Its prompt (`prompts/gemma3.md`) teaches it
//! deskhand's own wire format instead of a trained syntax:
//!
//! ```text
//! Thought: The Save button is in the lower right.
//! {"action":"click","x":912,"y":874}
//! ```
//!
//! The JSON is the `Action` wire format (see `input::Action`), with `x` and `y` from 0 to 1000
//! along each side of the screenshot ([`PointFormat::Normalized1000`]). Gemma 3's vision
//! tower takes a fixed 896x896 image (256 tokens), so the frame is always that size; the
//! frame map scales each axis on its own, which undoes the change of aspect ratio.
//!
//! The grammar writes the keys in the order `Action` serializes them, so the fixed text is
//! forced and the model only chooses values. An optional `"intent"` member comes last: what the
//! action is for when it sends, pays, buys, deletes, publishes, installs or logs in
//! (`{"action":"click","x":912,"y":874,"intent":"send_email"}`); the policy only ever adds it
//! to what it infers. A double or triple click with a button other
//! than the left one is a parse error: deskhand's model actions have no such thing.

use serde_json::Value;

use crate::input::{Action, MouseButton};
use crate::model::conversation::{self, Instruction, Layout, Message, TurnView};
use crate::policy::Intent;
use crate::screen::{FrameTarget, ModelPoint, PointFormat};

use super::grammar::{self, Gbnf, one_of};
use super::keys::normalized_chord;
use super::{
    Family, FamilyId, ModelAction, ParseError, ParsedReply, finish_reply, intent_from_json, quote,
};

/// Gemma 3's SigLIP image size: every image is resized to this square.
const GEMMA3_IMAGE_SIDE: u32 = 896;

pub struct Gemma3;

pub(super) static GEMMA3: Gemma3 = Gemma3;

impl Family for Gemma3 {
    fn id(&self) -> FamilyId {
        FamilyId::Gemma3
    }

    fn point_format(&self) -> PointFormat {
        PointFormat::Normalized1000
    }

    fn frame_target(&self, _image_token_budget: u32) -> FrameTarget {
        // 256 tokens whatever the budget: giving llama.cpp exactly this size means it never
        // letterboxes, so 0–1000 spans the whole screen on both axes.
        FrameTarget::Fixed {
            width: GEMMA3_IMAGE_SIDE,
            height: GEMMA3_IMAGE_SIDE,
        }
    }

    fn system_prompt(&self) -> &'static str {
        include_str!("../../../prompts/gemma3.md")
    }

    fn messages(&self, system: &str, task: &str, turns: &[TurnView<'_>]) -> Vec<Message> {
        let instruction = Instruction {
            before: "Task: ",
            task,
            after: "",
        };
        conversation::messages(system, &instruction, turns)
    }

    fn layout(&self) -> Layout {
        Layout::Gemma
    }

    fn close_thought(&self, reply: &str) -> Option<&'static str> {
        (reply.starts_with("Thought: ") && !reply.contains('\n')).then_some("\n")
    }

    fn grammar(&self) -> String {
        let mut g = Gbnf::new();
        g.rule("root", "thought? action")
            .rule(
                "thought",
                &format!(
                    r#""Thought: " thought-char{{1,{}}} "\n""#,
                    grammar::THOUGHT_MAX_CHARS
                ),
            )
            // Each action's rule leaves its object open, so the optional intent can close it.
            .rule(
                "action",
                r#"( click | double-click | triple-click | move | drag | scroll | type | key-press | hold-key | wait | done | fail | call-user ) intent? "}""#,
            )
            .rule(
                "click",
                &format!(
                    r#""{{\"action\":\"click\"," xy ( ",\"button\":\"" {} "\"" )?"#,
                    one_of(&["left", "right", "middle"])
                ),
            )
            .rule("double-click", r#""{\"action\":\"double_click\"," xy"#)
            .rule("triple-click", r#""{\"action\":\"triple_click\"," xy"#)
            .rule("move", r#""{\"action\":\"move\"," xy"#)
            .rule("xy", r#""\"x\":" norm-coord ",\"y\":" norm-coord"#)
            .rule(
                "drag",
                r#""{\"action\":\"drag\",\"path\":[" pair ( "," pair ){1,9} "]""#,
            )
            .rule("pair", r#""[" norm-coord "," norm-coord "]""#)
            .rule(
                "scroll",
                r#""{\"action\":\"scroll\"," xy ",\"dx\":" scroll-amounts"#,
            )
            // At least one axis moves: `Action` rejects a scroll of nothing.
            .rule(
                "scroll-amounts",
                r#"notches-nonzero ",\"dy\":" notches | "0,\"dy\":" notches-nonzero"#,
            )
            .rule("notches", r#""0" | notches-nonzero"#)
            .rule("notches-nonzero", r#""-"? ( [1-9] | "10" )"#)
            .rule("type", r#""{\"action\":\"type\",\"text\":" type-text"#)
            .rule("key-press", r#""{\"action\":\"key\",\"chord\":\"" chord "\"""#)
            .rule(
                "hold-key",
                r#""{\"action\":\"hold_key\",\"chord\":\"" chord "\",\"ms\":" ms"#,
            )
            .rule("chord", r#"( modifier "+" ){0,3} key"#)
            // Up to 9999 ms, within both the wait and the hold limits.
            .rule("ms", r#""0" | [1-9] [0-9]{0,3}"#)
            .rule("wait", r#""{\"action\":\"wait\",\"ms\":" ms"#)
            .rule("done", r#""{\"action\":\"done\",\"summary\":" message"#)
            .rule("fail", r#""{\"action\":\"fail\",\"reason\":" message"#)
            .rule(
                "call-user",
                r#""{\"action\":\"call_user\",\"question\":" message"#,
            );
        grammar::intent_rule(&mut g, ",\"intent\":\"");
        grammar::json_string_rule(&mut g, "type-text", 1, grammar::TYPE_MAX_CHARS);
        grammar::json_string_rule(&mut g, "message", 0, grammar::MESSAGE_MAX_CHARS);
        grammar::json_char_rule(&mut g);
        grammar::thought_char_rule(&mut g, "");
        grammar::key_rules(&mut g);
        grammar::norm_coord_rule(&mut g);
        g.finish()
    }

    fn parse(&self, text: &str) -> Result<ParsedReply, ParseError> {
        let Some(json_start) = json_start(text) else {
            return Err(ParseError::new(format!(
                "no JSON action in the reply {}",
                quote(text)
            )));
        };
        let json_text = &text[json_start..];
        let mut values = serde_json::Deserializer::from_str(json_text).into_iter::<Value>();
        match values.next() {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return Err(ParseError::new(format!(
                    "the action is not JSON ({e}): {}",
                    quote(json_text.trim())
                )));
            }
            None => {
                return Err(ParseError::new(format!(
                    "no JSON action in the reply {}",
                    quote(text)
                )));
            }
        }
        let object = &json_text[..values.byte_offset()];
        let after = json_text[values.byte_offset()..].trim();
        // A model that fenced its JSON in a code block closes the fence after it.
        if !after.trim_start_matches('`').trim().is_empty() {
            return Err(ParseError::new(format!(
                "only one action per reply, but text follows it: {}",
                quote(after)
            )));
        }
        let (action, intent) = action_json_with_intent(object)
            .map_err(|e| ParseError::new(format!("{e}: {}", quote(object))))?;
        let before = text[..json_start].trim();
        let before = before
            .trim_end_matches("```json")
            .trim_end_matches("```")
            .trim();
        let thought = before.strip_prefix("Thought:").unwrap_or(before);
        finish_reply(thought, model_action(action, object)?, intent)
    }

    fn render_reply(&self, reply: &ParsedReply) -> String {
        let mut json = reply.action.with_raw_points().to_json();
        if let Some(intent) = reply.intent {
            // The object's closing brace is its last character.
            json.pop();
            json.push_str(&format!(r#","intent":"{intent}"}}"#));
        }
        match reply.thought.as_deref() {
            Some(t) if !t.trim().is_empty() => format!("Thought: {}\n{json}", t.trim()),
            _ => json,
        }
    }
}

/// An action in the `Action` wire format that may also carry an `"intent"` member, what the
/// action is for (Gemma's replies and `--script` lines). Absent, `null` and `"other"` declare
/// nothing.
pub fn action_json_with_intent(text: &str) -> Result<(Action, Option<Intent>), String> {
    let mut value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        // Not JSON: the action's own parser says what is wrong with it.
        Err(_) => {
            return Action::from_json(text)
                .map(|a| (a, None))
                .map_err(|e| e.to_string());
        }
    };
    let declared = value.as_object_mut().and_then(|o| o.remove("intent"));
    let Some(declared) = declared else {
        return Action::from_json(text)
            .map(|a| (a, None))
            .map_err(|e| e.to_string());
    };
    let intent = intent_from_json(Some(&declared))?;
    let action = Action::from_json(&value.to_string()).map_err(|e| e.to_string())?;
    Ok((action, intent))
}

/// Where the JSON object starts: the first line that begins with `{`, else the first `{`.
fn json_start(text: &str) -> Option<usize> {
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('{') {
            return Some(line_start + line.len() - trimmed.len());
        }
        line_start += line.len();
    }
    text.find('{')
}

fn model_action(action: Action, raw: &str) -> Result<ModelAction, ParseError> {
    let at =
        |x: i32, y: i32| ModelPoint::new(f64::from(x), f64::from(y), PointFormat::Normalized1000);
    let left_only = |button: MouseButton, kind: &str| {
        if button == MouseButton::Left {
            Ok(())
        } else {
            Err(ParseError::new(format!(
                "a {kind} must use the left button, got {button}: {}",
                quote(raw)
            )))
        }
    };
    Ok(match action {
        Action::Click { x, y, button } => ModelAction::Click {
            at: at(x, y),
            button,
        },
        Action::DoubleClick { x, y, button } => {
            left_only(button, "double_click")?;
            ModelAction::DoubleClick { at: at(x, y) }
        }
        Action::TripleClick { x, y, button } => {
            left_only(button, "triple_click")?;
            ModelAction::TripleClick { at: at(x, y) }
        }
        Action::Move { x, y } => ModelAction::Move { at: at(x, y) },
        Action::Drag { path } => ModelAction::Drag {
            path: path.into_iter().map(|[x, y]| at(x, y)).collect(),
        },
        Action::Scroll { x, y, dx, dy } => ModelAction::Scroll {
            at: at(x, y),
            dx,
            dy,
        },
        Action::Type { text } => ModelAction::Type { text },
        Action::Key { chord } => ModelAction::Key {
            chord: normalized_chord(&chord, raw)?,
        },
        Action::HoldKey { chord, ms } => ModelAction::HoldKey {
            chord: normalized_chord(&chord, raw)?,
            ms,
        },
        Action::Wait { ms } => ModelAction::Wait { ms },
        Action::Done { summary } => ModelAction::Done { summary },
        Action::Fail { reason } => ModelAction::Fail { reason },
        Action::CallUser { question } => ModelAction::CallUser { question },
    })
}
