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
use crate::model::kv::Unit;
use crate::model::llama::{EngineConfig, LlamaEngine, LlamaSession};
use crate::model::{FamilyId, ModelError, PastTurn, Prompt};
use crate::screen::{Frame, FrameMap, FrameTarget, MonitorInfo};

#[derive(Debug, Args)]
pub struct ModelBenchArgs {
    /// The model GGUF.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Its vision projector; without it the step is measured text-only.
    #[arg(long, value_name = "PATH")]
    pub mmproj: Option<PathBuf>,
    /// The model family (prompt and action syntax; default: from the model's metadata).
    #[arg(long)]
    pub family: Option<FamilyId>,
    /// CPU threads (default: the physical cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Prompt tokens for the prefill figure (llama-bench's -p).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Generated tokens for the decode figure (llama-bench's -n).
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Repetitions of the text prefill within a round, on each side; the round keeps each
    /// side's fastest (a shared machine's interference only ever slows a run, so the fastest
    /// repetition is the figure it moves least).
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Decodes a side within a round, taken in pairs, deskhand's right next to a one-repetition
    /// llama-bench's, in alternating order: the round's decode ratio is the median of the pairs'
    /// own ratios. A decode lasts seconds, and much of a shared machine's interference comes in
    /// spells of minutes, which a pair sees on both sides and two blocks of repetitions do not.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub decode_pairs: u32,
    /// Rounds of measurements, each figure right next to llama.cpp's, with llama.cpp first in
    /// every other round, so that a slow spell of a shared machine falls on both sides. Each
    /// figure is the median over the rounds, and each ratio the median of the rounds' own
    /// ratios.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Agent steps for the step, grammar and prefix-cache figures (default 4 without a
    /// projector, 0 with one: `deskhand bench step` measures whole steps with images).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Image tokens per frame the frame is sized for (default: the projector's own limits and
    /// 1200 tokens).
    #[arg(long, value_name = "N")]
    pub image_tokens: Option<i64>,
    /// The folder holding llama.cpp's llama-bench and llama-mtmd-cli, built from the same source
    /// (default: what benches/build-llama-tools.sh builds, in
    /// ~/.cache/deskhand/llama-tools/11434.0.0/build/bin).
    #[arg(long, value_name = "DIR")]
    pub llama_tools: Option<PathBuf>,
    /// Measure deskhand alone, without llama.cpp's tools.
    #[arg(long)]
    pub no_reference: bool,
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
    /// Tokens evaluated per step with the cache, and with a full recompute.
    prefill_tokens_with_reuse: Vec<usize>,
    prefill_tokens_full_recompute: Vec<usize>,
    /// Time to produce one complete action with the grammar, and the same number of tokens
    /// decoded without it.
    constrained_action_ms: Summary,
    unconstrained_same_tokens_ms: Summary,
    action_tokens: usize,
    sample_reply: String,
}

/// deskhand's text prefill: the fastest of `--repetitions`, tokens per second.
fn prefill_speed(session: &mut LlamaSession<'_>, args: &ModelBenchArgs) -> Result<f64, Failure> {
    let mut prefill = Vec::new();
    for _ in 0..args.repetitions.max(1) {
        prefill.push(session.bench_prefill(args.prompt_tokens)?);
    }
    let fastest = Summary::of(&prefill).map_or(f64::NAN, |s| s.min_ms);
    Ok(args.prompt_tokens as f64 / (fastest / 1e3))
}

/// deskhand's decode of `--gen-tokens` once, tokens per second.
fn decode_speed(session: &mut LlamaSession<'_>, args: &ModelBenchArgs) -> Result<f64, Failure> {
    let took = session.bench_decode(args.gen_tokens)?;
    Ok(args.gen_tokens as f64 / took.as_secs_f64())
}

/// One decode by each side, back to back, tokens per second.
#[derive(Debug, Clone, Copy, Serialize)]
struct DecodePair {
    tok_s: f64,
    ref_tok_s: f64,
}

/// `--decode-pairs` pairs of decodes, deskhand's and llama-bench's (`-p 0 -n M -r 1`), the
/// order alternating from pair to pair and starting with llama-bench's when `reference_first`.
fn decode_pairs(
    session: &mut LlamaSession<'_>,
    llama_bench: &Path,
    threads: i32,
    args: &ModelBenchArgs,
    reference_first: bool,
) -> Result<Vec<DecodePair>, Failure> {
    let theirs = || -> Result<f64, Failure> {
        let runs = run_llama_bench(
            llama_bench,
            &args.model,
            threads,
            1,
            &[
                "-p".into(),
                "0".into(),
                "-n".into(),
                args.gen_tokens.to_string(),
            ],
        )?;
        llama_bench_speed(&runs, 0, args.gen_tokens)
    };
    let mut pairs = Vec::new();
    for pair in 0..args.decode_pairs {
        let pair = if reference_first == (pair % 2 == 0) {
            let ref_tok_s = theirs()?;
            DecodePair {
                tok_s: decode_speed(session, args)?,
                ref_tok_s,
            }
        } else {
            let tok_s = decode_speed(session, args)?;
            DecodePair {
                tok_s,
                ref_tok_s: theirs()?,
            }
        };
        pairs.push(pair);
    }
    Ok(pairs)
}

/// The median of `values` (the mean of the middle two for an even count); None when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        n if n % 2 == 1 => Some(values[n / 2]),
        n => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// A synthetic 1920x1080 desktop frame of the size the engine wants: a light window with a
