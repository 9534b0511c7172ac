//! Tests of the whole check stage: match fields, precedence, layers, the floor, grants,
//! budgets and locked mode, plus property tests of its guarantees.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::input::Action;

const CARD: &str = "4111 1111 1111 1111";

fn user_engine(text: &str) -> PolicyEngine {
    layered_engine(None, text)
}

fn layered_engine(system: Option<&str>, user: &str) -> PolicyEngine {
    let mut sources = Vec::new();
    if let Some(system) = system {
        sources.push((
            Layer::System,
            PathBuf::from("system.toml"),
            system.to_owned(),
        ));
    }
    sources.push((Layer::User, PathBuf::from("user.toml"), user.to_owned()));
    match PolicyEngine::from_sources(sources) {
        Ok(engine) => engine,
        Err(errors) => panic!("policy did not load:\n{errors}"),
    }
}

fn policy(preset: &str, rules: &str) -> String {
    format!("schema_version = 1\npreset = \"{preset}\"\n{rules}")
}

fn action(json: &str) -> Action {
    match Action::from_json(json) {
        Ok(action) => action,
        Err(e) => panic!("{json}: {e}"),
    }
}

fn request(json: &str) -> Request {
    Request::new(action(json))
}

fn typed(text: &str) -> Request {
    Request::new(Action::Type { text: text.into() })
}

fn click() -> Request {
    request(r#"{"action":"click","x":10,"y":10}"#)
}

fn key(chord: &str) -> Request {
    Request::new(Action::Key {
        chord: chord.into(),
    })
}

fn in_app(request: Request, app: &str, title: Option<&str>) -> Request {
    request.with_window(Some(app.into()), title.map(str::to_owned))
}

/// Decides `request` as a run would, and counts it as sent when it was allowed.
fn send_if_allowed(checker: &mut Checker, request: Request) -> Decision {
    let decision = checker.check(&request);
    if decision.decision == Verdict::Allow {
        checker.executed(&request, &decision);
    }
    decision
}

/// A one-rule policy under the permissive preset: the rule's deny shows whether it matched.
fn deny_rule(fields: &str) -> PolicyEngine {
    user_engine(&policy(
        "permissive",
        &format!(
            "[apps.mail]\nnames = [\"thunderbird\"]\ntitle = \"gmail\"\n[detectors.ticket]\npattern = 'T-\\d{{4}}'\n[[rule]]\nid = \"r\"\ndecision = \"deny\"\nreason = \"test\"\n{fields}\n"
        ),
    ))
}

fn verdict(engine: &PolicyEngine, request: &Request) -> Verdict {
    engine.decide(request).decision
}

#[test]
fn action_field_matches_listed_kinds() {
    let engine = deny_rule("action = [\"click\", \"scroll\"]");
    assert_eq!(verdict(&engine, &click()), Verdict::Deny);
    assert_eq!(verdict(&engine, &typed("hello")), Verdict::Allow);
}

#[test]
fn app_field_matches_programs_and_groups_case_insensitively() {
    let engine = deny_rule("app = [\"mail\", \"XTerm\"]");
    assert_eq!(
        verdict(&engine, &in_app(click(), "xterm", None)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&engine, &in_app(click(), "Thunderbird", None)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&engine, &in_app(click(), "firefox", Some("Inbox - GMAIL"))),
        Verdict::Deny,
        "a group's title regex counts as the app"
    );
    assert_eq!(
        verdict(&engine, &in_app(click(), "code", None)),
        Verdict::Allow
    );
    assert_eq!(
        verdict(&engine, &click()),
        Verdict::Allow,
        "no app, no match"
    );
}

#[test]
fn title_field_is_a_case_insensitive_regex() {
    let engine = deny_rule("title = \"^bank|online banking\"");
    let with_title = |t: &str| in_app(click(), "firefox", Some(t));
    assert_eq!(verdict(&engine, &with_title("Bank of X")), Verdict::Deny);
    assert_eq!(
        verdict(&engine, &with_title("My ONLINE Banking")),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&engine, &with_title("Riverbank news")),
        Verdict::Allow
    );
    assert_eq!(verdict(&engine, &click()), Verdict::Allow);
}

#[test]
fn intent_field_sees_declared_and_inferred_intents() {
    let engine = deny_rule("intent = [\"install\"]");
    assert_eq!(
        verdict(&engine, &click().with_intent(Intent::Install)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&engine, &typed("sudo apt install htop")),
        Verdict::Deny,
        "inferred from the text although the model said other"
    );
    assert_eq!(verdict(&engine, &click()), Verdict::Allow);
}

#[test]
fn text_matches_field_uses_built_in_and_user_detectors() {
    let engine = deny_rule("text_matches = [\"ticket\", \"iban\"]");
    assert_eq!(verdict(&engine, &typed("see T-1234")), Verdict::Deny);
    assert_eq!(
        verdict(&engine, &typed("pay to GB82WEST12345698765432")),
        Verdict::Deny
    );
    assert_eq!(verdict(&engine, &typed("see T-12")), Verdict::Allow);
}

#[test]
fn keys_field_matches_normalized_chords() {
    let engine = deny_rule("keys = [\"Control+Q\"]");
    assert_eq!(verdict(&engine, &key("ctrl+q")), Verdict::Deny);
    assert_eq!(verdict(&engine, &key("CTRL+q")), Verdict::Deny);
    assert_eq!(
        verdict(
            &engine,
            &Request::new(Action::HoldKey {
                chord: "ctrl+q".into(),
                ms: 100
            })
        ),
        Verdict::Deny
    );
    assert_eq!(verdict(&engine, &key("ctrl+shift+q")), Verdict::Allow);
}

#[test]
fn region_field_matches_points_on_its_monitor_only() {
    let engine = deny_rule("region = { monitor = 1, rect = [0.0, 0.0, 0.5, 0.1] }");
    let at = |monitor, x, y| {
        let mut r = click();
        r.points = vec![NormalizedPoint { monitor, x, y }];
        r
    };
    assert_eq!(verdict(&engine, &at(1, 0.25, 0.05)), Verdict::Deny);
    assert_eq!(verdict(&engine, &at(1, 0.75, 0.05)), Verdict::Allow);
    assert_eq!(verdict(&engine, &at(0, 0.25, 0.05)), Verdict::Allow);
    assert_eq!(
        verdict(&engine, &click()),
        Verdict::Allow,
        "no point, no match"
    );
}

#[test]
fn fields_are_anded_within_a_rule() {
    let engine = deny_rule("action = [\"type\"]\napp = [\"xterm\"]");
    assert_eq!(
        verdict(&engine, &in_app(typed("ls"), "xterm", None)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&engine, &in_app(click(), "xterm", None)),
        Verdict::Allow
    );
    assert_eq!(
        verdict(&engine, &in_app(typed("ls"), "code", None)),
        Verdict::Allow
    );
}

const THREE_WAY: [&str; 3] = [
    "[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"allow it\"\naction = [\"click\"]\n",
    "[[rule]]\nid = \"b\"\ndecision = \"deny\"\nreason = \"deny it\"\naction = [\"click\"]\n",
    "[[rule]]\nid = \"c\"\ndecision = \"ask\"\nreason = \"ask it\"\naction = [\"click\"]\n",
];

#[test]
fn the_strictest_match_wins_whatever_the_order() {
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]] {
        let rules: String = order.iter().map(|&i| THREE_WAY[i]).collect();
        let decision = user_engine(&policy("permissive", &rules)).decide(&click());
        assert_eq!(decision.decision, Verdict::Deny);
        assert_eq!(decision.rule.as_deref(), Some("b"));
        assert_eq!(decision.reason, "deny it");
        assert_eq!(decision.matched.len(), 3, "every matching rule is reported");
    }
    let ask_and_allow = format!("{}{}", THREE_WAY[0], THREE_WAY[2]);
    let decision = user_engine(&policy("permissive", &ask_and_allow)).decide(&click());
    assert_eq!(decision.decision, Verdict::Ask);
    assert_eq!(decision.rule.as_deref(), Some("c"));
}

