//! Tests of the model families: published reply shapes parse, prompts keep their cacheable
//! prefix, and each grammar lets the model write only what its parser reads.

use proptest::prelude::*;

use super::gbnf_check::Grammar;
use super::*;
use crate::input::Chord;
use crate::model::conversation::{Piece, Rendered, TurnView};
use crate::policy::Intent;
use crate::screen::{MonitorInfo, ScreenPoint};

const MARKER: &str = "<__media__>";

fn family(id: FamilyId) -> &'static dyn Family {
    id.family()
}

fn px(x: f64, y: f64) -> ModelPoint {
    ModelPoint::new(x, y, PointFormat::FramePixels)
}

fn norm(x: f64, y: f64) -> ModelPoint {
    ModelPoint::new(x, y, PointFormat::Normalized1000)
}

fn parsed(id: FamilyId, text: &str) -> ParsedReply {
    match family(id).parse(text) {
        Ok(reply) => reply,
        Err(e) => panic!("{id} did not parse {text:?}: {e}"),
    }
}

fn parse_error(id: FamilyId, text: &str) -> String {
    match family(id).parse(text) {
        Ok(reply) => panic!("{id} parsed {text:?} as {reply:?}"),
        Err(e) => e.to_string(),
    }
}

fn reply(thought: Option<&str>, action: ModelAction) -> ParsedReply {
    ParsedReply::new(thought, action)
}

fn grammar(id: FamilyId) -> Grammar {
    match Grammar::parse(&family(id).grammar()) {
        Ok(g) => g,
        Err(e) => panic!("{id} grammar: {e}\n{}", family(id).grammar()),
    }
}

fn monitor(width: u32, height: u32) -> MonitorInfo {
    MonitorInfo::single("test", width, height)
}

#[test]
fn family_names_round_trip_and_unknown_names_list_the_known_ones() {
    for id in FamilyId::ALL {
        assert_eq!(id.to_string().parse::<FamilyId>().unwrap(), id);
        assert_eq!(id.family().id(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.name()));
        assert_eq!(serde_json::from_str::<FamilyId>(&json).unwrap(), id);
    }
    assert_eq!(" Qwen3-VL ".parse::<FamilyId>().unwrap(), FamilyId::Qwen3Vl);
    let err = "qwen2-vl".parse::<FamilyId>().unwrap_err().to_string();
    assert_eq!(
        err,
        "unknown model family 'qwen2-vl'; the known families are ui-tars, qwen25-vl, qwen3-vl, gemma3"
    );
}

#[test]
fn frame_targets_follow_each_vision_tower() {
    let budget = 1280;
    assert_eq!(
        family(FamilyId::UiTars).frame_target(budget),
        FrameTarget::MaxPixels {
            max_pixels: 1280 * 28 * 28,
            align: 28
        }
    );
    assert_eq!(
        family(FamilyId::Qwen25Vl).frame_target(budget),
        FrameTarget::MaxPixels {
            max_pixels: 1280 * 28 * 28,
            align: 28
        }
    );
    assert_eq!(
        family(FamilyId::Qwen3Vl).frame_target(budget),
        FrameTarget::MaxPixels {
            max_pixels: 1280 * 32 * 32,
            align: 32
        }
    );
    for budget in [1, 256, 4096] {
        assert_eq!(
            family(FamilyId::Gemma3).frame_target(budget),
            FrameTarget::Fixed {
                width: 896,
                height: 896
            }
        );
    }
    // The frame of a 1920x1080 screen costs at most the budget in image tokens.
    for (id, block) in [(FamilyId::Qwen25Vl, 28), (FamilyId::Qwen3Vl, 32)] {
        let (w, h) = family(id)
            .frame_target(budget)
            .frame_size(1920, 1080)
            .unwrap();
        assert_eq!((w % block, h % block), (0, 0));
        assert!((w / block) * (h / block) <= budget, "{id}: {w}x{h}");
    }
}

#[test]
fn point_formats_match_the_published_conventions() {
    assert_eq!(
        family(FamilyId::UiTars).point_format(),
        PointFormat::FramePixels
    );
    assert_eq!(
        family(FamilyId::Qwen25Vl).point_format(),
        PointFormat::FramePixels
    );
    assert_eq!(
        family(FamilyId::Qwen3Vl).point_format(),
        PointFormat::Normalized1000
    );
    assert_eq!(
        family(FamilyId::Gemma3).point_format(),
        PointFormat::Normalized1000
    );
}

