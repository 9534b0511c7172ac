//! The email that started deskhand, end to end: a scripted agent fills a Thunderbird-style
//! composer (the test window in its mail mode, run as a program called `thunderbird`) and
//! clicks Send, under the balanced preset, with and without a user rule that unlocks
//! `send_email` for one recipient, and with the system layer's lock on the floor. Nobody can
//! answer an ask (stdin is not a terminal), so an ask is a refusal.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestWindow, deskhand, display, read_jsonl};
use serde_json::Value;

const BALANCED: &str = "schema_version = 1\npreset = \"balanced\"\n";

/// Sending mail to the team from the composer, when the To field (the first text typed into
/// that window, up to the Tab that leaves it) is someone at interconnects.ai.
const MAIL_UNLOCK: &str = r#"
[[rule]]
id = "mail-to-my-team"
decision = "allow"
reason = "I send mail to my team myself every day"
intent = ["send_email"]
app = ["thunderbird"]
title = '^Write: '
window_text_matches = '^[a-z.]+@interconnects\.ai\t'
unlock = ["floor.risky_intent"]
"#;

const LOCKED_FLOOR: &str = "schema_version = 1\npreset = \"balanced\"\n\n[floor]\nlocked = true\n";

struct Case {
    user_policy: String,
    system_policy: Option<&'static str>,
    recipient: &'static str,
    yes: bool,
}

/// What one run left behind.
struct Outcome {
    sent: Vec<Value>,
    trace: Vec<Value>,
    report: String,
    stderr: String,
}

impl Outcome {
    /// The trace's step that clicked Send.
    fn send_step(&self) -> &Value {
        self.trace
            .iter()
            .find(|l| l["record"] == "step" && l["action"]["action"] == "click")
            .unwrap_or_else(|| panic!("no click step in the trace; stderr:\n{}", self.stderr))
    }
}

