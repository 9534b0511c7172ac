//! `deskhand run --engine` against llama.cpp's own `llama-server`, built from the llama.cpp
//! source deskhand links (benches/build-llama-tools.sh), on 127.0.0.1:
//! - serving the tiny VLM with its projector: the screenshots reach the model (the prompt is
//!   longer by the image's tokens than the same run's without them), every reply is held to
//!   the family's grammar and parsed, the server keeps the conversation's start in its cache
//!   from one step to the next, and each step records the server's own timings and the time
//!   around them;
//! - serving the real Gemma 3 270M, a text model: without `--engine-text-only` the server's
//!   refusal of images is named with what to do; with it, a real model's replies are held to
//!   the grammar and become checked actions;
//! - killed mid-run: the run ends by the model-failure guard, with its trace and report whole.

mod common;
#[path = "common/models.rs"]
mod models;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Kill, TestWindow, display, read_jsonl};
use deskhand::model::tiny::{TINY_IMAGE_TOKENS, write_tiny_vlm};
use deskhand::screen::VirtualDisplay;
use models::{llama_server, text_model};
use serde_json::Value;

/// A `llama-server` of the test's own, stopped when the test ends.
struct LlamaServer {
    process: Kill,
    /// The API's base, `http://127.0.0.1:PORT/v1`.
    url: String,
    log: PathBuf,
}

impl LlamaServer {
    /// Serves `model` (and its projector) on a free loopback port with one slot and 2 threads;
    /// returns once its /health says it is ready.
    fn start(dir: &Path, model: &Path, mmproj: Option<&Path>) -> LlamaServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.join("llama-server.log");
        let out = std::fs::File::create(&log).expect("server log");
        let mut command = Command::new(llama_server());
        command
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-t", "2", "-np", "1", "-c", "8192", "--no-webui"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("server log"))
            .stderr(out);
        if let Some(mmproj) = mmproj {
            command.arg("--mmproj").arg(mmproj);
        }
        let mut process = Kill(command.spawn().expect("start llama-server"));
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("HTTP client");
        let started = Instant::now();
        loop {
            if let Ok(answer) = client.get(format!("{base}/health")).send()
                && answer.status().is_success()
            {
                break LlamaServer {
                    process,
                    url: format!("{base}/v1"),
                    log,
                };
            }
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!("llama-server exited ({status}):\n{}", tail(&log));
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "llama-server was not ready within 2 minutes:\n{}",
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }
}

fn tail(log: &Path) -> String {
    let lines: Vec<String> = std::fs::File::open(log)
        .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
        .unwrap_or_default();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `deskhand run --engine URL` on `display`, recording under `runs`, with nobody at the
/// terminal; random weights repeat themselves, so the repeat guards are out of the way.
fn run_command(display: &VirtualDisplay, dir: &Path, runs: &Path, url: &str) -> Command {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "schema_version = 1\npreset = \"balanced\"\n").expect("policy");
    let mut command = Command::new(env!("CARGO_BIN_EXE_deskhand"));
    command
        .args(["run", "Click the red button.", "--engine", url])
        .args(["--model", "served", "--family", "gemma3"])
        .args(["--max-repeats", "1000", "--max-unchanged", "1000"])
        .arg("--policy")
        .arg(&policy)
        .env("DISPLAY", display.name())
        .env("DESKHAND_NO_DIALOG", "1")
        .env("DESKHAND_RUNS_DIR", runs)
        .env("DESKHAND_GRANTS", dir.join("grants.toml"))
        .env("DESKHAND_SYSTEM_POLICY", "none")
        .stdin(Stdio::null());
    command
}

/// Runs to the end: (exit code, everything it said, the run's trace lines).
fn run(
    display: &VirtualDisplay,
    dir: &Path,
    name: &str,
    url: &str,
    extra: &[&str],
) -> (i32, String, Vec<Value>) {
    let runs = dir.join(name);
    let out = run_command(display, dir, &runs, url)
        .args(extra)
        .output()
        .expect("run deskhand");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said, whole_trace(&runs))
}

