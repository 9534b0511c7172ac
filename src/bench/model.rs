//! `deskhand bench model`: prefill and decode speed, image encoding, one whole step, the
//! grammar's cost and the prefix cache's savings, with llama.cpp's own `llama-bench` measured
//! on the same model with the same threads in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use image::RgbImage;
use serde::Serialize;

use super::Summary;
use crate::cli::Failure;
use crate::model::llama::{EngineConfig, LlamaEngine, LlamaSession};
use crate::model::{FamilyId, Prompt};
use crate::screen::{Frame, FrameMap, FrameTarget, MonitorInfo};

#[derive(Debug, Args)]
pub struct ModelBenchArgs {
    /// The model GGUF.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Its vision projector; without it the step is measured text-only.
    #[arg(long, value_name = "PATH")]
    pub mmproj: Option<PathBuf>,
    /// The model family (prompt and action syntax).
    #[arg(long, default_value = "gemma3")]
    pub family: FamilyId,
    /// CPU threads (default: the physical cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Prompt tokens for the prefill figure (llama-bench's -p).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Generated tokens for the decode figure (llama-bench's -n).
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Agent steps for the step, grammar and prefix-cache figures.
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// llama-bench binary (default: target/llama-bench/bin/llama-bench, which
    /// benches/build-llama-bench.sh builds). Pass --no-llama-bench to skip it.
    #[arg(long, value_name = "PATH")]
    pub llama_bench: Option<PathBuf>,
    #[arg(long)]
    pub no_llama_bench: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Speeds {
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
struct StepFigures {
    /// Wall time of whole steps, grammar on, prefix cache on.
    step_ms: Summary,
    image_encode_ms: f64,
    image_tokens: usize,
    /// Tokens evaluated per step with the prefix cache, and with a full recompute.
    prefill_tokens_with_reuse: Vec<usize>,
    prefill_tokens_full_recompute: Vec<usize>,
    /// Time to produce one complete action with the grammar, and the same number of tokens
    /// decoded without it.
    constrained_action_ms: Summary,
    unconstrained_same_tokens_ms: Summary,
    action_tokens: usize,
    sample_reply: String,
}

fn speeds(session: &mut LlamaSession<'_>, args: &ModelBenchArgs) -> Result<Speeds, Failure> {
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..args.repetitions.max(1) {
        prefill.push(session.bench_prefill(args.prompt_tokens)?);
        decode.push(session.bench_decode(args.gen_tokens)?);
    }
    let median = |v: &[Duration]| Summary::of(v).map_or(f64::NAN, |s| s.median_ms);
    Ok(Speeds {
        prefill_tokens_per_s: args.prompt_tokens as f64 / (median(&prefill) / 1e3),
        decode_tokens_per_s: args.gen_tokens as f64 / (median(&decode) / 1e3),
    })
}

/// A synthetic 1920x1080 desktop frame of the size the engine wants: a light window with a
/// dark title bar and a few buttons, so the image encoder has real edges to work on.
fn synthetic_frame(target: FrameTarget) -> Result<Frame, Failure> {
    let monitor = MonitorInfo {
        index: 0,
        name: "bench".into(),
        x: 0,
        y: 0,
        width: 1920,
        height: 1080,
        scale_factor: 1.0,
        primary: true,
    };
    let (w, h) = target.frame_size(monitor.width, monitor.height)?;
    let image = RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (f64::from(x) / f64::from(w), f64::from(y) / f64::from(h));
        if v < 0.05 {
            image::Rgb([40, 44, 52])
        } else if (0.1..0.16).contains(&v) && ((u * 10.0) as u32).is_multiple_of(2) {
            image::Rgb([30, 120, 220])
        } else {
            image::Rgb([235, 235, 235])
        }
    });
    Ok(Frame {
        image,
        map: FrameMap::new(&monitor, w, h),
    })
}

fn steps(
    session: &mut LlamaSession<'_>,
    engine: &LlamaEngine,
    args: &ModelBenchArgs,
) -> Result<StepFigures, Failure> {
    let frame = synthetic_frame(engine.frame_target())?;
    let family = engine.family();
    let task = "Open the Settings window and turn on dark mode.".to_owned();
    let mut history: Vec<String> = Vec::new();
    let mut step_times = Vec::new();
    let mut with_reuse = Vec::new();
    let mut full = Vec::new();
    let mut constrained = Vec::new();
    let mut unconstrained = Vec::new();
    let mut image_encode_ms = 0.0;
    let mut image_tokens = 0;
    let mut action_tokens = 0;
    let mut sample_reply = String::new();
    for step in 0..args.steps.max(2) {
        let prompt = Prompt {
            system: family.system_prompt().to_owned(),
            task: task.clone(),
            history: history.clone(),
            earlier_frames: Vec::new(),
            frame: &frame,
        };
        // From scratch: evaluates everything, and leaves the prefix in the cache.
        session.forget_prefix();
        let recomputed = session.generate(&prompt)?;
        full.push(recomputed.timings.prefill_tokens);
        // The step as the loop runs it: the system+task prefix comes from the cache.
        let reused = session.generate(&prompt)?;
        with_reuse.push(reused.timings.prefill_tokens);
        step_times.push(Duration::from_secs_f64(reused.timings.total_ms / 1e3));
        constrained.push(Duration::from_secs_f64(reused.timings.decode_ms / 1e3));
        image_encode_ms = reused.timings.image_encode_ms;
        image_tokens = reused.timings.image_tokens;
        action_tokens = reused.timings.decode_tokens;
        // The same number of tokens without the grammar (this resets the cache).
        unconstrained.push(session.bench_decode(action_tokens.max(1))?);
        sample_reply = reused.text.clone();
        history.push(format!("Step {}: {}", step + 1, reused.text.trim()));
    }
    let summary = |v: &[Duration]| Summary::of(v).ok_or_else(|| anyhow!("no steps measured"));
    Ok(StepFigures {
        step_ms: summary(&step_times)?,
        image_encode_ms,
        image_tokens,
        prefill_tokens_with_reuse: with_reuse,
        prefill_tokens_full_recompute: full,
        constrained_action_ms: summary(&constrained)?,
        unconstrained_same_tokens_ms: summary(&unconstrained)?,
        action_tokens,
        sample_reply,
    })
}

