//! `deskhand run --engine URL` against a model server of the test's own on 127.0.0.1: a good
//! server drives a run and is sent the family's grammar, messages and screenshot; a server
//! that answers 500, drops the connection, sends garbage or is too slow is named with what it
//! did, and the run ends cleanly with its trace and report; a server that dies mid-run ends the
//! run the same way; a host no policy lists is refused before any request.
//!
//! The fake server is bounded: it serves at most `MAX_CONNECTIONS` and stops after
//! `SERVER_LIFETIME`, whichever comes first.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestWindow, display, read_jsonl};
use deskhand::model::family::FamilyId;
use deskhand::model::{ModelAction, ParsedReply};
use deskhand::screen::{FrameMap, MonitorInfo, VirtualDisplay};
use serde_json::{Value, json};

const MAX_CONNECTIONS: usize = 64;
const SERVER_LIFETIME: Duration = Duration::from_secs(120);

/// What the server does with one request.
#[derive(Clone)]
enum Answer {
    /// 200 with this reply as the model's message.
    Reply(String),
    /// This status and body.
    Status(u16, &'static str),
    /// Close the connection without a word.
    Drop,
    /// A 200 whose body is not JSON.
    Garbage,
    /// Wait this long, then reply.
    Slow(Duration, String),
}

struct FakeServer {
    url: String,
    requests: Arc<Mutex<Vec<Value>>>,
}

/// Serves `first` in order, then `rest` for every later request.
fn serve(first: Vec<Answer>, rest: Answer) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let url = format!("http://{}/v1", listener.local_addr().expect("address"));
    listener.set_nonblocking(true).expect("nonblocking");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut answers = first.into_iter();
        let mut served = 0;
        while served < MAX_CONNECTIONS && started.elapsed() < SERVER_LIFETIME {
            let (stream, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            served += 1;
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream);
            let Some(body) = read_request(&mut reader) else {
                continue;
            };
            seen.lock().expect("requests").push(body);
            let mut stream = reader.into_inner();
            let answer = answers.next().unwrap_or_else(|| rest.clone());
            let (status, text) = match answer {
                Answer::Reply(content) => (200, completion(&content)),
                Answer::Status(code, text) => (code, text.to_owned()),
                Answer::Drop => continue,
                Answer::Garbage => (200, "<html>502 Bad Gateway</html>".to_owned()),
                Answer::Slow(delay, content) => {
                    std::thread::sleep(delay);
                    (200, completion(&content))
                }
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    FakeServer { url, requests }
}

/// One request's JSON body, or None when the client went away.
fn read_request(reader: &mut BufReader<std::net::TcpStream>) -> Option<Value> {
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

fn completion(content: &str) -> String {
    json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 321, "completion_tokens": 9},
    })
    .to_string()
}

/// Gemma 3's reply for `action`, as a model would write it.
fn gemma(action: ModelAction) -> String {
    FamilyId::Gemma3
        .family()
        .render_reply(&ParsedReply::new(None, action))
}