/// dark title bar and a few buttons, so the image encoder has real edges to work on.
fn synthetic_frame(target: FrameTarget) -> Result<Frame, Failure> {
    let monitor = MonitorInfo::single("bench", 1920, 1080);
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
    n_steps: usize,
) -> Result<StepFigures, Failure> {
    let frame = synthetic_frame(engine.frame_target())?;
    let family = engine.family();
    let task = "Open the Settings window and turn on dark mode.".to_owned();
    let mut replies: Vec<String> = Vec::new();
    let mut step_times = Vec::new();
    let mut with_reuse = Vec::new();
    let mut full = Vec::new();
    let mut constrained = Vec::new();
    let mut unconstrained = Vec::new();
    let mut image_encode_ms = 0.0;
    let mut image_tokens = 0;
    let mut action_tokens = 0;
    let mut sample_reply = String::new();
    let prompt_after = |replies: &[String]| Prompt {
        system: family.system_prompt().to_owned(),
        task: task.clone(),
        past: replies
            .iter()
            .map(|reply| PastTurn {
                note: String::new(),
                frame: None,
                reply: reply.clone(),
            })
            .collect(),
        note: String::new(),
        frame: &frame,
    };
    // The steps as the loop runs them: each evaluates what the cache does not hold yet.
    session.forget_cache();
    for _ in 0..n_steps {
        let reused = session.generate(&prompt_after(&replies))?;
        with_reuse.push(reused.timings.prefill_tokens);
        step_times.push(Duration::from_secs_f64(reused.timings.total_ms / 1e3));
        constrained.push(Duration::from_secs_f64(reused.timings.decode_ms / 1e3));
        image_encode_ms = reused.timings.image_encode_ms;
        image_tokens = reused.timings.image_tokens;
        action_tokens = reused.timings.decode_tokens;
        sample_reply = reused.text.clone();
        replies.push(reused.text);
    }
    // The same prompts from scratch, and as many tokens decoded without the grammar.
    for step in 0..n_steps {
        session.forget_cache();
        let recomputed = session.generate(&prompt_after(&replies[..step]))?;
        full.push(recomputed.timings.prefill_tokens);
        unconstrained.push(session.bench_decode(recomputed.timings.decode_tokens.max(1))?);
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

/// Runs llama-bench with `extra` arguments and returns the result rows of its JSON output.
fn run_llama_bench(
    binary: &Path,
    model: &Path,
    threads: i32,
    repetitions: usize,
    extra: &[String],
) -> Result<Vec<serde_json::Value>, Failure> {
    let output = Command::new(binary)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string()])
        .args([
            "-r",
            &repetitions.max(1).to_string(),
            "-o",
            "json",
            "-ngl",
            "0",
        ])
        .args(extra)
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
    Ok(serde_json::from_slice(&output.stdout)
        .with_context(|| format!("unexpected output from {}", binary.display()))?)
}

