//! A real-shaped model made by `deskhand bench synth`'s generator, in miniature: the Qwen2.5-VL
//! text architecture (M-RoPE) with the real Qwen2 vocabulary, quantized to Q4_K_M by llama.cpp,
//! and a `qwen2.5vl_merger` projector (window and full attention, the 2x2 merger). The same
//! code writes the 3B and 7B shapes; here the widths are small so the test is quick, and the
//! whole image path runs: load, encode, image tokens, grammar-constrained reply.

#[path = "common/models.rs"]
mod models;

use deskhand::model::gguf;
use deskhand::model::llama::{EngineConfig, LlamaEngine};
use deskhand::model::synth::{self, Projector, Shape, TextShape, VisionShape};
use deskhand::model::{Backend, FamilyId, PastTurn, Prompt};
use deskhand::screen::{Frame, FrameMap, MonitorInfo};
use image::RgbImage;

const MINI: Shape = Shape {
    name: "mini-qwen2.5-vl",
    family: FamilyId::Qwen25Vl,
    text: TextShape {
        // 256: the Q4_K block size, so the quantizer really makes Q4_K and Q6_K tensors.
        n_embd: 256,
        n_layer: 2,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 512,
        n_vocab: 151_936,
        tied_embeddings: true,
        context_length: 32_768,
        rope_freq_base: 1_000_000.0,
        // Sections in rotary pairs: 8 + 12 + 12 = 32 pairs = the head dimension of 64.
        rope_sections: [8, 12, 12, 0],
    },
    vision: VisionShape {
        n_embd: 128,
        n_layer: 2,
        n_head: 2,
        n_ff: 256,
        patch_size: 14,
        // Block 0 attends within windows, block 1 to the whole image.
        n_wa_pattern: 2,
        projection_dim: 256,
    },
};

#[test]
fn a_synthetic_qwen25_vl_pair_loads_sees_a_frame_and_replies() {
    let vocab = models::qwen2_vocab();
    let cache = tempfile::tempdir().unwrap();
    // What a run killed while writing leaves behind; the next run clears it away.
    let leftover = cache
        .path()
        .join(format!("{}-random-v2-f16.gguf.partial.tmp-99-0", MINI.name));
    std::fs::write(&leftover, b"half a model").unwrap();
    let pair = synth::make(&MINI, cache.path(), &vocab, 2, Projector::F16, &mut |_| {})
        .expect("make the pair");

    // Quantized like the published files: Q4_K_M text, F16 projector matrices.
    let text = gguf::read_file(&pair.model).unwrap();
    assert_eq!(text.get_u64("general.file_type"), Some(15), "Q4_K_M");
    let q4_k = text.tensors.iter().filter(|t| t.ggml_type == 12).count();
    assert!(q4_k > 0, "no Q4_K tensors: {:?}", text.tensors);
    let mmproj = gguf::read_file(&pair.mmproj).unwrap();
    assert_eq!(mmproj.tensor("mm.0.weight").unwrap().ggml_type, 1);
    // Nothing but the pair is left in the cache: the F16 intermediate and the leftover are gone.
    let mut left: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left.len(), 2, "{left:?}");
    // A second call finds the pair instead of making it again.
    let before = std::fs::metadata(&pair.model).unwrap().modified().unwrap();
    let again = synth::make(&MINI, cache.path(), &vocab, 2, Projector::F16, &mut |_| {}).unwrap();
    assert_eq!(again, pair);
    assert_eq!(
        std::fs::metadata(&pair.model).unwrap().modified().unwrap(),
        before
    );

    let mut config = EngineConfig::new(&pair.model, Some(pair.mmproj.clone()), MINI.family);
    config.image_token_budget = 64;
    config.n_ctx = 2048;
    let engine = LlamaEngine::load(config).expect("llama.cpp loads the synthetic pair");
    let mut session = engine.session().expect("context and projector");
    let monitor = MonitorInfo {
        index: 0,
        name: "test".into(),
        x: 0,
        y: 0,
        width: 1920,
        height: 1080,
        scale_factor: 1.0,
        primary: true,
    };
    let (w, h) = engine
        .frame_target()
        .frame_size(monitor.width, monitor.height)
        .unwrap();
    assert_eq!((w % 28, h % 28), (0, 0));
    let frame = Frame {
        image: RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        }),
        map: FrameMap::new(&monitor, w, h),
    };
    let prompt = Prompt::first(
        engine.family().system_prompt().to_owned(),
        "Click the red button.".into(),
        &frame,
    );
    let reply = session.reply(&prompt).expect("a reply from random weights");
    reply.action.validate().expect("the grammar keeps it valid");
    let t = &reply.timings;
    eprintln!("{w}x{h} frame: {t:?}\n{}", reply.raw);
    // One token per 28x28 block: the 2x2 merger of 14-pixel patches.
    assert_eq!(t.image_tokens, ((w / 28) * (h / 28)) as usize);
    assert_eq!(t.image_encodes, 1);
    assert!(t.image_encode_ms > 0.0 && t.decode_tokens > 0);
    assert_eq!(t.new_tokens, t.prefill_tokens, "the first step is all new");

    // The next step: the first screenshot, the reply and all before them are in the cache;
    // only the new turn and its (new) screenshot are evaluated.
    let second_frame = Frame {
        image: RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(y % 256) as u8, 40, (x % 256) as u8])
        }),
        map: FrameMap::new(&monitor, w, h),
    };
    let next = Prompt {
        system: prompt.system.clone(),
        task: prompt.task.clone(),
        past: vec![PastTurn {
            note: String::new(),
            frame: Some(&frame),
            reply: reply.raw.clone(),
        }],
        note: String::new(),
        frame: &second_frame,
    };
    let second = session.generate(&next).unwrap();
    let t2 = &second.timings;
    assert_eq!(t2.image_encodes, 1, "only the new screenshot: {t2:?}");
    assert!(
        t2.reused_tokens >= t.prefill_tokens,
        "the first prompt stays in the cache: {t2:?}"
    );

    // The first screenshot leaves: everything after it is evaluated again, the second
    // screenshot (under M-RoPE, at new positions) from its kept encoding, with no encoder pass.
    let third = Prompt {
        past: vec![
            PastTurn {
                note: String::new(),
                frame: None,
                reply: reply.raw.clone(),
            },
            PastTurn {
                note: "That action was not run: a test.".into(),
                frame: Some(&second_frame),
                reply: second.text.clone(),
            },
        ],
        note: String::new(),
        frame: &second_frame,
        ..next
    };
    // Random weights may name any point the grammar allows, so the reply is not mapped.
    let third_reply = session
        .generate(&third)
        .expect("a reply after the eviction");
    let t3 = &third_reply.timings;
    eprintln!("after the eviction: {t3:?}");
    assert_eq!(t3.image_encodes, 0, "{t3:?}");
    assert_eq!(t3.image_tokens, 2 * t.image_tokens, "{t3:?}");
    assert!(t3.image_prefill_ms > 0.0, "{t3:?}");
    // What the cache holds is what a fresh tokenization of the conversation gives.
    let units = session.prompt_units(&third).unwrap();
    assert_eq!(&session.cache_units()[..units.len()], units.as_slice());
    engine
        .family()
        .parse(&third_reply.text)
        .expect("the grammar keeps it valid");
}
