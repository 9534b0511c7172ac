//! Aborts in the middle of held input: SIGINT, SIGTERM and the corner failsafe release every
//! key and button (as the X server itself reports) and exit with 130.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{TestWindow, deskhand, display, held_by_server, warp_pointer};
use deskhand::screen::VirtualDisplay;

fn spawn_act(display: &VirtualDisplay, json: &str) -> Child {
    deskhand(display)
        .args(["act", json])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start deskhand act")
}

/// Poll the X server until `held` says the input is down.
fn wait_until_held(display: &VirtualDisplay, what: &str, held: impl Fn(&(Vec<u8>, u16)) -> bool) {
    let started = Instant::now();
    loop {
        let state = held_by_server(display);
        if held(&state) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} never went down: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait for the child to exit; return (exit code, how long it took, stderr).
fn wait_exit(mut child: Child, limit: Duration) -> (i32, Duration, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.code().unwrap_or(-1),
                started.elapsed(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("deskhand did not exit within {limit:?} of the abort");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill failed");
}

#[test]
fn sigint_in_the_middle_of_a_chord_releases_every_key() {
    let display = display(1024, 768);
    let window = TestWindow::open(&display, "400x300+100+100", "abort");
    let child = spawn_act(
        &display,
        r#"{"action":"hold_key","chord":"ctrl+shift+a","ms":8000}"#,
    );
    wait_until_held(&display, "ctrl+shift+a", |(keys, _)| keys.len() >= 3);
    signal(&child, libc::SIGINT);
    let (code, took, stderr) = wait_exit(child, Duration::from_secs(2));
    assert_eq!(code, 130, "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?} to stop");
    assert!(stderr.contains("SIGINT"), "{stderr}");
    assert_eq!(
        held_by_server(&display),
        (vec![], 0),
        "nothing may stay down"
    );
    let events = window.quiet_events();
    let pressed = events.iter().filter(|e| e["event"] == "key_press").count();
    let released = events
        .iter()
        .filter(|e| e["event"] == "key_release")
        .count();
    assert_eq!((pressed, released), (3, 3), "{events:?}");
}

#[test]
fn sigterm_in_the_middle_of_a_drag_releases_the_button() {
    let display = display(1024, 768);
    let _window = TestWindow::open(&display, "1000x700+10+10", "abort drag");
    let mut path = Vec::new();
    for i in 0..12 {
        path.push(if i % 2 == 0 { [100, 100] } else { [900, 650] });
    }
    let json = serde_json::json!({"action": "drag", "path": path}).to_string();
    let child = spawn_act(&display, &json);
    wait_until_held(&display, "the left button", |(_, buttons)| *buttons != 0);
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, libc::SIGTERM);
    let (code, took, stderr) = wait_exit(child, Duration::from_secs(2));
    assert_eq!(code, 130, "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?} to stop");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert_eq!(held_by_server(&display), (vec![], 0));
}

#[test]
fn parking_the_pointer_in_a_corner_aborts_and_releases() {
    let display = display(1024, 768);
    let _window = TestWindow::open(&display, "400x300+100+100", "failsafe");
    let child = spawn_act(
        &display,
        r#"{"action":"hold_key","chord":"alt+x","ms":8000}"#,
    );
    wait_until_held(&display, "alt+x", |(keys, _)| keys.len() >= 2);
    warp_pointer(&display, 1023, 767);
    let (code, took, stderr) = wait_exit(child, Duration::from_secs(2));
    assert_eq!(code, 130, "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?} to stop");
    assert!(stderr.contains("failsafe"), "{stderr}");
    assert_eq!(held_by_server(&display), (vec![], 0));

    // With the pointer still parked, nothing runs at all.
    let (code, _, stderr) = common::act(&display, r#"{"action":"click","x":200,"y":200}"#);
    assert_eq!(code, 130, "{stderr}");
}

#[test]
fn actions_aimed_at_a_corner_or_off_screen_are_refused_before_anything_happens() {
    let display = display(1024, 768);
    let window = TestWindow::open(&display, "400x300+100+100", "refusals");
    for (json, expect) in [
        (r#"{"action":"click","x":0,"y":0}"#, "failsafe corner zone"),
        (
            r#"{"action":"click","x":1024,"y":10}"#,
            "not on any monitor",
        ),
        (
            r#"{"action":"click","x":200,"y":200,"buton":"right"}"#,
            "unknown field `buton`",
        ),
        (
            r#"{"action":"tap","x":200,"y":200}"#,
            "unknown variant `tap`",
        ),
        (
            r#"{"action":"key","chord":"ctlr+c"}"#,
            "unknown key 'ctlr' in 'ctlr+c'",
        ),
        ("{not json", "invalid action JSON"),
    ] {
        let (code, _, stderr) = common::act(&display, json);
        assert_eq!(code, 2, "{json}: {stderr}");
        assert!(stderr.contains(expect), "{json}: {stderr}");
    }
    let events = window.quiet_events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "button_press" || e["event"] == "key_press"),
        "nothing was executed: {events:?}"
    );
}

/// The control for the tests above: SIGKILL leaves no chance to clean up, and the X server
/// then keeps the keys down. So the releases seen above are deskhand's own work, not the
/// server's.
#[test]
fn without_deskhand_cleanup_the_server_keeps_keys_down() {
    let display = display(1024, 768);
    let mut child = spawn_act(
        &display,
        r#"{"action":"hold_key","chord":"ctrl+shift+a","ms":8000}"#,
    );
    wait_until_held(&display, "ctrl+shift+a", |(keys, _)| keys.len() >= 3);
    signal(&child, libc::SIGKILL);
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(200));
    let (keys, _) = held_by_server(&display);
    assert_eq!(keys.len(), 3, "after SIGKILL the keys stay down: {keys:?}");
}
