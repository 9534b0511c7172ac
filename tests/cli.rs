//! The command line on a real display: help everywhere, monitors, the active window,
//! screenshots, settling and the capture benchmark.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TestWindow, deskhand, display, split_monitors};
use deskhand::screen::{FrameTarget, Screen, SettleOptions, X11Screen, observe, wait_until_stable};
use serde_json::Value;

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run deskhand");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["monitors", "--help"],
        vec!["window", "--help"],
        vec!["screenshot", "--help"],
        vec!["act", "--help"],
        vec!["bench", "--help"],
        vec!["bench", "capture", "--help"],
        vec!["policy", "suggest", "--help"],
        vec!["policy", "diff", "--help"],
    ] {
        let out = run_ok(Command::new(env!("CARGO_BIN_EXE_deskhand")).args(&args));
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    let out = run_ok(Command::new(env!("CARGO_BIN_EXE_deskhand")).args(["act", "--help"]));
    assert!(
        out.contains(r#"{"action":"click","x":100,"y":200}"#),
        "act --help shows examples"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_deskhand"))
        .args(["screenshot", "--width", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--width without --height");
    let out = Command::new(env!("CARGO_BIN_EXE_deskhand"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn monitors_lists_origin_size_and_scale() {
    let display = display(2560, 1024);
    split_monitors(
        &display,
        &[("LEFT", 0, 0, 1280, 1024), ("RIGHT", 1280, 0, 1280, 1024)],
    );
    let table = run_ok(deskhand(&display).arg("monitors"));
    assert!(
        table.contains("LEFT") && table.contains("1280,0") && table.contains("1280x1024"),
        "{table}"
    );
    let json: Value =
        serde_json::from_str(&run_ok(deskhand(&display).args(["monitors", "--json"]))).unwrap();
    let right = &json[1];
    assert_eq!(
        (
            right["name"].as_str(),
            right["x"].as_i64(),
            right["y"].as_i64()
        ),
        (Some("RIGHT"), Some(1280), Some(0))
    );
    assert_eq!(right["scale_factor"].as_f64(), Some(1.0));
}

#[test]
fn window_reports_the_focused_app_title_and_pid() {
    let display = display(1024, 768);
    let title = "deskhand test window — ünïcode ✓";
    let window = TestWindow::open(&display, "400x300+50+50", title);
    let json: Value =
        serde_json::from_str(&run_ok(deskhand(&display).args(["window", "--json"]))).unwrap();
    assert_eq!(json["title"], title);
    assert_eq!(json["app_name"], "deskhand-testwin");
    assert_eq!(json["wm_class"], "DeskhandTestwin");
    assert_eq!(json["pid"].as_u64(), Some(u64::from(window.pid())));
}

#[test]
fn screenshot_writes_a_png_of_the_requested_shape() {
    let display = display(1920, 1080);
    let _window = TestWindow::open(&display, "640x480+100+100", "screenshot");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shot.png");
    let out = run_ok(
        deskhand(&display)
            .arg("screenshot")
            .arg("-o")
            .arg(&path)
            .args(["--max-pixels", "1200000", "--align", "28"]),
    );
    assert!(out.contains("1456x812 frame"), "{out}");
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1456, 812));
    // The red target survives the downscale as red: the channels were not mixed up.
    let red = img
        .pixels()
        .filter(|p| p[0] > 200 && p[1] < 60 && p[2] < 60)
        .count();
    assert!(red > 100, "{red} red pixels");
    assert!(!dir.path().join("shot.png.partial").exists());

    let path2 = dir.path().join("fixed.png");
    run_ok(
        deskhand(&display)
            .arg("screenshot")
            .arg("-o")
            .arg(&path2)
            .args(["--width", "800", "--height", "600"]),
    );
    assert_eq!(
        image::open(&path2).unwrap().to_rgb8().dimensions(),
        (800, 600)
    );

    let bad = deskhand(&display)
        .args(["screenshot", "--monitor", "7", "-o"])
        .arg(dir.path().join("x.png"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no monitor 7"));
}

#[test]
fn a_still_screen_settles_after_k_matching_captures() {
    let display = display(1280, 720);
    let _window = TestWindow::open(&display, "640x480+100+100", "settle");
    let mut screen = X11Screen::connect(Some(display.name())).unwrap();
    let monitor = screen.monitor(None).unwrap();
    let options = SettleOptions {
        stable_frames: 3,
        ..SettleOptions::default()
    };
    let settled = wait_until_stable(&mut screen, &monitor, FrameTarget::Original, options).unwrap();
    // Stable means the run of matching captures completed before the timeout.
    assert!(settled.stable, "not stable after {:?}", settled.elapsed);
    assert_eq!(settled.captures, 4, "one capture, then three that match it");

    // The whole see stage: a settled frame plus the window that has the focus.
    let target = FrameTarget::MaxPixels {
        max_pixels: 500_000,
        align: 32,
    };
    let seen = observe(&mut screen, &monitor, target, options).unwrap();
    assert_eq!(seen.active_window.unwrap().title, "settle");
    assert_eq!(
        (
            seen.frame.map.frame_width % 32,
            seen.frame.map.frame_height % 32
        ),
        (0, 0)
    );
    assert!(seen.settle_time <= options.timeout + Duration::from_secs(1));
}

#[test]
fn bench_capture_reports_both_figures() {
    let out = run_ok(Command::new(env!("CARGO_BIN_EXE_deskhand")).args([
        "bench",
        "capture",
        "--iterations",
        "5",
        "--import-iterations",
        "2",
        "--json",
    ]));
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["screen"]["width"], 1920);
    assert_eq!(json["frame"]["width"], 1456);
    assert!(
        json["deskhand_capture_downscale"]["median_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(json["imagemagick_import"]["median_ms"].as_f64().unwrap() > 0.0);
    assert!(json["import_over_deskhand_median"].as_f64().unwrap() > 0.0);
}
