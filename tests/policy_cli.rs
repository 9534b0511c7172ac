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
