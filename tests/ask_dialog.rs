//! The ask dialog, on a private Xvfb: `deskhand run` without a terminal shows the policy's ask
//! in a window of its own, which the test answers the way a person would, by clicking its
//! buttons and pressing its keys (through `deskhand act`, a separate process, as a person's
//! mouse and keyboard are). The answer reaches the run: "once" clicks, "deny" does not, and
//! the trace says a person answered.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{TestWindow, act_ok, deskhand, display, events_after_ready, read_jsonl};
use deskhand::screen::{FrameTarget, MonitorInfo, Screen, VirtualDisplay, X11Screen};
use serde_json::Value;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _, MapState, Window};

const BALANCED: &str = "schema_version = 1\npreset = \"balanced\"\n";

/// The dialog as the X server sees it: where it is, and where its buttons are (from the
/// `_DESKHAND_BUTTONS` property), in screen pixels.
struct Dialog {
    window: Window,
    buttons: Vec<(char, i32, i32)>,
}

/// Waits for deskhand's ask dialog to be mapped on `display`.
fn find_dialog(display: &VirtualDisplay, run: &mut Run) -> Dialog {
    // The dialog ignores input for its first 600 ms, so a person typing elsewhere cannot
    // answer it by accident.
    find_dialog_after(display, run, Duration::from_millis(800))
}

