//! `report.html`: one page per run that a person can open anywhere, offline, and share as a
//! single file. Frames are embedded as `data:` URIs and the action is drawn over each frame
//! with SVG, so nothing is loaded from outside and nothing runs.
//!
//! Everything in a trace that came from the model or the screen is untrusted: it is escaped
//! before it reaches the page, and a Content-Security-Policy forbids scripts and remote loads
//! in case an escape was ever missed.

use std::fmt::{self, Write as _};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use serde::Serialize;

use super::writer::TRACE_FILE;
use super::{
    FrameRecord, Outcome, RunEnd, RunStart, RunStatus, StepRecord, StepTimings, TraceError,
    TraceLine,
};
use crate::input::{Action, MouseButton};
use crate::policy::{Decision, Request, Verdict};
use crate::screen::FrameMap;

const REPORT_FILE: &str = "report.html";

/// Frames embedded in one report, the latest steps' (a frame is a few hundred KB as base64).
const MAX_EMBEDDED_FRAMES: usize = 60;

/// The whole page as one self-contained HTML string (frames embedded as base64 data: URIs; no
/// external CSS/JS/fonts; works offline).
pub fn render_report(run_dir: &Path, lines: &[TraceLine], warnings: &[String]) -> String {
    let mut out = String::with_capacity(64 * 1024);
    // Writing into a String cannot fail; fmt::Result only lets the helpers use `?`.
    let _ = page(&mut out, run_dir, lines, warnings);
    out
}

/// Reads `run_dir/trace.jsonl` with `read_trace`, renders, writes `run_dir/report.html`
/// atomically, returns its path.
pub fn write_report(run_dir: &Path) -> Result<PathBuf, TraceError> {
    let (lines, warnings) = super::read_trace(&run_dir.join(TRACE_FILE))?;
    let html = render_report(run_dir, &lines, &warnings);
    let path = run_dir.join(REPORT_FILE);
    crate::files::write_bytes_atomically(&path, html.as_bytes())
        .map_err(|e| TraceError::io("write", &path, e))?;
    Ok(path)
}