/// The tokens/s of the fastest repetition in the row with these prompt and generated token
/// counts (its `samples_ts`; the average where a build prints no samples), as deskhand's own
/// figure keeps its fastest repetition.
fn llama_bench_speed(
    runs: &[serde_json::Value],
    prompt: usize,
    generated: usize,
) -> Result<f64, Failure> {
    let row = runs
        .iter()
        .find(|r| {
            r["n_prompt"].as_u64() == Some(prompt as u64)
                && r["n_gen"].as_u64() == Some(generated as u64)
        })
        .ok_or_else(|| anyhow!("llama-bench reported no pp{prompt} tg{generated} result"))?;
    let fastest = row["samples_ts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_f64)
        .reduce(f64::max);
    Ok(fastest
        .or_else(|| row["avg_ts"].as_f64())
        .ok_or_else(|| anyhow!("llama-bench's pp{prompt} tg{generated} row has no speed"))?)
}

/// llama-bench's text prefill, `-p N -n 0`, as many repetitions as deskhand's: its fastest.
fn llama_bench_prefill(
    binary: &Path,
    model: &Path,
    threads: i32,
    args: &ModelBenchArgs,
) -> Result<f64, Failure> {
    let p = args.prompt_tokens;
    let runs = run_llama_bench(
        binary,
        model,
        threads,
        args.repetitions,
        &["-p".into(), p.to_string(), "-n".into(), "0".into()],
    )?;
    llama_bench_speed(&runs, p, 0)
}

/// llama-bench's prefill of as many text tokens as the image has, after as many tokens as come
/// before it in the prompt (`-p N -d D`): a second reference for the image-token prefill, with
/// no encode before it. Tokens per second.
fn llama_bench_image_prefill(
    binary: &Path,
    model: &Path,
    threads: i32,
    image: &ImageFigures,
) -> Result<f64, Failure> {
    let runs = run_llama_bench(
        binary,
        model,
        threads,
        1,
        &[
            "-p".into(),
            image.image_tokens.to_string(),
            "-n".into(),
            "0".into(),
            "-d".into(),
            image.tokens_before.to_string(),
        ],
    )?;
    llama_bench_speed(&runs, image.image_tokens, 0)
}

/// What one image costs: llama.cpp's own timers for the encoder and for decoding the image
/// tokens into the cache.
#[derive(Debug, Clone, Copy, Serialize)]
struct ImageFigures {
    image_tokens: usize,
    /// Tokens in the cache before the image (system prompt, task, the vision-start marker).
    tokens_before: usize,
    /// The encoder alone, by llama.cpp's timer.
    encode_ms: f64,
    /// Resizing and normalizing the frame before the encoder, which the reference's figure
    /// leaves out.
    preprocess_ms: f64,
    prefill_ms: f64,
}

/// One step with one image and no history, `repetitions` times, after one warm-up that is not
/// counted when `warm_up` says so: the median image figures. llama-mtmd-cli encodes a warm-up
/// image when it starts, so its timed encode is a warm one; so is every encode of an agent run
/// after its first.
fn image(
    session: &mut LlamaSession<'_>,
    engine: &LlamaEngine,
    frame: &Frame,
    repetitions: usize,
    warm_up: bool,
) -> Result<ImageFigures, Failure> {
    let mut runs = Vec::new();
    let first_counted = usize::from(warm_up);
    for run in 0..first_counted + repetitions.max(1) {
        let prompt = Prompt::first(
            engine.family().system_prompt().to_owned(),
            "Open the Settings window and turn on dark mode.".into(),
            frame,
        );
        session.forget_cache();
        let t = session.generate(&prompt)?.timings;
        if run < first_counted {
            continue;
        }
        runs.push(ImageFigures {
            image_tokens: t.image_tokens,
            tokens_before: tokens_before_image(session, &prompt)?,
            // The encoder by llama.cpp's own timer, as llama-mtmd-cli reports it: the
            // preprocessing around it (resizing the frame) is not in the reference's figure.
            encode_ms: t.image_encoder_ms,
            preprocess_ms: (t.image_encode_ms - t.image_encoder_ms).max(0.0),
            prefill_ms: t.image_prefill_ms,
        });
    }
    let over_runs =
        |f: fn(&ImageFigures) -> f64| median(runs.iter().map(f).collect()).unwrap_or(f64::NAN);
    Ok(ImageFigures {
        image_tokens: runs[0].image_tokens,
        tokens_before: runs[0].tokens_before,
        encode_ms: over_runs(|r| r.encode_ms),
        preprocess_ms: over_runs(|r| r.preprocess_ms),
        prefill_ms: over_runs(|r| r.prefill_ms),
    })
}

/// The prompt's tokens before its (only) image, as the engine lays the prompt out (with the
/// model's template or the built-in layout, BOS included), and the vision-start token mtmd
/// puts in front of the image.
fn tokens_before_image(
    session: &mut LlamaSession<'_>,
    prompt: &Prompt<'_>,
) -> Result<usize, ModelError> {
    let units = session.prompt_units(prompt)?;
    Ok(units
        .iter()
        .take_while(|u| matches!(u, Unit::Token(_)))
        .count()
        + 1)
}

/// llama-mtmd-cli's figures for the same files, image and threads, and its peak RSS.
#[derive(Debug, Clone, Copy, Serialize)]
struct MtmdCliFigures {
    encode_ms: f64,
    /// Its decode of the image tokens after its encode, by the same mtmd helper timer that
    /// deskhand's figure reads: the like-for-like reference. Printed only at `-lv 4`.
    image_prefill_ms: Option<f64>,
    /// The image tokens it decoded, to check that both sides decoded the same number.
    image_tokens: Option<usize>,
    peak_rss_mb: f64,
}

fn mtmd_cli(
    binary: &Path,
    args: &ModelBenchArgs,
    mmproj: &Path,
    image: &Path,
    config: &EngineConfig,
    threads: i32,
) -> Result<MtmdCliFigures, Failure> {
    let mut command = Command::new(binary);
    command
        .arg("-m")
        .arg(&args.model)
        .arg("--mmproj")
        .arg(mmproj)
        .arg("--image")
        .arg(image)
        .args(["-p", "Open the Settings window and turn on dark mode."])
        .args(["-n", "4", "--temp", "0", "-ngl", "0"])
        .args(["-t", &threads.to_string()])
        // Trace verbosity, for mtmd's "image decoded (batch i/n) in N ms".
        .args(["-lv", "4"])
        .args(["-c", &config.n_ctx.to_string()])
        .args(["-b", &config.n_batch.to_string()])
        .args(["-ub", &config.n_ubatch.to_string()]);
    if let Some(n) = config.image_min_tokens {
        command.args(["--image-min-tokens", &n.to_string()]);
    }
    if let Some(n) = config.image_max_tokens {
        command.args(["--image-max-tokens", &n.to_string()]);
    }
    let (output, peak_rss_mb) =
        run_measured(&mut command).with_context(|| format!("cannot run {}", binary.display()))?;
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(anyhow!(
            "{} failed ({}): {}",
            binary.display(),
            output.status,
            log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        )
        .into());
    }
    // "mtmd batch encoding done in 51234 ms": the CLI encodes its images in one batch and
    // times that with llama.cpp's clock.
    let encode: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split_once(" encoding done in "))
        .filter_map(|(_, rest)| rest.trim().strip_suffix("ms")?.trim().parse().ok())
        .collect();
    if encode.is_empty() {
        return Err(anyhow!("{} printed no image encode time", binary.display()).into());
    }
    let image = image_decode_lines(&log);
    Ok(MtmdCliFigures {
        encode_ms: encode.iter().sum(),
        image_prefill_ms: image.map(|(ms, _)| ms),
        image_tokens: image.map(|(_, tokens)| tokens),
        peak_rss_mb,
    })
}

/// mtmd's own lines about decoding image tokens, "decoding image batch 1/1, n_tokens_batch =
/// 1150" and "image decoded (batch 1/1) in 55012 ms": the milliseconds and tokens over all
/// batches, or None when the log has no such line.
fn image_decode_lines(log: &str) -> Option<(f64, usize)> {
    let number_after = |line: &str, marker: &str| -> Option<f64> {
        let (_, rest) = line.split_once(marker)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    let ms: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("image decoded (batch "))
        .filter_map(|l| number_after(l, ") in "))
        .collect();
    let tokens: f64 = log
        .lines()
        .filter(|l| l.contains("decoding image batch "))
        .filter_map(|l| number_after(l, "n_tokens_batch = "))
        .sum();
    (!ms.is_empty()).then(|| (ms.iter().sum(), tokens as usize))
}

