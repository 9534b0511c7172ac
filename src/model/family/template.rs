//! Chat templates and the layout of the user turn.
//!
//! Image markers are placed bare: llama.cpp's mtmd wraps each image's embeddings in the
//! model's own image delimiters. In `tools/mtmd/mtmd.cpp` (`mtmd_context::init_vision`), the
//! Qwen2-VL, Qwen2.5-VL and Qwen3-VL projectors set `img_beg = "<|vision_start|>"` and
//! `img_end = "<|vision_end|>"`, and the Gemma 3 projector sets `<start_of_image>` and
//! `<end_of_image>`. Writing those tokens here as well would give the model every image twice
//! delimited.

use std::fmt::Write;

use super::RenderedPrompt;

/// The end of every user turn: earlier steps, then the screenshots, earlier frames first and
/// the current one last, each labelled so the model knows which one to act on.
pub(super) fn history_and_images(history: &[String], images: usize, marker: &str) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results below are ignored for that reason.
    if !history.is_empty() {
        out.push_str("\n\nPrevious steps, oldest first:");
        for (i, step) in history.iter().enumerate() {
            let _ = write!(out, "\nStep {}: {}", i + 1, step.trim());
        }
    }
    if images > 1 {
        for i in 1..images {
            let _ = write!(out, "\n\nEarlier screen {i} of {}:\n{marker}", images - 1);
        }
    }
    if images > 0 {
        let _ = write!(out, "\n\nThe current screen:\n{marker}");
    }
    out
}

/// ChatML, the template of Qwen2-VL, Qwen2.5-VL, Qwen3-VL and UI-TARS (all Qwen-based):
/// `<|im_start|>role\n…<|im_end|>\n`, ending with an open assistant turn. `user_opening` is
/// the start of the user turn (it ends the prefix); the history and images follow it.
pub(super) fn chatml(
    system: &str,
    user_opening: &str,
    history: &[String],
    images: usize,
    marker: &str,
) -> RenderedPrompt {
    RenderedPrompt {
        prefix: format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{user_opening}",
            system.trim_end()
        ),
        rest: format!(
            "{}<|im_end|>\n<|im_start|>assistant\n",
            history_and_images(history, images, marker)
        ),
    }
}

/// Gemma's template: `<start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n`. Gemma has
/// no system role; its own chat template puts the system text at the top of the first user
/// turn, and so does this.
pub(super) fn gemma(
    system: &str,
    task: &str,
    history: &[String],
    images: usize,
    marker: &str,
) -> RenderedPrompt {
    RenderedPrompt {
        prefix: format!("<start_of_turn>user\n{}\n\nTask: {task}", system.trim_end()),
        rest: format!(
            "{}<end_of_turn>\n<start_of_turn>model\n",
            history_and_images(history, images, marker)
        ),
    }
}
