//! `deskhand policy ...` end to end: the files a user writes, the errors they see, the
//! decisions `explain` prints, trace replays and grants. No display is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use deskhand::policy::{GrantScope, GrantStore, Intent};

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn policy(&self) -> PathBuf {
        self.dir.path().join("config/policy.toml")
    }

    fn grants(&self) -> PathBuf {
        self.dir.path().join("data/grants.toml")
    }

    fn write_policy(&self, text: &str) {
        std::fs::create_dir_all(self.dir.path().join("config")).expect("config dir");
        std::fs::write(self.policy(), text).expect("write policy");
    }

    /// Runs `deskhand policy ARGS` with this home's files and no display.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_deskhand"))
            .arg("policy")
            .args(args)
            .env("DESKHAND_POLICY", self.policy())
            .env("DESKHAND_GRANTS", self.grants())
            .env("DESKHAND_SYSTEM_POLICY", "none")
            .env_remove("DISPLAY")
            .output()
            .expect("run deskhand policy");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn explain_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["explain"];
        all.extend_from_slice(args);
        all.push("--json");
        let (code, out, err) = self.run(&all);
        assert_eq!(code, 0, "explain {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

const TERMINAL_POLICY: &str = r#"schema_version = 1
preset = "balanced"

[apps.terminal]
names = ["xterm"]

[[rule]]
id = "terminal-asks"
decision = "ask"
reason = "commands run with your rights"
app = ["terminal"]
action = ["type"]
"#;

#[test]
fn init_writes_a_valid_commented_file_and_refuses_to_overwrite() {
    let home = Home::new();
    let (code, out, err) = home.run(&["init", "--preset", "strict"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("preset strict"), "{out}");
    let text = std::fs::read_to_string(home.policy()).unwrap();
    assert!(text.contains("preset = \"strict\""));
    assert!(text.lines().filter(|l| l.starts_with('#')).count() > 10);

    let (code, _, err) = home.run(&["init"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(home.policy()).unwrap(), text);

    let (code, _, err) = home.run(&["init", "--preset", "permissive", "--force"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = home.run(&["check"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("preset permissive") && out.contains("inline examples passed"),
        "{out}"
    );
}

#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let home = Home::new();
    let broken = r#"schema_version = 1
preset = "balanced"

[[rule]]
id = "one"
decision = "deny"
reason = "r"
title = "([unclosed"

[[rule]]
id = "one"
decision = "ask"
reason = "r"
keys = ["ctrl+shfit+t"]

  [[rule.example]]
  action = { action = "click", x = 1, y = 1 }
  expect = "deny"
"#;
    home.write_policy(broken);
    let (code, _, err) = home.run(&["check"]);
    assert_eq!(code, 1);
    let path = home.policy().display().to_string();
    for (position, words) in [
        ("8:9", "not a valid regex"),
        ("11:6", "duplicate rule id 'one'"),
        ("14:9", "unknown key 'shfit'"),
    ] {
        let prefix = format!("{path}:{position}: ");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(words)),
            "no line starting {prefix} with {words:?} in:\n{err}"
        );
    }
    assert!(err.contains("locked"), "{err}");
    assert!(err.contains("examples are checked once"), "{err}");

    // With the rest fixed, the failing example is reported at its own position.
    home.write_policy(
        &broken
            .replace("title = \"([unclosed\"", "title = \"bank\"")
            .replacen("id = \"one\"", "id = \"two\"", 1)
            .replace("shfit", "shift"),
    );
    let (code, _, err) = home.run(&["check"]);
    assert_eq!(code, 1);
    let prefix =
        format!("{path}:16:3: example of rule 'one' expects deny, but the policy decides allow");
    assert!(err.starts_with(&prefix), "{err}");
}

#[test]
fn check_names_the_position_of_syntax_errors_unknown_keys_and_schema_versions() {
    let home = Home::new();
    let path = home.policy().display().to_string();
    for (text, position) in [
        ("schema_version = 1\npreset = \"balanced\"\n[[rule]\n", "3:"),
        (
            "schema_version = 1\npreset = \"balanced\"\nallow_everything = true\n",
            "3:1",
        ),
        ("schema_version = 7\npreset = \"balanced\"\n", "1:18"),
    ] {
        home.write_policy(text);
        let (code, _, err) = home.run(&["check"]);
        assert_eq!(code, 1, "{text}");
        assert!(
            err.starts_with(&format!("{path}:{position}")),
            "{text:?} gave:\n{err}"
        );
    }
    let (code, _, err) = home.run(&["check", "/nonexistent/policy.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("policy init"), "{err}");
}

#[test]
fn explain_prints_the_decision_the_rule_and_what_matched() {
    let home = Home::new();
    home.write_policy(TERMINAL_POLICY);
    let json = home.explain_json(&[r#"{"action":"type","text":"ls"}"#, "--app", "xterm"]);
    assert_eq!(json["decision"], "ask");
    assert_eq!(json["rule"], "terminal-asks");
    let source = json["source"].as_str().unwrap();
    assert!(source.ends_with("policy.toml:8"), "{source}");

    let json = home.explain_json(&[r#"{"action":"type","text":"ls"}"#, "--app", "code"]);
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["rule"], serde_json::Value::Null);

    let json = home.explain_json(&[r#"{"action":"click","x":5,"y":5}"#, "--intent", "purchase"]);
    assert_eq!(json["decision"], "ask");
    assert_eq!(json["rule"], "floor.risky_intent");

    let json = home.explain_json(&[r#"{"action":"key","chord":"ctrl+alt+backspace"}"#]);
    assert_eq!(json["decision"], "deny");

    let (code, out, _) = home.run(&[
        "explain",
        r#"{"action":"type","text":"token ghp_abcdefghijklmnopqrstuvwxyz0123456789"}"#,
        "--app",
        "code",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("DENY") && out.contains("api_token"), "{out}");
    assert!(!out.contains("ghp_abc"), "the secret is echoed: {out}");
}

#[test]
fn explain_rejects_bad_input_with_exit_2() {
    let home = Home::new();
    home.write_policy(TERMINAL_POLICY);
    let (code, _, err) = home.run(&["explain", r#"{"action":"clack","x":1,"y":1}"#]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = home.run(&[
        "explain",
        r#"{"action":"click","x":1,"y":1}"#,
        "--intent",
        "shopping",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("send_email"), "{err}");
}

#[test]
fn an_empty_or_missing_system_policy_override_is_an_error() {
    let home = Home::new();
    home.write_policy(TERMINAL_POLICY);
    let run = |system: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_deskhand"))
            .args(["policy", "check"])
            .env("DESKHAND_POLICY", home.policy())
            .env("DESKHAND_GRANTS", home.grants())
            .env("DESKHAND_SYSTEM_POLICY", system)
            .output()
            .expect("run deskhand policy check");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(Path::new(""));
    assert_ne!(
        code, 0,
        "an empty override must not drop the system layer silently"
    );
    assert!(
        err.contains("DESKHAND_SYSTEM_POLICY is set but empty"),
        "{err}"
    );
    let missing = home.dir.path().join("no-such-system.toml");
    let (code, err) = run(&missing);
    assert_ne!(code, 0);
    assert!(err.contains("no-such-system.toml"), "{err}");
    assert!(err.contains("DESKHAND_SYSTEM_POLICY names it"), "{err}");
    let (code, err) = run(Path::new("none"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_broken_policy_locks_explain_to_observing_and_aborting() {
    let home = Home::new();
    home.write_policy("schema_version = 1\npreset = \"balanced\"\n[defaults]\nclick = \"deny\"\n");
    let json = home.explain_json(&[r#"{"action":"click","x":1,"y":1}"#]);
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["layer"], "locked");
    let json = home.explain_json(&[r#"{"action":"fail","reason":"stop"}"#]);
    assert_eq!(json["decision"], "allow");
    let (_, out, _) = home.run(&["explain", r#"{"action":"click","x":1,"y":1}"#]);
    assert!(
        out.contains("locked") && out.contains("policy.toml:4:9"),
        "{out}"
    );
}

fn write_trace(dir: &Path, steps: &[(&str, Option<&str>, &str, Option<&str>)]) -> PathBuf {
    let mut lines = vec![r#"{"run":"header","task":"test"}"#.to_owned()];
    for (i, (action, app, decision, rule)) in steps.iter().enumerate() {
        let mut request = serde_json::json!({ "action": serde_json::from_str::<serde_json::Value>(action).unwrap() });
        if let Some(app) = app {
            request["app"] = (*app).into();
        }
        lines.push(
            serde_json::json!({
                "step": i + 1,
                "request": request,
                "decision": { "decision": decision, "rule": rule },
            })
            .to_string(),
        );
    }
    let path = dir.join("trace.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn test_replays_a_trace_and_fails_when_a_refusal_would_become_allow() {
    let home = Home::new();
    home.write_policy(TERMINAL_POLICY);
    let trace = write_trace(
        home.dir.path(),
        &[
            (
                r#"{"action":"type","text":"ls"}"#,
                Some("xterm"),
                "ask",
                Some("terminal-asks"),
            ),
            (
                r#"{"action":"click","x":3,"y":3}"#,
                Some("code"),
                "allow",
                None,
            ),
            (
                r#"{"action":"type","text":"rm -rf /"}"#,
                Some("xterm"),
                "ask",
                Some("terminal-asks"),
            ),
        ],
    );
    let trace_arg = trace.to_str().unwrap();
    let (code, out, err) = home.run(&["test", trace_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("3 steps replayed") && out.contains("0 would change"),
        "{out}"
    );

    // The user relaxes terminals: step 1 would now be allowed; step 3 still asks (the floor).
    home.write_policy(&TERMINAL_POLICY.replace("decision = \"ask\"", "decision = \"allow\""));
    let (code, out, err) = home.run(&["test", trace_arg]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("step 1:") && out.contains("ask (terminal-asks) -> allow"),
        "{out}"
    );
    assert!(!out.contains("step 3:"), "{out}");
    assert!(out.contains("1 would become allow"), "{out}");
    assert!(err.contains("would now be allowed"), "{err}");

    // Tightening is reported but passes.
    home.write_policy(&TERMINAL_POLICY.replace("decision = \"ask\"", "decision = \"deny\""));
    let (code, out, _) = home.run(&["test", trace_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 would change, 0 would become allow"),
        "{out}"
    );
}

#[test]
fn test_rejects_a_trace_with_a_broken_line_in_the_middle() {
    let home = Home::new();
    home.write_policy(TERMINAL_POLICY);
    let path = home.dir.path().join("trace.jsonl");
    std::fs::write(&path, "{\"step\":1\nnot json\n{}\n").unwrap();
    let (code, _, err) = home.run(&["test", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("trace.jsonl:1:"), "{err}");
}

#[test]
fn grants_are_listed_and_revoked() {
    let home = Home::new();
    let store = GrantStore::new(home.grants());
    let (grant, written) = store
        .add(
            GrantScope {
                rule: "terminal-asks".into(),
                app: Some("xterm".into()),
                action: "type".into(),
                intents: vec![Intent::Other],
            },
            None,
        )
        .unwrap();
    assert!(written);
    let (code, out, err) = home.run(&["grants", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&grant.id) && out.contains("terminal-asks") && out.contains("xterm"),
        "{out}"
    );

    // The grant turns the ask into an allow for this scope only.
    home.write_policy(TERMINAL_POLICY);
    let json = home.explain_json(&[r#"{"action":"type","text":"ls"}"#, "--app", "xterm"]);
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["layer"], "grants");
    assert_eq!(json["grants"][0], grant.id.as_str());

    let (code, out, err) = home.run(&["grants", "revoke", &grant.id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("will ask again"), "{out}");
    assert!(store.load().unwrap().is_empty());
    let json = home.explain_json(&[r#"{"action":"type","text":"ls"}"#, "--app", "xterm"]);
    assert_eq!(json["decision"], "ask");

    let (code, _, err) = home.run(&["grants", "revoke", "g-00000000"]);
    assert_eq!(code, 1);
    assert!(err.contains("g-00000000"), "{err}");
}

/// A strict policy with a terminal rule and a detector of the user's own.
const TUNING_POLICY: &str = r#"schema_version = 1
preset = "strict"

[apps.terminal]
names = ["xterm"]

[detectors.employee_id]
pattern = 'EMP-[0-9]{6}'

[[rule]]
id = "terminal-asks"
decision = "ask"
reason = "commands run with your rights"
app = ["terminal"]
action = ["type"]
"#;

/// One recorded ask: the action, its window, a declared intent, and how it was answered.
struct Asked {
    action: &'static str,
    app: &'static str,
    intent: Option<&'static str>,
    answer: &'static str,
    by: &'static str,
}

fn asked(action: &'static str, app: &'static str, answer: &'static str) -> Asked {
    Asked {
        action,
        app,
        intent: None,
        answer,
        by: "person",
    }
}

/// Writes a run folder under `runs` whose trace holds `steps`, each decided as the current
/// policy decides it (`policy explain --json`), with the answer it got.
fn write_run(home: &Home, runs: &Path, name: &str, steps: &[Asked]) -> PathBuf {
    let dir = runs.join(name);
    std::fs::create_dir_all(&dir).expect("run dir");
    let mut lines = vec![r#"{"record":"start","task":"tuning test"}"#.to_owned()];
    for (i, step) in steps.iter().enumerate() {
        let mut args = vec![step.action, "--app", step.app];
        if let Some(intent) = step.intent {
            args.extend(["--intent", intent]);
        }
        let decision = home.explain_json(&args);
        assert_eq!(
            decision["decision"], "ask",
            "{} in {}",
            step.action, step.app
        );
        let mut request = serde_json::json!({
            "action": serde_json::from_str::<serde_json::Value>(step.action).unwrap(),
            "app": step.app,
        });
        if let Some(intent) = step.intent {
            request["declared_intent"] = intent.into();
        }
        lines.push(
            serde_json::json!({
                "record": "step",
                "step": i + 1,
                "request": request,
                "decision": decision,
                "answer": step.answer,
                "answered_by": step.by,
            })
            .to_string(),
        );
    }
    std::fs::write(dir.join("trace.jsonl"), lines.join("\n") + "\n").expect("write trace");
    dir
}

#[test]
fn suggest_learns_from_answers_and_diff_counts_what_the_suggestions_change() {
    let home = Home::new();
    home.write_policy(TUNING_POLICY);
    let runs = home.dir.path().join("runs");
    let click = |x: u32| -> &'static str {
        Box::leak(format!(r#"{{"action":"click","x":{x},"y":50}}"#).into_boxed_str())
    };
    let send = Asked {
        intent: Some("send_email"),
        ..asked(click(900), "thunderbird", "once")
    };
    let first = write_run(
        &home,
        &runs,
        "20261201-100000",
        &[
            asked(click(10), "firefox", "once"),
            asked(click(20), "firefox", "session"),
            asked(r#"{"action":"key","chord":"ctrl+w"}"#, "gedit", "deny"),
            asked(r#"{"action":"type","text":"ls"}"#, "xterm", "once"),
            send,
            asked(click(30), "libreoffice", "once"),
            // Answered by nobody (no terminal): not the person's word.
            Asked {
                by: "nobody",
                ..asked(click(40), "galculator", "deny")
            },
        ],
    );
    let second = write_run(
        &home,
        &runs,
        "20261201-110000",
        &[
            asked(click(10), "firefox", "once"),
            asked(r#"{"action":"key","chord":"ctrl+w"}"#, "gedit", "deny"),
            asked(r#"{"action":"type","text":"ls -la"}"#, "xterm", "once"),
            Asked {
                intent: Some("send_email"),
                ..asked(click(910), "thunderbird", "session")
            },
            asked(click(30), "libreoffice", "deny"),
            asked(
                r#"{"action":"type","text":"id EMP-123456"}"#,
                "gedit",
                "once",
            ),
            asked(
                r#"{"action":"type","text":"id EMP-654321"}"#,
                "gedit",
                "once",
            ),
        ],
    );

    let (code, suggested, err) =
        home.run(&["suggest", first.to_str().unwrap(), second.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        suggested.contains("2 run(s), 13 ask(s) you answered (1 answered by --yes or by nobody"),
        "{suggested}"
    );
    // All yes to the preset's asks: allow, scoped, with the traces' actions as examples.
    let firefox = "[[rule]]\nid = \"suggested-allow-firefox-click\"\ndecision = \"allow\"\n";
    assert!(suggested.contains(firefox), "{suggested}");
    assert!(
        suggested.contains("reason = \"you said yes to all 3 asks about click in firefox\"\napp = [\"firefox\"]\naction = [\"click\"]\n"),
        "{suggested}"
    );
    assert!(
        suggested.contains("  action = { action = \"click\", x = 20, y = 50"),
        "{suggested}"
    );
    // All no: deny.
    assert!(
        suggested.contains("id = \"suggested-deny-gedit-key-ctrl-w\"\ndecision = \"deny\"\n"),
        "{suggested}"
    );
    assert!(suggested.contains("keys = [\"ctrl+w\"]"), "{suggested}");
    // The detector's matches never appear; the examples carry them redacted.
    assert!(
        !suggested.contains("123456") && !suggested.contains("654321"),
        "{suggested}"
    );
    assert!(
        suggested.contains("text = \"id [redacted:employee_id]\""),
        "{suggested}"
    );
    // The floor: only a commented-out, scoped unlock.
    assert!(
        suggested.contains("# [[rule]]\n# id = \"suggested-allow-thunderbird-click-send_email\"\n"),
        "{suggested}"
    );
    assert!(
        suggested.contains("# unlock = [\"floor.risky_intent\"]"),
        "{suggested}"
    );
    assert!(
        !suggested.contains("\nunlock ="),
        "an unlock is never suggested uncommented: {suggested}"
    );
    // A rule of the user's own asked: an allow rule cannot relax it.
    assert!(
        suggested.contains("rule 'terminal-asks' asked and you said yes every time"),
        "{suggested}"
    );
    assert!(
        suggested.contains("answered both ways: no rule suggested"),
        "{suggested}"
    );
    assert!(!suggested.contains("galculator"), "{suggested}");
    assert!(
        suggested.contains("# 3 rule(s) suggested, 1 floor unlock(s) suggested commented out."),
        "{suggested}"
    );

    // Applied as printed, the file still checks, examples included.
    let applied = format!("{TUNING_POLICY}\n{suggested}");
    home.write_policy(&applied);
    let (code, out, err) = home.run(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("inline examples passed"), "{out}");

    // diff: exactly the suggested changes, and exit 1 because asks would become allow.
    let (code, out, err) = home.run(&["diff", "--runs", runs.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("14 decisions from 2 run(s)"), "{out}");
    let row = |then: &str, now: &str, stricter: usize, looser: usize| {
        out.lines().any(|l| {
            let cells: Vec<&str> = l
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            cells == [then, now, &stricter.to_string(), &looser.to_string()]
        })
    };
    assert!(
        row(
            "ask by preset",
            "allow by suggested-allow-firefox-click",
            0,
            3
        ),
        "{out}"
    );
    assert!(
        row(
            "ask by preset",
            "deny by suggested-deny-gedit-key-ctrl-w",
            2,
            0
        ),
        "{out}"
    );
    assert!(
        row("ask by preset", "allow by suggested-allow-gedit-type", 0, 2),
        "{out}"
    );
    assert!(
        out.contains("7 would change: 2 stricter, 5 looser, 5 would become allow"),
        "{out}"
    );
    assert!(
        out.contains(
            "20261201-110000 step 1: left click at (10, 50) in firefox: ask (preset) -> allow"
        ),
        "{out}"
    );
    assert!(
        err.contains("5 decision(s) that were denied or asked would now be allowed"),
        "{err}"
    );

    // Suggesting again from the same runs adds nothing: the file already decides them.
    let (code, again, err) =
        home.run(&["suggest", first.to_str().unwrap(), second.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(again.contains("# 0 rule(s) suggested"), "{again}");
}