/// Waits for the dialog, then `settle` more.
fn find_dialog_after(display: &VirtualDisplay, run: &mut Run, settle: Duration) -> Dialog {
    let stderr = run.stderr_path();
    let stderr = stderr.as_path();
    let (conn, screen) = x11rb::connect(Some(display.name())).expect("connect to the display");
    let root = conn.setup().roots[screen].root;
    let buttons_atom = conn
        .intern_atom(false, b"_DESKHAND_BUTTONS")
        .unwrap()
        .reply()
        .unwrap()
        .atom;
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = run.child.try_wait() {
            panic!(
                "deskhand run ended ({status}) without showing the dialog; stderr:\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no dialog within 30 s; stderr:\n{}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
        let children = conn.query_tree(root).unwrap().reply().unwrap().children;
        for window in children {
            let class = conn
                .get_property(false, window, AtomEnum::WM_CLASS, AtomEnum::STRING, 0, 64)
                .unwrap()
                .reply()
                .map(|r| r.value)
                .unwrap_or_default();
            if !class.starts_with(b"deskhand-ask\0") {
                continue;
            }
            let viewable = conn
                .get_window_attributes(window)
                .unwrap()
                .reply()
                .is_ok_and(|a| a.map_state == MapState::VIEWABLE);
            let focused = conn.get_input_focus().unwrap().reply().unwrap().focus == window;
            if !viewable || !focused {
                continue;
            }
            std::thread::sleep(settle);
            let at = conn
                .translate_coordinates(window, root, 0, 0)
                .unwrap()
                .reply()
                .unwrap();
            let listed = conn
                .get_property(false, window, buttons_atom, AtomEnum::STRING, 0, 256)
                .unwrap()
                .reply()
                .unwrap()
                .value;
            let listed = String::from_utf8(listed).expect("the buttons property is text");
            let buttons = listed
                .split(';')
                .map(|b| {
                    let (key, rect) = b.split_once(':').expect("KEY:X,Y,W,H");
                    let n: Vec<i32> = rect.split(',').map(|v| v.parse().unwrap()).collect();
                    (
                        key.chars().next().unwrap(),
                        i32::from(at.dst_x) + n[0] + n[2] / 2,
                        i32::from(at.dst_y) + n[1] + n[3] / 2,
                    )
                })
                .collect();
            return Dialog { window, buttons };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Dialog {
    fn button(&self, key: char) -> (i32, i32) {
        self.buttons
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, x, y)| (*x, *y))
            .unwrap_or_else(|| panic!("no [{key}] button in {:?}", self.buttons))
    }
}

struct Run {
    child: Child,
    dir: tempfile::TempDir,
}

impl Run {
    /// Starts `deskhand run` with no terminal and the dialog allowed, on a script that clicks
    /// `(x, y)` declaring it deletes something (the floor asks about that every time).
    fn start(display: &VirtualDisplay, x: i32, y: i32) -> Run {
        let click = format!(r#"{{"action":"click","x":{x},"y":{y},"intent":"delete"}}"#);
        Run::start_script(display, &[click], true)
    }

    /// A run of `actions` then `done`; `dialog`: whether its asks may open the dialog.
    fn start_script(display: &VirtualDisplay, actions: &[String], dialog: bool) -> Run {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("script.jsonl");
        let mut lines = actions.to_vec();
        lines.push(r#"{"action":"done","summary":"done"}"#.to_owned());
        std::fs::write(&script, lines.join("\n") + "\n").expect("write the script");
        std::fs::write(dir.path().join("policy.toml"), BALANCED).expect("write the policy");
        std::fs::create_dir(dir.path().join("models")).expect("models dir");
        let mut command = deskhand(display);
        if dialog {
            command.env_remove("DESKHAND_NO_DIALOG");
        }
        let child = command
            .args(["run", "delete the red square", "--script"])
            .arg(&script)
            .env("DESKHAND_RUNS_DIR", dir.path().join("runs"))
            .env("DESKHAND_POLICY", dir.path().join("policy.toml"))
            .env("DESKHAND_GRANTS", dir.path().join("grants.toml"))
            .env("DESKHAND_SYSTEM_POLICY", "none")
            .env("DESKHAND_MODELS_DIR", dir.path().join("models"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("stderr.txt")).expect("stderr file"))
            .spawn()
            .expect("start deskhand run");
        Run { child, dir }
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.txt")
    }

    /// Waits for the run to end; returns its exit code and its trace.
    fn finish(mut self) -> (i32, Vec<Value>) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for deskhand") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!(
                    "deskhand run did not end after the answer; stderr:\n{}",
                    std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let runs = self.dir.path().join("runs");
        let run_dir = deskhand::trace::run_folders(&runs)
            .expect("the runs folder")
            .pop()
            .expect("a run folder with a trace");
        (
            status.code().unwrap_or(-1),
            read_jsonl(&run_dir.join("trace.jsonl")),
        )
    }
}

/// The first step of a trace: the click the floor asked about.
fn first_step(trace: &[Value]) -> Value {
    trace
        .iter()
        .find(|l| l["record"] == "step" && l["step"] == 1)
        .cloned()
        .unwrap_or_else(|| panic!("no step 1: {trace:?}"))
}

#[test]
fn the_ask_dialog_is_answered_by_its_buttons_and_its_keys() {
    let display = display(1024, 768);
    let window = TestWindow::open(&display, "640x480+0+0", "dialog target");
    let red = window.target("red");

    // 1. The person clicks [o] once: the click runs.
    let mut child = Run::start(&display, red.x, red.y);
    let dialog = find_dialog(&display, &mut child);
    // What the person sees, kept for the developers to look at.
    let mut screen = X11Screen::connect(Some(display.name())).expect("connect");
    let monitor = MonitorInfo::single("screen", 1024, 768);
    let shot = screen
        .capture(
            &monitor,
            FrameTarget::Fixed {
                width: 1024,
                height: 768,
            },
        )
        .expect("capture");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ask-dialog.png");
    shot.image.save(&out).expect("save the screenshot");
    let dialog_pixels = shot
        .image
        .pixels()
        .filter(|p| p.0 == [0xf2, 0xf2, 0xf2])
        .count();
    assert!(
        dialog_pixels > 20_000,
        "the dialog's background is on the screen ({dialog_pixels} pixels); see {}",
        out.display()
    );
    // The crop of the screenshot around the click, ringed in red, is in the dialog.
    let ringed = shot.image.pixels().filter(|p| p.0 == [230, 0, 0]).count();
    assert!(
        ringed > 50,
        "no marked point in the dialog; see {}",
        out.display()
    );
    let (x, y) = dialog.button('o');
    act_ok(
        &display,
        &format!(r#"{{"action":"click","x":{x},"y":{y}}}"#),
    );
    let (code, trace) = child.finish();
    let step = first_step(&trace);
    assert_eq!(code, 0, "{step}");
    assert_eq!(step["decision"]["rule"], "floor.risky_intent", "{step}");
    assert_eq!(step["answer"], "once", "{step}");
    assert_eq!(step["answered_by"], "person", "{step}");
    assert_eq!(step["outcome"]["status"], "executed", "{step}");
    let presses = events_after_ready(&window.quiet_events(), &["button_press"]).len();
    // The click on the dialog went to the dialog, the run's click to the window.
    assert_eq!(presses, 1);

    // 2. The keyboard: the focus starts on deny, so Return refuses.
    let mut run = Run::start(&display, red.x, red.y);
    let dialog = find_dialog(&display, &mut run);
    assert_ne!(dialog.window, 0);
    act_ok(&display, r#"{"action":"key","chord":"Return"}"#);
    let (code, trace) = run.finish();
    let step = first_step(&trace);
    assert_eq!(code, 0, "{step}");
    assert_eq!(step["answer"], "deny", "{step}");
    assert_eq!(step["answered_by"], "person", "{step}");
    assert_eq!(step["outcome"]["status"], "refused", "{step}");
    assert_eq!(
        events_after_ready(&window.quiet_events(), &["button_press"]).len(),
        1,
        "a refused click never reached the window"
    );

    // 3. A letter picks its button: "o" is once.
    let mut run = Run::start(&display, red.x, red.y);
    find_dialog(&display, &mut run);
    act_ok(&display, r#"{"action":"key","chord":"o"}"#);
    let (_, trace) = run.finish();
    let step = first_step(&trace);
    assert_eq!(step["answer"], "once", "{step}");
    assert_eq!(
        events_after_ready(&window.quiet_events(), &["button_press"]).len(),
        2
    );

    // 5 (first, while the window is fresh). A key typed the moment the dialog appears, meant
    // for another window, answers nothing: the dialog is still there for a deliberate "d".
    let mut run = Run::start(&display, red.x, red.y);
    find_dialog_after(&display, &mut run, Duration::ZERO);
    act_ok(&display, r#"{"action":"key","chord":"o"}"#);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        run.child.try_wait().expect("wait").is_none(),
        "an early key answered the dialog"
    );
    act_ok(&display, r#"{"action":"key","chord":"d"}"#);
    let (_, trace) = run.finish();
    assert_eq!(first_step(&trace)["answer"], "deny");
    assert_eq!(
        events_after_ready(&window.quiet_events(), &["button_press"]).len(),
        2
    );

    // 6. Another agent (a second deskhand run) cannot answer the dialog: neither the key it
    // presses into the focused dialog nor its click on the [o] button gets through.
    let mut first = Run::start(&display, red.x, red.y);
    let dialog = find_dialog(&display, &mut first);
    let (ox, oy) = dialog.button('o');
    let intruder = Run::start_script(
        &display,
        &[
            r#"{"action":"key","chord":"o"}"#.to_owned(),
            format!(r#"{{"action":"click","x":{ox},"y":{oy}}}"#),
        ],
        false,
    );
    let (code, trace) = intruder.finish();
    assert_eq!(code, 0, "{trace:?}");
    for n in [1, 2] {
        let step = trace
            .iter()
            .find(|l| l["record"] == "step" && l["step"] == n)
            .unwrap_or_else(|| panic!("no step {n}: {trace:?}"));
        assert_eq!(step["decision"]["rule"], "floor.own_window", "{step}");
        assert_eq!(step["outcome"]["status"], "refused", "{step}");
    }
    assert!(
        first.child.try_wait().expect("wait").is_none(),
        "the other run answered the dialog"
    );
    act_ok(&display, r#"{"action":"key","chord":"d"}"#);
    let (_, trace) = first.finish();
    assert_eq!(first_step(&trace)["answer"], "deny");

    // 4. Tab moves the focus from deny to abort; Return there stops the run.
    let mut run = Run::start(&display, red.x, red.y);
    find_dialog(&display, &mut run);
    act_ok(&display, r#"{"action":"key","chord":"Tab"}"#);
    act_ok(&display, r#"{"action":"key","chord":"Return"}"#);
    let (code, trace) = run.finish();
    let step = first_step(&trace);
    assert_eq!(
        code, 130,
        "an abort answer ends the run as an abort: {step}"
    );
    assert_eq!(step["outcome"]["status"], "aborted", "{step}");
}
