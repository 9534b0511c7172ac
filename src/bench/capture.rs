//! `deskhand bench capture`: capture + downscale of a 1920x1080 screen to a ~1.2 MP model
//! frame, against ImageMagick's `import -window root` capturing the same screen.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::Summary;
use crate::cli::Failure;
use crate::screen::{FrameTarget, Screen, VirtualDisplay, X11Screen};

#[derive(Debug, Args)]
pub struct CaptureBenchArgs {
    /// Timed deskhand captures (after 5 warm-up captures).
    #[arg(long, default_value_t = 100)]
    pub iterations: usize,
    /// Timed `import` runs (each is a whole process, so fewer are needed).
    #[arg(long, default_value_t = 20)]
    pub import_iterations: usize,
    /// Frame size cap in pixels.
    #[arg(long, default_value_t = 1_200_000)]
    pub max_pixels: u64,
    /// Frame side alignment.
    #[arg(long, default_value_t = 28)]
    pub align: u32,
    /// Measure on the display given by --display (or $DISPLAY) instead of a private
    /// 1920x1080 Xvfb.
    #[arg(long)]
    pub use_current_display: bool,
    /// Skip the ImageMagick baseline.
    #[arg(long)]
    pub no_import: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

pub fn capture(display: Option<&str>, args: &CaptureBenchArgs) -> Result<(), Failure> {
    // A private screen of the size the target is stated for, unless asked otherwise.
    let xvfb = if args.use_current_display {
        None
    } else {
        Some(VirtualDisplay::start(1920, 1080)?)
    };
    let display_name = match &xvfb {
        Some(x) => Some(x.name().to_owned()),
        None => display.map(str::to_owned),
    };
    let mut screen = X11Screen::connect(display_name.as_deref())?;
    let monitor = screen.monitor(None)?;
    let target = FrameTarget::MaxPixels {
        max_pixels: args.max_pixels,
        align: args.align,
    };
    for _ in 0..5 {
        screen.capture(&monitor, target)?;
    }
    let bar = progress(args.iterations, "deskhand capture");
    let mut ours = Vec::with_capacity(args.iterations);
    let mut frame_size = (0, 0);
    for _ in 0..args.iterations {
        let started = Instant::now();
        let frame = screen.capture(&monitor, target)?;
        ours.push(started.elapsed());
        frame_size = (frame.map.frame_width, frame.map.frame_height);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ours = Summary::of(&ours).ok_or_else(|| anyhow!("--iterations must be at least 1"))?;

    let import = if args.no_import {
        None
    } else {
        Some(time_import(screen.display_name(), args.import_iterations)?)
    };
    let ratio = import.map(|i| i.median_ms / ours.median_ms);

    if args.json {
        let out = serde_json::json!({
            "screen": {"width": monitor.width, "height": monitor.height, "display": screen.display_name()},
            "frame": {"width": frame_size.0, "height": frame_size.1},
            "deskhand_capture_downscale": ours,
            "imagemagick_import": import,
            "import_over_deskhand_median": ratio,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "screen {}x{} on {} -> frame {}x{} ({:.2} MP)",
        monitor.width,
        monitor.height,
        screen.display_name(),
        frame_size.0,
        frame_size.1,
        f64::from(frame_size.0) * f64::from(frame_size.1) / 1e6
    );
    println!(
        "deskhand capture+downscale: median {:7.2} ms  p95 {:7.2} ms  min {:7.2} ms  ({} runs)",
        ours.median_ms, ours.p95_ms, ours.min_ms, ours.runs
    );
    if let (Some(i), Some(r)) = (import, ratio) {
        println!(
            "import -window root:        median {:7.2} ms  p95 {:7.2} ms  min {:7.2} ms  ({} runs)",
            i.median_ms, i.p95_ms, i.min_ms, i.runs
        );
        println!("deskhand is {r:.1}x faster than import (median over median)");
    }
    Ok(())
}

/// `import -window root` into raw RGB, the cheapest output it has, so the baseline pays for
/// capturing and not for PNG compression.
fn time_import(display: &str, iterations: usize) -> Result<Summary, Failure> {
    let dir = std::env::temp_dir().join(format!("deskhand-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = dir.join("import.rgb");
    let run = || -> Result<Duration, Failure> {
        let started = Instant::now();
        let status = Command::new("import")
            .args(["-display", display, "-window", "root", "-depth", "8"])
            .arg(format!("rgb:{}", out.display()))
            .status()
            .context("cannot run ImageMagick's `import` (Debian: apt-get install imagemagick), or pass --no-import")?;
        let elapsed = started.elapsed();
        if !status.success() {
            return Err(anyhow!("`import -window root` failed with {status}").into());
        }
        Ok(elapsed)
    };
    run()?;
    let bar = progress(iterations, "import -window root");
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        samples.push(run()?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_dir_all(&dir);
    Summary::of(&samples).ok_or_else(|| anyhow!("--import-iterations must be at least 1").into())
}