#[test]
fn decisions_name_their_file_and_line() {
    let text = policy("permissive", THREE_WAY[1]);
    let decision = user_engine(&text).decide(&click());
    assert_eq!(decision.layer, Layer::User);
    assert_eq!(decision.source, "user.toml:4");
}

#[test]
fn defaults_apply_only_when_no_rule_matched_and_the_preset_after_them() {
    let engine = user_engine(&policy(
        "permissive",
        "[defaults]\ntype = \"ask\"\n[[rule]]\nid = \"xterm-ok\"\ndecision = \"allow\"\nreason = \"ok\"\napp = [\"xterm\"]\n",
    ));
    let decision = engine.decide(&typed("hello"));
    assert_eq!(decision.decision, Verdict::Ask);
    assert_eq!(decision.layer, Layer::Defaults);
    assert_eq!(decision.rule, None);
    assert_eq!(decision.source, "user.toml:4");
    assert_eq!(
        verdict(&engine, &in_app(typed("hello"), "xterm", None)),
        Verdict::Allow
    );
    let decision = engine.decide(&click());
    assert_eq!(decision.decision, Verdict::Allow);
    assert_eq!(decision.layer, Layer::Preset);
    assert_eq!(decision.source, "user.toml:2");
}

#[test]
fn presets_decide_what_nothing_else_did() {
    let decide =
        |preset: &str, request: &Request| verdict(&user_engine(&policy(preset, "")), request);
    assert_eq!(decide("strict", &click()), Verdict::Ask);
    assert_eq!(decide("balanced", &click()), Verdict::Allow);
    assert_eq!(decide("permissive", &click()), Verdict::Allow);
    assert_eq!(
        decide("strict", &request(r#"{"action":"wait","ms":5}"#)),
        Verdict::Allow
    );
    let iban = typed("GB82WEST12345698765432");
    assert_eq!(decide("balanced", &iban), Verdict::Ask);
    assert_eq!(decide("permissive", &iban), Verdict::Allow);
}

#[test]
fn the_floor_denies_secrets_and_session_chords_whatever_the_rules_say() {
    let allow_all = policy(
        "permissive",
        "[[rule]]\nid = \"yes\"\ndecision = \"allow\"\nreason = \"anything\"\n",
    );
    let engine = user_engine(&allow_all);
    let decision = engine.decide(&typed(&format!("card: {CARD}")));
    assert_eq!(decision.decision, Verdict::Deny);
    assert_eq!(decision.rule.as_deref(), Some("floor.secret"));
    assert_eq!(decision.layer, Layer::Floor);
    for chord in ["ctrl+alt+BackSpace", "super+l", "ctrl+alt+f3", "alt+Print"] {
        let decision = engine.decide(&key(chord));
        assert_eq!(decision.decision, Verdict::Deny, "{chord}");
        assert_eq!(decision.rule.as_deref(), Some("floor.session_chord"));
    }
    let password = in_app(
        typed("hunter2"),
        "pinentry-gnome3",
        Some("Enter passphrase"),
    );
    assert_eq!(verdict(&engine, &password), Verdict::Deny);
}

#[test]
fn the_floor_asks_for_risky_intents_and_never_remembers() {
    let engine = user_engine(&policy(
        "permissive",
        "[[rule]]\nid = \"yes\"\ndecision = \"allow\"\nreason = \"anything\"\n",
    ));
    for intent in [
        Intent::SendEmail,
        Intent::SendMessage,
        Intent::Purchase,
        Intent::Payment,
        Intent::Delete,
    ] {
        let decision = engine.decide(&click().with_intent(intent));
        assert_eq!(decision.decision, Verdict::Ask, "{intent}");
        assert_eq!(decision.rule.as_deref(), Some("floor.risky_intent"));
        assert!(!decision.rememberable);
    }
}

#[test]
fn declared_intent_can_only_raise_risk() {
    let engine = user_engine(&policy("permissive", ""));
    let sneaky = typed("echo hi | mail -s hi boss@example.com\n").with_intent(Intent::Other);
    let decision = engine.decide(&sneaky);
    assert_eq!(decision.decision, Verdict::Ask);
    assert_eq!(decision.intents, vec![Intent::SendEmail]);
    let composer = in_app(click(), "thunderbird", Some("Write: hello"));
    assert_eq!(verdict(&engine, &composer), Verdict::Ask);
}

#[test]
fn a_lower_layer_cannot_relax_a_higher_one() {
    let system = policy(
        "strict",
        "[[rule]]\nid = \"sys-no-terminal\"\ndecision = \"deny\"\nreason = \"no terminals here\"\napp = [\"xterm\"]\n[[rule]]\nid = \"sys-ask-keys\"\ndecision = \"ask\"\nreason = \"keys ask\"\naction = [\"key\"]\n",
    );
    let user = policy(
        "permissive",
        "[[rule]]\nid = \"user-yes\"\ndecision = \"allow\"\nreason = \"I trust it\"\n",
    );
    let engine = layered_engine(Some(&system), &user);
    let decision = engine.decide(&in_app(typed("ls"), "xterm", None));
    assert_eq!(decision.decision, Verdict::Deny);
    assert_eq!(decision.layer, Layer::System);
    assert_eq!(decision.rule.as_deref(), Some("sys-no-terminal"));
    let decision = engine.decide(&key("ctrl+c"));
    assert_eq!(decision.decision, Verdict::Ask);
    assert_eq!(decision.source, "system.toml:9");
    // With no rule matching, the stricter file's preset still counts.
    let engine = layered_engine(Some(&policy("strict", "")), &policy("permissive", ""));
    assert_eq!(verdict(&engine, &click()), Verdict::Ask);
    // And a user deny holds against a system allow.
    let engine = layered_engine(
        Some(&policy(
            "permissive",
            "[[rule]]\nid = \"sys-yes\"\ndecision = \"allow\"\nreason = \"ok\"\n",
        )),
        &policy(
            "permissive",
            "[[rule]]\nid = \"user-no\"\ndecision = \"deny\"\nreason = \"mine\"\naction = [\"click\"]\n",
        ),
    );
    assert_eq!(verdict(&engine, &click()), Verdict::Deny);
}

#[test]
fn rule_ids_must_differ_across_files() {
    let rule = "[[rule]]\nid = \"same\"\ndecision = \"ask\"\nreason = \"r\"\n";
    let errors = PolicyEngine::from_sources(vec![
        (Layer::System, "system.toml".into(), policy("strict", rule)),
        (Layer::User, "user.toml".into(), policy("strict", rule)),
    ])
    .unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert!(
        errors.0[0]
            .to_string()
            .starts_with("user.toml:4:1: duplicate rule id 'same'")
    );
}

fn grant(rule: &str, app: Option<&str>, action: &str, intent: Intent) -> Grant {
    Grant::new(
        GrantScope {
            rule: rule.into(),
            app: app.map(str::to_owned),
            action: action.into(),
            intents: vec![intent],
        },
        SystemTime::now(),
        None,
    )
}

const ASK_TERMINAL: &str = "[[rule]]\nid = \"terminal\"\ndecision = \"ask\"\nreason = \"terminal typing\"\napp = [\"xterm\"]\n[[rule]]\nid = \"no-rm\"\ndecision = \"deny\"\nreason = \"no rm\"\ntitle = \"danger\"\n[[rule]]\nid = \"never\"\ndecision = \"ask\"\nreason = \"every time\"\nremember = \"never\"\naction = [\"key\"]\n";

#[test]
fn a_grant_turns_a_matching_ask_into_allow_and_nothing_else() {
    let base = user_engine(&policy("permissive", ASK_TERMINAL));
    let ls = in_app(typed("ls"), "xterm", None);
    assert_eq!(verdict(&base, &ls), Verdict::Ask);

    let engine = base.clone().with_grants(vec![grant(
        "terminal",
        Some("XTerm"),
        "type",
        Intent::Other,
    )]);
    let decision = engine.decide(&ls);
    assert_eq!(decision.decision, Verdict::Allow);
    assert_eq!(decision.layer, Layer::Grants);
    assert_eq!(decision.rule.as_deref(), Some("terminal"));
    assert_eq!(decision.grants.len(), 1);

    // Narrow scope: another app, action kind or intent is not covered.
    assert_eq!(
        verdict(&engine, &in_app(typed("ls"), "konsole", None)),
        Verdict::Allow
    );
    assert_eq!(
        verdict(&engine, &in_app(click(), "xterm", None)),
        Verdict::Ask
    );
    assert_eq!(
        verdict(&engine, &in_app(typed("pip install x"), "xterm", None)),
        Verdict::Ask
    );
    // A grant never lifts a deny, a remember = "never" ask, or the floor.
    let danger = in_app(typed("ls"), "xterm", Some("danger zone"));
    assert_eq!(verdict(&engine, &danger), Verdict::Deny);
    let engine = base.clone().with_grants(vec![
        grant("never", None, "key", Intent::Other),
        grant("floor.risky_intent", Some("xterm"), "type", Intent::Delete),
        grant("terminal", Some("xterm"), "type", Intent::Delete),
    ]);
    assert_eq!(verdict(&engine, &key("ctrl+c")), Verdict::Ask);
    assert_eq!(
        verdict(&engine, &in_app(typed("rm -r x"), "xterm", None)),
        Verdict::Ask
    );
}

#[test]
fn an_expired_grant_grants_nothing() {
    let mut old = grant("terminal", Some("xterm"), "type", Intent::Other);
    old.expires = Some(
        humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(5)).to_string(),
    );
    let engine = user_engine(&policy("permissive", ASK_TERMINAL)).with_grants(vec![old]);
    assert_eq!(
        verdict(&engine, &in_app(typed("ls"), "xterm", None)),
        Verdict::Ask
    );
}

#[test]
fn answers_become_session_grants_and_remembered_grants() {
    let dir = tempfile::tempdir().unwrap();
    let store = GrantStore::new(dir.path().join("grants.toml"));
    let engine = user_engine(&policy("permissive", ASK_TERMINAL));
    let mut checker = Checker::new(engine.clone(), Some(store.clone()));
    let ls = in_app(typed("ls"), "xterm", None);

    let asked = checker.check(&ls);
    assert_eq!(asked.decision, Verdict::Ask);
    assert_eq!(
        checker.answer(&ls, &asked, Answer::Once).unwrap(),
        Verdict::Allow
    );
    assert_eq!(checker.check(&ls).decision, Verdict::Ask, "once is once");

    assert_eq!(
        checker.answer(&ls, &asked, Answer::Session).unwrap(),
        Verdict::Allow
    );
    let decision = checker.check(&ls);
    assert_eq!(decision.decision, Verdict::Allow);
    assert_eq!(decision.layer, Layer::Session);
    assert!(
        store.load().unwrap().is_empty(),
        "session answers are not written"
    );

    let mut checker = Checker::new(engine.clone(), Some(store.clone()));
    let asked = checker.check(&ls);
    assert_eq!(
        checker.answer(&ls, &asked, Answer::Always).unwrap(),
        Verdict::Allow
    );
    let written = store.load().unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].rule, "terminal");
    assert_eq!(written[0].app.as_deref(), Some("xterm"));
    assert_eq!(written[0].action, "type");
    // A new run reads the grant back.
    let reloaded = engine.with_grants(store.load().unwrap());
    assert_eq!(reloaded.decide(&ls).layer, Layer::Grants);

    // Floor asks and remember = "never" cannot be granted at all.
    let never = key("ctrl+c");
    let asked = checker.check(&never);
    assert!(matches!(
        checker.answer(&never, &asked, Answer::Always),
        Err(AnswerError::NotRememberable(_))
    ));
    assert!(matches!(
        checker.answer(&never, &asked, Answer::Session),
        Err(AnswerError::NotRememberable(_))
    ));
    assert_eq!(store.load().unwrap().len(), 1);
}

