//! `deskhand trace ...`: the recorded runs.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::cli::{Failure, bad_input, print_json};
use crate::trace::{
    TraceError, TraceLine, printable, read_trace, run_folders, runs_dir, write_report,
};

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// List recorded runs, newest last: when, how many steps, how each ended, the task.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a run's steps: action, decision, outcome and timings.
    Show {
        /// A run's folder name from `deskhand trace list`, a path to a run folder, or `last`.
        run: String,
        /// Print the trace's lines as one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Write the run's report.html again from its trace.jsonl, and print its path.
    Report {
        /// A run's folder name, a path to a run folder, or `last`.
        run: String,
    },
}

pub fn run(cmd: &TraceCommand) -> Result<(), Failure> {
    match cmd {
        TraceCommand::List { json } => list(*json),
        TraceCommand::Show { run, json } => show(run, *json),
        TraceCommand::Report { run } => {
            let dir = find_run(run)?;
            let path = write_report(&dir)?;
            println!("{}", path.display());
            Ok(())
        }
    }
}

/// A run named on the command line: a run folder's path, its name, or `last`.
pub(crate) fn find_run(name: &str) -> Result<PathBuf, Failure> {
    let given = Path::new(name);
    if given.join("trace.jsonl").is_file() {
        return Ok(given.to_path_buf());
    }
    let runs = runs_dir()?;
    let found = if name == "last" {
        run_folders(&runs)?.pop()
    } else {
        Some(runs.join(name)).filter(|p| p.join("trace.jsonl").is_file())
    };
    found.ok_or_else(|| {
        bad_input(TraceError::NoSuchRun {
            name: name.to_owned(),
            dir: runs,
        })
    })
}

#[derive(serde::Serialize)]
struct RunRow {
    run: String,
    started: String,
    steps: usize,
    status: String,
    task: String,
}

fn list(json: bool) -> Result<(), Failure> {
    let runs = runs_dir()?;
    let mut rows = Vec::new();
    for dir in run_folders(&runs)? {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (lines, _) = match read_trace(&dir.join("trace.jsonl")) {
            Ok(read) => read,
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                continue;
            }
        };
        let mut row = RunRow {
            run: name,
            started: String::new(),
            steps: 0,
            status: "unfinished".into(),
            task: String::new(),
        };
        for line in &lines {
            match line {
                TraceLine::Start(start) => {
                    row.started = start.started.clone();
                    row.task = start.task.clone();
                }
                TraceLine::Step(_) => row.steps += 1,
                TraceLine::End(end) => row.status = end.status.to_string(),
            }
        }
        rows.push(row);
    }
    if json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no runs in {}", runs.display());
        return Ok(());
    }
    println!(
        "{:<20} {:<25} {:>5}  {:<10} TASK",
        "RUN", "STARTED", "STEPS", "ENDED"
    );
    for row in &rows {
        println!(
            "{:<20} {:<25} {:>5}  {:<10} {}",
            row.run, row.started, row.steps, row.status, row.task
        );
    }
    Ok(())
}

fn show(name: &str, json: bool) -> Result<(), Failure> {
    let dir = find_run(name)?;
    let (lines, warnings) = read_trace(&dir.join("trace.jsonl"))?;
    if json {
        return print_json(&lines);
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    println!("run {}", dir.display());
    for line in &lines {
        match line {
            TraceLine::Start(start) => {
                println!("task:   {}", printable(&start.task));
                println!("engine: {}", printable(&start.engine));
                println!("policy: {}", printable(&start.policy));
                for unlock in &start.unlocks {
                    println!("floor:  {}", printable(unlock));
                }
                println!("start:  {}", start.started);
            }
            TraceLine::Step(step) => {
                let action = step
                    .action
                    .as_ref()
                    .map_or_else(|| "(no action)".to_owned(), ToString::to_string);
                let decision = step.decision.as_ref().map_or_else(String::new, |d| {
                    format!(
                        " -> {} ({})",
                        d.decision,
                        d.rule.clone().unwrap_or_else(|| d.source.clone())
                    )
                });
                // The action, the outcome and the thought hold what the model wrote.
                println!(
                    "step {:>3}: {}{decision}: {} [settle {:.0} ms, model {:.0} ms, policy {:.2} ms, act {:.0} ms]",
                    step.step,
                    printable(&action),
                    printable(&step.outcome.to_string()),
                    step.timings.settle_ms,
                    step.timings.model_ms,
                    step.timings.policy_ms,
                    step.timings.act_ms
                );
                if let Some(thought) = step.model.as_ref().and_then(|m| m.thought.as_ref()) {
                    println!("          thought: {}", printable(thought));
                }
            }
            TraceLine::End(end) => {
                println!(
                    "end:    {} (exit {}): {}",
                    end.status,
                    end.exit_code,
                    printable(&end.message)
                );
            }
        }
    }
    if !lines.iter().any(|l| matches!(l, TraceLine::End(_))) {
        println!("end:    the run did not finish (killed or crashed)");
    }
    Ok(())
}
