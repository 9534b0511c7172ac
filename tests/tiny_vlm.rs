//! The tiny generated VLM (`deskhand::model::tiny`) runs through the real llama.cpp path: the
//! text model and projector load, an image becomes the expected number of image tokens, the
//! prompt is evaluated and greedy decoding produces tokens.

use std::sync::OnceLock;

use deskhand::model::ffi::{
    Backend, Batch, Bitmap, ChunkType, Chunks, ContextParams, Model, ModelParams, Mtmd, MtmdInput,
    MtmdParams, Sampler, default_media_marker,
};
use deskhand::model::tiny::{
    TINY_IMAGE_SIZE, TINY_IMAGE_TOKENS, TINY_N_EMBD, TINY_N_VOCAB, TinyVlm, write_tiny_vlm,
};

const N_CTX: u32 = 4096;
const N_BATCH: u32 = 512;
const DECODE_STEPS: usize = 10;

/// llama.cpp's backend may be initialised once per process, and the tests of this binary run
/// on several threads.
fn backend() -> &'static Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let mut backend = Backend::init().expect("llama.cpp backend initialises");
        // Keep llama.cpp's per-tensor load log out of the test output.
        backend.void_logs();
        backend
    })
}

fn threads() -> i32 {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4) as i32)
}

/// Something that looks like a small screen: a gradient desktop, a title bar, a window and a
/// button, so the patches differ from each other.
fn screen_like_rgb(width: u32, height: u32) -> Vec<u8> {
    let mut rgb = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let px = if y < height / 8 {
                [40, 44, 52] // title bar
            } else if (width / 8..width * 7 / 8).contains(&x)
                && (height / 4..height * 7 / 8).contains(&y)
            {
                if (width / 2..width * 3 / 4).contains(&x)
                    && (height * 5 / 8..height * 3 / 4).contains(&y)
                {
                    [30, 120, 220] // button
                } else {
                    [240, 240, 240] // window
                }
            } else {
                [(x * 255 / width) as u8, (y * 255 / height) as u8, 128] // desktop
            };
            rgb.extend_from_slice(&px);
        }
    }
    rgb
}

fn image_chunk_tokens(chunks: &Chunks) -> Vec<usize> {
    chunks
        .iter()
        .filter(|c| c.chunk_type() == ChunkType::Image)
        .map(|c| c.n_tokens())
        .collect()
}

/// The test prompt. Text follows the image so that the last evaluated token is a text token,
/// which is the one that gets logits.
fn tokenize(mtmd: &Mtmd<'_>, bitmap: &Bitmap) -> Chunks {
    mtmd.tokenize(
        MtmdInput {
            text: &format!("describe {}\nanswer:", default_media_marker()),
            add_special: true,
            parse_special: true,
        },
        &[bitmap],
    )
    .expect("the prompt tokenizes")
}

