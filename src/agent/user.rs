//! The person at the terminal: answers asks and `call_user` questions, and watches one live
//! progress line per step.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::policy::{Answer, Decision, Layer, Request};

/// What the person said to an ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAnswer {
    Answer(Answer),
    /// Stop the run now.
    Abort,
}

/// The loop's view of the person running it.
pub trait User {
    /// The policy asks about `request`. Without a person to ask, the answer is deny.
    fn ask(&mut self, request: &Request, decision: &Decision) -> UserAnswer;
    /// The model asks the person a question; `None` when nobody can answer.
    fn reply(&mut self, question: &str) -> Option<String>;
    /// The step is in `phase` now.
    fn phase(&mut self, step: u32, phase: &str);
    /// The step finished; `line` sums it up.
    fn step_done(&mut self, line: &str);
    /// A message outside any step.
    fn note(&mut self, line: &str);
}

/// The terminal: a spinner line on stderr, questions on stderr, answers from stdin. When stdin
/// is not a terminal nobody can answer, so every ask is denied and questions go unanswered.
pub struct TerminalUser {
    bar: Option<ProgressBar>,
    interactive: bool,
}

impl TerminalUser {
    pub fn new() -> TerminalUser {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        TerminalUser {
            bar,
            interactive: std::io::stdin().is_terminal(),
        }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn prompt(&self, text: &str) -> Option<String> {
        let read = || {
            eprint!("{text}");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            match std::io::stdin().lock().read_line(&mut line) {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(line.trim().to_owned()),
            }
        };
        match &self.bar {
            Some(bar) => bar.suspend(read),
            None => read(),
        }
    }
}

impl Default for TerminalUser {
    fn default() -> Self {
        TerminalUser::new()
    }
}

impl Drop for TerminalUser {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl User for TerminalUser {
    fn ask(&mut self, request: &Request, decision: &Decision) -> UserAnswer {
        let by = decision
            .rule
            .clone()
            .unwrap_or_else(|| format!("{:?}", decision.layer).to_lowercase());
        if !self.interactive {
            self.print(&format!(
                "policy asks about: {} ({by}: {}); stdin is not a terminal, so nobody can answer: denied",
                request.action, decision.reason
            ));
            return UserAnswer::Answer(Answer::Deny);
        }
        let floor = decision.asking().any(|m| m.layer == Layer::Floor);
        let mut choices = vec![("o", "once")];
        if decision.rememberable {
            choices.push(("s", "session"));
            choices.push(("a", "always"));
        }
        choices.push(("d", "deny"));
        choices.push(("x", "abort"));
        let menu: Vec<String> = choices.iter().map(|(k, w)| format!("[{k}] {w}")).collect();
        let window = request
            .app
            .as_ref()
            .map(|a| format!(" in {a}"))
            .unwrap_or_default();
        let question = format!(
            "\nThe policy asks before: {}{window}\n  {by}: {}{}\n  {} ? ",
            request.action,
            decision.reason,
            if floor {
                "\n  (a built-in floor rule: it asks every time)"
            } else {
                ""
            },
            menu.join("  ")
        );
        loop {
            let Some(answer) = self.prompt(&question) else {
                return UserAnswer::Answer(Answer::Deny);
            };
            let picked = match answer.to_lowercase().as_str() {
                "o" | "once" | "y" | "yes" => UserAnswer::Answer(Answer::Once),
                "s" | "session" if decision.rememberable => UserAnswer::Answer(Answer::Session),
                "a" | "always" if decision.rememberable => UserAnswer::Answer(Answer::Always),
                "d" | "deny" | "n" | "no" => UserAnswer::Answer(Answer::Deny),
                "x" | "abort" => UserAnswer::Abort,
                _ => continue,
            };
            return picked;
        }
    }

    fn reply(&mut self, question: &str) -> Option<String> {
        if !self.interactive {
            self.print(&format!(
                "the model asks: {question}\n  stdin is not a terminal, so nobody can answer"
            ));
            return None;
        }
        self.prompt(&format!("\nThe model asks: {question}\n  your answer: "))
            .filter(|a| !a.is_empty())
    }

    fn phase(&mut self, step: u32, phase: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("step {step}: {phase}"));
        }
    }

    fn step_done(&mut self, line: &str) {
        self.print(line);
    }

    fn note(&mut self, line: &str) {
        self.print(line);
    }
}

/// Nobody at the keyboard (benchmarks, tests, services): every ask is denied, questions go
/// unanswered, and progress goes to the log.
pub struct Unattended;

impl User for Unattended {
    fn ask(&mut self, _request: &Request, _decision: &Decision) -> UserAnswer {
        UserAnswer::Answer(Answer::Deny)
    }

    fn reply(&mut self, _question: &str) -> Option<String> {
        None
    }

    fn phase(&mut self, _step: u32, _phase: &str) {}

    fn step_done(&mut self, line: &str) {
        tracing::info!("{line}");
    }

    fn note(&mut self, line: &str) {
        tracing::info!("{line}");
    }
}