/// Runs a child to completion and returns its output and its peak resident memory in MB.
///
/// The peak is the kernel's high-water mark of the child's own memory (VmHWM), read from /proc
/// every 20 ms until it exits. wait4's ru_maxrss cannot be used: on Linux a child starts from
/// its parent's peak, so it would report this process's gigabytes as the child's.
fn run_measured(command: &mut Command) -> std::io::Result<(std::process::Output, f64)> {
    use std::io::Read;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Both pipes are drained on threads so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_reader = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_reader = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(kb) = std::fs::read_to_string(&status_file)
            .ok()
            .as_deref()
            .and_then(vm_hwm_kb)
        {
            peak_kb = peak_kb.max(kb);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok((
        std::process::Output {
            status,
            stdout,
            stderr,
        },
        peak_kb as f64 / 1024.0,
    ))
}

/// The `VmHWM:   123456 kB` line of /proc/PID/status.
fn vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// This process's peak resident memory in MB.
pub(super) fn own_peak_rss_mb() -> f64 {
    // SAFETY: getrusage fills in plain data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}

/// The folder `benches/build-llama-tools.sh` builds llama.cpp's tools into.
pub fn default_llama_tools() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "deskhand")
        .map(|d| d.cache_dir().join("llama-tools/11434.0.0/build/bin"))
}

