//! The loop's guards end runs that go nowhere, each with its own message and exit code 1:
//! driven through `deskhand run --script` on a private Xvfb with the test window.

mod common;

use std::process::Stdio;

use common::{TestWindow, deskhand, display};

const PERMISSIVE: &str = "schema_version = 1\npreset = \"permissive\"\n";

/// Runs `deskhand run` with `script` (one action per line) and `policy`; returns the exit code
/// and stdout + stderr.
fn run(script: &[&str], policy: &str, args: &[&str]) -> (i32, String) {
    let display = display(800, 600);
    let _window = TestWindow::open(&display, "640x480+0+0", "guards");
    let dir = tempfile::tempdir().expect("temp dir");
    let script_path = dir.path().join("script.jsonl");
    std::fs::write(&script_path, script.join("\n")).expect("script");
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).expect("policy");
    let out = deskhand(&display)
        .args(["run", "go nowhere"])
        .arg("--script")
        .arg(&script_path)
        .arg("--policy")
        .arg(&policy_path)
        .args(args)
        .env("DESKHAND_RUNS_DIR", dir.path().join("runs"))
        .env("DESKHAND_GRANTS", dir.path().join("grants.toml"))
        .env("DESKHAND_SYSTEM_POLICY", "none")
        .stdin(Stdio::null())
        .output()
        .expect("run deskhand");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_same_action_four_times_ends_the_run() {
    let click = r#"{"action":"click","x":300,"y":300}"#;
    let (code, out) = run(&[click; 6], PERMISSIVE, &["--max-unchanged", "100"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the same action 4 times in a row"), "{out}");
}

#[test]
fn actions_that_change_nothing_end_the_run() {
    let moves = [
        r#"{"action":"move","x":300,"y":300}"#,
        r#"{"action":"move","x":310,"y":300}"#,
        r#"{"action":"move","x":320,"y":300}"#,
        r#"{"action":"move","x":330,"y":300}"#,
        r#"{"action":"move","x":340,"y":300}"#,
        r#"{"action":"move","x":350,"y":300}"#,
    ];
    let (code, out) = run(&moves, PERMISSIVE, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the screen did not change after 4 actions"),
        "{out}"
    );
}

#[test]
fn refused_actions_in_a_row_end_the_run() {
    let policy = format!(
        "{PERMISSIVE}[[rule]]\nid = \"no-clicks\"\ndecision = \"deny\"\nreason = \"no clicking today\"\naction = [\"click\"]\n"
    );
    let clicks = [
        r#"{"action":"click","x":300,"y":300}"#,
        r#"{"action":"click","x":310,"y":300}"#,
        r#"{"action":"click","x":320,"y":300}"#,
        r#"{"action":"click","x":330,"y":300}"#,
    ];
    let (code, out) = run(&clicks, &policy, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("3 refused actions in a row"), "{out}");
    assert!(out.contains("no clicking today"), "{out}");
}

#[test]
fn the_step_limit_ends_the_run() {
    let wait = r#"{"action":"wait","ms":10}"#;
    let (code, out) = run(&[wait; 5], PERMISSIVE, &["--max-steps", "3"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("stopped after 3 steps"), "{out}");
}

#[test]
fn a_question_nobody_can_answer_ends_the_run() {
    let ask = r#"{"action":"call_user","question":"Which file?"}"#;
    let (code, out) = run(&[ask], PERMISSIVE, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nobody could answer"), "{out}");
}