/// llama-bench's own prefill (pp) and decode (tg) speeds on the same model and threads.
fn llama_bench(
    binary: &Path,
    model: &Path,
    threads: i32,
    args: &ModelBenchArgs,
) -> Result<Speeds, Failure> {
    let output = Command::new(binary)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string()])
        .args([
            "-p",
            &args.prompt_tokens.to_string(),
            "-n",
            &args.gen_tokens.to_string(),
        ])
        .args([
            "-r",
            &args.repetitions.max(1).to_string(),
            "-o",
            "json",
            "-ngl",
            "0",
        ])
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !output.status.success() {
        return Err(anyhow!(
            "{} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )
        .into());
    }
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("unexpected output from {}", binary.display()))?;
    let speed = |is_prefill: bool| {
        runs.iter()
            .find(|r| {
                let prompt = r["n_prompt"].as_u64().unwrap_or(0);
                let gen_tokens = r["n_gen"].as_u64().unwrap_or(0);
                if is_prefill {
                    prompt > 0 && gen_tokens == 0
                } else {
                    gen_tokens > 0 && prompt == 0
                }
            })
            .and_then(|r| r["avg_ts"].as_f64())
            .ok_or_else(|| {
                anyhow!(
                    "llama-bench reported no {} result",
                    if is_prefill { "pp" } else { "tg" }
                )
            })
    };
    Ok(Speeds {
        prefill_tokens_per_s: speed(true)?,
        decode_tokens_per_s: speed(false)?,
    })
}

pub fn model(args: &ModelBenchArgs) -> Result<(), Failure> {
    let mut config = EngineConfig::new(&args.model, args.mmproj.clone(), args.family);
    config.threads = args.threads;
    // llama-bench's defaults, so the two prefill figures use the same batch shapes.
    config.n_batch = 2048;
    config.n_ubatch = 512;
    let engine = LlamaEngine::load(config)?;
    let mut session = engine.session()?;
    eprintln!(
        "measuring prefill and decode ({} threads)...",
        engine.threads()
    );
    let ours = speeds(&mut session, args)?;
    eprintln!("measuring {} agent steps...", args.steps.max(2));
    let step = steps(&mut session, &engine, args)?;
    let reference = if args.no_llama_bench {
        None
    } else {
        let binary = args
            .llama_bench
            .clone()
            .unwrap_or_else(|| PathBuf::from("target/llama-bench/bin/llama-bench"));
        if !binary.is_file() {
            return Err(anyhow!(
                "llama-bench not found at {}; build it with benches/build-llama-bench.sh, pass --llama-bench PATH, or --no-llama-bench",
                binary.display()
            )
            .into());
        }
        eprintln!("running {}...", binary.display());
        Some(llama_bench(&binary, &args.model, engine.threads(), args)?)
    };
    let grammar_ratio =
        step.constrained_action_ms.median_ms / step.unconstrained_same_tokens_ms.median_ms;
    if args.json {
        let out = serde_json::json!({
            "model": args.model, "threads": engine.threads(),
            "deskhand": ours, "llama_bench": reference,
            "prefill_ratio": reference.map(|r| ours.prefill_tokens_per_s / r.prefill_tokens_per_s),
            "decode_ratio": reference.map(|r| ours.decode_tokens_per_s / r.decode_tokens_per_s),
            "step": step, "grammar_time_ratio": grammar_ratio,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "model {} ({} threads)",
        args.model.display(),
        engine.threads()
    );
    println!(
        "deskhand:    prefill {:8.1} tok/s   decode {:6.1} tok/s",
        ours.prefill_tokens_per_s, ours.decode_tokens_per_s
    );
    if let Some(r) = reference {
        println!(
            "llama-bench: prefill {:8.1} tok/s   decode {:6.1} tok/s",
            r.prefill_tokens_per_s, r.decode_tokens_per_s
        );
        println!(
            "ratio:       prefill {:8.3}         decode {:6.3}",
            ours.prefill_tokens_per_s / r.prefill_tokens_per_s,
            ours.decode_tokens_per_s / r.decode_tokens_per_s
        );
    }
    println!(
        "step: median {:.1} ms, p95 {:.1} ms; image encode {:.1} ms for {} image tokens",
        step.step_ms.median_ms, step.step_ms.p95_ms, step.image_encode_ms, step.image_tokens
    );
    println!(
        "prefill tokens per step: with prefix reuse {:?}, full recompute {:?}",
        step.prefill_tokens_with_reuse, step.prefill_tokens_full_recompute
    );
    println!(
        "one action ({} tokens): with grammar {:.1} ms, same tokens without {:.1} ms: ratio {:.2}",
        step.action_tokens,
        step.constrained_action_ms.median_ms,
        step.unconstrained_same_tokens_ms.median_ms,
        grammar_ratio
    );
    println!("sample reply: {}", step.sample_reply.trim());
    Ok(())
}
