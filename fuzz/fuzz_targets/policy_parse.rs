//! Any bytes as a policy file: loading must return the policy or errors with positions, never
//! panic or hang, and a policy that loads must decide and list its unlocks without panicking.
//! Text before a line `%%` is a system-layer file (where `[floor] locked` belongs), the rest
//! the user's.

#![no_main]

use std::path::PathBuf;

use deskhand::input::Action;
use deskhand::policy::{Layer, PolicyEngine, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut sources = Vec::new();
    let user = match text.split_once("\n%%\n") {
        Some((system, user)) => {
            sources.push((Layer::System, PathBuf::from("system.toml"), system.to_owned()));
            user
        }
        None => text,
    };
    sources.push((Layer::User, PathBuf::from("fuzz.toml"), user.to_owned()));
    match PolicyEngine::from_sources(sources) {
        Ok(engine) => {
            let requests = [
                Request::new(Action::Type {
                    text: "rm -rf ~ 4111 1111 1111 1111".into(),
                })
                .with_window(Some("xterm".into()), Some("Password".into())),
                Request::new(Action::Key {
                    chord: "ctrl+alt+backspace".into(),
                }),
                Request::new(Action::Click {
                    x: 10,
                    y: 10,
                    button: Default::default(),
                }),
                Request::new(Action::Click {
                    x: 10,
                    y: 10,
                    button: Default::default(),
                })
                .with_window(
                    Some("thunderbird".into()),
                    Some("Write: hello - Thunderbird".into()),
                ),
            ];
            for request in &requests {
                let _ = engine.decide(request);
            }
            for unlock in engine.unlocks() {
                let _ = unlock.to_string();
            }
        }
        Err(errors) => {
            // Every error must carry a real position.
            assert!(!errors.0.is_empty());
            for error in &errors.0 {
                assert!(error.line >= 1 && error.column >= 1, "{error}");
            }
        }
    }
});
