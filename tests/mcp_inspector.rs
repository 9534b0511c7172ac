//! A real MCP client nobody here wrote: the MCP Inspector's CLI (npm's
//! `@modelcontextprotocol/inspector`, on Node 22) starts `deskhand mcp` over stdio on a private
//! Xvfb, lists its tools (with the Inspector's schema portability check), takes a screenshot
//! and clicks the test window's target, each call a session of its own.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::{TestWindow, display, read_jsonl};
use deskhand::screen::{FrameMap, MonitorInfo, ScreenPoint, VirtualDisplay};
use serde_json::Value;

/// Where benches/fetch-mcp-inspector.sh installed the Inspector and its Node.
fn inspector_dir() -> PathBuf {
    let dir = std::env::var_os("DESKHAND_TEST_MCP_INSPECTOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/deskhand/mcp-inspector/2.12.0")
        });
    assert!(
        dir.join("node_modules/.bin/mcp-inspector").is_file()
            && dir.join("node_modules/.bin/node").is_file(),
        "this test needs the MCP Inspector and Node 22 in {} (CI={}): run \
         benches/fetch-mcp-inspector.sh (needs npm), or set DESKHAND_TEST_MCP_INSPECTOR to the \
         folder it prints (bash .ci/run does both)",
        dir.display(),
        std::env::var("CI").unwrap_or_default()
    );
    dir
}

/// `mcp-inspector --cli … deskhand mcp --method METHOD ARGS`: (exit code, stdout as JSON, stderr).
fn inspector(
    display: &VirtualDisplay,
    runs: &std::path::Path,
    policy: &std::path::Path,
    method_args: &[&str],
) -> (i32, Value, String) {
    let dir = inspector_dir();
    let bin = dir.join("node_modules/.bin");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The Inspector gives its server only the variables named with -e.
    let env = [
        format!("DISPLAY={}", display.name()),
        format!("DESKHAND_RUNS_DIR={}", runs.display()),
        format!("DESKHAND_POLICY={}", policy.display()),
        format!(
            "DESKHAND_GRANTS={}",
            runs.with_file_name("grants.toml").display()
        ),
        "DESKHAND_SYSTEM_POLICY=none".to_owned(),
        "DESKHAND_NO_DIALOG=1".to_owned(),
    ];
    let mut command = Command::new(bin.join("mcp-inspector"));
    command.env("PATH", path).arg("--cli");
    for e in &env {
        command.args(["-e", e]);
    }
    let out = command
        .arg(env!("CARGO_BIN_EXE_deskhand"))
        .arg("mcp")
        .args(method_args)
        .output()
        .expect("run the MCP Inspector");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("the Inspector printed no JSON ({e}): {stdout}\nstderr:\n{stderr}")
    });
    (out.status.code().unwrap_or(-1), json, stderr)
}

#[test]
fn the_mcp_inspector_lists_the_tools_takes_a_screenshot_and_clicks() {
    let display = display(1920, 1080);
    let window = TestWindow::open(&display, "600x400+200+150", "Inspector target");
    let dir = tempfile::tempdir().expect("temp dir");
    let runs = dir.path().join("runs");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "schema_version = 1\npreset = \"balanced\"\n").expect("policy");

    let (code, listed, said) = inspector(
        &display,
        &runs,
        &policy,
        &["--method", "tools/list", "--strict"],
    );
    assert_eq!(code, 0, "tools/list failed: {said}");
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names.len(), 13, "{names:?}");
    for tool in ["screenshot", "click", "type", "key", "explain", "run_task"] {
        assert!(names.contains(&tool), "{tool} missing from {names:?}");
    }
    // The Inspector's portability check of every tool's schema.
    assert!(
        !said.contains("Warning:") && !said.contains("Error:"),
        "{said}"
    );

    let (code, shot, said) = inspector(
        &display,
        &runs,
        &policy,
        &["--method", "tools/call", "--tool-name", "screenshot"],
    );
    assert_eq!(code, 0, "screenshot failed: {said}");
    assert_eq!(shot["isError"], false, "{shot}");
    let data = shot["content"][0]["data"].as_str().expect("image data");
    let png = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64");
    let image = image::load_from_memory(&png).expect("the screenshot decodes");
    assert_eq!((image.width(), image.height()), (1280, 720));

    // A click in a session of its own, before any screenshot in it: points are in the pixels
    // a screenshot would have.
    let red = window.target("red");
    let map = FrameMap::new(&MonitorInfo::single("screen", 1920, 1080), 1280, 720);
    let (x, y) = map
        .frame_pixel_of(ScreenPoint::new(red.x, red.y))
        .expect("on the screen");
    let (code, clicked, said) = inspector(
        &display,
        &runs,
        &policy,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "click",
            "--tool-arg",
            &format!("x={x}"),
            "--tool-arg",
            &format!("y={y}"),
        ],
    );
    assert_eq!(code, 0, "click failed: {said}");
    assert_eq!(clicked["isError"], false, "{clicked}");
    window.wait_for(
        "the Inspector's click on red",
        Duration::from_secs(10),
        |e| e["event"] == "button_press" && e["target"] == "red",
    );

    // Three sessions, three runs, each naming the Inspector as its client.
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(&runs).expect("runs").flatten() {
        let trace = read_jsonl(&entry.path().join("trace.jsonl"));
        if let Some(start) = trace.first() {
            starts.push(start["client"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert!(
        starts.iter().all(|c| c.starts_with("inspector")),
        "{starts:?}"
    );
}
