//! `deskhand run` with the project's tiny generated VLM: the whole path from a real screenshot
//! through llama.cpp and mtmd to the policy, the executor and the record, for 5 steps.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestWindow, display, held_by_server};
use deskhand::model::tiny::write_tiny_vlm;
use deskhand::screen::VirtualDisplay;
use deskhand::trace::{Outcome, TraceLine, read_trace};

/// `deskhand run` with a freshly written tiny VLM and a balanced policy, recording under
/// `dir/runs`, with nobody at the terminal.
fn tiny_run(display: &VirtualDisplay, dir: &Path, max_steps: u32) -> Command {
    let tiny = write_tiny_vlm(&dir.join("model")).expect("tiny VLM");
    let policy = dir.join("policy.toml");
    // Random weights propose anything; the policy decides, the executor runs what it allows.
    std::fs::write(&policy, "schema_version = 1\npreset = \"balanced\"\n").expect("policy");
    let mut command = Command::new(env!("CARGO_BIN_EXE_deskhand"));
    command
        .args(["run", "Click the red button.", "--family", "gemma3"])
        .args(["--max-steps", &max_steps.to_string()])
        // Random weights repeat themselves; the guards that stop that are tested elsewhere.
        .args(["--max-repeats", "1000", "--max-unchanged", "1000"])
        .arg("--model")
        .arg(&tiny.model)
        .arg("--mmproj")
        .arg(&tiny.mmproj)
        .arg("--policy")
        .arg(&policy)
        .env("DISPLAY", display.name())
        // Nobody answers the asks random weights run into.
        .env("DESKHAND_NO_DIALOG", "1")
        .env("DESKHAND_RUNS_DIR", dir.join("runs"))
        .env("DESKHAND_GRANTS", dir.join("grants.toml"))
        .env("DESKHAND_SYSTEM_POLICY", "none")
        .stdin(Stdio::null());
    command
}

#[test]
fn the_tiny_vlm_runs_five_checked_and_recorded_steps() {
    let display = display(1280, 800);
    let _window = TestWindow::open(&display, "640x480+100+100", "tiny vlm run");
    let dir = tempfile::tempdir().expect("temp dir");
    let runs = dir.path().join("runs");
    let out = tiny_run(&display, dir.path(), 5)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run deskhand");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Five steps end by the step limit (1) unless the model said done (0) or fail (1).
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "status {:?}\n{stdout}\n{stderr}",
        out.status
    );

    let run_dir = std::fs::read_dir(&runs)
        .expect("runs dir")
        .next()
        .expect("one run")
        .expect("entry")
        .path();
    let (lines, warnings) = read_trace(&run_dir.join("trace.jsonl")).expect("trace");
    assert!(warnings.is_empty(), "{warnings:?}");
    let steps: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            TraceLine::Step(s) => Some(s),
            _ => None,
        })
        .collect();
    let ended_early = steps.iter().any(|s| {
        matches!(
            s.outcome,
            Outcome::Done { .. } | Outcome::Failed { .. } | Outcome::Asked { .. }
        )
    });
    assert!(
        steps.len() == 5 || ended_early,
        "{} steps:\n{stdout}\n{stderr}",
        steps.len()
    );
    let mut encodes = 0;
    let mut distinct_frames = std::collections::HashSet::new();
    for step in &steps {
        let model = step
            .model
            .as_ref()
            .expect("every step has the model's reply");
        assert!(!model.raw.is_empty());
        // Each screenshot goes through the encoder at most once: the earlier ones (up to the
        // default --images 3 and --evict-every 6) are in the cache with the conversation
        // before them, and a screen that did not change is the kept encoding again.
        let t = &model.timings;
        eprintln!("step {}: {t:?}", step.step);
        assert!(t.image_encodes <= 1, "step {}: {t:?}", step.step);
        encodes += t.image_encodes;
        assert_eq!(t.image_tokens, deskhand::model::tiny::TINY_IMAGE_TOKENS);
        if step.step > 1 {
            assert!(
                t.reused_tokens > 5 * t.prefill_tokens,
                "step {}: {t:?}",
                step.step
            );
        }
        let file = run_dir.join(&step.frame.as_ref().expect("frame").file);
        distinct_frames.insert(std::fs::read(file).expect("the frame"));
        let action = step.action.as_ref().expect("a parsed action");
        action.validate().expect("every action is valid");
        assert!(step.decision.is_some(), "every action was checked");
        assert!(
            matches!(
                step.outcome,
                Outcome::Executed { .. }
                    | Outcome::Refused { .. }
                    | Outcome::Waited { .. }
                    | Outcome::Done { .. }
                    | Outcome::Failed { .. }
                    | Outcome::Asked { .. }
                    | Outcome::Error { .. }
            ),
            "{:?}",
            step.outcome
        );
        assert!(
            run_dir
                .join(&step.frame.as_ref().expect("frame").file)
                .is_file()
        );
    }
    assert_eq!(
        encodes,
        distinct_frames.len(),
        "one encode per distinct screenshot"
    );
    let report = std::fs::read_to_string(run_dir.join("report.html")).expect("report.html");
    assert!(report.contains("data:image/png;base64,"));
    assert!(report.matches("class=\"decision ").count() >= steps.len());
}

#[test]
fn ctrl_c_mid_run_stops_within_moments_releases_input_and_records_the_abort() {
    let display = display(1280, 800);
    let _window = TestWindow::open(&display, "640x480+100+100", "tiny vlm abort");
    let dir = tempfile::tempdir().expect("temp dir");
    let runs = dir.path().join("runs");
    let mut child = tiny_run(&display, dir.path(), 200)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start deskhand run");

    // Wait until the run is well under way: three lines (start and two steps) on disk. Most of
    // each step is the model, so the signal most likely lands mid-inference.
    let started = Instant::now();
    let trace = loop {
        let found = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.path().join("trace.jsonl"));
        if let Some(trace) = found
            && std::fs::read_to_string(&trace).is_ok_and(|t| t.lines().count() >= 3)
        {
            break trace;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run never got going"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(150));
    let signalled = Instant::now();
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "deskhand did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let stopped_in = signalled.elapsed();
    eprintln!("stopped {stopped_in:?} after SIGINT");
    assert_eq!(status.code(), Some(130));
    // The requirement is 200 ms; allow for a loaded 2-core CI machine, and report the figure.
    assert!(stopped_in < Duration::from_secs(1), "took {stopped_in:?}");

    let (keys, buttons) = held_by_server(&display);
    assert!(
        keys.is_empty() && buttons == 0,
        "held after abort: {keys:?} {buttons:#x}"
    );
    let (lines, _) = read_trace(&trace).expect("trace parses");
    match lines.last() {
        Some(TraceLine::End(end)) => {
            assert_eq!(end.exit_code, 130);
            assert_eq!(end.status, deskhand::trace::RunStatus::Aborted);
            assert!(end.message.contains("SIGINT"), "{}", end.message);
            let steps = lines
                .iter()
                .filter(|l| matches!(l, TraceLine::Step(_)))
                .count();
            assert_eq!(end.steps as usize, steps);
        }
        other => panic!("the abort was not recorded: {other:?}"),
    }
}
