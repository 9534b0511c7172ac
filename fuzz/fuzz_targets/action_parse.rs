//! Any bytes as the wire format of an action (`deskhand act`, scripts, traces): parsing must
//! return the action or an error, never panic. A parsed action round-trips through its JSON,
//! types only keys the policy can see, and is decided without panicking.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use deskhand::input::{Action, ChordKey, NamedKey, text_keys};
use deskhand::policy::{Layer, PolicyEngine, Request};
use libfuzzer_sys::fuzz_target;

static ENGINE: LazyLock<Option<PolicyEngine>> = LazyLock::new(|| {
    PolicyEngine::from_sources(vec![(
        Layer::User,
        PathBuf::from("fuzz.toml"),
        "schema_version = 1\npreset = \"balanced\"\n".to_owned(),
    )])
    .ok()
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(action) = Action::from_json(text) else {
        return;
    };
    let back = Action::from_json(&action.to_json()).expect("a parsed action round-trips");
    assert_eq!(back, action);
    if let Action::Type { text } = &action {
        for key in text_keys(text) {
            match key {
                ChordKey::Char(c) => assert!(!c.is_control(), "{c:?} would be typed as a key"),
                ChordKey::Named(NamedKey::Return | NamedKey::Tab) => {}
                other => panic!("typed text sends {other:?}"),
            }
        }
    }
    let _ = action.typed_text();
    let _ = action.pastes();
    let _ = action.is_click_like_drag();
    let _ = action.to_string();
    if let Some(engine) = ENGINE.as_ref() {
        let request = Request::new(action).with_window(Some("xterm".into()), Some("bash".into()));
        let _ = engine.decide(&request);
    }
});
