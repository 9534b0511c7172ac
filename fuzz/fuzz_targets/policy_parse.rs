//! Any bytes as a policy file: loading must return the policy or errors with positions, never
//! panic or hang, and a policy that loads must decide without panicking.

#![no_main]

use std::path::PathBuf;

use deskhand::input::Action;
use deskhand::policy::{Layer, PolicyEngine, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match PolicyEngine::from_sources(vec![(
        Layer::User,
        PathBuf::from("fuzz.toml"),
        text.to_owned(),
    )]) {
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
            ];
            for request in &requests {
                let _ = engine.decide(request);
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