pub fn model(args: &ModelBenchArgs) -> Result<(), Failure> {
    let family = super::family_of(&args.model, args.family)?;
    let mut config = EngineConfig::new(&args.model, args.mmproj.clone(), family);
    config.threads = args.threads;
    // llama-bench's and llama-mtmd-cli's defaults, so both sides use the same batch shapes.
    config.n_batch = 2048;
    config.n_ubatch = 512;
    if let Some(n) = args.image_tokens {
        config
            .set_image_token_budget(n, &args.model.display().to_string())
            .map_err(crate::cli::bad_input)?;
    }
    let tools = if args.no_reference {
        None
    } else {
        let dir = args
            .llama_tools
            .clone()
            .or_else(default_llama_tools)
            .ok_or_else(|| anyhow!("no home folder; pass --llama-tools DIR"))?;
        for tool in ["llama-bench", "llama-mtmd-cli"] {
            if !dir.join(tool).is_file() {
                return Err(crate::cli::bad_input(anyhow!(
                    "{} not found; build llama.cpp's tools with benches/build-llama-tools.sh, pass --llama-tools DIR, or --no-reference",
                    dir.join(tool).display()
                )));
            }
        }
        Some(dir)
    };
    let engine = LlamaEngine::load(config.clone())?;
    let mut session = engine.session()?;
    let threads = config_threads(&config);
    let frame = synthetic_frame(engine.frame_target())?;
    // llama-mtmd-cli reads the same frame from a file, removed when this function returns.
    let frame_file = match (&tools, &args.mmproj) {
        (Some(_), Some(_)) => {
            let file = tempfile::Builder::new()
                .prefix("deskhand-bench-frame-")
                .suffix(".png")
                .tempfile()
                .context("cannot create a temporary file for the frame")?;
            frame
                .image
                .save(file.path())
                .with_context(|| format!("cannot write {}", file.path().display()))?;
            Some(file)
        }
        _ => None,
    };
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let of = format!("round {round}/{}", args.rounds);
        // Each figure is measured right next to its reference, and every other round the
        // reference goes first, so a slow spell of a shared machine (minutes long here) or a
        // drift over the run falls on both sides alike instead of on whichever ran later.
        let reference_first = round % 2 == 0;
        let ours_prefill = |session: &mut LlamaSession<'_>| -> Result<f64, Failure> {
            eprintln!("{of}: deskhand prefill ({threads} threads)...");
            prefill_speed(session, args)
        };
        let ref_prefill = |dir: &Path| -> Result<f64, Failure> {
            let binary = dir.join("llama-bench");
            eprintln!("{of}: {} prefill...", binary.display());
            llama_bench_prefill(&binary, &args.model, threads, args)
        };
        let (prefill, reference_prefill) = match &tools {
            Some(dir) if reference_first => {
                let theirs = ref_prefill(dir)?;
                (ours_prefill(&mut session)?, Some(theirs))
            }
            Some(dir) => {
                let ours = ours_prefill(&mut session)?;
                (ours, Some(ref_prefill(dir)?))
            }
            None => (ours_prefill(&mut session)?, None),
        };
        let (decode, pairs) = match &tools {
            Some(dir) => {
                eprintln!(
                    "{of}: {} decode pairs, deskhand and llama-bench...",
                    args.decode_pairs
                );
                let pairs = decode_pairs(
                    &mut session,
                    &dir.join("llama-bench"),
                    threads,
                    args,
                    reference_first,
                )?;
                (median(pairs.iter().map(|p| p.tok_s).collect()), pairs)
            }
            None => {
                eprintln!("{of}: deskhand decode...");
                let mut decodes = Vec::new();
                for _ in 0..args.decode_pairs {
                    decodes.push(decode_speed(&mut session, args)?);
                }
                (median(decodes), Vec::new())
            }
        };
        let ours = Speeds {
            prefill_tokens_per_s: prefill,
            decode_tokens_per_s: decode.unwrap_or(f64::NAN),
        };
        let reference = reference_prefill.map(|prefill| Speeds {
            prefill_tokens_per_s: prefill,
            decode_tokens_per_s: median(pairs.iter().map(|p| p.ref_tok_s).collect())
                .unwrap_or(f64::NAN),
        });
        let ours_image = |session: &mut LlamaSession<'_>| -> Result<ImageFigures, Failure> {
            eprintln!(
                "{of}: deskhand, one {}x{} frame...",
                frame.image.width(),
                frame.image.height()
            );
            image(session, &engine, &frame, 1, round == 1)
        };
        let ref_image = |dir: &Path, mmproj: &Path, file: &Path| {
            let binary = dir.join("llama-mtmd-cli");
            eprintln!("{of}: {}...", binary.display());
            mtmd_cli(&binary, args, mmproj, file, &config, threads)
        };
        let (image_figures, reference_image) = match (&args.mmproj, &tools, &frame_file) {
            (Some(mmproj), Some(dir), Some(file)) if reference_first => {
                let theirs = ref_image(dir, mmproj, file.path())?;
                (Some(ours_image(&mut session)?), Some(theirs))
            }
            (Some(mmproj), Some(dir), Some(file)) => {
                let ours = ours_image(&mut session)?;
                (Some(ours), Some(ref_image(dir, mmproj, file.path())?))
            }
            (Some(_), _, _) => (Some(ours_image(&mut session)?), None),
            _ => (None, None),
        };
        // A second, text-only reference for the image-token prefill: once, in the first round
        // (its prompt warm-up doubles its cost, and mtmd-cli's own image decode is the
        // like-for-like reference every round).
        let ref_image_prefill_bench_tok_s = match (&tools, &image_figures) {
            (Some(dir), Some(image)) if round == 1 => {
                let binary = dir.join("llama-bench");
                eprintln!("{of}: {}, image-sized prefill...", binary.display());
                Some(llama_bench_image_prefill(
                    &binary,
                    &args.model,
                    threads,
                    image,
                )?)
            }
            _ => None,
        };
        let round = ModelReport::new(
            args,
            threads,
            ours,
            image_figures,
            own_peak_rss_mb(),
            References {
                text: reference,
                decode_pairs: pairs,
                image: reference_image,
                image_prefill_bench_tok_s: ref_image_prefill_bench_tok_s,
            },
        );
        round.print_ratios(&of);
        rounds.push(round);
    }
    let n_steps = args
        .steps
        .unwrap_or(if args.mmproj.is_some() { 0 } else { 4 });
    let step = if n_steps > 0 {
        eprintln!("measuring {n_steps} agent steps...");
        Some(steps(&mut session, &engine, n_steps.max(2))?)
    } else {
        None
    };
    let report = ModelReport::median_of(rounds, own_peak_rss_mb())
        .ok_or_else(|| anyhow!("no round ran (--rounds must be at least 1)"))?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let (Some(step), Some(map)) = (&step, value.as_object_mut()) {
            map.insert("step".into(), serde_json::to_value(step)?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    report.print();
    if let Some(step) = &step {
        print_steps(step);
    }
    Ok(())
}

fn config_threads(config: &EngineConfig) -> i32 {
    config
        .threads
        .unwrap_or_else(|| i32::try_from(crate::model::llama::physical_cores()).unwrap_or(4))
}

/// llama.cpp's own figures for one round: `llama-bench`'s text prefill and decode (the
/// median of the pairs' llama-bench sides), the decode pairs, `llama-mtmd-cli`'s image, and
/// `llama-bench`'s image-sized prefill (tokens/s).
#[derive(Default)]
struct References {
    text: Option<Speeds>,
    decode_pairs: Vec<DecodePair>,
    image: Option<MtmdCliFigures>,
    image_prefill_bench_tok_s: Option<f64>,
}

/// Everything `bench model` measured; `--json` prints it as one object.
#[derive(Debug, Serialize)]
struct ModelReport {
    model: PathBuf,
    mmproj: Option<PathBuf>,
    threads: i32,
    /// Text prefill and decode repetitions a side in each round; each side's fastest counts.
    repetitions: usize,
    /// What llama.cpp reports it was built with (SIMD, AMX, OpenMP...).
    system_info: String,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    image_tokens: Option<usize>,
    /// The vision encoder alone, by llama.cpp's timer, as the reference reports it.
    image_encode_ms: Option<f64>,
    /// Preparing the frame for the encoder (in a step, on top of `image_encode_ms`).
    image_preprocess_ms: Option<f64>,
    image_prefill_ms: Option<f64>,
    peak_rss_mb: f64,
    ref_prefill_tok_s: Option<f64>,
    ref_decode_tok_s: Option<f64>,
    ref_image_encode_ms: Option<f64>,
    /// llama-mtmd-cli's decode of the image tokens after its encode of the same image, by
    /// the same mtmd timer as `image_prefill_ms`.
    ref_image_prefill_ms: Option<f64>,
    /// A second reference: llama-bench's prefill of as many text tokens as the image has, at
    /// the same depth in the cache (-p N -d D), with no encode before it.
    ref_image_prefill_bench_ms: Option<f64>,
    ref_peak_rss_mb: Option<f64>,
    /// deskhand ÷ llama.cpp as speed: above 1 means deskhand is faster.
    ratio_prefill: Option<f64>,
    ratio_decode: Option<f64>,
    ratio_image_encode: Option<f64>,
    ratio_image_prefill: Option<f64>,
    /// deskhand's peak RSS minus llama-mtmd-cli's on the same files and image.
    rss_above_ref_mb: Option<f64>,
    /// The round's decode pairs, in the order they ran (empty in the whole run's report).
    decode_pairs: Vec<DecodePair>,
    /// Each round's own figures, in the order they ran (empty inside a round).
    rounds: Vec<ModelReport>,
}

impl ModelReport {
    fn new(
        args: &ModelBenchArgs,
        threads: i32,
        ours: Speeds,
        image: Option<ImageFigures>,
        peak_rss_mb: f64,
        references: References,
    ) -> ModelReport {
        let References {
            text: reference,
            decode_pairs,
            image: reference_image,
            image_prefill_bench_tok_s: ref_image_prefill_bench_tok_s,
        } = references;
        let time_ratio = |ref_ms: f64, ours_ms: f64| ref_ms / ours_ms;
        let ref_image_prefill_bench_ms = image
            .zip(ref_image_prefill_bench_tok_s)
            .map(|(i, tok_s)| i.image_tokens as f64 / tok_s * 1e3);
        // Only a decode of as many image tokens is the same work.
        let ref_image_prefill_ms = image.zip(reference_image).and_then(|(i, r)| {
            r.image_prefill_ms
                .filter(|_| r.image_tokens == Some(i.image_tokens))
        });
        ModelReport {
            model: args.model.clone(),
            mmproj: args.mmproj.clone(),
            threads,
            repetitions: args.repetitions.max(1),
            system_info: crate::model::llama::system_info(),
            prefill_tok_s: ours.prefill_tokens_per_s,
            decode_tok_s: ours.decode_tokens_per_s,
            image_tokens: image.map(|i| i.image_tokens),
            image_encode_ms: image.map(|i| i.encode_ms),
            image_preprocess_ms: image.map(|i| i.preprocess_ms),
            image_prefill_ms: image.map(|i| i.prefill_ms),
            peak_rss_mb,
            ref_prefill_tok_s: reference.map(|r| r.prefill_tokens_per_s),
            ref_decode_tok_s: reference.map(|r| r.decode_tokens_per_s),
            ref_image_encode_ms: reference_image.map(|r| r.encode_ms),
            ref_image_prefill_ms,
            ref_image_prefill_bench_ms,
            ref_peak_rss_mb: reference_image.map(|r| r.peak_rss_mb),
            ratio_prefill: reference.map(|r| ours.prefill_tokens_per_s / r.prefill_tokens_per_s),
            // Each pair saw the same moment of the machine: the median of their own ratios.
            ratio_decode: median(decode_pairs.iter().map(|p| p.tok_s / p.ref_tok_s).collect()),
            ratio_image_encode: image
                .zip(reference_image)
                .map(|(i, r)| time_ratio(r.encode_ms, i.encode_ms)),
            ratio_image_prefill: image
                .zip(ref_image_prefill_ms)
                .map(|(i, r)| time_ratio(r, i.prefill_ms)),
            rss_above_ref_mb: reference_image.map(|r| peak_rss_mb - r.peak_rss_mb),
            decode_pairs,
            rounds: Vec::new(),
        }
    }

    /// The rounds as one report: each figure the median over the rounds and each ratio the
    /// median of the rounds' ratios (each taken side by side, so it is the steadier figure);
    /// memory is the peak over every round, and deskhand's is `peak_rss_mb`, the whole run's.
    fn median_of(rounds: Vec<ModelReport>, peak_rss_mb: f64) -> Option<ModelReport> {
        let over_rounds =
            |f: fn(&ModelReport) -> Option<f64>| median(rounds.iter().filter_map(f).collect());
        let ref_peak_rss_mb = rounds
            .iter()
            .filter_map(|r| r.ref_peak_rss_mb)
            .reduce(f64::max);
        let first = rounds.first()?;
        Some(ModelReport {
            model: first.model.clone(),
            mmproj: first.mmproj.clone(),
            threads: first.threads,
            repetitions: first.repetitions,
            system_info: first.system_info.clone(),
            prefill_tok_s: over_rounds(|r| Some(r.prefill_tok_s)).unwrap_or(f64::NAN),
            decode_tok_s: over_rounds(|r| Some(r.decode_tok_s)).unwrap_or(f64::NAN),
            image_tokens: first.image_tokens,
            image_encode_ms: over_rounds(|r| r.image_encode_ms),
            image_preprocess_ms: over_rounds(|r| r.image_preprocess_ms),
            image_prefill_ms: over_rounds(|r| r.image_prefill_ms),
            peak_rss_mb,
            ref_prefill_tok_s: over_rounds(|r| r.ref_prefill_tok_s),
            ref_decode_tok_s: over_rounds(|r| r.ref_decode_tok_s),
            ref_image_encode_ms: over_rounds(|r| r.ref_image_encode_ms),
            ref_image_prefill_ms: over_rounds(|r| r.ref_image_prefill_ms),
            ref_image_prefill_bench_ms: over_rounds(|r| r.ref_image_prefill_bench_ms),
            ref_peak_rss_mb,
            ratio_prefill: over_rounds(|r| r.ratio_prefill),
            ratio_decode: over_rounds(|r| r.ratio_decode),
            ratio_image_encode: over_rounds(|r| r.ratio_image_encode),
            ratio_image_prefill: over_rounds(|r| r.ratio_image_prefill),
            rss_above_ref_mb: ref_peak_rss_mb.map(|r| peak_rss_mb - r),
            decode_pairs: Vec::new(),
            rounds,
        })
    }

    /// One line per round, as it finishes, so a long run shows where it is going.
    fn print_ratios(&self, label: &str) {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        eprintln!(
            "{label}: ratios prefill {} decode {} image encode {} image prefill {}",
            opt(self.ratio_prefill),
            opt(self.ratio_decode),
            opt(self.ratio_image_encode),
            opt(self.ratio_image_prefill)
        );
    }

    fn print(&self) {
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
        };
        println!("model {} ({} threads)", self.model.display(), self.threads);
        if let Some(mmproj) = &self.mmproj {
            println!("mmproj {}", mmproj.display());
        }
        println!("llama.cpp built with: {}", self.system_info.trim());
        println!(
            "{} round(s), each figure next to llama.cpp's, llama.cpp first in even rounds; text prefill the fastest of {} repetitions a side, decode {} pairs a round: medians of the figures, and of each round's ratios",
            self.rounds.len().max(1),
            self.repetitions,
            self.rounds.first().map_or(0, |r| r.decode_pairs.len())
        );
        println!("                    deskhand    llama.cpp   ratio (speed, >1: deskhand faster)");
        println!(
            "text prefill tok/s  {:>9.1}    {:>9}   {}",
            self.prefill_tok_s,
            opt(self.ref_prefill_tok_s, 1),
            opt(self.ratio_prefill, 3)
        );
        println!(
            "decode tok/s        {:>9.1}    {:>9}   {}",
            self.decode_tok_s,
            opt(self.ref_decode_tok_s, 1),
            opt(self.ratio_decode, 3)
        );
        if let Some(tokens) = self.image_tokens {
            println!(
                "image encode ms     {:>9}    {:>9}   {}   ({tokens} image tokens)",
                opt(self.image_encode_ms, 0),
                opt(self.ref_image_encode_ms, 0),
                opt(self.ratio_image_encode, 3)
            );
            println!(
                "image preprocess ms {:>9}    {:>9}   (resizing the frame; a step pays it on top of the encoder)",
                opt(self.image_preprocess_ms, 0),
                "-"
            );
            println!(
                "image prefill ms    {:>9}    {:>9}   {}   (llama.cpp: llama-mtmd-cli, after its encode)",
                opt(self.image_prefill_ms, 0),
                opt(self.ref_image_prefill_ms, 0),
                opt(self.ratio_image_prefill, 3)
            );
            println!(
                "                                 {:>9}   (llama-bench: as many text tokens at the same depth)",
                opt(self.ref_image_prefill_bench_ms, 0),
            );
        }
        println!(
            "peak RSS MB         {:>9.0}    {:>9}   (deskhand above llama-mtmd-cli: {} MB)",
            self.peak_rss_mb,
            opt(self.ref_peak_rss_mb, 0),
            opt(self.rss_above_ref_mb, 0)
        );
    }
}