/// The one run's trace under `runs`, checked to be whole: a start, its steps, an end, a
/// report.
fn whole_trace(runs: &Path) -> Vec<Value> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .expect("runs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let trace = read_jsonl(&dirs[0].join("trace.jsonl"));
    assert_eq!(trace.first().map(|l| &l["record"]), Some(&"start".into()));
    assert_eq!(trace.last().map(|l| &l["record"]), Some(&"end".into()));
    assert!(dirs[0].join("report.html").is_file());
    trace
}

fn steps(trace: &[Value]) -> Vec<&Value> {
    trace.iter().filter(|l| l["record"] == "step").collect()
}

fn timing(step: &Value, name: &str) -> f64 {
    step["model"]["timings"][name].as_f64().unwrap_or(f64::NAN)
}

/// The tokens of the step's whole prompt: those the server evaluated and those it kept.
fn prompt_tokens(step: &Value) -> f64 {
    timing(step, "prefill_tokens") + timing(step, "reused_tokens")
}

#[test]
fn the_tiny_vlm_on_llama_server_sees_the_screenshots_and_answers_in_the_grammar() {
    let display = display(1280, 800);
    let _window = TestWindow::open(&display, "640x480+100+100", "llama-server tiny vlm");
    let dir = tempfile::tempdir().expect("temp dir");
    let tiny = write_tiny_vlm(&dir.path().join("model")).expect("tiny VLM");
    let server = LlamaServer::start(dir.path(), &tiny.model, Some(&tiny.mmproj));

    // The same first step without the screenshot, for the length of the prompt without it.
    let (_, said, text_only) = run(
        &display,
        dir.path(),
        "text-only",
        &server.url,
        &["--max-steps", "1", "--engine-text-only"],
    );
    let text_only = steps(&text_only);
    assert_eq!(text_only.len(), 1, "{said}");

    let (code, said, trace) = run(
        &display,
        dir.path(),
        "runs",
        &server.url,
        &["--max-steps", "4"],
    );
    // Four steps end by the step limit (1) unless the model said done (0) or fail (1).
    assert!(
        matches!(code, 0 | 1),
        "{code}: {said}\n{}",
        tail(&server.log)
    );
    assert!(
        trace[0]["engine"]
            .as_str()
            .is_some_and(|e| e.contains(&server.url)),
        "{}",
        trace[0]
    );
    let steps = steps(&trace);
    assert!(!steps.is_empty(), "{said}");
    let image_tokens = prompt_tokens(steps[0]) - prompt_tokens(text_only[0]);
    assert!(
        image_tokens >= TINY_IMAGE_TOKENS as f64,
        "the screenshot added {image_tokens} tokens to the prompt, not the image's {TINY_IMAGE_TOKENS}: {}\n{}",
        steps[0],
        text_only[0]
    );
    for step in &steps {
        eprintln!(
            "step {}: {} -> {} {}",
            step["step"], step["action"], step["outcome"]["status"], step["model"]["timings"]
        );
        // Random weights, held to the grammar by the server: every reply is an action that
        // parsed, was checked by the policy and became an outcome.
        assert!(
            step["model"]["raw"].as_str().is_some_and(|r| !r.is_empty()),
            "{step}"
        );
        assert!(step["action"].is_object(), "no parsed action: {step}");
        assert!(step["decision"].is_object(), "not checked: {step}");
        assert_ne!(step["outcome"]["status"], "error", "{step}");
        assert!(
            timing(step, "prefill_ms") > 0.0,
            "the server's timings: {step}"
        );
        assert!(timing(step, "request_encode_ms") > 0.0, "{step}");
        assert!(timing(step, "http_overhead_ms") >= 0.0, "{step}");
        assert!(
            timing(step, "total_ms") >= timing(step, "prefill_ms") + timing(step, "decode_ms"),
            "{step}"
        );
    }
    for step in steps.iter().skip(1) {
        // The server kept what the steps have in common (the system prompt, the task, the
        // earlier turns) and evaluated only the rest.
        assert!(timing(step, "reused_tokens") > 0.0, "{step}");
        assert!(
            timing(step, "reused_tokens") > timing(step, "prefill_tokens"),
            "{step}"
        );
    }
    server.stop();
}