fn run(case: &Case, dir: &Path) -> Outcome {
    let display = display(1024, 600);
    let composer = TestWindow::open_with(
        &display,
        "640x400+0+0",
        "unused",
        Some("thunderbird"),
        &["--mail"],
    );
    let send = composer.target("send");
    let script = [
        format!(r#"{{"action":"type","text":"{}"}}"#, case.recipient),
        r#"{"action":"key","chord":"tab"}"#.to_owned(),
        r#"{"action":"type","text":"hello"}"#.to_owned(),
        r#"{"action":"key","chord":"tab"}"#.to_owned(),
        r#"{"action":"type","text":"Hello Nathan"}"#.to_owned(),
        format!(r#"{{"action":"click","x":{},"y":{}}}"#, send.x, send.y),
        r#"{"action":"done","summary":"sent the email"}"#.to_owned(),
    ];
    let script_path = dir.join("script.jsonl");
    std::fs::write(&script_path, script.join("\n") + "\n").expect("write the script");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, &case.user_policy).expect("write the policy");
    let system: PathBuf = match case.system_policy {
        Some(text) => {
            let path = dir.join("system.toml");
            std::fs::write(&path, text).expect("write the system policy");
            path
        }
        None => PathBuf::from("none"),
    };
    let runs = dir.join("runs");
    let stderr_path = dir.join("stderr.txt");
    let mut command = deskhand(&display);
    command
        .args([
            "run",
            "send an email to Nathan Lambert saying hello",
            "--script",
        ])
        .arg(&script_path)
        .env("DESKHAND_RUNS_DIR", &runs)
        .env("DESKHAND_POLICY", &policy)
        .env("DESKHAND_GRANTS", dir.join("grants.toml"))
        .env("DESKHAND_SYSTEM_POLICY", &system)
        .env("DESKHAND_MODELS_DIR", dir.join("models"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).expect("stderr file"));
    if case.yes {
        command.arg("--yes");
    }
    let mut child = command.spawn().expect("start deskhand run");
    let started = Instant::now();
    while child.try_wait().expect("wait for deskhand").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "deskhand run did not end in 60 s; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let events = composer.quiet_events();
    let run_dir = deskhand::trace::run_folders(&runs)
        .expect("the runs folder")
        .pop()
        .expect("a run folder with a trace");
    let mail: Vec<&Value> = events.iter().filter(|e| e["event"] == "mail").collect();
    assert_eq!(
        mail.last().map(|e| e["mail"]["to"].clone()),
        Some(Value::from(case.recipient)),
        "the composer got the recipient: {events:?}"
    );
    Outcome {
        sent: events
            .iter()
            .filter(|e| e["event"] == "sent")
            .cloned()
            .collect(),
        trace: read_jsonl(&run_dir.join("trace.jsonl")),
        report: std::fs::read_to_string(run_dir.join("report.html")).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

fn unlocked_policy() -> String {
    format!("{BALANCED}{MAIL_UNLOCK}")
}

/// Send asked, nobody could answer, so it was refused and the model was told.
fn assert_asked_and_not_sent(outcome: &Outcome, what: &str) {
    assert!(
        outcome.sent.is_empty(),
        "{what}: mail was sent: {:?}",
        outcome.sent
    );
    let step = outcome.send_step();
    assert_eq!(step["decision"]["decision"], "ask", "{what}: {step}");
    assert_eq!(
        step["decision"]["rule"], "floor.risky_intent",
        "{what}: {step}"
    );
    assert_eq!(step["outcome"]["status"], "refused", "{what}: {step}");
    assert!(
        step["decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("send_email always asks")),
        "{what}: {step}"
    );
    assert!(
        step["decision"]["unlocked"].is_null(),
        "{what}: nothing was unlocked: {step}"
    );
}

#[test]
fn the_email_that_started_it_all() {
    let dir = tempfile::tempdir().expect("temp dir");
    let case_dir = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).expect("case dir");
        path
    };

    // 1. The balanced preset: Send asks, the ask is refused, nothing is sent.
    let balanced = run(
        &Case {
            user_policy: BALANCED.to_owned(),
            system_policy: None,
            recipient: "nathan@interconnects.ai",
            yes: false,
        },
        &case_dir("1-balanced"),
    );
    assert_asked_and_not_sent(&balanced, "balanced");
    assert!(
        balanced.stderr.contains("nobody can answer: denied"),
        "{}",
        balanced.stderr
    );
    // Nobody answered, which counts as the person's no; the model is told so in its next turn.
    assert_eq!(balanced.send_step()["outcome"]["by"], "user");
    assert_eq!(balanced.send_step()["answer"], "deny");
    // The trace says nobody was there to answer, so `policy suggest` does not learn from it.
    assert_eq!(balanced.send_step()["answered_by"], "nobody");

    // 2. A user rule unlocks send_email in that composer for that recipient: sent, no ask.
    let unlocked = run(
        &Case {
            user_policy: unlocked_policy(),
            system_policy: None,
            recipient: "nathan@interconnects.ai",
            yes: false,
        },
        &case_dir("2-unlocked"),
    );
    assert_eq!(unlocked.sent.len(), 1, "stderr:\n{}", unlocked.stderr);
    assert_eq!(unlocked.sent[0]["mail"]["to"], "nathan@interconnects.ai");
    assert_eq!(unlocked.sent[0]["mail"]["subject"], "hello");
    assert_eq!(unlocked.sent[0]["mail"]["body"], "Hello Nathan");
    let step = unlocked.send_step();
    assert_eq!(step["decision"]["decision"], "allow", "{step}");
    assert_eq!(step["decision"]["rule"], "mail-to-my-team", "{step}");
    assert!(step["answer"].is_null(), "nobody was asked: {step}");
    let named = "floor.risky_intent (send_email) unlocked by rule 'mail-to-my-team' at ";
    assert!(
        step["decision"]["unlocked"][0]
            .as_str()
            .is_some_and(|u| u.starts_with(named)),
        "{step}"
    );
    // The title the click saw had followed the subject.
    assert_eq!(step["request"]["title"], "Write: hello - Thunderbird");
    assert!(
        unlocked.report.contains("Floor unlocked"),
        "the report names the unlock"
    );
    // The report escapes HTML: the rule's quotes are entities there.
    let in_html = named.replace('\'', "&#39;");
    assert!(
        unlocked.report.contains(&in_html),
        "the report names the rule"
    );
    assert!(
        unlocked.stderr.contains(
            "unlocked: floor.risky_intent (send_email) (now allow) by rule 'mail-to-my-team'"
        ),
        "the start of the run lists the unlock:\n{}",
        unlocked.stderr
    );
    assert!(
        unlocked.trace[0]["unlocks"][0]
            .as_str()
            .is_some_and(|u| u.contains("mail-to-my-team")),
        "the trace's start line lists it: {}",
        unlocked.trace[0]
    );

    // 3. The same rule, another recipient: Send asks.
    let stranger = run(
        &Case {
            user_policy: unlocked_policy(),
            system_policy: None,
            recipient: "nathan@example.com",
            yes: false,
        },
        &case_dir("3-stranger"),
    );
    assert_asked_and_not_sent(&stranger, "another recipient");

    // 4. The system layer locks the floor: the unlock is refused, Send asks, the run says so.
    let locked = run(
        &Case {
            user_policy: unlocked_policy(),
            system_policy: Some(LOCKED_FLOOR),
            recipient: "nathan@interconnects.ai",
            yes: false,
        },
        &case_dir("4-locked"),
    );
    assert_asked_and_not_sent(&locked, "locked floor");
    assert!(
        locked
            .stderr
            .contains("refused unlock: floor.risky_intent (send_email) by rule 'mail-to-my-team'")
            && locked.stderr.contains("system.toml:"),
        "the run names the refused unlock and the file that locks:\n{}",
        locked.stderr
    );

    // 5. --yes answers rule asks, never a floor ask that is not unlocked.
    let yes = run(
        &Case {
            user_policy: unlocked_policy(),
            system_policy: None,
            recipient: "nathan@example.com",
            yes: true,
        },
        &case_dir("5-yes"),
    );
    assert_asked_and_not_sent(&yes, "--yes");
}