fn print_steps(step: &StepFigures) {
    println!(
        "step: median {:.1} ms, p95 {:.1} ms; image encode {:.1} ms for {} image tokens",
        step.step_ms.median_ms, step.step_ms.p95_ms, step.image_encode_ms, step.image_tokens
    );
    println!(
        "prefill tokens per step: with prefix reuse {:?}, full recompute {:?}",
        step.prefill_tokens_with_reuse, step.prefill_tokens_full_recompute
    );
    let grammar_ratio =
        step.constrained_action_ms.median_ms / step.unconstrained_same_tokens_ms.median_ms;
    println!(
        "one action ({} tokens): with grammar {:.1} ms, same tokens without {:.1} ms: ratio {:.2}",
        step.action_tokens,
        step.constrained_action_ms.median_ms,
        step.unconstrained_same_tokens_ms.median_ms,
        grammar_ratio
    );
    println!("sample reply: {}", step.sample_reply.trim());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ModelBenchArgs {
        ModelBenchArgs {
            model: "m.gguf".into(),
            mmproj: Some("p.gguf".into()),
            family: None,
            threads: None,
            prompt_tokens: 512,
            gen_tokens: 64,
            repetitions: 1,
            decode_pairs: 4,
            rounds: 3,
            steps: None,
            image_tokens: None,
            llama_tools: None,
            no_reference: false,
            json: true,
        }
    }

    fn round(ours_tok_s: f64, ref_tok_s: f64, encode_ms: f64, ref_encode_ms: f64) -> ModelReport {
        let args = args();
        let speeds = |tok_s| Speeds {
            prefill_tokens_per_s: tok_s,
            decode_tokens_per_s: tok_s / 10.0,
        };
        let image = ImageFigures {
            image_tokens: 1200,
            tokens_before: 50,
            encode_ms,
            preprocess_ms: 5.0,
            prefill_ms: 1000.0,
        };
        let reference_image = MtmdCliFigures {
            encode_ms: ref_encode_ms,
            image_prefill_ms: Some(900.0),
            image_tokens: Some(1200),
            peak_rss_mb: ref_encode_ms / 10.0,
        };
        ModelReport::new(
            &args,
            2,
            speeds(ours_tok_s),
            Some(image),
            100.0,
            References {
                text: Some(speeds(ref_tok_s)),
                decode_pairs: vec![DecodePair {
                    tok_s: ours_tok_s / 10.0,
                    ref_tok_s: ref_tok_s / 10.0,
                }],
                image: Some(reference_image),
                image_prefill_bench_tok_s: Some(1200.0),
            },
        )
    }

    #[test]
    fn rounds_give_medians_of_figures_and_of_their_own_ratios_and_the_highest_peaks() {
        // A slow spell in the second round falls on both sides: its ratio is still 1.
        let rounds = vec![
            round(60.0, 50.0, 1000.0, 1100.0),
            round(30.0, 30.0, 3000.0, 3000.0),
            round(58.0, 60.0, 1050.0, 1000.0),
        ];
        let report = ModelReport::median_of(rounds, 500.0).unwrap();
        assert_eq!(report.rounds.len(), 3);
        assert_eq!(report.prefill_tok_s, 58.0);
        assert_eq!(report.ref_prefill_tok_s, Some(50.0));
        // The median of 1.2, 1.0 and 0.967, not 58 / 50.
        assert_eq!(report.ratio_prefill, Some(1.0));
        assert_eq!(report.ratio_decode, Some(1.0));
        assert_eq!(report.image_encode_ms, Some(1050.0));
        assert_eq!(report.ratio_image_encode, Some(1.0));
        assert_eq!(report.ref_peak_rss_mb, Some(300.0));
        assert_eq!(report.peak_rss_mb, 500.0);
        assert_eq!(report.rss_above_ref_mb, Some(200.0));
        assert!(ModelReport::median_of(Vec::new(), 1.0).is_none());
        let two = ModelReport::median_of(
            vec![round(40.0, 50.0, 1.0, 1.0), round(60.0, 50.0, 1.0, 1.0)],
            1.0,
        )
        .unwrap();
        assert_eq!(two.prefill_tok_s, 50.0);
        assert_eq!(two.ratio_prefill, Some(1.0));
    }

    #[test]
    fn a_round_s_decode_ratio_is_the_median_of_its_pairs_own_ratios() {
        // A slow spell hit the second pair on both sides, and the fourth on one side only: the
        // pairs' ratios are 1.0, 1.0, 1.1 and 0.5, their median 1.0; the medians of the two
        // sides' speeds would give 8.5 / 10 = 0.85.
        let pairs = [(10.0, 10.0), (5.0, 5.0), (11.0, 10.0), (7.0, 14.0)]
            .map(|(tok_s, ref_tok_s)| DecodePair { tok_s, ref_tok_s });
        let speeds = |decode| Speeds {
            prefill_tokens_per_s: 50.0,
            decode_tokens_per_s: decode,
        };
        let tok_s = median(pairs.iter().map(|p| p.tok_s).collect());
        let ref_tok_s = median(pairs.iter().map(|p| p.ref_tok_s).collect());
        assert_eq!((tok_s, ref_tok_s), (Some(8.5), Some(10.0)));
        let report = ModelReport::new(
            &args(),
            2,
            speeds(8.5),
            None,
            1.0,
            References {
                text: Some(speeds(10.0)),
                decode_pairs: pairs.to_vec(),
                ..References::default()
            },
        );
        assert_eq!(report.ratio_decode, Some(1.0));
        assert_eq!(report.decode_pairs.len(), 4);
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn the_image_prefill_reference_is_llama_mtmd_cli_s_own_decode_of_as_many_tokens() {
        let report = round(50.0, 50.0, 1000.0, 1000.0);
        // llama-mtmd-cli's 900 ms against deskhand's 1000 ms; llama-bench's 1200 tokens at
        // 1200 tok/s kept beside it.
        assert_eq!(report.ref_image_prefill_ms, Some(900.0));
        assert_eq!(report.ratio_image_prefill, Some(0.9));
        assert_eq!(report.ref_image_prefill_bench_ms, Some(1000.0));

        let log = "I mtmd batch encoding done in 51234 ms\n\
                   I decoding image batch 1/2, n_tokens_batch = 1024\n\
                   I image decoded (batch 1/2) in 40000 ms\n\
                   I decoding image batch 2/2, n_tokens_batch = 126\n\
                   I image decoded (batch 2/2) in 5012 ms\n";
        assert_eq!(image_decode_lines(log), Some((45012.0, 1150)));
        assert_eq!(
            image_decode_lines("I mtmd batch encoding done in 5 ms\n"),
            None
        );
    }

    #[test]
    fn a_reference_that_decoded_another_number_of_image_tokens_is_not_compared() {
        let args = args();
        let speeds = Speeds {
            prefill_tokens_per_s: 1.0,
            decode_tokens_per_s: 1.0,
        };
        let image = ImageFigures {
            image_tokens: 1200,
            tokens_before: 50,
            encode_ms: 1.0,
            preprocess_ms: 0.0,
            prefill_ms: 1000.0,
        };
        let other = MtmdCliFigures {
            encode_ms: 1.0,
            image_prefill_ms: Some(500.0),
            image_tokens: Some(600),
            peak_rss_mb: 1.0,
        };
        let report = ModelReport::new(
            &args,
            2,
            speeds,
            Some(image),
            1.0,
            References {
                image: Some(other),
                ..References::default()
            },
        );
        assert_eq!(report.ref_image_prefill_ms, None);
        assert_eq!(report.ratio_image_prefill, None);
    }

    #[test]
    fn llama_bench_s_figure_is_its_fastest_repetition_of_the_asked_test() {
        // Rows as llama-bench -o json prints them (fields this reads, and others around them).
        let runs: Vec<serde_json::Value> = serde_json::from_str(
            r#"[
              {"n_prompt": 512, "n_gen": 0, "avg_ts": 20.0, "samples_ts": [18.5, 22.0, 19.5]},
              {"n_prompt": 0, "n_gen": 64, "avg_ts": 7.0, "samples_ts": [7.1, 6.4, 7.5]},
              {"n_prompt": 1150, "n_gen": 0, "avg_ts": 19.0}
            ]"#,
        )
        .unwrap();
        assert_eq!(llama_bench_speed(&runs, 512, 0).ok(), Some(22.0));
        assert_eq!(llama_bench_speed(&runs, 0, 64).ok(), Some(7.5));
        // A row without samples gives its average.
        assert_eq!(llama_bench_speed(&runs, 1150, 0).ok(), Some(19.0));
        let missing = llama_bench_speed(&runs, 256, 0)
            .err()
            .map(|failure| failure.error.to_string())
            .unwrap_or_default();
        assert!(missing.contains("pp256 tg0"), "{missing}");
    }

    #[test]
    fn vm_hwm_is_read_from_proc_status() {
        let status = "Name:\tcat\nVmPeak:\t  8000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_kb(status), Some(1234));
        assert_eq!(vm_hwm_kb("Name:\tcat\n"), None);
    }

    /// The child's own peak, not this process's: wait4's figure would include the 256 MB this
    /// test holds when it starts the child.
    #[test]
    fn a_child_s_peak_memory_is_its_own() {
        let held: Vec<u8> = vec![1; 256 << 20];
        let (output, peak_mb) = run_measured(Command::new("sleep").arg("0.3")).unwrap();
        assert!(output.status.success());
        assert!(
            peak_mb > 0.0 && peak_mb < 64.0,
            "sleep's peak: {peak_mb} MB"
        );
        assert_eq!(held.iter().map(|&b| u64::from(b)).sum::<u64>(), 256 << 20);
    }
}