/// `deskhand run` with `--engine URL`, recording under `dir/runs`.
fn run(display: &VirtualDisplay, dir: &Path, engine: &str, extra: &[&str]) -> (i32, String) {
    let policy = dir.join("policy.toml");
    if !policy.exists() {
        std::fs::write(&policy, "schema_version = 1\npreset = \"balanced\"\n").expect("policy");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_deskhand"))
        .args(["run", "Click the red square.", "--engine", engine])
        .args([
            "--model",
            "test-model",
            "--family",
            "gemma3",
            "--max-steps",
            "6",
        ])
        .args(extra)
        .arg("--policy")
        .arg(&policy)
        .env("DISPLAY", display.name())
        .env("DESKHAND_NO_DIALOG", "1")
        .env("DESKHAND_RUNS_DIR", dir.join("runs"))
        .env("DESKHAND_GRANTS", dir.join("grants.toml"))
        .env("DESKHAND_SYSTEM_POLICY", "none")
        .stdin(Stdio::null())
        .output()
        .expect("run deskhand");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

/// The one run's trace, checked to be whole: a start, its steps, an end, and a report.
fn the_run(dir: &Path) -> Vec<Value> {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
        .expect("runs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let trace = read_jsonl(&runs[0].join("trace.jsonl"));
    assert_eq!(
        trace.first().map(|l| l["record"].clone()),
        Some(json!("start"))
    );
    assert_eq!(
        trace.last().map(|l| l["record"].clone()),
        Some(json!("end"))
    );
    assert!(runs[0].join("report.html").is_file());
    trace
}

#[test]
fn a_model_server_drives_a_run_held_to_the_familys_grammar() {
    let display = display(1280, 720);
    let window = TestWindow::open(&display, "600x400+100+100", "remote engine");
    let red = window.target("red");
    // Gemma 3 sees a fixed 896x896 frame and names points in 0-1000.
    let map = FrameMap::new(&MonitorInfo::single("screen", 1280, 720), 896, 896);
    let at = map
        .from_screen(red, FamilyId::Gemma3.family().point_format())
        .expect("red on the screen");
    let server = serve(
        vec![
            Answer::Reply(gemma(ModelAction::Click {
                at,
                button: deskhand::input::MouseButton::Left,
            })),
            Answer::Reply(gemma(ModelAction::Done {
                summary: "clicked it".into(),
            })),
        ],
        Answer::Status(500, "no more"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, said) = run(&display, dir.path(), &server.url, &[]);
    assert_eq!(code, 0, "{said}");
    window.wait_for("the click on red", Duration::from_secs(10), |e| {
        e["event"] == "button_press" && e["target"] == "red"
    });
    let requests = server.requests.lock().expect("requests").clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let first = &requests[0];
    assert_eq!(first["model"], "test-model");
    assert_eq!(
        first["grammar"],
        Value::String(FamilyId::Gemma3.family().grammar())
    );
    let text = first["messages"].to_string();
    assert!(text.contains("Click the red square."), "{text}");
    assert!(
        text.contains("data:image/png;base64,"),
        "no screenshot in {text}"
    );
    let trace = the_run(dir.path());
    assert!(
        trace[0]["engine"]
            .as_str()
            .is_some_and(|e| e.contains(&server.url)),
        "{}",
        trace[0]
    );
    assert_eq!(trace[1]["model"]["timings"]["prefill_tokens"], 321);
}

/// A server that fails every request in one way: the run ends after three failed steps, its
/// message names the server and what it did, and the trace and report are whole.
fn failing(answer: Answer, extra: &[&str], expect: &[&str]) {
    let display = display(640, 480);
    let server = serve(Vec::new(), answer);
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let (code, said) = run(&display, dir.path(), &server.url, extra);
    assert_eq!(code, 1, "{said}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(
        said.contains(&server.url),
        "the server is not named: {said}"
    );
    for words in expect {
        assert!(said.contains(words), "no {words:?} in: {said}");
    }
    let trace = the_run(dir.path());
    let end = trace.last().expect("end");
    assert_eq!(end["status"], "guard", "{end}");
}

#[test]
fn a_server_answering_500_is_tried_again_then_named() {
    failing(
        Answer::Status(500, "{\"error\":\"out of memory\"}"),
        &[],
        &["500", "out of memory", "after 4 tries"],
    );
}

#[test]
fn a_server_dropping_the_connection_is_tried_again_then_named() {
    failing(Answer::Drop, &[], &["after 4 tries"]);
}

#[test]
fn a_server_sending_garbage_is_named() {
    failing(Answer::Garbage, &[], &["not JSON", "502 Bad Gateway"]);
}

#[test]
fn a_slow_server_times_out() {
    failing(
        Answer::Slow(Duration::from_secs(4), gemma(ModelAction::Wait { ms: 10 })),
        &["--engine-timeout", "1"],
        &["did not answer within 1 s"],
    );
}

#[test]
fn a_server_that_dies_mid_run_ends_the_run_cleanly() {
    let display = display(640, 480);
    let server = serve(
        vec![Answer::Reply(gemma(ModelAction::Wait { ms: 10 }))],
        Answer::Drop,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, said) = run(&display, dir.path(), &server.url, &[]);
    assert_eq!(code, 1, "{said}");
    let trace = the_run(dir.path());
    let outcomes: Vec<Value> = trace
        .iter()
        .filter(|l| l["record"] == "step")
        .map(|l| l["outcome"]["status"].clone())
        .collect();
    assert_eq!(
        outcomes,
        vec![
            json!("waited"),
            json!("error"),
            json!("error"),
            json!("error")
        ],
        "{said}"
    );
}

#[test]
fn a_host_no_policy_lists_is_refused_before_any_request() {
    let display = display(640, 480);
    let dir = tempfile::tempdir().expect("temp dir");
    // `.invalid` never resolves, and nothing tries: the policy refuses first.
    let (code, said) = run(&display, dir.path(), "http://gpu.invalid:8080/v1", &[]);
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("refused before any request") && said.contains("allowed_hosts"),
        "{said}"
    );
    assert!(
        !dir.path().join("runs").exists(),
        "a run was recorded: {said}"
    );

    // The user lists it, but the system layer's list does not: the admin's list binds.
    std::fs::write(
        dir.path().join("policy.toml"),
        "schema_version = 1\npreset = \"balanced\"\n\n[engine]\nallowed_hosts = [\"gpu.invalid\"]\n",
    )
    .expect("policy");
    let system = dir.path().join("system.toml");
    std::fs::write(
        &system,
        "schema_version = 1\npreset = \"strict\"\n\n[engine]\nallowed_hosts = [\"gpu-box.lan\"]\n",
    )
    .expect("system policy");
    let out = Command::new(env!("CARGO_BIN_EXE_deskhand"))
        .args(["run", "x", "--engine", "http://gpu.invalid:8080/v1"])
        .args(["--model", "m", "--family", "gemma3", "--policy"])
        .arg(dir.path().join("policy.toml"))
        .env("DISPLAY", display.name())
        .env("DESKHAND_RUNS_DIR", dir.path().join("runs"))
        .env("DESKHAND_GRANTS", dir.path().join("grants.toml"))
        .env("DESKHAND_SYSTEM_POLICY", &system)
        .stdin(Stdio::null())
        .output()
        .expect("run deskhand");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("system policy") && said.contains("binds"),
        "{said}"
    );
}
