//! The tiny generated VLM end to end through llama.cpp: a real screenshot from Xvfb goes
//! through mtmd's image path, and the grammar turns random weights into a valid action.

mod common;
#[path = "common/models.rs"]
mod models;

use common::{TestWindow, display};
use deskhand::model::llama::{EngineConfig, LlamaEngine};
use deskhand::model::tiny::{TINY_IMAGE_SIZE, TINY_IMAGE_TOKENS, write_tiny_vlm};
use deskhand::model::{Backend, FamilyId, PastTurn, Prompt};
use deskhand::screen::{FrameTarget, Screen, X11Screen};

#[test]
fn the_tiny_vlm_sees_a_real_screenshot_and_returns_a_valid_action() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = write_tiny_vlm(dir.path()).unwrap();
    let display = display(1280, 800);
    let _window = TestWindow::open(&display, "640x480+100+100", "tiny vlm");

    let mut config = EngineConfig::new(&tiny.model, Some(tiny.mmproj.clone()), FamilyId::Gemma3);
    // The projector takes a fixed square: resize to it in Rust so mtmd never letterboxes.
    config.frame_target = Some(FrameTarget::Fixed {
        width: TINY_IMAGE_SIZE,
        height: TINY_IMAGE_SIZE,
    });
    // The tiny vocabulary spends a token a byte: the prompt alone is about 4,100 tokens.
    config.n_ctx = deskhand::model::tiny::TINY_CONTEXT_LENGTH;
    let engine = LlamaEngine::load(config).unwrap();
    let mut session = engine.session().unwrap();

    let mut screen = X11Screen::connect(Some(display.name())).unwrap();
    let monitor = screen.monitor(None).unwrap();
    let frame = screen.capture(&monitor, engine.frame_target()).unwrap();
    assert_eq!(frame.image.dimensions(), (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE));

    let mut replies: Vec<String> = Vec::new();
    for step in 0..2 {
        let prompt = Prompt {
            system: engine.family().system_prompt().to_owned(),
            task: "Click the red button.".to_owned(),
            past: replies
                .iter()
                .map(|reply| PastTurn {
                    note: String::new(),
                    frame: Some(&frame),
                    reply: reply.clone(),
                })
                .collect(),
            note: String::new(),
            frame: &frame,
        };
        let reply = session
            .reply(&prompt)
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
        reply.action.validate().unwrap();
        assert_eq!(
            reply.timings.image_tokens, TINY_IMAGE_TOKENS,
            "the image went through mtmd"
        );
        // Measured between mtmd's own log lines, so even this 1 ms encoder shows a time.
        if step == 0 {
            assert!(reply.timings.image_encode_ms > 0.0, "{:?}", reply.timings);
            assert!(reply.timings.image_encoder_ms > 0.0, "{:?}", reply.timings);
        }
        assert!(
            reply.timings.image_encoder_ms <= reply.timings.image_encode_ms,
            "{:?}",
            reply.timings
        );
        // The screenshot is encoded once: the second step shows the same pixels again, which
        // come from the kept encoding.
        assert_eq!(reply.timings.image_encodes, usize::from(step == 0));
        // Points are screen pixels of the captured monitor.
        for p in reply.action.points() {
            assert!(
                monitor.contains(p),
                "{} is off the monitor",
                reply.action.to_json()
            );
        }
        if step == 1 {
            assert!(
                reply.timings.reused_tokens > reply.timings.prefill_tokens,
                "the second step reuses the first step's prompt and reply: {:?}",
                reply.timings
            );
        }
        eprintln!("step {step}: {:?} -> {}", reply.raw, reply.action.to_json());
        replies.push(reply.raw.clone());
    }
}

#[test]
fn a_projector_that_does_not_fit_the_model_is_refused_with_both_widths() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = write_tiny_vlm(dir.path()).unwrap();
    // Gemma 3 270M embeds in 640 dimensions; the tiny projector produces 64.
    let config = EngineConfig::new(
        models::text_model(),
        Some(tiny.mmproj.clone()),
        FamilyId::Gemma3,
    );
    let err = LlamaEngine::load(config)
        .err()
        .expect("a mismatched projector must be refused")
        .to_string();
    assert!(err.contains("640") && err.contains("64"), "{err}");
    assert!(
        err.contains("mmproj-tiny-vlm.gguf"),
        "the error names the file: {err}"
    );

    let config = EngineConfig::new(dir.path().join("missing.gguf"), None, FamilyId::Gemma3);
    let err = LlamaEngine::load(config)
        .err()
        .expect("a missing model must be refused")
        .to_string();
    assert!(
        err.contains("missing.gguf") && err.contains("deskhand models pull"),
        "{err}"
    );
}