#[test]
fn a_spent_budget_pauses_with_an_ask_and_once_continues() {
    let engine = user_engine(&policy(
        "permissive",
        "[budgets]\nsteps_per_task = 2\nidentical_actions = 10\n",
    ));
    let mut checker = Checker::new(engine, None);
    let t0 = Instant::now();
    let step = click();
    for _ in 0..2 {
        let decision = checker.check_at(&step, t0);
        assert_eq!(decision.decision, Verdict::Allow);
        checker.executed(&step, &decision);
    }
    let paused = checker.check_at(&step, t0);
    assert_eq!(paused.decision, Verdict::Ask);
    assert_eq!(paused.layer, Layer::Budget);
    assert!(!paused.rememberable);
    assert!(paused.reason.contains("2 steps"), "{}", paused.reason);
    assert!(
        paused
            .matched
            .iter()
            .any(|m| m.id == "budget.steps_per_task")
    );
    assert_eq!(
        checker.answer_at(&step, &paused, Answer::Once, t0).unwrap(),
        Verdict::Allow
    );
    assert_eq!(checker.check_at(&step, t0).decision, Verdict::Allow);
    // A budget never overrides a deny into an ask.
    let denied = typed(CARD);
    assert_eq!(checker.check_at(&denied, t0).decision, Verdict::Deny);
}

#[test]
fn a_broken_policy_locks_everything_but_observing_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("policy.toml");
    std::fs::write(&user, "schema_version = 1\npreset = \"balanced\"\n[[rule]]\nid = \"x\"\ndecision = \"allow\"\nreason = \"r\"\ntitle = \"(\"\n").unwrap();
    let paths = PolicyPaths {
        system: None,
        system_required: false,
        user: user.clone(),
        grants: dir.path().join("grants.toml"),
        dropped_system: None,
    };
    let engine = PolicyEngine::load(&paths);
    let errors = engine.locked_by().expect("a bad regex locks the policy");
    assert!(errors.to_string().contains("policy.toml:7:9:"), "{errors}");
    let decision = engine.decide(&click());
    assert_eq!(decision.decision, Verdict::Deny);
    assert_eq!(decision.layer, Layer::Locked);
    assert!(decision.reason.contains("locked"));
    for inert in [
        r#"{"action":"wait","ms":100}"#,
        r#"{"action":"fail","reason":"policy is broken"}"#,
        r#"{"action":"done","summary":"nothing"}"#,
    ] {
        assert_eq!(
            engine.decide(&request(inert)).decision,
            Verdict::Allow,
            "{inert}"
        );
    }
}

#[test]
fn no_policy_file_means_the_strict_preset_and_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let paths = PolicyPaths {
        system: Some(dir.path().join("absent-system.toml")),
        system_required: false,
        user: dir.path().join("absent.toml"),
        grants: dir.path().join("grants.toml"),
        dropped_system: None,
    };
    let engine = PolicyEngine::try_load(&paths).unwrap();
    assert!(engine.locked_by().is_none());
    assert!(engine.notes()[0].contains("deskhand policy init"));
    let decision = engine.decide(&click());
    assert_eq!(decision.decision, Verdict::Ask);
    assert_eq!(decision.layer, Layer::Preset);
    assert_eq!(decision.source, "built-in");
}

#[test]
fn a_failing_example_is_an_error_at_its_position() {
    let text = policy(
        "balanced",
        "[[rule]]\nid = \"t\"\ndecision = \"ask\"\nreason = \"terminal\"\napp = [\"xterm\"]\n\n  [[rule.example]]\n  action = { action = \"type\", text = \"ls\" }\n  app = \"code\"\n  expect = \"ask\"\n",
    );
    let errors = PolicyEngine::from_sources(vec![(Layer::User, "user.toml".into(), text)])
        .unwrap_err()
        .to_string();
    assert!(
        errors.starts_with(
            "user.toml:9:3: example of rule 't' expects ask, but the policy decides allow"
        ),
        "{errors}"
    );
}

#[test]
fn the_starter_policy_loads_and_its_examples_pass_under_every_preset() {
    for preset in Preset::ALL {
        let engine = user_engine(&starter_policy(preset));
        assert!(engine.example_count() >= 4);
        assert!(engine.rule_count() >= 5);
        assert_eq!(engine.files()[0].1, preset);
    }
}

