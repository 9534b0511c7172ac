//! `deskhand bench policy`: decision latency of a 200-rule policy, against the same requests
//! decided by a policy with no rules (preset only) in the same run.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::Summary;
use crate::cli::Failure;
use crate::input::Action;
use crate::policy::{Intent, Layer, NormalizedPoint, PolicyEngine, Request, Verdict};

#[derive(Debug, Args)]
pub struct PolicyBenchArgs {
    /// Rules in the generated policy.
    #[arg(long, default_value_t = 200)]
    pub rules: usize,
    /// Timed batches per policy; each batch decides every sample request once.
    #[arg(long, default_value_t = 2000)]
    pub batches: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct PolicyBenchReport {
    rules: usize,
    requests_per_batch: usize,
    load_ms: f64,
    /// Per decision.
    with_rules: Micros,
    preset_only: Micros,
    ratio_median: f64,
    target_us: f64,
    meets_target: bool,
}

const TARGET_US: f64 = 50.0;

pub fn policy(args: &PolicyBenchArgs) -> Result<(), Failure> {
    let text = generated_policy(args.rules);
    let started = Instant::now();
    let engine = PolicyEngine::from_sources(vec![(
        Layer::User,
        PathBuf::from("bench-policy.toml"),
        text,
    )])?;
    let load = started.elapsed();
    let baseline = PolicyEngine::from_sources(vec![(
        Layer::User,
        PathBuf::from("bench-preset-only.toml"),
        "schema_version = 1\npreset = \"balanced\"\n".into(),
    )])?;
    let requests = sample_requests();

    // Interleave the two so that any slowdown of the shared machine hits both alike.
    let mut with_rules = Vec::with_capacity(args.batches);
    let mut preset_only = Vec::with_capacity(args.batches);
    let mut allowed = 0usize;
    for _ in 0..args.batches.max(1) {
        with_rules.push(time_batch(&engine, &requests, &mut allowed));
        preset_only.push(time_batch(&baseline, &requests, &mut allowed));
    }
    let per_decision = |batches: &[Duration]| {
        let per: Vec<Duration> = batches.iter().map(|d| *d / requests.len() as u32).collect();
        Summary::of(&per).map(to_microseconds)
    };
    let (Some(with_rules_per), Some(preset_only_per)) =
        (per_decision(&with_rules), per_decision(&preset_only))
    else {
        return Err(anyhow::anyhow!("no timings were taken").into());
    };
    let report = PolicyBenchReport {
        rules: engine.rule_count(),
        requests_per_batch: requests.len(),
        load_ms: load.as_secs_f64() * 1e3,
        ratio_median: with_rules_per.median_us / preset_only_per.median_us.max(f64::EPSILON),
        meets_target: with_rules_per.p95_us < TARGET_US,
        with_rules: with_rules_per,
        preset_only: preset_only_per,
        target_us: TARGET_US,
    };
    // Keeps the decisions from being optimized away, and shows they were real.
    tracing::debug!(allowed, "decisions that allowed");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "policy with {} rules: loaded and compiled in {:.1} ms; {} sample requests per batch, {} batches",
        report.rules,
        report.load_ms,
        report.requests_per_batch,
        with_rules.len()
    );
    println!(
        "  {} rules:     median {:.2} µs, p95 {:.2} µs per decision",
        report.rules, report.with_rules.median_us, report.with_rules.p95_us
    );
    println!(
        "  preset only:   median {:.2} µs, p95 {:.2} µs per decision",
        report.preset_only.median_us, report.preset_only.p95_us
    );
    println!(
        "  ratio {:.1}x the preset-only baseline; target p95 < {TARGET_US} µs: {}",
        report.ratio_median,
        if report.meets_target {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

fn time_batch(engine: &PolicyEngine, requests: &[Request], allowed: &mut usize) -> Duration {
    let started = Instant::now();
    for request in requests {
        if engine.decide(request).decision == Verdict::Allow {
            *allowed += 1;
        }
    }
    started.elapsed()
}

/// A `Summary` in microseconds, the scale of one decision.
#[derive(Debug, Serialize)]
struct Micros {
    runs: usize,
    median_us: f64,
    p95_us: f64,
    min_us: f64,
}

fn to_microseconds(s: Summary) -> Micros {
    Micros {
        runs: s.runs,
        median_us: s.median_ms * 1e3,
        p95_us: s.p95_ms * 1e3,
        min_us: s.min_ms * 1e3,
    }
}

/// A policy shaped like a long real one: every match field in use, a tenth of the rules with a
/// title regex, some user detectors, apps groups.
fn generated_policy(rules: usize) -> String {
    const KINDS: [&str; 6] = ["click", "type", "key", "scroll", "drag", "double_click"];
    const APPS: [&str; 6] = ["xterm", "code", "firefox", "thunderbird", "slack", "gimp"];
    const INTENTS: [&str; 4] = ["login", "install", "publish", "delete"];
    const DECISIONS: [&str; 3] = ["allow", "ask", "deny"];
    let mut text = String::from(
        "schema_version = 1\npreset = \"balanced\"\n\
         [apps.terminal]\nnames = [\"xterm\", \"konsole\", \"alacritty\"]\n\
         [apps.mail]\nnames = [\"thunderbird\"]\ntitle = \"gmail|outlook\"\n\
         [detectors.ticket]\npattern = 'TICKET-\\d{5}'\n\
         [detectors.project]\npattern = 'PRJ-[A-Z]{3}-\\d+'\n",
    );
    for i in 0..rules {
        let _ = write!(
            text,
            "[[rule]]\nid = \"rule-{i}\"\ndecision = \"{}\"\nreason = \"generated rule {i}\"\n",
            DECISIONS[i % 3]
        );
        let _ = writeln!(
            text,
            "action = [\"{}\", \"{}\"]",
            KINDS[i % KINDS.len()],
            KINDS[(i / 3) % KINDS.len()]
        );
        match i % 5 {
            0 => {
                let _ = writeln!(text, "app = [\"{}\", \"terminal\"]", APPS[i % APPS.len()]);
            }
            1 => {
                let _ = writeln!(text, "intent = [\"{}\"]", INTENTS[i % INTENTS.len()]);
            }
            2 => {
                let _ = writeln!(
                    text,
                    "keys = [\"ctrl+{}\", \"alt+f{}\"]",
                    (b'a' + (i % 26) as u8) as char,
                    i % 12 + 1
                );
            }
            3 => {
                let _ = writeln!(text, "text_matches = [\"ticket\", \"iban\"]");
            }
            _ => {
                let _ = writeln!(
                    text,
                    "region = {{ monitor = 0, rect = [0.{}, 0.0, 0.95, 0.{}] }}",
                    i % 9,
                    i % 9 + 1
                );
            }
        }
        if i % 10 == 0 {
            let _ = writeln!(
                text,
                "title = \"(?:settings|preferences) {i}|account-{i}$\""
            );
        }
    }
    text
}

fn sample_requests() -> Vec<Request> {
    let at = |x: f64, y: f64| vec![NormalizedPoint { monitor: 0, x, y }];
    let mut click = Request::new(Action::Click {
        x: 640,
        y: 400,
        button: Default::default(),
    })
    .with_window(
        Some("firefox".into()),
        Some("Example Domain — Mozilla Firefox".into()),
    );
    click.points = at(0.33, 0.37);
    let mut drag = Request::new(Action::Drag {
        path: vec![[100, 100], [400, 300]],
    })
    .with_window(
        Some("gimp".into()),
        Some("untitled-1.0 (RGB color) – GIMP".into()),
    );
    drag.points = vec![
        NormalizedPoint {
            monitor: 0,
            x: 0.05,
            y: 0.09,
        },
        NormalizedPoint {
            monitor: 0,
            x: 0.2,
            y: 0.27,
        },
    ];
    vec![
        click,
        drag,
        Request::new(Action::Type {
            text: "cargo build --release && ./target/release/app --config ~/.config/app.toml\n"
                .into(),
        })
        .with_window(Some("xterm".into()), Some("user@host: ~/src/app".into())),
        Request::new(Action::Type {
            text: "Please transfer the invoice amount to DE89 3704 0044 0532 0130 00 by Friday."
                .into(),
        })
        .with_window(Some("thunderbird".into()), Some("Write: invoice".into())),
        Request::new(Action::Key {
            chord: "ctrl+s".into(),
        })
        .with_window(
            Some("code".into()),
            Some("main.rs - app - Visual Studio Code".into()),
        ),
        Request::new(Action::Scroll {
            x: 900,
            y: 500,
            dx: 0,
            dy: 3,
        })
        .with_window(Some("slack".into()), Some("general | Slack".into()))
        .with_intent(Intent::Other),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_policy_loads_with_every_rule() {
        let engine = PolicyEngine::from_sources(vec![(
            Layer::User,
            PathBuf::from("bench.toml"),
            generated_policy(200),
        )])
        .unwrap();
        assert_eq!(engine.rule_count(), 200);
        let decisions: Vec<Verdict> = sample_requests()
            .iter()
            .map(|r| engine.decide(r).decision)
            .collect();
        assert!(decisions.contains(&Verdict::Deny), "{decisions:?}");
    }
}