#[test]
fn generating_twice_gives_identical_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = write_tiny_vlm(a.path()).unwrap();
    let second = write_tiny_vlm(b.path()).unwrap();
    // Writing again into the same directory replaces the files with the same bytes.
    let again = write_tiny_vlm(a.path()).unwrap();
    assert_eq!(first, again);

    for (x, y) in [
        (&first.model, &second.model),
        (&first.mmproj, &second.mmproj),
    ] {
        let (bx, by) = (std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
        assert_eq!(bx, by, "{} and {} differ", x.display(), y.display());
        assert_eq!(&bx[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(bx[4..8].try_into().unwrap()), 3);
        assert!(bx.len() < 4 << 20, "{} is {} bytes", x.display(), bx.len());
        println!(
            "{}: {} bytes",
            x.file_name().unwrap().to_string_lossy(),
            bx.len()
        );
    }
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn write_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let err = write_tiny_vlm(&blocker.join("sub")).unwrap_err();
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[test]
fn tiny_vlm_runs_through_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let TinyVlm { model, mmproj } = write_tiny_vlm(dir.path()).unwrap();
    let backend = backend();

    let model =
        Model::load(backend, &model, &ModelParams::default()).expect("the tiny text model loads");
    assert_eq!(model.n_vocab(), TINY_N_VOCAB as i32);
    assert_eq!(model.n_embd(), TINY_N_EMBD as i32);

    let mut ctx = model
        .new_context(
            backend,
            &ContextParams {
                n_ctx: Some(N_CTX),
                n_batch: Some(N_BATCH),
                n_ubatch: Some(N_BATCH),
                n_threads: Some(threads()),
                n_threads_batch: Some(threads()),
                ..ContextParams::default()
            },
        )
        .expect("a context opens");

    let mtmd_params = MtmdParams {
        use_gpu: false,
        print_timings: false,
        n_threads: threads(),
        ..MtmdParams::default()
    };
    let mut mtmd =
        Mtmd::init_from_file(&mmproj, &model, &mtmd_params).expect("the tiny projector loads");
    assert!(mtmd.support_vision());
    assert!(!mtmd.decode_use_mrope());

    let side = TINY_IMAGE_SIZE;
    let screen = screen_like_rgb(side, side);
    let bitmap = Bitmap::from_rgb(side, side, &screen).unwrap();
    let chunks = tokenize(&mtmd, &bitmap);
    assert_eq!(image_chunk_tokens(&chunks), vec![TINY_IMAGE_TOKENS]);
    println!(
        "chunks: {}, image tokens: {:?}, total tokens: {}",
        chunks.len(),
        image_chunk_tokens(&chunks),
        chunks.total_tokens()
    );

    // A frame of another size is letterboxed to the projector's size: still one tile.
    let other = Bitmap::from_rgb(200, 120, &screen_like_rgb(200, 120)).unwrap();
    assert_eq!(
        image_chunk_tokens(&tokenize(&mtmd, &other)),
        vec![TINY_IMAGE_TOKENS]
    );

    // The image reaches the text model: another image changes the next-token logits, the same
    // image gives the same logits again.
    let inverted: Vec<u8> = screen.iter().map(|&v| 255 - v).collect();
    let inverted = Bitmap::from_rgb(side, side, &inverted).unwrap();
    let mut prefill_logits = |bitmap: &Bitmap| {
        ctx.memory_clear();
        let chunks = tokenize(&mtmd, bitmap);
        mtmd.eval_chunks(&mut ctx, &chunks, 0, 0, N_BATCH as i32, true)
            .expect("the prompt evaluates");
        ctx.logits_ith(-1).unwrap().to_vec()
    };
    let logits_inverted = prefill_logits(&inverted);
    let logits_screen = prefill_logits(&bitmap);
    assert_ne!(logits_screen, logits_inverted);
    assert_eq!(logits_screen, prefill_logits(&bitmap));

    ctx.memory_clear();
    let n_past = mtmd
        .eval_chunks(&mut ctx, &chunks, 0, 0, N_BATCH as i32, true)
        .expect("the prompt evaluates");
    assert_eq!(n_past as usize, chunks.total_tokens());
    assert_eq!(ctx.logits_ith(-1).unwrap(), &logits_screen[..]);

    let vocab = model.vocab();
    let mut sampler = Sampler::chain(vec![Sampler::greedy().unwrap()]).unwrap();
    let mut batch = Batch::new(1, 1).unwrap();
    let mut tokens = Vec::new();
    // Each sampled token goes in at the next position after the prompt.
    for pos in n_past..n_past + DECODE_STEPS as i32 {
        let token = sampler.sample(&mut ctx, -1).expect("a token is sampled");
        tokens.push(token);
        if vocab.is_eog(token) {
            break;
        }
        batch.clear();
        batch.add(token, pos, &[0], true).unwrap();
        ctx.decode(&batch).expect("a decode step runs");
    }
    let pieces: Vec<String> = tokens
        .iter()
        .map(|&t| String::from_utf8_lossy(&vocab.token_to_piece(t, true).unwrap()).into_owned())
        .collect();
    // Detokenizing joins the tokens' pieces. (This byte vocabulary has no "▁" token, so SPM
    // spells each space as the three bytes of U+2581, and they stay that way.)
    let text = "describe the screen\nanswer: click(3, 4)";
    let text_tokens = vocab.tokenize(text.as_bytes(), false, false).unwrap();
    let pieces_joined: Vec<u8> = text_tokens
        .iter()
        .flat_map(|&t| vocab.token_to_piece(t, false).unwrap())
        .collect();
    assert_eq!(
        vocab.detokenize(&text_tokens, false, false).unwrap(),
        pieces_joined
    );
    assert_eq!(
        String::from_utf8(pieces_joined).unwrap().replace('▁', " "),
        // No space in front: the tiny VLM's tokenizer, like Gemma 3's, adds none.
        text
    );
    println!(
        "decoded {} tokens: {:?} {:?}",
        tokens.len(),
        tokens.iter().map(|t| t.0).collect::<Vec<_>>(),
        pieces
    );
    assert!(!tokens.is_empty());
    assert!(
        tokens
            .iter()
            .all(|t| (0..TINY_N_VOCAB as i32).contains(&t.0))
    );
}