#[test]
fn decisions_serialize_with_decision_and_rule_and_never_the_secret() {
    let engine = user_engine(&policy("balanced", ""));
    let decision = engine.decide(&typed(&format!("pay with {CARD} now")));
    let json: serde_json::Value = serde_json::to_value(&decision).unwrap();
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["rule"], "floor.secret");
    assert_eq!(json["detector_hits"][0]["name"], "card_number");
    let text = json.to_string();
    assert!(!text.contains("4111"), "{text}");
    let json = serde_json::to_value(engine.decide(&click())).unwrap();
    assert_eq!(json["rule"], serde_json::Value::Null);
}

#[test]
fn recorded_detector_hits_count_on_replay_after_redaction() {
    let engine = user_engine(&policy("permissive", ""));
    let mut replayed = typed("pay with [redacted:card_number]");
    replayed.detector_hits = vec!["card_number".into()];
    assert_eq!(verdict(&engine, &replayed), Verdict::Deny);
}

// Property tests over generated policies and requests.

const KINDS: [&str; 4] = ["click", "type", "key", "scroll"];
const APPS: [&str; 3] = ["xterm", "code", "thunderbird"];
const INTENTS: [&str; 4] = ["other", "delete", "send_email", "login"];
const CHORDS: [&str; 3] = ["ctrl+c", "ctrl+alt+backspace", "return"];

fn subset(pool: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<&'static str>>> {
    proptest::option::of(proptest::sample::subsequence(pool, 1..=pool.len()))
}

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn arb_rule_body() -> impl Strategy<Value = (Verdict, String)> {
    (
        prop_oneof![
            Just(Verdict::Allow),
            Just(Verdict::Ask),
            Just(Verdict::Deny)
        ],
        any::<bool>(),
        subset(&KINDS),
        subset(&APPS),
        subset(&INTENTS),
        subset(&CHORDS),
        proptest::option::of(prop_oneof![Just("gmail"), Just("terminal")]),
    )
        .prop_map(|(decision, never, kinds, apps, intents, chords, title)| {
            let mut body = format!("decision = \"{decision}\"\nreason = \"generated\"\n");
            if never {
                body.push_str("remember = \"never\"\n");
            }
            for (key, value) in [
                ("action", kinds),
                ("app", apps),
                ("intent", intents),
                ("keys", chords),
            ] {
                if let Some(items) = value {
                    body.push_str(&format!("{key} = {}\n", list(&items)));
                }
            }
            if let Some(title) = title {
                body.push_str(&format!("title = \"{title}\"\n"));
            }
            (decision, body)
        })
}

fn arb_policy() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("strict"), Just("balanced"), Just("permissive")],
        proptest::option::of(prop_oneof![Just("allow"), Just("ask")]),
        proptest::collection::vec(arb_rule_body(), 0..6),
    )
        .prop_map(|(preset, default_type, rules)| {
            let mut text = policy(preset, "");
            if let Some(default_type) = default_type {
                text.push_str(&format!("[defaults]\ntype = \"{default_type}\"\n"));
            }
            for (i, (_, body)) in rules.iter().enumerate() {
                text.push_str(&format!("[[rule]]\nid = \"r{i}\"\n{body}"));
            }
            text
        })
}

fn arb_request() -> impl Strategy<Value = Request> {
    let actions = prop_oneof![
        Just(Action::Click {
            x: 5,
            y: 5,
            button: Default::default()
        }),
        Just(Action::Type { text: "ls".into() }),
        Just(Action::Type {
            text: "rm -rf /tmp/x".into()
        }),
        Just(Action::Type {
            text: format!("card {CARD}")
        }),
        Just(Action::Key {
            chord: "ctrl+c".into()
        }),
        Just(Action::Key {
            chord: "ctrl+alt+backspace".into()
        }),
        Just(Action::Key {
            chord: "Return".into()
        }),
        Just(Action::Scroll {
            x: 5,
            y: 5,
            dx: 0,
            dy: 2
        }),
    ];
    (
        actions,
        proptest::option::of(proptest::sample::select(&APPS[..])),
        proptest::option::of(prop_oneof![Just("Inbox - Gmail"), Just("Terminal")]),
        proptest::sample::select(&Intent::ALL[..]),
    )
        .prop_map(|(action, app, title, intent)| {
            Request::new(action)
                .with_window(app.map(str::to_owned), title.map(str::to_owned))
                .with_intent(intent)
        })
}

fn arb_grants() -> impl Strategy<Value = Vec<Grant>> {
    let rule_ids = prop_oneof![
        Just("r0".to_owned()),
        Just("r1".to_owned()),
        Just("r2".to_owned()),
        Just("defaults.type".to_owned()),
        Just("preset.strict.click".to_owned()),
        Just("preset.strict.type".to_owned()),
        Just("floor.risky_intent".to_owned()),
    ];
    proptest::collection::vec(
        (
            rule_ids,
            proptest::option::of(proptest::sample::select(&APPS[..])),
            proptest::sample::select(&KINDS[..]),
            proptest::sample::select(&Intent::ALL[..]),
        )
            .prop_map(|(rule, app, action, intent)| grant(&rule, app, action, intent)),
        0..8,
    )
}

