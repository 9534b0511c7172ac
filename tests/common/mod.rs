//! Shared pieces of the display tests: a private Xvfb, the project's test window and its log,
//! the X server's own view of held keys and buttons, and simple screenshot analysis.
//!
//! A test that cannot get its display fails; it never skips (CI runs these under CI=true and
//! must prove them every time).

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deskhand::screen::{Frame, ScreenPoint, VirtualDisplay};
use serde_json::Value;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::ConnectionExt as _;
use x11rb::wrapper::ConnectionExt as _;

/// A child process (xcalc, say) that is killed and reaped when the test ends, pass or fail.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a private X display of `width` x `height`.
pub fn display(width: u32, height: u32) -> VirtualDisplay {
    match VirtualDisplay::start(width, height) {
        Ok(d) => d,
        Err(e) => panic!(
            "this test needs a display and could not start one (CI={}): {e}",
            std::env::var("CI").unwrap_or_default()
        ),
    }
}

/// Split one framebuffer into monitors with `xrandr --setmonitor` (RandR 1.5).
/// Each entry is (name, x, y, width, height); the first takes the real output.
pub fn split_monitors(display: &VirtualDisplay, monitors: &[(&str, i32, i32, u32, u32)]) {
    for (i, (name, x, y, w, h)) in monitors.iter().enumerate() {
        let output = if i == 0 { "screen" } else { "none" };
        // Millimetres only matter for DPI; 0.26 mm a pixel is 96 dpi.
        let geometry = format!("{w}/{}x{h}/{}+{x}+{y}", w * 26 / 100, h * 26 / 100);
        let status = Command::new("xrandr")
            .args([
                "--display",
                display.name(),
                "--setmonitor",
                name,
                &geometry,
                output,
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run xrandr (Debian: x11-xserver-utils): {e}"));
        assert!(
            status.success(),
            "xrandr --setmonitor {name} {geometry} {output} failed"
        );
    }
}

/// A running `deskhand-testwin` and its event log.
pub struct TestWindow {
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
    pub ready: Value,
}

impl TestWindow {
    /// Open the test window at `geometry` (WxH+X+Y) and wait until it has drawn its targets.
    pub fn open(display: &VirtualDisplay, geometry: &str, title: &str) -> TestWindow {
        TestWindow::open_as(display, geometry, title, None)
    }

    /// `open`, with the program copied under `program` first, so that deskhand (which names a
    /// window's app after its executable) sees that app: "xterm", "thunderbird".
    pub fn open_as(
        display: &VirtualDisplay,
        geometry: &str,
        title: &str,
        program: Option<&str>,
    ) -> TestWindow {
        TestWindow::open_with(display, geometry, title, program, &[])
    }

    /// `open_as`, with more arguments for the test window (`--mail`, `--banner TEXT`).
    pub fn open_with(
        display: &VirtualDisplay,
        geometry: &str,
        title: &str,
        program: Option<&str>,
        extra: &[&str],
    ) -> TestWindow {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("testwin.jsonl");
        let binary = match program {
            Some(name) => {
                let copy = dir.path().join(name);
                std::fs::copy(env!("CARGO_BIN_EXE_deskhand-testwin"), &copy)
                    .expect("copy the test window's program");
                copy
            }
            None => PathBuf::from(env!("CARGO_BIN_EXE_deskhand-testwin")),
        };
        let child = Command::new(binary)
            .args([
                "--display",
                display.name(),
                "--geometry",
                geometry,
                "--title",
                title,
            ])
            .args(extra)
            .arg("--log")
            .arg(&log)
            .spawn()
            .expect("start deskhand-testwin");
        let mut window = TestWindow {
            child,
            log,
            _dir: dir,
            ready: Value::Null,
        };
        window.ready = window.wait_for("the window to be ready", Duration::from_secs(10), |e| {
            e["event"] == "ready"
        });
        window
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The centre of a named target square, in screen pixels.
    pub fn target(&self, name: &str) -> ScreenPoint {
        let t = self.ready["targets"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == name))
            .unwrap_or_else(|| panic!("no target {name} in {}", self.ready));
        ScreenPoint::new(
            t["root_x"].as_i64().unwrap() as i32,
            t["root_y"].as_i64().unwrap() as i32,
        )
    }

    pub fn events(&self) -> Vec<Value> {
        read_jsonl(&self.log)
    }

    /// Wait until an event matches, and return it.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().find(|e| matches(e)) {
                return e;
            }
            assert!(
                started.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; the test window logged:\n{}",
                self.events()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until the log has stopped growing for a moment, then return all events.
    pub fn quiet_events(&self) -> Vec<Value> {
        let mut last = usize::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(150));
            let events = self.events();
            if events.len() == last {
                return events;
            }
            last = events.len();
        }
    }

    /// The text typed into the window so far.
    pub fn text(&self) -> String {
        self.events()
            .iter()
            .rev()
            .find(|e| e["event"] == "text")
            .and_then(|e| e["text"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl Drop for TestWindow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

/// What the X server itself says is held: keycodes down, and the pointer's button mask.
pub fn held_by_server(display: &VirtualDisplay) -> (Vec<u8>, u16) {
    let (conn, screen) = x11rb::connect(Some(display.name())).expect("connect to the test display");
    let root = conn.setup().roots[screen].root;
    let keymap = conn.query_keymap().unwrap().reply().unwrap();
    let keys: Vec<u8> = (0..256usize)
        .filter(|&k| keymap.keys[k / 8] & (1 << (k % 8)) != 0)
        .map(|k| k as u8)
        .collect();
    let pointer = conn.query_pointer(root).unwrap().reply().unwrap();
    // Buttons 1-5 are bits 8-12 of the mask.
    let buttons = u16::from(pointer.mask) & 0x1f00;
    (keys, buttons)
}

/// Move the real pointer, as a user would.
pub fn warp_pointer(display: &VirtualDisplay, x: i16, y: i16) {
    let (conn, screen) = x11rb::connect(Some(display.name())).expect("connect to the test display");
    let root = conn.setup().roots[screen].root;
    conn.warp_pointer(x11rb::NONE, root, 0, 0, 0, 0, x, y)
        .unwrap();
    conn.sync().unwrap();
}

/// The `deskhand` binary, pointed at a display.
pub fn deskhand(display: &VirtualDisplay) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deskhand"));
    // Asks in these runs are answered by nobody; tests of the ask dialog remove this.
    cmd.env("DISPLAY", display.name())
        .env("DESKHAND_NO_DIALOG", "1")
        .env_remove("WAYLAND_DISPLAY");
    cmd
}

/// Run `deskhand act JSON` and return (exit code, stdout, stderr).
pub fn act(display: &VirtualDisplay, json: &str) -> (i32, String, String) {
    let out = deskhand(display)
        .args(["act", json])
        .output()
        .expect("run deskhand act");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `deskhand act JSON`, require success, and return its stdout.
pub fn act_ok(display: &VirtualDisplay, json: &str) -> String {
    let (code, out, err) = act(display, json);
    assert_eq!(code, 0, "deskhand act {json} failed: {err}");
    out
}

/// The redness-weighted centroid, in frame pixel indices, of pixels close to `rgb`. This is how
/// the tests find a target from a screenshot rather than from the window's own report.
pub fn find_colour(frame: &Frame, rgb: [u8; 3], tolerance: i32) -> Option<(f64, f64)> {
    let (mut sx, mut sy, mut sw) = (0.0, 0.0, 0.0);
    for (x, y, p) in frame.image.enumerate_pixels() {
        let d: i32 = (0..3)
            .map(|i| (i32::from(p[i]) - i32::from(rgb[i])).abs())
            .max()
            .unwrap_or(255);
        if d <= tolerance {
            // Pixels blended with the background at the edges count for less.
            let w = f64::from(tolerance + 1 - d);
            sx += w * f64::from(x);
            sy += w * f64::from(y);
            sw += w;
        }
    }
    (sw > 0.0).then(|| (sx / sw, sy / sw))
}

/// Connected regions of pixels for which `light` holds: (min x, min y, max x, max y, area).
pub fn regions(
    frame: &Frame,
    light: impl Fn(&image::Rgb<u8>) -> bool,
) -> Vec<(u32, u32, u32, u32, u32)> {
    let (w, h) = frame.image.dimensions();
    let mut seen = vec![false; (w * h) as usize];
    let mut out = Vec::new();
    for start in 0..(w * h) {
        if seen[start as usize] || !light(frame.image.get_pixel(start % w, start / w)) {
            continue;
        }
        let (mut x0, mut y0, mut x1, mut y1, mut area) = (w, h, 0, 0, 0);
        let mut stack = vec![start];
        seen[start as usize] = true;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            area += 1;
            let mut visit = |nx: u32, ny: u32| {
                let j = ny * w + nx;
                if !seen[j as usize] && light(frame.image.get_pixel(nx, ny)) {
                    seen[j as usize] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(x - 1, y);
            }
            if x + 1 < w {
                visit(x + 1, y);
            }
            if y > 0 {
                visit(x, y - 1);
            }
            if y + 1 < h {
                visit(x, y + 1);
            }
        }
        out.push((x0, y0, x1, y1, area));
    }
    out
}

/// Events after the window's "ready" whose kind is one of `kinds`.
pub fn events_after_ready<'a>(events: &'a [Value], kinds: &[&str]) -> Vec<&'a Value> {
    events
        .iter()
        .skip_while(|e| e["event"] != "ready")
        .filter(|e| kinds.iter().any(|k| e["event"] == *k))
        .collect()
}

/// Makes `text` the `selection` ("clipboard" or "primary") of `display`, owned by xclip, as
/// another program on the desktop would.
pub fn own_selection(display: &VirtualDisplay, selection: &str, text: &str) {
    use std::io::Write;
    let mut xclip = Command::new("xclip")
        .args(["-selection", selection, "-display", display.name()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start xclip (apt-get install xclip)");
    xclip
        .stdin
        .take()
        .expect("xclip's stdin")
        .write_all(text.as_bytes())
        .expect("write to xclip");
    // xclip forks a child that serves the selection and the parent exits.
    let status = xclip.wait().expect("wait for xclip");
    assert!(status.success(), "xclip failed");
}