#[test]
fn gemma_270m_on_llama_server_answers_in_the_grammar_as_a_text_model() {
    let display = display(1280, 800);
    let _window = TestWindow::open(&display, "640x480+100+100", "llama-server gemma");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = LlamaServer::start(dir.path(), &text_model(), None);

    // A server without a projector refuses screenshots; the error says what to do.
    let (code, said, trace) = run(
        &display,
        dir.path(),
        "with-images",
        &server.url,
        &["--max-steps", "1"],
    );
    assert_eq!(code, 1, "{said}");
    assert!(said.contains(&server.url), "{said}");
    assert!(said.contains("--engine-text-only"), "{said}");
    assert_eq!(steps(&trace)[0]["outcome"]["status"], "error");

    let (code, said, trace) = run(
        &display,
        dir.path(),
        "runs",
        &server.url,
        &["--max-steps", "3", "--engine-text-only"],
    );
    assert!(
        matches!(code, 0 | 1),
        "{code}: {said}\n{}",
        tail(&server.log)
    );
    assert!(
        trace[0]["engine"]
            .as_str()
            .is_some_and(|e| e.contains("text only") && e.contains(&server.url)),
        "{}",
        trace[0]
    );
    let steps = steps(&trace);
    assert!(!steps.is_empty(), "{said}");
    for step in &steps {
        eprintln!(
            "step {}: {:?} -> {} {}",
            step["step"], step["model"]["raw"], step["outcome"]["status"], step["model"]["timings"]
        );
        assert!(step["action"].is_object(), "no parsed action: {step}");
        assert!(step["decision"].is_object(), "not checked: {step}");
        assert_ne!(step["outcome"]["status"], "error", "{step}");
        assert!(timing(step, "decode_tokens") > 0.0, "{step}");
    }
    server.stop();
}

#[test]
fn a_llama_server_killed_mid_run_ends_the_run_cleanly() {
    let display = display(1280, 800);
    let _window = TestWindow::open(&display, "640x480+100+100", "llama-server killed");
    let dir = tempfile::tempdir().expect("temp dir");
    let tiny = write_tiny_vlm(&dir.path().join("model")).expect("tiny VLM");
    let server = LlamaServer::start(dir.path(), &tiny.model, Some(&tiny.mmproj));
    let runs = dir.path().join("runs");
    let mut child = Kill(
        run_command(&display, dir.path(), &runs, &server.url)
            .args(["--max-steps", "200"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start deskhand run"),
    );
    // Two steps on disk, then the server goes.
    let started = Instant::now();
    loop {
        let lines = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .and_then(|e| std::fs::read_to_string(e.path().join("trace.jsonl")).ok())
            .map_or(0, |t| t.lines().count());
        if lines >= 3 {
            break;
        }
        assert!(
            child.0.try_wait().expect("wait").is_none(),
            "the run ended early"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never got going:\n{}",
            tail(&server.log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop();
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "deskhand went on without its server"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut said = String::new();
    if let Some(mut stderr) = child.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
    }
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("cannot reach"), "{said}");
    let trace = whole_trace(&runs);
    assert_eq!(trace.last().expect("end")["status"], "guard");
    let steps = steps(&trace);
    let errors = steps
        .iter()
        .rev()
        .take_while(|s| s["outcome"]["status"] == "error")
        .count();
    assert_eq!(errors, 3, "three failed steps end the run: {steps:?}");
}