/// Generated files are always valid (and have no examples), so a load failure is a bug.
fn generated_engine(text: &str) -> PolicyEngine {
    match PolicyEngine::from_sources(vec![(Layer::User, "gen.toml".into(), text.to_owned())]) {
        Ok(engine) => engine,
        Err(errors) => panic!("generated policy failed to load: {errors}\n{text}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn floor_actions_are_never_allowed(text in arb_policy(), grants in arb_grants(), base in arb_request()) {
        let engine = generated_engine(&text).with_grants(grants);
        let secret = Request { action: Action::Type { text: format!("my card {CARD}") }, ..base.clone() };
        prop_assert_eq!(engine.decide(&secret).decision, Verdict::Deny);
        let chord = Request { action: Action::Key { chord: "ctrl+alt+backspace".into() }, ..base.clone() };
        prop_assert_eq!(engine.decide(&chord).decision, Verdict::Deny);
        for intent in Intent::ALL.into_iter().filter(|i| i.is_floor()) {
            let risky = base.clone().with_intent(intent);
            prop_assert_ne!(engine.decide(&risky).decision, Verdict::Allow);
        }
    }

    #[test]
    fn adding_a_deny_or_ask_rule_never_relaxes_a_decision(
        text in arb_policy(),
        extra in arb_rule_body().prop_filter("deny or ask", |(d, _)| *d != Verdict::Allow),
        grants in arb_grants(),
        request in arb_request(),
    ) {
        let before = generated_engine(&text);
        let after = generated_engine(&format!("{text}[[rule]]\nid = \"extra\"\n{}", extra.1));
        let before = before.with_grants(grants.clone()).decide(&request);
        let after = after.with_grants(grants).decide(&request);
        prop_assert!(after.decision >= before.decision, "{:?} then {:?}", before, after);
    }

    #[test]
    fn a_grant_only_turns_ask_into_allow(text in arb_policy(), grants in arb_grants(), request in arb_request()) {
        let engine = generated_engine(&text);
        let without = engine.decide(&request).decision;
        let with = engine.with_grants(grants).decide(&request).decision;
        prop_assert!(with == without || (without == Verdict::Ask && with == Verdict::Allow), "{:?} became {:?}", without, with);
    }
}

// --- A hostile screen: each test below failed on main at 1dddc4f. ---

#[test]
fn a_carriage_return_in_chat_is_return_and_asks_to_send() {
    let engine = user_engine(&policy("permissive", ""));
    let decision = engine.decide(&in_app(typed("see you\r"), "slack", Some("general")));
    assert_eq!(decision.decision, Verdict::Ask);
    assert!(decision.intents.contains(&Intent::SendMessage));
    assert_eq!(decision.rule.as_deref(), Some("floor.risky_intent"));
}

#[test]
fn control_characters_never_reach_a_decision_as_text_or_chord() {
    for json in [
        r#"{"action":"key","chord":"ctrl+alt+\u0008"}"#,
        r#"{"action":"key","chord":"\u007f"}"#,
        r#"{"action":"hold_key","chord":"\u001b","ms":10}"#,
        r#"{"action":"type","text":"\u007f"}"#,
        r#"{"action":"type","text":"x\u001b:wq\r"}"#,
    ] {
        assert!(Action::from_json(json).is_err(), "{json} must be refused");
    }
}

#[test]
fn a_drag_that_goes_nowhere_is_judged_as_the_click_it_is() {
    let engine = user_engine(&policy(
        "permissive",
        "[[rule]]\nid = \"clicks-ask\"\ndecision = \"ask\"\nreason = \"r\"\naction = [\"click\"]\n",
    ));
    for path in ["[[500,500],[500,500]]", "[[500,500],[501,501]]"] {
        let drag = request(&format!(r#"{{"action":"drag","path":{path}}}"#));
        let decision = engine.decide(&drag);
        assert_eq!(decision.decision, Verdict::Ask, "{path}");
        assert_eq!(decision.rule.as_deref(), Some("clicks-ask"));
    }
    let long = request(r#"{"action":"drag","path":[[500,500],[900,500]]}"#);
    assert_eq!(engine.decide(&long).decision, Verdict::Allow);

    // On a checkout page it is a purchase, as the click is.
    let permissive = user_engine(&policy("permissive", ""));
    let drag = in_app(
        request(r#"{"action":"drag","path":[[500,500],[500,500]]}"#),
        "firefox",
        Some("Checkout – Place your order"),
    );
    let decision = permissive.decide(&drag);
    assert_eq!(decision.decision, Verdict::Ask);
    assert!(decision.intents.contains(&Intent::Purchase));
}

#[test]
fn an_allowing_region_speaks_only_for_actions_that_stay_inside_it() {
    let engine = user_engine(&policy(
        "strict",
        "[[rule]]\nid = \"left-half\"\ndecision = \"allow\"\nreason = \"r\"\nregion = { monitor = 0, rect = [0.0, 0.0, 0.5, 1.0] }\n",
    ));
    let at = |points: &[(f64, f64)], json: &str| {
        let mut r = request(json);
        r.points = points
            .iter()
            .map(|&(x, y)| NormalizedPoint { monitor: 0, x, y })
            .collect();
        r
    };
    let drag = r#"{"action":"drag","path":[[100,100],[1500,100]]}"#;
    assert_eq!(
        verdict(&engine, &at(&[(0.1, 0.1), (0.2, 0.2)], drag)),
        Verdict::Allow
    );
    assert_eq!(
        verdict(&engine, &at(&[(0.1, 0.1), (0.9, 0.1)], drag)),
        Verdict::Ask,
        "a drag that ends outside the allowed region is not allowed by it"
    );
    // A region that denies still sees any point.
    let deny = deny_rule("region = { monitor = 0, rect = [0.5, 0.0, 1.0, 1.0] }");
    assert_eq!(
        verdict(&deny, &at(&[(0.1, 0.1), (0.9, 0.1)], drag)),
        Verdict::Deny
    );
}

#[test]
fn keys_into_a_password_prompt_are_secret_typing() {
    let engine = user_engine(&policy("permissive", ""));
    for chord in ["h", "shift+u", "space", "Return"] {
        let decision = engine.decide(&in_app(key(chord), "pinentry-gtk-2", Some("Passphrase")));
        assert_eq!(decision.decision, Verdict::Deny, "{chord}");
        assert_eq!(decision.rule.as_deref(), Some("floor.secret"));
    }
}

#[test]
fn text_sent_in_pieces_is_judged_whole() {
    let engine = user_engine(&policy(
        "permissive",
        "[[rule]]\nid = \"no-rm\"\ndecision = \"deny\"\nreason = \"no deleting\"\nintent = [\"delete\"]\n",
    ));
    let mut checker = Checker::new(engine, None);
    let mut send = |request: Request| send_if_allowed(&mut checker, request);
    let xterm = |r: Request| in_app(r, "xterm", Some("bash"));
    assert_eq!(send(xterm(typed("r"))).decision, Verdict::Allow);
    let rest = send(xterm(typed("m -rf ~")));
    assert_eq!(rest.decision, Verdict::Deny, "{rest:?}");
    assert_eq!(rest.rule.as_deref(), Some("no-rm"));

    // Key by key, too (in another terminal: the refused text above was never sent).
    let other = |r: Request| in_app(r, "xterm", Some("bash 2"));
    for c in ["r", "m"] {
        assert_eq!(send(other(key(c))).decision, Verdict::Allow);
    }
    assert_eq!(send(other(key("space"))).decision, Verdict::Deny);

    // A card number split over two actions, in a form.
    let form = |r: Request| in_app(r, "firefox", Some("Form"));
    assert_eq!(send(form(typed("4111 1111"))).decision, Verdict::Allow);
    let second = send(form(typed(" 1111 1111")));
    assert_eq!(second.decision, Verdict::Deny);
    assert_eq!(second.rule.as_deref(), Some("floor.secret"));
    // Another window has its own record.
    assert_eq!(
        send(in_app(typed(" 1111 1111"), "gedit", Some("notes"))).decision,
        Verdict::Allow
    );
}

#[test]
fn a_grant_covers_only_requests_whose_every_intent_it_granted() {
    let dir = tempfile::tempdir().unwrap();
    let store = GrantStore::new(dir.path().join("grants.toml"));
    let engine = user_engine(&policy("permissive", ASK_TERMINAL));
    let mut checker = Checker::new(engine, Some(store.clone()));
    let ls = in_app(typed("ls -la\n"), "xterm", None);
    let asked = checker.check(&ls);
    assert_eq!(
        checker.answer(&ls, &asked, Answer::Always).unwrap(),
        Verdict::Allow
    );
    assert_eq!(checker.check(&ls).decision, Verdict::Allow);
    // The review's repro: after "always" for `ls`, `/bin/rm -rf ~` was typed silently.
    let rm = in_app(typed("/bin/rm -rf ~\n"), "xterm", None);
    let decision = checker.check(&rm);
    assert_eq!(decision.decision, Verdict::Ask);
    assert!(decision.intents.contains(&Intent::Delete));
    assert!(decision.grants.is_empty());
}

#[test]
fn a_grant_revoked_during_a_run_stops_at_the_next_decision() {
    let dir = tempfile::tempdir().unwrap();
    let store = GrantStore::new(dir.path().join("grants.toml"));
    let engine = user_engine(&policy("permissive", ASK_TERMINAL));
    let mut checker = Checker::new(engine, Some(store.clone()));
    let ls = in_app(typed("ls"), "xterm", None);
    let asked = checker.check(&ls);
    checker.answer(&ls, &asked, Answer::Always).unwrap();
    assert_eq!(checker.check(&ls).decision, Verdict::Allow);
    let id = store.load().unwrap()[0].id.clone();
    store.revoke(&id).unwrap();
    assert_eq!(checker.check(&ls).decision, Verdict::Ask);
}

#[test]
fn the_starter_terminal_rule_is_remembered_for_the_session_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = GrantStore::new(dir.path().join("grants.toml"));
    let engine = user_engine(&starter_policy(Preset::Balanced));
    let mut checker = Checker::new(engine, Some(store.clone()));
    let ls = in_app(typed("ls -la"), "xterm", None);
    let asked = checker.check(&ls);
    assert_eq!(asked.rule.as_deref(), Some("terminal-commands"));
    assert!(asked.rememberable && asked.session_only);
    assert!(matches!(
        checker.answer(&ls, &asked, Answer::Always),
        Err(AnswerError::SessionOnly(_))
    ));
    assert!(store.load().unwrap().is_empty());
    assert_eq!(
        checker.answer(&ls, &asked, Answer::Session).unwrap(),
        Verdict::Allow
    );
    assert_eq!(checker.check(&ls).decision, Verdict::Allow);
    // And the editor's terminal chord asks, where the editor rule allowed every key.
    let terminal_chord = in_app(key("ctrl+`"), "code", Some("main.rs - project"));
    assert_eq!(checker.check(&terminal_chord).decision, Verdict::Ask);
    let save = in_app(key("ctrl+s"), "code", Some("main.rs - project"));
    assert_eq!(checker.check(&save).decision, Verdict::Allow);
    // New terminals are terminals.
    for app in ["kgx", "ptyxis", "foot", "kitty", "urxvt", "terminator"] {
        let decision = checker.check(&in_app(typed("uptime"), app, None));
        assert_eq!(decision.rule.as_deref(), Some("terminal-commands"), "{app}");
    }
}

#[test]
fn caps_lock_and_kde_session_chords_are_floor_denies() {
    let engine = user_engine(&policy("permissive", ""));
    for chord in [
        "capslock",
        "shift+Caps_Lock",
        "ctrl+alt+shift+Page_Down",
        "ctrl+alt+shift+PageUp",
    ] {
        let decision = engine.decide(&key(chord));
        assert_eq!(decision.decision, Verdict::Deny, "{chord}");
        assert_eq!(decision.layer, Layer::Floor, "{chord}");
    }
    let hold = request(r#"{"action":"hold_key","chord":"capslock","ms":100}"#);
    assert_eq!(verdict(&engine, &hold), Verdict::Deny);
}

#[test]
fn no_agent_answers_deskhands_own_dialog_whichever_rule_allows() {
    let engine = user_engine(&policy(
        "permissive",
        "[[rule]]\nid = \"all\"\ndecision = \"allow\"\nreason = \"x\"\naction = [\"key\", \"click\"]\n",
    ));
    for request in [
        in_app(key("o"), "deskhand", Some("deskhand asks")),
        in_app(
            request(r#"{"action":"click","x":10,"y":10}"#),
            "deskhand",
            None,
        ),
    ] {
        let decision = engine.decide(&request);
        assert_eq!(decision.decision, Verdict::Deny, "{request:?}");
        assert_eq!(decision.rule.as_deref(), Some("floor.own_window"));
    }
    // A click on it while another window has the focus: judged for the window under it too.
    let under = request(r#"{"action":"click","x":10,"y":10}"#)
        .with_window(Some("gedit".into()), None)
        .with_windows_under_pointer(vec![WindowRef {
            app: Some("deskhand".into()),
            title: Some("deskhand asks".into()),
            id: Some(7),
        }]);
    assert_eq!(verdict(&engine, &under), Verdict::Deny);
    // Moving the pointer over it is not input to it.
    let over = in_app(
        request(r#"{"action":"move","x":10,"y":10}"#),
        "deskhand",
        None,
    );
    assert_eq!(verdict(&engine, &over), Verdict::Allow);
}

#[test]
fn input_that_would_edit_deskhands_own_policy_is_denied() {
    let engine = user_engine(&policy("permissive", ""));
    let denied = [
        in_app(
            typed("preset = \"permissive\""),
            "gedit",
            Some("policy.toml (~/.config/deskhand) - gedit"),
        ),
        in_app(
            key("ctrl+s"),
            "code",
            Some("grants.toml - deskhand - Visual Studio Code"),
        ),
        in_app(
            typed("echo 'preset = \"permissive\"' >> ~/.config/deskhand/policy.toml\n"),
            "xterm",
            Some("bash"),
        ),
        in_app(
            typed("DESKHAND_POLICY=/tmp/p.toml deskhand run x\n"),
            "xterm",
            None,
        ),
        in_app(click(), "nautilus", Some("/etc/deskhand")),
    ];
    for request in &denied {
        let decision = engine.decide(request);
        assert_eq!(decision.decision, Verdict::Deny, "{request:?}");
        assert_eq!(decision.rule.as_deref(), Some("floor.own_files"));
    }
    let fine = in_app(
        typed("hello"),
        "gedit",
        Some("notes.txt (~/Documents) - gedit"),
    );
    assert_eq!(verdict(&engine, &fine), Verdict::Allow);

    // Files moved elsewhere by DESKHAND_POLICY are protected by their own names.
    let dir = tempfile::tempdir().unwrap();
    let paths = PolicyPaths {
        system: None,
        system_required: false,
        user: dir.path().join("mine/rules.toml"),
        grants: dir.path().join("mine/answers.toml"),
        dropped_system: None,
    };
    let engine = PolicyEngine::try_load(&paths).unwrap();
    let editing = in_app(typed("x"), "gedit", Some("rules.toml (~/x/mine) - gedit"));
    assert_eq!(verdict(&engine, &editing), Verdict::Deny);
    let path_typed = in_app(
        typed(&format!("rm {}\n", paths.grants.display())),
        "xterm",
        None,
    );
    assert_eq!(
        engine.decide(&path_typed).rule.as_deref(),
        Some("floor.own_files")
    );
}

#[test]
fn a_missing_system_file_named_by_the_environment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let paths = PolicyPaths {
        system: Some(dir.path().join("absent-system.toml")),
        system_required: true,
        user: dir.path().join("absent.toml"),
        grants: dir.path().join("grants.toml"),
        dropped_system: None,
    };
    let errors = PolicyEngine::try_load(&paths).expect_err("an error");
    assert!(
        errors.to_string().contains("DESKHAND_SYSTEM_POLICY"),
        "{errors}"
    );
}

#[test]
fn rules_that_can_never_match_and_misspelt_groups_are_errors() {
    let load = |rules: &str| {
        PolicyEngine::from_sources(vec![(
            Layer::User,
            PathBuf::from("user.toml"),
            policy(
                "balanced",
                &format!("[apps.terminal]\nnames = [\"xterm\"]\n{rules}"),
            ),
        )])
        .err()
        .map(|e| e.to_string())
    };
    let rule = |field: &str| {
        format!("[[rule]]\nid = \"r\"\ndecision = \"deny\"\nreason = \"x\"\n{field}\n")
    };
    let empty = load(&rule("action = []")).expect("action = [] is an error");
    assert!(
        empty.contains("user.toml:6:") && empty.contains("action = [] can never match"),
        "{empty}"
    );
    for field in ["app = []", "keys = []", "intent = []", "text_matches = []"] {
        assert!(load(&rule(field)).is_some(), "{field}");
    }
    let misspelt = load(&rule("app = [\"terminals\"]")).expect("a misspelt group is an error");
    assert!(misspelt.contains("did you mean 'terminal'"), "{misspelt}");
    assert!(load(&rule("app = [\"termnial\"]")).is_some());
    assert!(load(&rule("app = [\"browsers\"]")).is_some());
    let undefined = load(&rule("app = [\"@editor\"]")).expect("an undefined @group is an error");
    assert!(
        undefined.contains("names no group [apps.editor]"),
        "{undefined}"
    );
    // Groups by either spelling, and programs, still load.
    assert_eq!(
        load(&rule(
            "app = [\"@terminal\", \"terminal\", \"firefox\", \"kmail\"]"
        )),
        None
    );
}

#[test]
fn a_pointer_action_is_decided_for_the_window_under_the_pointer_too() {
    let engine = user_engine(&policy("balanced", ""));
    let composer = WindowRef {
        app: Some("thunderbird".into()),
        title: Some("Write: (no subject) - Thunderbird".into()),
        id: None,
    };
    let click_in_browser = in_app(click(), "firefox", Some("Example Domain"));
    assert_eq!(verdict(&engine, &click_in_browser), Verdict::Allow);
    let reaching_composer = click_in_browser
        .clone()
        .with_windows_under_pointer(vec![composer.clone()]);
    let decision = engine.decide(&reaching_composer);
    assert_eq!(decision.decision, Verdict::Ask);
    assert!(decision.intents.contains(&Intent::SendEmail));
    assert!(
        decision.reason.contains("under the pointer (thunderbird)"),
        "{}",
        decision.reason
    );
    // The active window itself is not listed twice.
    let same = in_app(click(), "firefox", Some("Example Domain")).with_windows_under_pointer(vec![
        WindowRef {
            app: Some("firefox".into()),
            title: Some("Example Domain".into()),
            id: None,
        },
    ]);
    assert!(same.under_pointer.is_empty());
    // Both windows survive the trace's JSON.
    let back: Request =
        serde_json::from_str(&serde_json::to_string(&reaching_composer).unwrap()).unwrap();
    assert_eq!(back.under_pointer, vec![composer]);
}

#[test]
fn a_paste_is_judged_as_the_text_it_inserts() {
    let engine = user_engine(&policy(
        "permissive",
        "[[rule]]\nid = \"terminal-typing\"\ndecision = \"ask\"\nreason = \"terminal\"\naction = [\"type\"]\napp = [\"xterm\"]\n",
    ));
    let paste = |chord: &str, app: &str, title: &str, text: Option<&str>| {
        in_app(key(chord), app, Some(title)).with_pasted(text.map(str::to_owned))
    };
    // A secret pasted is a secret typed, and into a password prompt anything is.
    let card = engine.decide(&paste("ctrl+v", "firefox", "Notes", Some(CARD)));
    assert_eq!(card.decision, Verdict::Deny);
    assert_eq!(card.rule.as_deref(), Some("floor.secret"));
    let password = engine.decide(&paste(
        "shift+Insert",
        "pinentry-qt",
        "Passphrase",
        Some("hunter2"),
    ));
    assert_eq!(password.decision, Verdict::Deny);
    // In a terminal a paste is typing: the typing rule applies, and so does inference.
    let terminal = engine.decide(&paste("ctrl+shift+v", "xterm", "bash", Some("rm -rf ~\n")));
    assert!(terminal.intents.contains(&Intent::Delete), "{terminal:?}");
    assert!(terminal.matched.iter().any(|m| m.id == "terminal-typing"));
    let middle = in_app(
        request(r#"{"action":"click","x":5,"y":5,"button":"middle"}"#),
        "slack",
        Some("general"),
    )
    .with_pasted(Some("hi all\n".into()));
    assert!(
        engine
            .decide(&middle)
            .intents
            .contains(&Intent::SendMessage)
    );
    // What cannot be read is not waved through.
    let unread = engine.decide(&paste("ctrl+v", "gedit", "notes", None));
    assert_eq!(unread.decision, Verdict::Ask);
    assert_eq!(unread.rule.as_deref(), Some("floor.paste_unread"));
    // A harmless paste under a permissive policy goes.
    assert_eq!(
        verdict(&engine, &paste("ctrl+v", "gedit", "notes", Some("hello"))),
        Verdict::Allow
    );
}

const MAIL_UNLOCK: &str = "[[rule]]
id = \"mail-to-my-team\"
decision = \"allow\"
reason = \"I send mail to my team myself every day\"
intent = [\"send_email\"]
app = [\"thunderbird\"]
title = '^Write: '
unlock = [\"floor.risky_intent\"]
";

fn composer_click() -> Request {
    in_app(click(), "thunderbird", Some("Write: hello - Thunderbird"))
}

#[test]
fn a_scoped_unlock_lets_its_rule_decide_what_the_floor_asked() {
    let engine = user_engine(&policy("balanced", MAIL_UNLOCK));
    let decision = engine.decide(&composer_click());
    assert_eq!(decision.decision, Verdict::Allow, "{decision:?}");
    assert_eq!(decision.rule.as_deref(), Some("mail-to-my-team"));
    assert_eq!(
        decision.unlocked,
        vec![
            "floor.risky_intent (send_email) unlocked by rule 'mail-to-my-team' at user.toml:4"
                .to_owned()
        ]
    );
    assert!(
        decision.matched.iter().all(|m| m.layer != Layer::Floor),
        "{decision:?}"
    );

    // Out of its scope the floor asks as before: another app, another title.
    for outside in [
        in_app(click(), "firefox", Some("Write: hello - Thunderbird")),
        in_app(click(), "thunderbird", Some("Compose: hello")),
    ] {
        let decision = engine.decide(&outside.clone().with_intent(Intent::SendEmail));
        assert_eq!(decision.decision, Verdict::Ask, "{outside:?}");
        assert_eq!(decision.rule.as_deref(), Some("floor.risky_intent"));
        assert!(decision.unlocked.is_empty());
        assert!(!decision.rememberable);
    }

    // Only the intents it names: a delete in the same composer still asks.
    let decision = engine.decide(&composer_click().with_intent(Intent::Delete));
    assert_eq!(decision.decision, Verdict::Ask);
    assert_eq!(decision.rule.as_deref(), Some("floor.risky_intent"));
    assert!(
        decision.reason.starts_with("delete always asks"),
        "{decision:?}"
    );
    assert_eq!(decision.unlocked.len(), 1, "send_email itself was unlocked");

    // The check lists it, with its rule and line.
    let unlocks = engine.unlocks();
    assert_eq!(unlocks.len(), 1);
    assert_eq!(
        unlocks[0].to_string(),
        "unlocked: floor.risky_intent (send_email) (now allow) by rule 'mail-to-my-team' at user.toml:4"
    );
}

#[test]
fn an_unlocking_rule_that_asks_is_remembered_as_it_says_and_grants_never_unlock() {
    let rules = MAIL_UNLOCK
        .replace("decision = \"allow\"", "decision = \"ask\"")
        .replace("unlock = ", "remember = \"session\"\nunlock = ");
    let engine = user_engine(&policy("balanced", &rules));
    let mut checker = Checker::new(engine, None);
    let request = composer_click();
    let decision = checker.check(&request);
    assert_eq!(decision.decision, Verdict::Ask);
    assert_eq!(decision.rule.as_deref(), Some("mail-to-my-team"));
    assert!(
        decision.rememberable && decision.session_only,
        "{decision:?}"
    );
    assert!(matches!(
        checker.answer(&request, &decision, Answer::Always),
        Err(AnswerError::SessionOnly(_))
    ));
    assert_eq!(
        checker
            .answer(&request, &decision, Answer::Session)
            .unwrap(),
        Verdict::Allow
    );
    let again = checker.check(&request);
    assert_eq!(again.decision, Verdict::Allow);
    assert_eq!(again.layer, Layer::Session);

    // The session answer was for the rule's ask. Out of the rule's scope the floor asks, and
    // no answer, remembered or not, stands in for an unlock.
    let outside =
        in_app(click(), "thunderbird", Some("Inbox - Thunderbird")).with_intent(Intent::SendEmail);
    let decision = checker.check(&outside);
    assert_eq!(decision.decision, Verdict::Ask, "{decision:?}");
    assert_eq!(decision.rule.as_deref(), Some("floor.risky_intent"));
    assert!(decision.grants.is_empty() && !decision.rememberable);
}

#[test]
fn the_system_layer_locks_the_floor_against_the_users_unlocks() {
    let system = policy("balanced", "[floor]\nlocked = true\n");
    let user = format!(
        "{MAIL_UNLOCK}[[rule.example]]\naction = {{ action = \"click\", x = 1, y = 1 }}\napp = \"thunderbird\"\ntitle = \"Write: hi\"\nexpect = \"allow\"\n"
    );
    // The user's example describes the user's file: the lock does not break the policy.
    let engine = layered_engine(Some(&system), &policy("balanced", &user));
    let decision = engine.decide(&composer_click());
    assert_eq!(decision.decision, Verdict::Ask, "{decision:?}");
    assert_eq!(decision.rule.as_deref(), Some("floor.risky_intent"));
    assert!(decision.unlocked.is_empty());
    let unlocks = engine.unlocks();
    assert_eq!(unlocks.len(), 1);
    let lock = unlocks[0].refused_by.clone().unwrap_or_default();
    assert!(lock.starts_with("system.toml:"), "{lock}");
    assert_eq!(
        unlocks[0].to_string(),
        format!(
            "refused unlock: floor.risky_intent (send_email) by rule 'mail-to-my-team' at user.toml:4: the floor is locked by {lock}, so it stays in force"
        )
    );

    // The admin's own unlocks stand.
    let system = policy(
        "balanced",
        &format!("[floor]\nlocked = true\n{MAIL_UNLOCK}"),
    );
    let engine = layered_engine(Some(&system), &policy("balanced", ""));
    assert_eq!(verdict(&engine, &composer_click()), Verdict::Allow);
    assert_eq!(engine.unlocks()[0].refused_by, None);

    // Without the lock, the same user file unlocks.
    let engine = layered_engine(
        Some(&policy("balanced", "")),
        &policy("balanced", MAIL_UNLOCK),
    );
    assert_eq!(verdict(&engine, &composer_click()), Verdict::Allow);
}

#[test]
fn secrets_and_session_chords_unlock_only_what_they_name() {
    let engine = user_engine(&policy(
        "permissive",
        "[[rule]]
id = \"card-in-shop\"
decision = \"allow\"
reason = \"my own card, in my own shop's till\"
text_matches = [\"card_number\"]
app = [\"till\"]
unlock = [\"floor.secret\"]

[[rule]]
id = \"lock-screen-in-kiosk\"
decision = \"ask\"
reason = \"the kiosk may lock itself\"
keys = [\"super+l\"]
app = [\"kiosk\"]
unlock = [\"floor.session_chord\"]
",
    ));
    let card = engine.decide(&in_app(typed(CARD), "till", None));
    assert_eq!(card.decision, Verdict::Allow, "{card:?}");
    assert_eq!(card.unlocked.len(), 1);
    assert!(
        card.unlocked[0].starts_with("floor.secret (card_number) unlocked by rule 'card-in-shop'")
    );
    // Another secret in the same text is still denied; so is the card elsewhere.
    let both = engine.decide(&in_app(
        typed(&format!("{CARD} AKIAIOSFODNN7EXAMPLE")),
        "till",
        None,
    ));
    assert_eq!(both.decision, Verdict::Deny);
    assert!(both.reason.contains("api_token") && !both.reason.contains("card_number"));
    assert_eq!(
        verdict(&engine, &in_app(typed(CARD), "firefox", None)),
        Verdict::Deny
    );

    let lock = engine.decide(&in_app(key("super+l"), "kiosk", None));
    assert_eq!(lock.decision, Verdict::Ask);
    assert_eq!(lock.rule.as_deref(), Some("lock-screen-in-kiosk"));
    assert_eq!(
        verdict(&engine, &in_app(key("ctrl+alt+delete"), "kiosk", None)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&engine, &in_app(key("super+l"), "xterm", None)),
        Verdict::Deny
    );
}

#[test]
fn window_text_matches_reads_what_this_run_typed_into_that_window() {
    let rules = MAIL_UNLOCK.replace(
        "unlock = ",
        "window_text_matches = '^[a-z.]+@interconnects\\.ai\\t'\nunlock = ",
    );
    let engine = user_engine(&policy("balanced", &rules));
    let mut checker = Checker::new(engine, None);
    let mut send = |request: Request| send_if_allowed(&mut checker, request);
    let window = |id: u32, title: &str, r: Request| {
        r.with_window_ref(WindowRef {
            app: Some("thunderbird".into()),
            title: Some(title.into()),
            id: Some(id),
        })
    };
    let fresh = "Write: (no subject) - Thunderbird";
    let titled = "Write: hello - Thunderbird";
    // The composer retitles itself as the subject is typed; its text stays its own.
    for (title, request) in [
        (fresh, typed("nathan@interconnects.ai")),
        (fresh, key("tab")),
        (fresh, typed("hello")),
        (titled, key("tab")),
        (titled, typed("Hello Nathan")),
    ] {
        assert_eq!(send(window(7, title, request)).decision, Verdict::Allow);
    }
    let send_click = send(window(7, titled, click()));
    assert_eq!(send_click.decision, Verdict::Allow, "{send_click:?}");
    assert_eq!(send_click.unlocked.len(), 1);

    // Another composer with the same title, where nothing was typed: the floor asks.
    assert_eq!(send(window(8, titled, click())).decision, Verdict::Ask);
    // One addressed to someone else asks too.
    for request in [typed("nathan@example.com"), key("tab")] {
        send(window(9, titled, request));
    }
    let other = send(window(9, titled, click()));
    assert_eq!(other.decision, Verdict::Ask);
    assert_eq!(other.rule.as_deref(), Some("floor.risky_intent"));
}

#[test]
fn none_cannot_drop_a_system_file_that_locks_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let system = dir.path().join("system.toml");
    let user = dir.path().join("user.toml");
    std::fs::write(&user, policy("balanced", MAIL_UNLOCK)).unwrap();
    // What DESKHAND_SYSTEM_POLICY=none gives: no system file, the default one dropped.
    let paths = PolicyPaths {
        system: None,
        system_required: false,
        user,
        grants: dir.path().join("grants.toml"),
        dropped_system: Some(system.clone()),
    };
    // A system file without a lock is dropped.
    std::fs::write(&system, policy("strict", "")).unwrap();
    let engine = PolicyEngine::try_load(&paths).unwrap();
    assert_eq!(verdict(&engine, &composer_click()), Verdict::Allow);
    assert_eq!(engine.files().len(), 1);
    // One that locks the floor stays, and says so.
    std::fs::write(&system, policy("strict", "[floor]\nlocked = true\n")).unwrap();
    let engine = PolicyEngine::try_load(&paths).unwrap();
    assert_eq!(verdict(&engine, &composer_click()), Verdict::Ask);
    assert_eq!(engine.files().len(), 2);
    assert!(
        engine.notes().iter().any(|n| n.contains("does not drop")),
        "{:?}",
        engine.notes()
    );
    assert!(engine.unlocks()[0].refused_by.is_some());
    // Naming another system file does not drop it either.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, policy("permissive", "")).unwrap();
    let named = PolicyPaths {
        system: Some(other),
        system_required: true,
        ..paths
    };
    let engine = PolicyEngine::try_load(&named).unwrap();
    assert_eq!(engine.files().len(), 3);
    assert_eq!(verdict(&engine, &composer_click()), Verdict::Ask);
}

#[test]
fn screenshots_go_to_loopback_and_to_listed_hosts_within_the_systems_list() {
    let user = user_engine(&format!(
        "{}\n[engine]\nallowed_hosts = [\"GPU-Box.lan\", \"10.0.0.5\", \"fe80::1\"]\n",
        policy("balanced", "")
    ));
    for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.3.4.5"] {
        assert!(user.engine_host(host).is_ok(), "{host}");
    }
    for host in ["gpu-box.lan", "10.0.0.5", "[fe80::1]"] {
        let why = user.engine_host(host);
        assert!(
            why.as_ref().is_ok_and(|w| w.contains("allowed_hosts")),
            "{host}: {why:?}"
        );
    }
    let other = user.engine_host("10.0.0.6");
    assert!(other.is_err_and(|e| e.contains("allowed_hosts = [\"10.0.0.6\"]")));
    let nothing = user_engine(&policy("balanced", ""));
    assert!(nothing.engine_host("gpu-box.lan").is_err());

    // The system layer's list binds: the user's own entry outside it does not count.
    let system = format!(
        "{}\n[engine]\nallowed_hosts = [\"gpu-box.lan\"]\n",
        policy("strict", "")
    );
    let bound = layered_engine(
        Some(&system),
        &format!(
            "{}\n[engine]\nallowed_hosts = [\"10.0.0.5\"]\n",
            policy("balanced", "")
        ),
    );
    assert!(bound.engine_host("gpu-box.lan").is_ok());
    let refused = bound.engine_host("10.0.0.5");
    assert!(refused.is_err_and(|e| e.contains("binds")));
}

#[test]
fn an_allowed_host_with_a_scheme_or_port_is_an_error_at_its_line() {
    let text = format!(
        "{}\n[engine]\nallowed_hosts = [\"http://gpu-box.lan:8080\"]\n",
        policy("balanced", "")
    );
    let errors = file::parse(std::path::Path::new("p.toml"), &text, Layer::User)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(errors.contains("is not a host name"), "{errors}");
}
