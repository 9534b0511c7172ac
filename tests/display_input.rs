//! `deskhand act` on a real X display: Unicode text, chords, scrolls, drags and button
//! variants arrive in the test window exactly as asked.

mod common;

use std::time::Duration;

use common::{TestWindow, act_ok, display};
use serde_json::Value;

fn presses(events: &[Value], kind: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event"] == kind)
        .cloned()
        .collect()
}

#[test]
fn unicode_text_arrives_intact() {
    let display = display(1280, 800);
    let window = TestWindow::open(&display, "640x480+100+50", "typing");
    // Focus the window the way a user would: click its field.
    let field = &window.ready["field"];
    let (fx, fy) = (
        field["root_x"].as_i64().unwrap() + 20,
        field["root_y"].as_i64().unwrap() + 15,
    );
    act_ok(
        &display,
        &format!(r#"{{"action":"click","x":{fx},"y":{fy}}}"#),
    );
    let text = "äöü 日本語 🎉 ÆΩ\nnew line\tand tab, Hello!";
    let json = serde_json::json!({"action": "type", "text": text}).to_string();
    let out = act_ok(&display, &json);
    assert!(
        out.contains(&format!("type {} characters", text.chars().count())),
        "{out}"
    );
    window.wait_for("the whole text", Duration::from_secs(10), |e| {
        e["event"] == "text" && e["text"] == text
    });
    // Twice more, into the same field: remapped keycodes must not go stale between runs.
    for _ in 0..2 {
        act_ok(
            &display,
            &serde_json::json!({"action":"type","text":"ß€"}).to_string(),
        );
    }
    let want = format!("{text}ß€ß€");
    window.wait_for("the appended text", Duration::from_secs(10), |e| {
        e["event"] == "text" && e["text"] == want
    });
}

#[test]
fn a_chord_presses_modifiers_first_and_types_nothing() {
    let display = display(1024, 768);
    let window = TestWindow::open(&display, "640x480+0+0", "chords");
    let out = act_ok(&display, r#"{"action":"key","chord":"ctrl+shift+t"}"#);
    assert!(out.contains("press ctrl+shift+t"), "{out}");
    window.wait_for("the t release", Duration::from_secs(5), |e| {
        e["event"] == "key_release" && e["keysym"] == 84
    });
    let events = window.quiet_events();
    let keys: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["event"] == "key_press" || e["event"] == "key_release")
        .map(|e| {
            let name = e["name"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| e["char"].as_str().map(str::to_owned));
            (
                e["event"].as_str().unwrap().to_owned(),
                name.unwrap_or_else(|| e["keysym"].to_string()),
            )
        })
        .collect();
    let press: Vec<&str> = keys
        .iter()
        .filter(|(k, _)| k == "key_press")
        .map(|(_, n)| n.as_str())
        .collect();
    assert_eq!(press, ["Control_L", "Shift_L", "T"], "{keys:?}");
    let releases = keys.iter().filter(|(k, _)| k == "key_release").count();
    assert_eq!(releases, 3, "{keys:?}");
    assert_eq!(window.text(), "", "a chord with ctrl must not type text");

    act_ok(&display, r#"{"action":"key","chord":"Return"}"#);
    window.wait_for("Return", Duration::from_secs(5), |e| {
        e["event"] == "text" && e["text"] == "\n"
    });
}

#[test]
fn scroll_drag_and_button_variants_arrive() {
    let display = display(1024, 768);
    let window = TestWindow::open(&display, "800x600+50+50", "mouse");
    let red = window.target("red");
    let blue = window.target("blue");

    act_ok(
        &display,
        &format!(
            r#"{{"action":"scroll","x":{},"y":{},"dx":0,"dy":-3}}"#,
            red.x, red.y
        ),
    );
    act_ok(
        &display,
        &format!(
            r#"{{"action":"scroll","x":{},"y":{},"dx":2,"dy":1}}"#,
            red.x, red.y
        ),
    );
    act_ok(
        &display,
        &format!(
            r#"{{"action":"click","x":{},"y":{},"button":"right"}}"#,
            blue.x, blue.y
        ),
    );
    act_ok(
        &display,
        &format!(r#"{{"action":"double_click","x":{},"y":{}}}"#, red.x, red.y),
    );
    act_ok(
        &display,
        &format!(
            r#"{{"action":"drag","path":[[{},{}],[{},{}],[{},{}]]}}"#,
            red.x,
            red.y,
            red.x + 100,
            red.y + 150,
            blue.x,
            blue.y
        ),
    );

    let events = window.quiet_events();
    let scrolls: Vec<String> = presses(&events, "scroll")
        .iter()
        .map(|e| e["direction"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(scrolls, ["up", "up", "up", "down", "right", "right"]);
    let buttons: Vec<(i64, Value)> = presses(&events, "button_press")
        .iter()
        .map(|e| (e["button"].as_i64().unwrap(), e["target"].clone()))
        .collect();
    assert_eq!(
        buttons,
        [
            (3, "blue".into()),
            (1, "red".into()),
            (1, "red".into()),
            (1, "red".into())
        ],
        "right click on blue, double click on red, then the drag's press on red"
    );
    // The drag: pressed on red, moved with the button held, released on blue.
    let last_release = presses(&events, "button_release").last().cloned().unwrap();
    assert_eq!(last_release["target"], "blue", "{last_release}");
    let motions = presses(&events, "motion");
    assert!(
        motions.len() >= 10,
        "the drag moved in steps, got {} motion events",
        motions.len()
    );
    assert!(
        motions
            .iter()
            .any(|m| m["root_x"] == red.x + 100 && m["root_y"] == red.y + 150),
        "the drag passed through its middle point"
    );
    assert_eq!(common::held_by_server(&display).1, 0, "no button left down");
}