#[test]
fn qwen_prompts_declare_a_valid_tool_with_every_parsed_action() {
    for id in [FamilyId::Qwen25Vl, FamilyId::Qwen3Vl] {
        let prompt = family(id).system_prompt();
        let tools = prompt
            .split_once("<tools>\n")
            .and_then(|(_, rest)| rest.split_once("\n</tools>"))
            .map(|(tools, _)| tools)
            .unwrap();
        let tool: serde_json::Value = serde_json::from_str(tools).unwrap();
        assert_eq!(tool["function"]["name"], "computer_use");
        let properties = &tool["function"]["parameters"]["properties"];
        let actions: Vec<&str> = properties["action"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for action in qwen::ACTION_NAMES.split(", ") {
            assert!(actions.contains(&action), "{id} prompt lacks {action}");
        }
        for argument in [
            "keys",
            "text",
            "coordinate",
            "start_coordinate",
            "pixels",
            "time",
            "status",
        ] {
            assert!(
                properties.get(argument).is_some(),
                "{id} prompt lacks {argument}"
            );
        }
    }
    assert!(
        family(FamilyId::Qwen3Vl)
            .system_prompt()
            .contains("1000x1000")
    );
    assert!(
        family(FamilyId::UiTars)
            .system_prompt()
            .trim_end()
            .ends_with("## User Instruction")
    );
    assert!(
        family(FamilyId::Gemma3)
            .system_prompt()
            .contains("0 to 1000")
    );
}

fn view<'t>(note: &'t str, image: bool, reply: Option<&'t str>) -> TurnView<'t> {
    TurnView { note, image, reply }
}

#[test]
fn chatml_layout_is_exact() {
    let turns = [
        view("", false, Some("clicked File")),
        view("The policy refused it.", true, None),
    ];
    let prompt =
        family(FamilyId::Qwen25Vl).render_conversation("SYSTEM\n", "open the file", &turns);
    assert_eq!(
        prompt.text(MARKER),
        "<|im_start|>system\nSYSTEM<|im_end|>\n<|im_start|>user\nTask: open the file\n<|im_end|>\n\
         <|im_start|>assistant\nclicked File<|im_end|>\n\
         <|im_start|>user\nThe policy refused it.\n<__media__><|im_end|>\n<|im_start|>assistant\n"
    );
    let prompt = family(FamilyId::UiTars).render_conversation(
        "PROMPT\n## User Instruction\n",
        "open the file",
        &[view("", true, None)],
    );
    assert_eq!(
        prompt.text(MARKER),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nPROMPT\n## User Instruction\nopen the file\n<__media__><|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(
        prompt
            .pieces
            .contains(&Piece::Content("open the file".into()))
    );
}

#[test]
fn gemma_layout_puts_the_system_text_in_the_user_turn() {
    let prompt =
        family(FamilyId::Gemma3).render_conversation("SYSTEM", "save it", &[view("", true, None)]);
    assert_eq!(
        prompt.text(MARKER),
        "<start_of_turn>user\nSYSTEM\n\nTask: save it<__media__><end_of_turn>\n<start_of_turn>model\n"
    );
}

/// The KV cache keeps what a step's rendering shares with the last one: for every family a
/// later step extends the earlier rendering, and a screenshot leaving the conversation changes
/// it only from where that screenshot was.
#[test]
fn a_step_extends_the_last_and_an_evicted_screenshot_changes_only_what_follows_it() {
    for id in FamilyId::ALL {
        let f = family(id);
        let system = f.system_prompt();
        let task = "rename report.txt";
        let first = f.render_conversation(system, task, &[view("", true, None)]);
        let second = f.render_conversation(
            system,
            task,
            &[view("", true, Some("reply one")), view("", true, None)],
        );
        let third = f.render_conversation(
            system,
            task,
            &[
                view("", true, Some("reply one")),
                view("", true, Some("reply two")),
                view("It failed.", true, None),
            ],
        );
        let text = |r: &Rendered| r.text(MARKER);
        assert!(text(&second).starts_with(&text(&first)), "{id}");
        assert!(text(&third).starts_with(&text(&second)), "{id}");
        assert_eq!(third.image_turns(), vec![0, 1, 2], "{id}");
        // The first screenshot leaves: the text up to it is unchanged, every turn's text stays.
        let evicted = f.render_conversation(
            system,
            task,
            &[
                view("", false, Some("reply one")),
                view("", true, Some("reply two")),
                view("It failed.", true, None),
            ],
        );
        let before_image = text(&first)
            .split(MARKER)
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(text(&evicted).starts_with(&before_image), "{id}");
        assert_eq!(evicted.image_turns(), vec![1, 2], "{id}");
        for kept in ["reply one", "reply two", "It failed.", task] {
            assert!(text(&evicted).contains(kept), "{id}: {kept}");
        }
    }
}

#[test]
fn ui_tars_published_replies_parse() {
    // README_deploy.md "Expected Output".
    let r = parsed(
        FamilyId::UiTars,
        "Thought: 我看到Preferences窗口已经打开了，但这里显示的都是系统资源相关的设置。让我点击它看看里面有什么选项。\nAction: click(start_box='(177,549)')",
    );
    assert!(
        r.thought
            .as_deref()
            .unwrap()
            .starts_with("我看到Preferences")
    );
    assert_eq!(
        r.action,
        ModelAction::Click {
            at: px(177.0, 549.0),
            button: MouseButton::Left
        }
    );
    // The point spellings of action_parser.py's tests and the COMPUTER_USE templates.
    let cases = [
        (
            "Thought: test\nAction: click(point='<point>200 300</point>')",
            px(200.0, 300.0),
        ),
        (
            "Thought: test\nAction: click(start_box='<|box_start|>(112,224)<|box_end|>')",
            px(112.0, 224.0),
        ),
        (
            "Action: click(start_box='(100,200,300,400)')",
            px(200.0, 300.0),
        ),
        ("Action: click(start_box='[10, 20]')", px(10.0, 20.0)),
        ("Action: click(start_box='(10, 20)')", px(10.0, 20.0)),
    ];
    for (text, at) in cases {
        assert_eq!(
            parsed(FamilyId::UiTars, text).action,
            ModelAction::Click {
                at,
                button: MouseButton::Left
            },
            "{text}"
        );
    }
    let cases = [
        (
            "Action: left_double(start_box='(5,6)')",
            ModelAction::DoubleClick { at: px(5.0, 6.0) },
        ),
        (
            "Action: right_single(start_box='(5,6)')",
            ModelAction::Click {
                at: px(5.0, 6.0),
                button: MouseButton::Right,
            },
        ),
        (
            "Action: drag(start_box='(10,20)', end_box='(300,400)')",
            ModelAction::Drag {
                path: vec![px(10.0, 20.0), px(300.0, 400.0)],
            },
        ),
        (
            "Action: drag(start_point='<point>10 20</point>', end_point='<point>30 40</point>')",
            ModelAction::Drag {
                path: vec![px(10.0, 20.0), px(30.0, 40.0)],
            },
        ),
        (
            "Action: hotkey(key='ctrl c')",
            ModelAction::Key {
                chord: "ctrl+c".into(),
            },
        ),
        (
            "Action: hotkey(key='Ctrl Shift T')",
            ModelAction::Key {
                chord: "ctrl+shift+t".into(),
            },
        ),
        (
            "Action: hotkey(key='arrowdown')",
            ModelAction::Key {
                chord: "down".into(),
            },
        ),
        (
            "Action: type(content='It\\'s \"done\"\\n')",
            ModelAction::Type {
                text: "It's \"done\"\n".into(),
            },
        ),
        (
            "Action: scroll(start_box='(500,300)', direction='down')",
            ModelAction::Scroll {
                at: px(500.0, 300.0),
                dx: 0,
                dy: 5,
            },
        ),
        (
            "Action: scroll(start_box='(500,300)', direction='left')",
            ModelAction::Scroll {
                at: px(500.0, 300.0),
                dx: -5,
                dy: 0,
            },
        ),
        ("Action: wait()", ModelAction::Wait { ms: 5000 }),
        (
            "Action: finished(content='The file is saved.')",
            ModelAction::Done {
                summary: "The file is saved.".into(),
            },
        ),
    ];
    for (text, action) in cases {
        assert_eq!(
            parsed(FamilyId::UiTars, text),
            reply(None, action),
            "{text}"
        );
    }
    // call_user() has no text of its own: the thought is the question.
    assert_eq!(
        parsed(
            FamilyId::UiTars,
            "Thought: Which account should I use?\nAction: call_user()"
        ),
        reply(
            Some("Which account should I use?"),
            ModelAction::CallUser {
                question: "Which account should I use?".into()
            }
        )
    );
    // An unescaped quote inside content, which UI-TARS's own parser also tolerates.
    assert_eq!(
        parsed(FamilyId::UiTars, "Action: type(content='it's fine')").action,
        ModelAction::Type {
            text: "it's fine".into()
        }
    );
}

#[test]
fn ui_tars_bad_replies_are_clear_errors() {
    let err = parse_error(FamilyId::UiTars, "Thought: I will click the button.");
    assert!(
        err.contains("no 'Action:' line") && err.contains("I will click"),
        "{err}"
    );
    let err = parse_error(FamilyId::UiTars, "Action: clik(start_box='(1,2)')");
    assert!(err.contains("unknown UI-TARS action 'clik'"), "{err}");
    let err = parse_error(
        FamilyId::UiTars,
        "Action: click(start_box='(1,2)')\n\nclick(start_box='(3,4)')",
    );
    assert!(err.contains("only one action"), "{err}");
    let err = parse_error(FamilyId::UiTars, "Action: click(start_box='(1,2,3)')");
    assert!(err.contains("2 numbers"), "{err}");
    let err = parse_error(FamilyId::UiTars, "Action: hotkey(key='ctlr c')");
    assert!(err.contains("unknown key 'ctlr'"), "{err}");
    let err = parse_error(
        FamilyId::UiTars,
        "Action: scroll(start_box='(1,2)', direction='sideways')",
    );
    assert!(err.contains("sideways"), "{err}");
    let err = parse_error(FamilyId::UiTars, "Action: type(content='')");
    assert!(err.contains("text is empty"), "{err}");
    let err = parse_error(FamilyId::UiTars, "Action: click()");
    assert!(err.contains("needs start_box"), "{err}");
}

fn tool_call(arguments: &str) -> String {
    format!("<tool_call>\n{{\"name\": \"computer_use\", \"arguments\": {arguments}}}\n</tool_call>")
}

#[test]
fn qwen_published_replies_parse() {
    let id = FamilyId::Qwen25Vl;
    let r = parsed(
        id,
        &format!(
            "I will open the File menu.\n{}",
            tool_call(r#"{"action": "left_click", "coordinate": [1240, 783]}"#)
        ),
    );
    assert_eq!(
        r,
        reply(
            Some("I will open the File menu."),
            ModelAction::Click {
                at: px(1240.0, 783.0),
                button: MouseButton::Left
            }
        )
    );
    let cases = [
        (
            r#"{"action": "key", "keys": ["ctrl", "c"]}"#,
            ModelAction::Key {
                chord: "ctrl+c".into(),
            },
        ),
        (
            r#"{"action": "key", "keys": ["Return"]}"#,
            ModelAction::Key {
                chord: "return".into(),
            },
        ),
        (
            r#"{"action": "type", "text": "hello\n"}"#,
            ModelAction::Type {
                text: "hello\n".into(),
            },
        ),
        (
            r#"{"action": "mouse_move", "coordinate": [10, 20]}"#,
            ModelAction::Move { at: px(10.0, 20.0) },
        ),
        (
            r#"{"action": "right_click", "coordinate": [10, 20]}"#,
            ModelAction::Click {
                at: px(10.0, 20.0),
                button: MouseButton::Right,
            },
        ),
        (
            r#"{"action": "middle_click", "coordinate": [10, 20]}"#,
            ModelAction::Click {
                at: px(10.0, 20.0),
                button: MouseButton::Middle,
            },
        ),
        (
            r#"{"action": "double_click", "coordinate": [10, 20]}"#,
            ModelAction::DoubleClick { at: px(10.0, 20.0) },
        ),
        (
            r#"{"action": "triple_click", "coordinate": [10, 20]}"#,
            ModelAction::TripleClick { at: px(10.0, 20.0) },
        ),
        (
            r#"{"action": "left_click_drag", "start_coordinate": [1, 2], "coordinate": [30, 40]}"#,
            ModelAction::Drag {
                path: vec![px(1.0, 2.0), px(30.0, 40.0)],
            },
        ),
        // Positive pixels scroll up; 100 pixels a notch.
        (
            r#"{"action": "scroll", "coordinate": [600, 400], "pixels": -500}"#,
            ModelAction::Scroll {
                at: px(600.0, 400.0),
                dx: 0,
                dy: 5,
            },
        ),
        (
            r#"{"action": "scroll", "coordinate": [600, 400], "pixels": 5}"#,
            ModelAction::Scroll {
                at: px(600.0, 400.0),
                dx: 0,
                dy: -1,
            },
        ),
        (
            r#"{"action": "scroll", "coordinate": [600, 400], "pixels": -100000}"#,
            ModelAction::Scroll {
                at: px(600.0, 400.0),
                dx: 0,
                dy: 10,
            },
        ),
        (
            r#"{"action": "hscroll", "coordinate": [600, 400], "pixels": 300}"#,
            ModelAction::Scroll {
                at: px(600.0, 400.0),
                dx: 3,
                dy: 0,
            },
        ),
        (
            r#"{"action": "wait", "time": 2}"#,
            ModelAction::Wait { ms: 2000 },
        ),
        (
            r#"{"action": "wait", "time": 0.5}"#,
            ModelAction::Wait { ms: 500 },
        ),
        (r#"{"action": "wait"}"#, ModelAction::Wait { ms: 1000 }),
        (
            r#"{"action": "answer", "text": "42"}"#,
            ModelAction::Done {
                summary: "42".into(),
            },
        ),
        (
            r#"{"action": "call_user", "text": "Which file?"}"#,
            ModelAction::CallUser {
                question: "Which file?".into(),
            },
        ),
    ];
    for (arguments, action) in cases {
        assert_eq!(
            parsed(id, &tool_call(arguments)),
            reply(None, action),
            "{arguments}"
        );
    }
    // terminate carries no text: the thought is the summary or the reason.
    assert_eq!(
        parsed(
            id,
            &format!(
                "The file is saved.\n{}",
                tool_call(r#"{"action": "terminate", "status": "success"}"#)
            )
        )
        .action,
        ModelAction::Done {
            summary: "The file is saved.".into()
        }
    );
    assert_eq!(
        parsed(
            id,
            &tool_call(r#"{"action": "terminate", "status": "failure"}"#)
        )
        .action,
        ModelAction::Fail {
            reason: String::new()
        }
    );
    // Arguments written as a JSON string, and a reply cut off before its closing tag.
    assert_eq!(
        parsed(
            id,
            "<tool_call>\n{\"name\": \"computer_use\", \"arguments\": \"{\\\"action\\\": \\\"left_click\\\", \\\"coordinate\\\": [1, 2]}\"}"
        )
        .action,
        ModelAction::Click {
            at: px(1.0, 2.0),
            button: MouseButton::Left
        }
    );
    // Qwen3-VL: the same call, 0-1000 points.
    assert_eq!(
        parsed(
            FamilyId::Qwen3Vl,
            &tool_call(r#"{"action": "left_click", "coordinate": [500, 1000]}"#)
        )
        .action,
        ModelAction::Click {
            at: norm(500.0, 1000.0),
            button: MouseButton::Left
        }
    );
}

#[test]
fn qwen_bad_replies_are_clear_errors() {
    let id = FamilyId::Qwen25Vl;
    let err = parse_error(id, "I would click the button.");
    assert!(
        err.contains("no <tool_call>") && err.contains("I would click"),
        "{err}"
    );
    let err = parse_error(
        id,
        &tool_call(r#"{"action": "left_click_drag", "coordinate": [30, 40]}"#),
    );
    assert!(err.contains("start_coordinate"), "{err}");
    let err = parse_error(id, &tool_call(r#"{"action": "left_click"}"#));
    assert!(err.contains("left_click needs \"coordinate\""), "{err}");
    let err = parse_error(
        id,
        &tool_call(r#"{"action": "scroll", "coordinate": [1, 2], "pixels": 0}"#),
    );
    assert!(err.contains("non-zero \"pixels\""), "{err}");
    let err = parse_error(id, &tool_call(r#"{"action": "key", "keys": ["a", "b"]}"#));
    assert!(err.contains("presses two keys"), "{err}");
    let err = parse_error(id, &tool_call(r#"{"action": "fly", "coordinate": [1, 2]}"#));
    assert!(err.contains("unknown computer_use action \"fly\""), "{err}");
    let err = parse_error(id, &tool_call(r#"{"action": "wait", "time": 600}"#));
    assert!(err.contains("at most 60000 ms"), "{err}");
    let err = parse_error(
        id,
        "<tool_call>\n{\"name\": \"browser\", \"arguments\": {\"action\": \"left_click\"}}\n</tool_call>",
    );
    assert!(err.contains("must name \"computer_use\""), "{err}");
    let err = parse_error(
        id,
        "<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\n</tool_call>",
    );
    assert!(err.contains("not JSON"), "{err}");
    let two = format!(
        "{}\n{}",
        tool_call(r#"{"action": "left_click", "coordinate": [1, 2]}"#),
        tool_call(r#"{"action": "left_click", "coordinate": [3, 4]}"#)
    );
    assert!(parse_error(id, &two).contains("only one tool call"));
}

#[test]
fn gemma_replies_parse() {
    let id = FamilyId::Gemma3;
    assert_eq!(
        parsed(id, "{\"action\":\"click\",\"x\":512,\"y\":300}"),
        reply(
            None,
            ModelAction::Click {
                at: norm(512.0, 300.0),
                button: MouseButton::Left
            }
        )
    );
    assert_eq!(
        parsed(
            id,
            "Thought: The Save button is at the lower right.\n{\"action\":\"click\",\"x\":912,\"y\":874,\"button\":\"right\"}\n"
        ),
        reply(
            Some("The Save button is at the lower right."),
            ModelAction::Click {
                at: norm(912.0, 874.0),
                button: MouseButton::Right
            }
        )
    );
    // Fenced in a code block, keys in another order, chord spelled loosely.
    assert_eq!(
        parsed(
            id,
            "```json\n{\"chord\": \"Shift+Ctrl+T\", \"action\": \"key\"}\n```"
        ),
        reply(
            None,
            ModelAction::Key {
                chord: "ctrl+shift+t".into()
            }
        )
    );
    assert_eq!(
        parsed(id, "{\"action\":\"drag\",\"path\":[[1,2],[3,4],[5,6]]}").action,
        ModelAction::Drag {
            path: vec![norm(1.0, 2.0), norm(3.0, 4.0), norm(5.0, 6.0)]
        }
    );
    let err = parse_error(id, "{\"action\":\"clik\",\"x\":1,\"y\":2}");
    assert!(err.contains("unknown variant `clik`"), "{err}");
    let err = parse_error(
        id,
        "{\"action\":\"scroll\",\"x\":1,\"y\":2,\"dx\":0,\"dy\":0}",
    );
    assert!(err.contains("nothing to scroll"), "{err}");
    let err = parse_error(
        id,
        "{\"action\":\"wait\",\"ms\":100} {\"action\":\"wait\",\"ms\":100}",
    );
    assert!(err.contains("only one action"), "{err}");
    let err = parse_error(
        id,
        "{\"action\":\"double_click\",\"x\":1,\"y\":2,\"button\":\"right\"}",
    );
    assert!(err.contains("left button"), "{err}");
    let err = parse_error(id, "I think I should click.");
    assert!(err.contains("no JSON action"), "{err}");
}

#[test]
fn model_points_map_to_the_screen_through_the_frame() {
    // UI-TARS on a 1920x1080 screen, frame 1288x728 (a 28-aligned size).
    let map = FrameMap::new(&monitor(1920, 1080), 1288, 728);
    let r = parsed(FamilyId::UiTars, "Action: click(start_box='(644,364)')");
    assert_eq!(
        r.action.to_action(&map).unwrap(),
        Action::Click {
            x: 960,
            y: 540,
            button: MouseButton::Left
        }
    );
    let outside = parsed(FamilyId::UiTars, "Action: click(start_box='(1288,10)')");
    assert!(matches!(
        outside.action.to_action(&map),
        Err(MapError::OutsideFrame { .. })
    ));
    // Qwen3-VL's 0-1000 spans the screen whatever the frame.
    let map = FrameMap::new(&monitor(1920, 1080), 1920, 1088);
    let r = parsed(
        FamilyId::Qwen3Vl,
        &tool_call(
            r#"{"action": "left_click_drag", "start_coordinate": [0, 0], "coordinate": [1000, 500]}"#,
        ),
    );
    assert_eq!(
        r.action.to_action(&map).unwrap(),
        Action::Drag {
            path: vec![[0, 0], [1919, 540]]
        }
    );
    // Non-spatial actions pass through unchanged.
    let r = parsed(
        FamilyId::Gemma3,
        "{\"action\":\"key\",\"chord\":\"ctrl+s\"}",
    );
    assert_eq!(
        r.action.to_action(&map).unwrap(),
        Action::Key {
            chord: "ctrl+s".into()
        }
    );
    let r = parsed(
        FamilyId::Gemma3,
        "{\"action\":\"scroll\",\"x\":500,\"y\":500,\"dx\":0,\"dy\":3}",
    );
    let action = r.action.to_action(&map).unwrap();
    assert_eq!(action.points(), vec![ScreenPoint::new(960, 540)]);
}

#[test]
fn every_grammar_is_valid_gbnf() {
    for id in FamilyId::ALL {
        let g = grammar(id);
        // The shortest reply of each family, and one with a thought.
        let f = family(id);
        let wait = f.render_reply(&reply(
            None,
            ModelAction::Wait {
                ms: if id == FamilyId::UiTars { 5000 } else { 1000 },
            },
        ));
        assert!(g.accepts(&wait), "{id}: {wait:?}");
        let done = f.render_reply(&reply(
            Some("All done."),
            ModelAction::Done {
                summary: "Saved.".into(),
            },
        ));
        assert!(g.accepts(&done), "{id}: {done:?}");
        assert!(
            !g.accepts(&format!("{done}\nextra")),
            "{id}: text after the action"
        );
    }
}

fn chord_strategy() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "ctrl+c",
        "ctrl+shift+t",
        "Return",
        "super",
        "alt+F4",
        "ctrl++",
        "Escape",
        "shift+tab",
        "ctrl+alt+delete",
        "a",
        "ctrl+[",
        "F12",
        "pagedown",
    ])
    .prop_map(|c| Chord::parse(c).map(|c| c.normalized()).unwrap_or_default())
}

fn thought_strategy() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[a-zA-Z0-9 ,.!?'\"()é中-]{1,40}")
        .prop_map(|t| t.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
}

fn text_strategy() -> impl Strategy<Value = String> {
    prop_oneof!["\\PC{1,30}", "[a-z'\"\\\\\n\t\r {}<>]{1,20}"]
}

fn message_strategy() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-zA-Z0-9 .,'\"\\\\é]{1,30}"]
}

/// A reply to render, and the reply parsing its rendering must give.
type Case = (ParsedReply, ParsedReply);

fn plain_case(thought: Option<String>, action: ModelAction, intent: Option<Intent>) -> Case {
    let written = ParsedReply::new(thought.as_deref(), action.clone()).with_intent(intent);
    let expected = ParsedReply::new(
        thought.as_deref(),
        action.with_thought_as_text(thought.as_deref()),
    )
    .with_intent(intent);
    (written, expected)
}

/// An intent the reply declares, or none.
fn intent_strategy() -> impl Strategy<Value = Option<Intent>> {
    prop::option::of(prop::sample::select(
        Intent::ALL
            .into_iter()
            .filter(|i| *i != Intent::Other)
            .collect::<Vec<_>>(),
    ))
}

fn ui_tars_cases() -> impl Strategy<Value = Case> {
    let point = (0u32..4000, 0u32..4000).prop_map(|(x, y)| px(f64::from(x), f64::from(y)));
    let action = prop_oneof![
        (
            point.clone(),
            prop::sample::select(vec![MouseButton::Left, MouseButton::Right])
        )
            .prop_map(|(at, button)| ModelAction::Click { at, button }),
        point.clone().prop_map(|at| ModelAction::DoubleClick { at }),
        (point.clone(), point.clone()).prop_map(|(a, b)| ModelAction::Drag { path: vec![a, b] }),
        (
            point.clone(),
            prop::sample::select(vec![(0, 5), (0, -5), (5, 0), (-5, 0)])
        )
            .prop_map(|(at, (dx, dy))| ModelAction::Scroll { at, dx, dy }),
        text_strategy().prop_map(|text| ModelAction::Type { text }),
        chord_strategy().prop_map(|chord| ModelAction::Key { chord }),
        Just(ModelAction::Wait {
            ms: UI_TARS_WAIT_MS
        }),
        message_strategy().prop_map(|summary| ModelAction::Done { summary }),
        message_strategy().prop_map(|question| ModelAction::CallUser { question }),
    ];
    (thought_strategy(), action).prop_map(|(thought, action)| match &action {
        // call_user() cannot carry the question; it travels as the (trimmed) thought.
        ModelAction::CallUser { question } => {
            let question = question.trim();
            let carried = thought
                .clone()
                .or_else(|| (!question.is_empty()).then(|| question.to_owned()));
            let expected = ParsedReply::new(
                carried.as_deref(),
                ModelAction::CallUser {
                    question: carried.clone().unwrap_or_default(),
                },
            );
            (
                ParsedReply::new(thought.as_deref(), action.clone()),
                expected,
            )
        }
        _ => plain_case(thought, action, None),
    })
}

fn qwen_cases(format: PointFormat) -> impl Strategy<Value = Case> {
    let max = if format == PointFormat::Normalized1000 {
        1000
    } else {
        9999
    };
    let point = (0u32..=max, 0u32..=max)
        .prop_map(move |(x, y)| ModelPoint::new(f64::from(x), f64::from(y), format));
    let notches = prop_oneof![-10i32..=-1, 1i32..=10];
    let action = prop_oneof![
        (
            point.clone(),
            prop::sample::select(vec![
                MouseButton::Left,
                MouseButton::Right,
                MouseButton::Middle
            ])
        )
            .prop_map(|(at, button)| ModelAction::Click { at, button }),
        point.clone().prop_map(|at| ModelAction::DoubleClick { at }),
        point.clone().prop_map(|at| ModelAction::TripleClick { at }),
        point.clone().prop_map(|at| ModelAction::Move { at }),
        (point.clone(), point.clone()).prop_map(|(a, b)| ModelAction::Drag { path: vec![a, b] }),
        (point.clone(), notches.clone()).prop_map(|(at, dy)| ModelAction::Scroll { at, dx: 0, dy }),
        (point.clone(), notches).prop_map(|(at, dx)| ModelAction::Scroll { at, dx, dy: 0 }),
        text_strategy().prop_map(|text| ModelAction::Type { text }),
        chord_strategy().prop_map(|chord| ModelAction::Key { chord }),
        (0u64..=60).prop_map(|s| ModelAction::Wait { ms: s * 1000 }),
        message_strategy().prop_map(|summary| ModelAction::Done { summary }),
        message_strategy().prop_map(|reason| ModelAction::Fail { reason }),
        message_strategy().prop_map(|question| ModelAction::CallUser { question }),
    ];
    (thought_strategy(), action, intent_strategy()).prop_map(|(thought, action, intent)| {
        match &action {
            // terminate cannot carry the reason; it travels as the (trimmed) thought.
            ModelAction::Fail { reason } => {
                let reason = reason.trim();
                let carried = thought
                    .clone()
                    .or_else(|| (!reason.is_empty()).then(|| reason.to_owned()));
                let expected = ParsedReply::new(
                    carried.as_deref(),
                    ModelAction::Fail {
                        reason: carried.clone().unwrap_or_default(),
                    },
                )
                .with_intent(intent);
                let written =
                    ParsedReply::new(thought.as_deref(), action.clone()).with_intent(intent);
                (written, expected)
            }
            _ => plain_case(thought, action, intent),
        }
    })
}

fn gemma_cases() -> impl Strategy<Value = Case> {
    let point = (0u32..=1000, 0u32..=1000).prop_map(|(x, y)| norm(f64::from(x), f64::from(y)));
    let scroll_amounts = prop_oneof![
        (prop_oneof![-10i32..=-1, 1i32..=10], -10i32..=10),
        (Just(0), prop_oneof![-10i32..=-1, 1i32..=10]),
    ];
    let action = prop_oneof![
        (
            point.clone(),
            prop::sample::select(vec![
                MouseButton::Left,
                MouseButton::Right,
                MouseButton::Middle
            ])
        )
            .prop_map(|(at, button)| ModelAction::Click { at, button }),
        point.clone().prop_map(|at| ModelAction::DoubleClick { at }),
        point.clone().prop_map(|at| ModelAction::TripleClick { at }),
        point.clone().prop_map(|at| ModelAction::Move { at }),
        prop::collection::vec(point.clone(), 2..=10).prop_map(|path| ModelAction::Drag { path }),
        (point, scroll_amounts).prop_map(|(at, (dx, dy))| ModelAction::Scroll { at, dx, dy }),
        text_strategy().prop_map(|text| ModelAction::Type { text }),
        chord_strategy().prop_map(|chord| ModelAction::Key { chord }),
        (chord_strategy(), 0u64..10_000).prop_map(|(chord, ms)| ModelAction::HoldKey { chord, ms }),
        (0u64..10_000).prop_map(|ms| ModelAction::Wait { ms }),
        message_strategy().prop_map(|summary| ModelAction::Done { summary }),
        message_strategy().prop_map(|reason| ModelAction::Fail { reason }),
        message_strategy().prop_map(|question| ModelAction::CallUser { question }),
    ];
    (thought_strategy(), action, intent_strategy())
        .prop_map(|(thought, action, intent)| plain_case(thought, action, intent))
}

fn check_round_trip(
    id: FamilyId,
    g: &Grammar,
    (written, expected): Case,
) -> Result<(), TestCaseError> {
    let text = family(id).render_reply(&written);
    prop_assert!(
        g.accepts(&text),
        "{} grammar rejects its own reply {:?}",
        id,
        text
    );
    let back = family(id).parse(&text);
    prop_assert_eq!(back, Ok(expected), "{} reply {:?}", id, text);
    Ok(())
}

/// Text generated from the grammar parses, and writing the parsed reply back gives text the
/// grammar accepts and that parses to the same reply.
fn check_generated(id: FamilyId, g: &Grammar, choices: &[u32]) -> Result<(), TestCaseError> {
    let text = g.generate(choices);
    prop_assert!(
        g.accepts(&text),
        "{} generated {:?} but does not accept it",
        id,
        text
    );
    let first = family(id).parse(&text);
    prop_assert!(
        first.is_ok(),
        "{} grammar allows {:?}, which does not parse: {:?}",
        id,
        text,
        first
    );
    let Ok(first) = first else { return Ok(()) };
    let again = family(id).render_reply(&first);
    prop_assert!(
        g.accepts(&again),
        "{} re-rendered {:?} as {:?}, which the grammar rejects",
        id,
        text,
        again
    );
    prop_assert_eq!(
        family(id).parse(&again),
        Ok(first),
        "{} {:?} -> {:?}",
        id,
        text,
        again
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn ui_tars_replies_round_trip(case in ui_tars_cases()) {
        check_round_trip(FamilyId::UiTars, &grammar(FamilyId::UiTars), case)?;
    }

    #[test]
    fn qwen25_replies_round_trip(case in qwen_cases(PointFormat::FramePixels)) {
        check_round_trip(FamilyId::Qwen25Vl, &grammar(FamilyId::Qwen25Vl), case)?;
    }

    #[test]
    fn qwen3_replies_round_trip(case in qwen_cases(PointFormat::Normalized1000)) {
        check_round_trip(FamilyId::Qwen3Vl, &grammar(FamilyId::Qwen3Vl), case)?;
    }

    #[test]
    fn gemma_replies_round_trip(case in gemma_cases()) {
        check_round_trip(FamilyId::Gemma3, &grammar(FamilyId::Gemma3), case)?;
    }

    #[test]
    fn whatever_the_grammars_allow_parses(choices in prop::collection::vec(any::<u32>(), 0..800)) {
        for id in FamilyId::ALL {
            check_generated(id, &grammar(id), &choices)?;
        }
    }

    #[test]
    fn parsing_untrusted_text_never_panics(
        text in prop_oneof![
            ".*",
            "(Thought: .{0,20}\n)?Action: [a-z_]{0,12}\\(.{0,40}",
            "<tool_call>\n\\{\"name\": \"computer_use\", \"arguments\": .{0,60}",
            "(Thought: .{0,10}\n)?\\{\"action\":.{0,50}",
        ]
    ) {
        for id in FamilyId::ALL {
            let _ = family(id).parse(&text);
        }
    }
}

#[test]
fn qwen_and_gemma_replies_declare_intents_and_unknown_ones_are_errors() {
    let click_qwen = |intent: &str| {
        tool_call(&format!(
            r#"{{"action": "left_click", "coordinate": [10, 20]{intent}}}"#
        ))
    };
    let send = click_qwen(r#", "intent": "send_email""#);
    for id in [FamilyId::Qwen25Vl, FamilyId::Qwen3Vl] {
        assert_eq!(parsed(id, &send).intent, Some(Intent::SendEmail), "{id}");
        assert!(grammar(id).accepts(&send), "{id}: {send}");
        assert_eq!(parsed(id, &click_qwen("")).intent, None, "{id}");
        // `other` declares nothing; the grammar never writes it.
        let other = click_qwen(r#", "intent": "other""#);
        assert_eq!(parsed(id, &other).intent, None, "{id}");
        assert!(!grammar(id).accepts(&other), "{id}");
        let err = parse_error(id, &click_qwen(r#", "intent": "wire_money""#));
        assert!(
            err.contains("unknown intent 'wire_money'") && err.contains("send_email"),
            "{err}"
        );
        let err = parse_error(id, &click_qwen(r#", "intent": 3"#));
        assert!(err.contains("\"intent\" must be a string"), "{err}");
    }

    let gemma = r#"{"action":"click","x":912,"y":874,"button":"left","intent":"payment"}"#;
    let r = parsed(FamilyId::Gemma3, gemma);
    assert_eq!(r.intent, Some(Intent::Payment));
    assert_eq!(
        r.action,
        ModelAction::Click {
            at: norm(912.0, 874.0),
            button: MouseButton::Left
        }
    );
    assert!(grammar(FamilyId::Gemma3).accepts(gemma), "{gemma}");
    // Written by the family, the intent is the object's last member.
    assert_eq!(
        family(FamilyId::Gemma3).render_reply(
            &reply(None, ModelAction::Wait { ms: 500 }).with_intent(Some(Intent::Delete))
        ),
        r#"{"action":"wait","ms":500,"intent":"delete"}"#
    );
    let err = parse_error(FamilyId::Gemma3, r#"{"action":"wait","ms":5,"intent":"x"}"#);
    assert!(err.contains("unknown intent 'x'"), "{err}");
    // Without an intent, an unknown member is still refused.
    let err = parse_error(FamilyId::Gemma3, r#"{"action":"wait","ms":5,"why":"x"}"#);
    assert!(err.contains("why"), "{err}");

    // UI-TARS has no place for an intent: it writes none and reads none.
    let written = family(FamilyId::UiTars).render_reply(
        &reply(
            None,
            ModelAction::Click {
                at: px(1.0, 2.0),
                button: MouseButton::Left,
            },
        )
        .with_intent(Some(Intent::SendEmail)),
    );
    assert!(!written.contains("intent") && !written.contains("send_email"));
    assert_eq!(parsed(FamilyId::UiTars, &written).intent, None);
}

#[test]
fn the_prompts_offer_exactly_the_intents_the_grammars_allow() {
    let listed = declarable_intents()
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    for id in [FamilyId::Qwen25Vl, FamilyId::Qwen3Vl] {
        let prompt = family(id).system_prompt();
        assert!(
            prompt.contains("\"intent\": {") && prompt.contains(&format!("\"enum\": [{listed}]")),
            "{id}: the tool's intent argument lists {listed}"
        );
    }
    let gemma = family(FamilyId::Gemma3).system_prompt();
    for intent in declarable_intents() {
        assert!(gemma.contains(&format!("\"{intent}\"")), "gemma3: {intent}");
    }
}