const CSS: &str = "\
*{box-sizing:border-box}
body{margin:0;background:#eef0f3;color:#1c1e22;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:16px}
header,section,.warnings{background:#fff;border:1px solid #d5d9df;border-radius:8px;padding:14px 18px;margin:0 0 16px}
h1{font-size:20px;margin:0 0 4px}
h2{font-size:17px;margin:0}
h2 .at{font-weight:400;color:#5a606a;font-size:14px;margin-left:8px}
.task{font-size:17px;white-space:pre-wrap;overflow-wrap:anywhere;margin:4px 0 10px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0}
dt{color:#5a606a}
dd{margin:0;overflow-wrap:anywhere}
code,pre{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,'Liberation Mono',monospace}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f5f6f8;border:1px solid #e3e6ea;border-radius:4px;padding:8px;margin:4px 0}
code{overflow-wrap:anywhere}
.end,.note{border-radius:6px;padding:8px 12px;margin:8px 0}
.end.ok{background:#e6f4ea;border:1px solid #8cc79a}
.end.bad{background:#fdeaea;border:1px solid #e39a9a}
.end.unfinished,.warnings{background:#fff5db;border:1px solid #e2b84a}
.warnings ul{margin:4px 0;padding-left:20px}
table{border-collapse:collapse;width:100%;font-size:14px;margin-top:8px}
td,th{text-align:left;padding:3px 8px;border-top:1px solid #e6e8eb;vertical-align:top}
th{color:#5a606a;font-weight:600;border-top:0}
.shot{margin:10px 0;border:1px solid #c3c8cf;background:#dfe2e6}
.shot svg{display:block;width:100%;height:auto}
.noframe{padding:30px;text-align:center;color:#555;background:#d9dce0;border-radius:4px;margin:10px 0}
.row{margin:6px 0}
.label{display:inline-block;min-width:78px;color:#5a606a}
.thought{white-space:pre-wrap;overflow-wrap:anywhere;font-style:italic;margin:6px 0;padding-left:10px;border-left:3px solid #b9c0ca}
.decision{border-left:5px solid;border-radius:4px;padding:6px 10px;margin:8px 0}
.decision.allow{border-color:#1a7f37;background:#e9f6ec}
.decision.ask{border-color:#b26a00;background:#fff3dc}
.decision.deny{border-color:#c42b2b;background:#fdeceb}
.pill{display:inline-block;font-weight:700;font-size:12px;letter-spacing:.04em;text-transform:uppercase;color:#fff;border-radius:10px;padding:1px 9px;background:#6b7280}
.pill.allow{background:#1a7f37}.pill.ask{background:#b26a00}.pill.deny{background:#c42b2b}
.pill.good{background:#1a7f37}.pill.bad{background:#c42b2b}.pill.info{background:#2f5fb3}
.outcome{font-weight:600}
.muted{color:#5a606a}
.times{display:flex;flex-wrap:wrap;gap:2px 14px;font-size:13px;color:#3d424a;border-top:1px solid #e6e8eb;padding-top:6px;margin-top:8px}
.times b{font-weight:600;color:#5a606a}
details{margin:4px 0}
summary{cursor:pointer;color:#2f5fb3}
";

fn page(out: &mut String, run_dir: &Path, lines: &[TraceLine], warnings: &[String]) -> fmt::Result {
    let start = lines.iter().find_map(|l| match l {
        TraceLine::Start(s) => Some(s),
        _ => None,
    });
    let end = lines.iter().rev().find_map(|l| match l {
        TraceLine::End(e) => Some(e),
        _ => None,
    });
    let steps: Vec<&StepRecord> = lines
        .iter()
        .filter_map(|l| match l {
            TraceLine::Step(s) => Some(s.as_ref()),
            _ => None,
        })
        .collect();
    let title = start.map_or("deskhand run", |s| s.task.as_str());

    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    // The page shows text a model wrote about a screen anyone could have put in front of it;
    // this keeps even a missed escape from running or fetching anything.
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         img-src data:; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    );
    writeln!(out, "<title>deskhand: {}</title>", esc(&shorten(title, 80)))?;
    writeln!(out, "<style>{CSS}</style></head><body><main>")?;

    if !warnings.is_empty() {
        out.push_str("<div class=\"warnings\"><b>Warnings</b><ul>");
        for w in warnings {
            write!(out, "<li>{}</li>", esc(w))?;
        }
        out.push_str("</ul></div>\n");
    }

    header(out, run_dir, start, end, &steps)?;
    // The page is built in memory: embedding every frame of a long run would grow it without
    // bound, so only the latest ones are embedded and the rest are named.
    let embed_from = steps.len().saturating_sub(MAX_EMBEDDED_FRAMES);
    for (i, step) in steps.iter().enumerate() {
        step_section(out, run_dir, step, i >= embed_from)?;
    }
    out.push_str("</main></body></html>\n");
    Ok(())
}

fn header(
    out: &mut String,
    run_dir: &Path,
    start: Option<&RunStart>,
    end: Option<&RunEnd>,
    steps: &[&StepRecord],
) -> fmt::Result {
    out.push_str("<header>");
    match start {
        Some(s) => {
            writeln!(out, "<h1>deskhand run {}</h1>", esc(&s.run))?;
            writeln!(out, "<div class=\"task\">{}</div>", esc(&s.task))?;
            out.push_str("<dl>");
            dl_row(out, "Engine", &s.engine)?;
            if let Some(client) = &s.client {
                dl_row(out, "MCP client", client)?;
            }
            dl_row(out, "Policy", &s.policy)?;
            for unlock in &s.unlocks {
                dl_row(out, "Floor", unlock)?;
            }
            dl_row(out, "Monitor", &s.monitor)?;
            dl_row(out, "Started", &s.started)?;
            let mode = if s.dry_run {
                "dry run: allowed actions were not executed"
            } else {
                "live"
            };
            dl_row(out, "Mode", mode)?;
            dl_row(
                out,
                "Limits",
                &format!("{} steps, {} images in context", s.max_steps, s.images),
            )?;
            dl_row(out, "Version", &format!("deskhand {}", s.deskhand_version))?;
        }
        None => {
            let name = run_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            writeln!(out, "<h1>deskhand run {}</h1>", esc(&name))?;
            out.push_str(
                "<div class=\"note end unfinished\">The trace has no start line: the task, \
                 engine and policy are unknown.</div><dl>",
            );
        }
    }
    let mut count = format!("{} recorded", steps.len());
    if let Some(e) = end.filter(|e| e.steps as usize != steps.len()) {
        count.push_str(&format!(" (the end line counts {})", e.steps));
    }
    dl_row(out, "Steps", &count)?;
    if let Some(e) = end {
        dl_row(out, "Ended", &e.ended)?;
    }
    out.push_str("</dl>");

    match end {
        Some(e) => {
            let class = if e.status == RunStatus::Done {
                "ok"
            } else {
                "bad"
            };
            write!(
                out,
                "<div class=\"end {class}\"><b>Ended: {}</b> (exit code {})",
                esc(e.status.name()),
                e.exit_code
            )?;
            if !e.message.is_empty() {
                write!(out, " — {}", esc(&e.message))?;
            }
            out.push_str("</div>\n");
        }
        None => out.push_str(
            "<div class=\"end unfinished\"><b>The run did not finish:</b> the trace has no end \
             line, so deskhand was killed or crashed mid-run. The steps below are everything \
             that was recorded.</div>\n",
        ),
    }

    if !steps.is_empty() {
        out.push_str(
            "<table><tr><th>Step</th><th>Action</th><th>Decision</th><th>Outcome</th>\
             <th>Time</th></tr>\n",
        );
        for s in steps {
            write!(
                out,
                "<tr><td><a href=\"#step-{n}\">{n}</a></td><td>",
                n = s.step
            )?;
            match &s.action {
                Some(a) => out.push_str(&esc(&shorten(&a.to_string(), 90))),
                None => out.push_str("<span class=\"muted\">none</span>"),
            }
            out.push_str("</td><td>");
            if let Some(d) = &s.decision {
                let v = d.decision.name();
                write!(out, "<span class=\"pill {v}\">{v}</span>")?;
            }
            let (word, tone) = outcome_word(&s.outcome);
            writeln!(
                out,
                "</td><td><span class=\"pill {tone}\">{word}</span></td><td>{}</td></tr>",
                ms(s.timings.total_ms)
            )?;
        }
        out.push_str("</table>");
    }
    out.push_str("</header>\n");
    Ok(())
}

fn dl_row(out: &mut String, key: &str, value: &str) -> fmt::Result {
    write!(out, "<dt>{}</dt><dd>{}</dd>", esc(key), esc(value))
}

fn step_section(out: &mut String, run_dir: &Path, s: &StepRecord, embed: bool) -> fmt::Result {
    writeln!(
        out,
        "<section id=\"step-{n}\"><h2>Step {n}<span class=\"at\" title=\"{at}\">{time}</span></h2>",
        n = s.step,
        at = esc(&s.at),
        time = esc(clock_time(&s.at)),
    )?;

    let verdict = s.decision.as_ref().map(|d| d.decision);
    match &s.frame {
        Some(frame) => frame_figure(out, run_dir, frame, s.action.as_ref(), verdict, embed)?,
        None => out.push_str("<div class=\"noframe\">No frame was recorded for this step.</div>"),
    }

    if let Some(model) = &s.model {
        if let Some(thought) = model.thought.as_deref().filter(|t| !t.trim().is_empty()) {
            writeln!(out, "<div class=\"thought\">{}</div>", esc(thought))?;
        }
        writeln!(
            out,
            "<details><summary>Raw reply ({} characters)</summary><pre>{}</pre></details>",
            model.raw.chars().count(),
            esc(&model.raw)
        )?;
    }

    out.push_str("<div class=\"row\"><span class=\"label\">Action</span>");
    match &s.action {
        Some(action) => {
            write!(out, "<b>{}</b>", esc(&format!("{action}")))?;
            if let Some(map) = s.frame.as_ref().map(|f| &f.map)
                && action
                    .points()
                    .iter()
                    .any(|p| !inside(map, to_frame(map, p.x, p.y)))
            {
                out.push_str(" <span class=\"muted\">(a point lies outside the frame)</span>");
            }
            if let Action::Type { text } = action {
                write!(out, "<pre>{}</pre>", esc(text))?;
            }
            write!(out, "<div><code>{}</code></div>", esc(&action.to_json()))?;
        }
        None => out
            .push_str("<span class=\"muted\">none: the step ended before one was proposed</span>"),
    }
    out.push_str("</div>\n");

    if let Some(req) = &s.request {
        window_row(out, req)?;
    }
    if let Some(d) = &s.decision {
        decision_block(out, d, s.answer.as_ref(), s.answered_by)?;
    } else if let Some(answer) = &s.answer {
        write!(
            out,
            "<div class=\"row\"><span class=\"label\">Answer</span>{}</div>",
            esc(&serde_name(answer))
        )?;
    }

    let (word, tone) = outcome_word(&s.outcome);
    writeln!(
        out,
        "<div class=\"row\"><span class=\"label\">Outcome</span><span class=\"pill {tone}\">{word}</span> \
         <span class=\"outcome\">{}</span></div>",
        esc(&s.outcome.to_string())
    )?;

    timings_row(out, s)?;
    out.push_str("</section>\n");
    Ok(())
}

fn window_row(out: &mut String, req: &Request) -> fmt::Result {
    let parts: Vec<&str> = [req.app.as_deref(), req.title.as_deref()]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .collect();
    if !parts.is_empty() {
        writeln!(
            out,
            "<div class=\"row\"><span class=\"label\">Window</span>{}</div>",
            esc(&parts.join(" — "))
        )?;
    }
    Ok(())
}

fn decision_block(
    out: &mut String,
    d: &Decision,
    answer: Option<&crate::policy::Answer>,
    by: Option<super::AnsweredBy>,
) -> fmt::Result {
    let v = d.decision.name();
    write!(
        out,
        "<div class=\"decision {v}\"><span class=\"pill {v}\">{v}</span> "
    )?;
    match &d.rule {
        Some(rule) => write!(
            out,
            "rule <code>{}</code> <span class=\"muted\">({} layer)</span>",
            esc(rule),
            esc(&serde_name(&d.layer))
        )?,
        None => write!(out, "layer <code>{}</code>", esc(&serde_name(&d.layer)))?,
    }
    write!(
        out,
        " <span class=\"muted\">at {}</span><div>{}</div>",
        esc(&d.source),
        esc(&d.reason)
    )?;
    if let Some(answer) = answer {
        let who = match by {
            Some(super::AnsweredBy::Nobody) => "Nobody could answer, so",
            Some(super::AnsweredBy::YesFlag) => "--yes answered",
            Some(super::AnsweredBy::Client) => "The MCP client answered:",
            Some(super::AnsweredBy::Person) | None => "The person answered:",
        };
        write!(out, "<div><b>{who}</b> {}</div>", esc(&serde_name(answer)))?;
    }
    if !d.grants.is_empty() {
        write!(
            out,
            "<div>Allowed by grant: {}</div>",
            esc(&d.grants.join(", "))
        )?;
    }
    for unlock in &d.unlocked {
        write!(out, "<div><b>Floor unlocked:</b> {}</div>", esc(unlock))?;
    }
    if !d.detector_hits.is_empty() {
        let hits: Vec<String> = d
            .detector_hits
            .iter()
            .map(|h| {
                let secret = if h.secret { ", secret" } else { "" };
                format!("{} ×{}{secret}", h.name, h.count)
            })
            .collect();
        write!(out, "<div>Detectors: {}</div>", esc(&hits.join("; ")))?;
    }
    let intents: Vec<&str> = d
        .intents
        .iter()
        .map(|i| i.name())
        .filter(|n| *n != "other")
        .collect();
    if !intents.is_empty() {
        write!(out, "<div>Intents: {}</div>", esc(&intents.join(", ")))?;
    }
    if d.matched.len() > 1 {
        write!(
            out,
            "<details><summary>All {} matching entries</summary><table>\
             <tr><th>Entry</th><th>Decision</th><th>Layer</th><th>Source</th><th>Reason</th></tr>",
            d.matched.len()
        )?;
        for m in &d.matched {
            write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&m.id),
                m.decision.name(),
                esc(&serde_name(&m.layer)),
                esc(&m.source),
                esc(&m.reason)
            )?;
        }
        out.push_str("</table></details>");
    }
    out.push_str("</div>\n");
    Ok(())
}

fn timings_row(out: &mut String, s: &StepRecord) -> fmt::Result {
    let t: &StepTimings = &s.timings;
    out.push_str("<div class=\"times\">");
    let settle = if s.settled {
        ms(t.settle_ms)
    } else {
        format!("{} (did not settle)", ms(t.settle_ms))
    };
    write!(out, "<span><b>settle</b> {}</span>", esc(&settle))?;
    write!(out, "<span><b>observe</b> {}</span>", ms(t.observe_ms))?;
    write!(out, "<span><b>prompt</b> {}</span>", ms(t.prompt_ms))?;
    write!(out, "<span><b>model</b> {}", ms(t.model_ms))?;
    if let Some(m) = &s.model {
        let mt = &m.timings;
        write!(
            out,
            " (image {} / {} tok, prefill {} / {} tok",
            ms(mt.image_encode_ms),
            mt.image_tokens,
            ms(mt.prefill_ms),
            mt.prefill_tokens
        )?;
        if mt.reused_tokens > 0 {
            write!(out, ", {} reused", mt.reused_tokens)?;
        }
        write!(
            out,
            ", decode {} / {} tok",
            ms(mt.decode_ms),
            mt.decode_tokens
        )?;
        if mt.forced_tokens > 0 {
            write!(out, ", {} forced", mt.forced_tokens)?;
        }
        out.push(')');
    }
    out.push_str("</span>");
    write!(out, "<span><b>policy</b> {}</span>", ms(t.policy_ms))?;
    if t.ask_ms > 0.0 {
        write!(out, "<span><b>ask</b> {}</span>", ms(t.ask_ms))?;
    }
    write!(out, "<span><b>act</b> {}</span>", ms(t.act_ms))?;
    write!(out, "<span><b>record</b> {}</span>", ms(t.record_ms))?;
    write!(out, "<span><b>total</b> {}</span>", ms(t.total_ms))?;
    out.push_str("</div>\n");
    Ok(())
}

fn outcome_word(o: &Outcome) -> (&'static str, &'static str) {
    match o {
        Outcome::Executed { .. } => ("executed", "good"),
        Outcome::DryRun => ("dry run", "info"),
        Outcome::Refused { .. } => ("refused", "bad"),
        Outcome::Done { .. } => ("done", "good"),
        Outcome::Failed { .. } => ("failed", "bad"),
        Outcome::Asked { .. } => ("asked", "info"),
        Outcome::Waited { .. } => ("waited", "info"),
        Outcome::Error { .. } => ("error", "bad"),
        Outcome::Aborted { .. } => ("aborted", "bad"),
    }
}

/// The screenshot with the action drawn over it, as one SVG whose coordinate system is the
/// frame's own pixels, so the overlay lines up at any display width.
fn frame_figure(
    out: &mut String,
    run_dir: &Path,
    frame: &FrameRecord,
    action: Option<&Action>,
    verdict: Option<Verdict>,
    embed: bool,
) -> fmt::Result {
    let map = &frame.map;
    let (fw, fh) = (map.frame_width, map.frame_height);
    if fw == 0 || fh == 0 {
        return write!(
            out,
            "<div class=\"noframe\">The frame {} has an empty size ({fw}×{fh}).</div>",
            esc(&frame.file)
        );
    }
    write!(
        out,
        "<div class=\"shot\"><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {fw} {fh}\" \
         width=\"{fw}\" height=\"{fh}\" role=\"img\" aria-label=\"frame {}\">",
        esc(&frame.file)
    )?;
    let loaded = if embed {
        load_frame(run_dir, &frame.file)
    } else {
        Err(format!(
            "frame {} is in the run folder (the report embeds the last {MAX_EMBEDDED_FRAMES})",
            frame.file
        ))
    };
    match loaded {
        Ok((mime, data)) => write!(
            out,
            "<image href=\"data:{mime};base64,{data}\" x=\"0\" y=\"0\" width=\"{fw}\" \
             height=\"{fh}\" preserveAspectRatio=\"none\"/>"
        )?,
        Err(why) => {
            let size = f64::from(fw.max(fh)) * 0.022;
            write!(
                out,
                "<rect width=\"{fw}\" height=\"{fh}\" fill=\"#c9ccd1\"/>\
                 <text x=\"{}\" y=\"{}\" font-size=\"{}\" text-anchor=\"middle\" \
                 fill=\"#3a3f46\" font-family=\"sans-serif\">{}</text>",
                num(f64::from(fw) / 2.0),
                num(f64::from(fh) / 2.0),
                num(size),
                esc(&why)
            )?;
        }
    }
    if let Some(action) = action {
        overlay(out, map, action, verdict)?;
    }
    out.push_str("</svg></div>\n");
    Ok(())
}

/// The frame's bytes as base64, or why they cannot be shown.
fn load_frame(run_dir: &Path, file: &str) -> Result<(&'static str, String), String> {
    let rel = Path::new(file);
    // The trace names the file; a crafted trace must not pull arbitrary files into a page
    // that may be shared.
    let plain = !file.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!("frame {file} is not inside the run folder"));
    }
    let bytes = std::fs::read(run_dir.join(rel)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("frame {file} is missing"),
        _ => format!("frame {file} cannot be read: {e}"),
    })?;
    let ext = rel
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mime = match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        _ => "image/png",
    };
    Ok((
        mime,
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

/// A screen point in the frame's pixels.
fn to_frame(map: &FrameMap, sx: i32, sy: i32) -> (f64, f64) {
    let axis = |s: i32, origin: i32, screen: u32, frame: u32| {
        if screen == 0 {
            return 0.0;
        }
        (f64::from(s) - f64::from(origin)) * f64::from(frame) / f64::from(screen)
    };
    (
        axis(sx, map.origin.x, map.screen_width, map.frame_width),
        axis(sy, map.origin.y, map.screen_height, map.frame_height),
    )
}

fn inside(map: &FrameMap, (x, y): (f64, f64)) -> bool {
    (0.0..=f64::from(map.frame_width)).contains(&x)
        && (0.0..=f64::from(map.frame_height)).contains(&y)
}

fn overlay(
    out: &mut String,
    map: &FrameMap,
    action: &Action,
    verdict: Option<Verdict>,
) -> fmt::Result {
    let colour = match verdict {
        Some(Verdict::Allow) => "#2bd46a",
        Some(Verdict::Ask) => "#ffb020",
        Some(Verdict::Deny) => "#ff4d4d",
        None => "#ff3fd0",
    };
    // Sizes follow the frame so that the marks look the same on a 64-pixel test frame and a
    // full-size one.
    let r = f64::from(map.frame_width.max(map.frame_height)) * 0.016;
    let w = r * 0.2;
    let mut shapes = String::new();
    let mut labels: Vec<((f64, f64), String)> = Vec::new();
    match action {
        Action::Click { x, y, button }
        | Action::DoubleClick { x, y, button }
        | Action::TripleClick { x, y, button } => {
            let (cx, cy) = to_frame(map, *x, *y);
            write!(
                shapes,
                "<circle cx=\"{}\" cy=\"{}\" r=\"{}\"/>",
                num(cx),
                num(cy),
                num(r)
            )?;
            for (dx, dy) in [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)] {
                // The gap in the middle leaves the target pixel itself visible.
                write!(
                    shapes,
                    "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>",
                    num(cx + dx * r * 0.35),
                    num(cy + dy * r * 0.35),
                    num(cx + dx * r * 1.7),
                    num(cy + dy * r * 1.7)
                )?;
            }
            let mut label = match action {
                Action::DoubleClick { .. } => "2×".to_owned(),
                Action::TripleClick { .. } => "3×".to_owned(),
                _ => String::new(),
            };
            if *button != MouseButton::Left {
                if !label.is_empty() {
                    label.push(' ');
                }
                label.push_str(&button.to_string());
            }
            if !label.is_empty() {
                labels.push(((cx, cy), label));
            }
        }
        Action::Move { x, y } => {
            let (cx, cy) = to_frame(map, *x, *y);
            write!(
                shapes,
                "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" stroke-dasharray=\"{} {}\"/>",
                num(cx),
                num(cy),
                num(r * 0.6),
                num(w * 1.5),
                num(w)
            )?;
        }
        Action::Drag { path } => {
            let pts: Vec<(f64, f64)> = path.iter().map(|[x, y]| to_frame(map, *x, *y)).collect();
            if let (Some(&first), Some(&last)) = (pts.first(), pts.last()) {
                let before = pts
                    .iter()
                    .rev()
                    .find(|p| (p.0 - last.0).hypot(p.1 - last.1) > 1e-6)
                    .copied();
                let mut line = pts.clone();
                let head = before.map(|b| arrow_head(b, last, r * 1.1));
                if let (Some((_, shaft_end)), Some(end)) = (head.as_ref(), line.last_mut()) {
                    *end = *shaft_end;
                }
                let points: Vec<String> = line
                    .iter()
                    .map(|(x, y)| format!("{},{}", num(*x), num(*y)))
                    .collect();
                write!(
                    shapes,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"currentColor\"/>\
                     <polyline points=\"{}\"/>",
                    num(first.0),
                    num(first.1),
                    num(r * 0.35),
                    points.join(" ")
                )?;
                if let Some((poly, _)) = head {
                    shapes.push_str(&poly);
                }
            }
        }
        Action::Scroll { x, y, dx, dy } => {
            let (cx, cy) = to_frame(map, *x, *y);
            write!(
                shapes,
                "<circle cx=\"{}\" cy=\"{}\" r=\"{}\"/>",
                num(cx),
                num(cy),
                num(r * 0.55)
            )?;
            for (notches, ux, uy) in [(*dx, 1.0, 0.0), (*dy, 0.0, 1.0)] {
                if notches == 0 {
                    continue;
                }
                let sign = f64::from(notches.signum());
                let (ux, uy) = (ux * sign, uy * sign);
                let len = r * (1.6 + 0.2 * f64::from(notches.unsigned_abs().min(10)));
                let from = (cx + ux * r * 0.7, cy + uy * r * 0.7);
                let to = (from.0 + ux * len, from.1 + uy * len);
                let (poly, shaft_end) = arrow_head(from, to, r * 0.9);
                write!(
                    shapes,
                    "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>{poly}",
                    num(from.0),
                    num(from.1),
                    num(shaft_end.0),
                    num(shaft_end.1)
                )?;
            }
            let text = match (*dx, *dy) {
                (0, dy) => format!("dy {dy:+}"),
                (dx, 0) => format!("dx {dx:+}"),
                (dx, dy) => format!("dx {dx:+} dy {dy:+}"),
            };
            labels.push(((cx, cy), text));
        }
        // Keys, text, waits and the terminal actions touch no point; the text says what they did.
        _ => {}
    }
    if shapes.is_empty() {
        return Ok(());
    }
    // Drawn twice, a dark wide stroke under the coloured one, so the marks stay visible on
    // both light and dark screens.
    write!(
        out,
        "<g fill=\"none\" color=\"#000\" stroke=\"#000\" stroke-opacity=\"0.6\" \
         stroke-width=\"{}\" stroke-linecap=\"round\" stroke-linejoin=\"round\">{shapes}</g>\
         <g fill=\"none\" color=\"{colour}\" stroke=\"{colour}\" stroke-width=\"{}\" \
         stroke-linecap=\"round\" stroke-linejoin=\"round\">{shapes}</g>",
        num(w * 2.6),
        num(w)
    )?;
    for ((x, y), text) in labels {
        let size = r * 1.2;
        // SVG cannot measure text without script; bold sans glyphs average about 0.62em,
        // close enough for a backing box.
        let width = text.chars().count() as f64 * size * 0.62 + size * 0.7;
        let height = size * 1.45;
        let left = if x < f64::from(map.frame_width) * 0.85 {
            x + r * 1.5
        } else {
            x - r * 1.5 - width
        };
        let top = (y - r * 1.9 - height * 0.5).max(0.0);
        write!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"{}\" fill=\"#111\" \
             fill-opacity=\"0.8\"/><text x=\"{}\" y=\"{}\" font-size=\"{}\" font-weight=\"700\" \
             font-family=\"sans-serif\" text-anchor=\"middle\" dominant-baseline=\"central\" \
             fill=\"{colour}\">{}</text>",
            num(left),
            num(top),
            num(width),
            num(height),
            num(height * 0.3),
            num(left + width / 2.0),
            num(top + height / 2.0),
            num(size),
            esc(&text)
        )?;
    }
    Ok(())
}

/// A filled arrowhead pointing from `from` to `tip`, and where the shaft should stop so its
/// thick stroke does not poke out past the head's point.
fn arrow_head(from: (f64, f64), tip: (f64, f64), size: f64) -> (String, (f64, f64)) {
    let (dx, dy) = (tip.0 - from.0, tip.1 - from.1);
    let len = dx.hypot(dy);
    if len < 1e-9 {
        return (String::new(), tip);
    }
    let (ux, uy) = (dx / len, dy / len);
    let base = (tip.0 - ux * size, tip.1 - uy * size);
    let (px, py) = (-uy * size * 0.6, ux * size * 0.6);
    let poly = format!(
        "<polygon points=\"{},{} {},{} {},{}\" fill=\"currentColor\"/>",
        num(tip.0),
        num(tip.1),
        num(base.0 + px),
        num(base.1 + py),
        num(base.0 - px),
        num(base.1 - py)
    );
    (poly, (base.0 + ux * size * 0.3, base.1 + uy * size * 0.3))
}

/// A number for an SVG attribute: at most two decimals, no trailing zeros.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "0".into();
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn ms(v: f64) -> String {
    if !v.is_finite() {
        "?".into()
    } else if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// `12:03:04.123` out of an RFC 3339 time, or the whole string if it is not one.
fn clock_time(at: &str) -> &str {
    at.split_once('T')
        .map_or(at, |(_, t)| t.trim_end_matches('Z'))
}

/// A unit enum variant's wire name (`snake_case`), so new variants need no change here.
fn serde_name<T: Serialize + fmt::Debug>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{v:?}"),
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// Text for HTML content and quoted attributes alike.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // NUL and other C0 controls are not allowed in HTML text; show that one was there.
            c if c.is_control() && c != '\n' && c != '\t' && c != '\r' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timings;
    use crate::policy::{Answer, DetectorHit, Layer};
    use crate::screen::ScreenPoint;
    use crate::trace::{ModelRecord, Refuser};

    fn map() -> FrameMap {
        FrameMap {
            monitor: "TEST-1".into(),
            origin: ScreenPoint::new(100, 50),
            screen_width: 640,
            screen_height: 400,
            frame_width: 64,
            frame_height: 40,
            scale_factor: 1.0,
        }
    }

    fn decision(verdict: Verdict, rule: Option<&str>) -> Decision {
        Decision {
            decision: verdict,
            rule: rule.map(str::to_owned),
            layer: if rule.is_some() {
                Layer::User
            } else {
                Layer::Preset
            },
            source: if rule.is_some() {
                "policy.toml:12".into()
            } else {
                "built-in".into()
            },
            reason: "because <b>reasons</b>".into(),
            rememberable: false,
            session_only: false,
            matched: Vec::new(),
            unlocked: Vec::new(),
            detector_hits: Vec::new(),
            intents: Vec::new(),
            grants: Vec::new(),
        }
    }

    fn step(n: u32, action: Action, decision: Decision, outcome: Outcome) -> TraceLine {
        TraceLine::Step(Box::new(StepRecord {
            step: n,
            at: format!("2025-03-01T10:00:0{n}.000Z"),
            frame: Some(FrameRecord {
                file: "step-0001.png".into(),
                map: map(),
            }),
            settled: true,
            timings: StepTimings {
                total_ms: 1234.0,
                ..StepTimings::default()
            },
            model: Some(ModelRecord {
                raw: format!("raw reply {n} <tool_call>"),
                thought: Some(format!("thinking {n}: <script>alert(1)</script>")),
                timings: Timings::default(),
            }),
            action: Some(action.clone()),
            request: Some(Request::new(action)),
            decision: Some(decision),
            answer: None,
            answered_by: None,
            outcome,
        }))
    }

    fn run_lines(finished: bool) -> Vec<TraceLine> {
        let mut denied = decision(Verdict::Deny, Some("no-terminal-rm"));
        denied.detector_hits.push(DetectorHit {
            name: "api_token".into(),
            secret: true,
            count: 1,
        });
        let mut lines = vec![
            TraceLine::Start(RunStart {
                run: "20250301-100000".into(),
                task: "Open the <settings> & check".into(),
                started: "2025-03-01T10:00:00.000Z".into(),
                deskhand_version: "0.1.0".into(),
                engine: "script test.jsonl".into(),
                policy: "~/.config/deskhand/policy.toml".into(),
                monitor: "TEST-1".into(),
                dry_run: false,
                max_steps: 20,
                images: 2,
                unlocks: vec![
                    "unlocked: floor.risky_intent (send_email) (now allow) by rule 'mail-to-my-team' at policy.toml:9".into(),
                ],
                client: None,
            }),
            step(
                1,
                Action::Click {
                    x: 420,
                    y: 250,
                    button: MouseButton::Left,
                },
                decision(Verdict::Allow, None),
                Outcome::Executed { events: 2, ms: 3.5 },
            ),
            step(
                2,
                Action::Type {
                    text: "rm -rf ~".into(),
                },
                denied,
                Outcome::Refused {
                    by: Refuser::Policy,
                    reason: "denied by policy".into(),
                },
            ),
            step(
                3,
                Action::Drag {
                    path: vec![[100, 50], [420, 250], [740, 450]],
                },
                decision(Verdict::Ask, Some("ask-drags")),
                Outcome::Executed {
                    events: 5,
                    ms: 40.0,
                },
            ),
        ];
        if let Some(TraceLine::Step(s)) = lines.last_mut() {
            s.answer = Some(Answer::Once);
        }
        if finished {
            lines.push(TraceLine::End(RunEnd {
                ended: "2025-03-01T10:00:09.000Z".into(),
                steps: 3,
                exit_code: 0,
                status: RunStatus::Done,
                message: "all good".into(),
            }));
        }
        lines
    }

    fn run_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let img = image::RgbImage::from_pixel(64, 40, image::Rgb([30, 60, 90]));
        img.save(dir.path().join("step-0001.png")).unwrap();
        dir
    }

    #[test]
    fn a_long_run_embeds_only_its_latest_frames() {
        let dir = run_dir();
        let mut lines = run_lines(true);
        let step = lines
            .iter()
            .find_map(|l| match l {
                TraceLine::Step(s) if s.frame.is_some() => Some(s.clone()),
                _ => None,
            })
            .unwrap();
        let end = lines.pop().unwrap();
        lines.retain(|l| matches!(l, TraceLine::Start(_)));
        for n in 1..=(MAX_EMBEDDED_FRAMES as u32 + 5) {
            let mut s = step.clone();
            s.step = n;
            lines.push(TraceLine::Step(s));
        }
        lines.push(end);
        let html = render_report(dir.path(), &lines, &[]);
        assert_eq!(
            html.matches("data:image/png;base64,").count(),
            MAX_EMBEDDED_FRAMES
        );
        assert_eq!(html.matches("the report embeds the last").count(), 5);
    }

    #[test]
    fn report_embeds_frames_and_draws_actions_in_frame_pixels() {
        let dir = run_dir();
        let html = render_report(dir.path(), &run_lines(true), &[]);
        assert!(
            html.contains("data:image/png;base64,iVBORw0KGgo"),
            "PNG embedded"
        );
        assert!(html.contains("viewBox=\"0 0 64 40\""));
        // Screen (420, 250) with origin (100, 50) and a 10:1 scale is frame (32, 20).
        assert!(html.contains("<circle cx=\"32\" cy=\"20\""), "click circle");
        assert!(html.contains("<polyline points=\"0,0 32,20 "), "drag path");
        assert!(html.contains("<polygon"), "drag arrowhead");
        assert!(html.contains("class=\"decision deny\""));
        assert!(html.contains("class=\"decision allow\""));
        assert!(html.contains("class=\"decision ask\""));
        assert!(html.contains("no-terminal-rm"));
        assert!(html.contains("policy.toml:12"));
        assert!(html.contains("layer <code>preset</code>"));
        assert!(html.contains("api_token ×1, secret"));
        assert!(html.contains("The person answered:</b> once"));
        assert!(html.contains("Refused by the policy"));
        assert!(html.contains("left click at (420, 250)"));
        assert!(html.contains("Ended: done"));
        assert!(!html.contains("did not finish"));
    }

    #[test]
    fn trace_text_is_escaped() {
        let dir = run_dir();
        let html = render_report(dir.path(), &run_lines(true), &["torn <line>".into()]);
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script"), "no raw script tag anywhere");
        assert!(html.contains("Open the &lt;settings&gt; &amp; check"));
        assert!(html.contains("because &lt;b&gt;reasons&lt;/b&gt;"));
        assert!(
            html.contains("torn &lt;line&gt;"),
            "warnings shown, escaped"
        );
        assert!(html.contains("raw reply 1 &lt;tool_call&gt;"));
    }

    #[test]
    fn missing_end_and_missing_frame_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let html = render_report(dir.path(), &run_lines(false), &[]);
        assert!(html.contains("did not finish"));
        assert!(html.contains("killed or crashed"));
        assert!(html.contains("frame step-0001.png is missing"));
        assert!(!html.contains("data:image/png"));
        // The overlay is still drawn over the grey box.
        assert!(html.contains("<circle cx=\"32\" cy=\"20\""));
    }

    #[test]
    fn frame_names_cannot_leave_the_run_folder() {
        let dir = run_dir();
        let mut lines = run_lines(true);
        if let TraceLine::Step(s) = &mut lines[1] {
            s.frame = Some(FrameRecord {
                file: "../secret.png".into(),
                map: map(),
            });
        }
        let html = render_report(dir.path(), &lines, &[]);
        assert!(html.contains("is not inside the run folder"));
    }

    #[test]
    fn scroll_and_move_are_drawn_keys_are_not() {
        let dir = run_dir();
        let lines = vec![
            step(
                1,
                Action::Scroll {
                    x: 420,
                    y: 250,
                    dx: 0,
                    dy: 3,
                },
                decision(Verdict::Allow, None),
                Outcome::DryRun,
            ),
            step(
                2,
                Action::Move { x: 420, y: 250 },
                decision(Verdict::Allow, None),
                Outcome::DryRun,
            ),
            step(
                3,
                Action::Key {
                    chord: "ctrl+c".into(),
                },
                decision(Verdict::Allow, None),
                Outcome::DryRun,
            ),
        ];
        let html = render_report(dir.path(), &lines, &[]);
        assert!(html.contains("dy +3"));
        assert!(html.contains("stroke-dasharray"));
        assert_eq!(
            html.matches("<g fill=\"none\"").count(),
            4,
            "two steps drawn, twice each"
        );
        assert!(html.contains("The trace has no start line"));
    }

    #[test]
    fn write_report_reads_the_trace_and_writes_the_page() {
        let dir = run_dir();
        let mut text = String::new();
        for line in run_lines(true) {
            text.push_str(&serde_json::to_string(&line).unwrap());
            text.push('\n');
        }
        text.push_str("{\"record\":\"step\",\"step\":");
        std::fs::write(dir.path().join(TRACE_FILE), text).unwrap();
        let path = write_report(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("report.html"));
        let html = std::fs::read_to_string(&path).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("data:image/png;base64,"));
        assert!(html.contains("the last line is incomplete"));
        assert!(!dir.path().join("report.html.partial").exists());
    }

    #[test]
    fn write_report_fails_without_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            write_report(dir.path()),
            Err(TraceError::Io { .. })
        ));
    }
}
