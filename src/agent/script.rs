//! `--script FILE`: an engine that takes its actions from a JSONL file instead of a model, so
//! a workflow can be replayed through the policy and the executor, and tests can drive the
//! whole loop without a model. A line may declare what its action is for, as Gemma's replies
//! do: `{"action":"click","x":10,"y":20,"intent":"send_email"}`.

use std::path::Path;

use crate::input::Action;
use crate::model::family::action_json_with_intent;
use crate::model::{Backend, ModelError, Prompt, Reply, Timings};
use crate::policy::Intent;

pub struct ScriptBackend {
    actions: Vec<(Action, Option<Intent>)>,
    next: usize,
}

impl ScriptBackend {
    /// Reads one action per line (blank lines and lines starting with `#` are skipped). Every
    /// line is checked before the run starts; an error names the file and line.
    pub fn load(path: &Path) -> Result<ScriptBackend, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the script {}: {e}", path.display()))?;
        ScriptBackend::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ScriptBackend, String> {
        let mut actions = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let action = action_json_with_intent(line)
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
            actions.push(action);
        }
        if actions.is_empty() {
            return Err(format!(
                "{}: the script has no actions; write one JSON action per line, e.g. {{\"action\":\"click\",\"x\":100,\"y\":200}}",
                path.display()
            ));
        }
        Ok(ScriptBackend { actions, next: 0 })
    }
}

impl Backend for ScriptBackend {
    fn reply(&mut self, _prompt: &Prompt<'_>) -> Result<Reply, ModelError> {
        let (action, intent) = match self.actions.get(self.next) {
            Some(scripted) => scripted.clone(),
            None => (
                Action::Fail {
                    reason: format!(
                        "the script ended after {} actions without `done`",
                        self.actions.len()
                    ),
                },
                None,
            ),
        };
        self.next += 1;
        Ok(Reply {
            raw: action.to_json(),
            thought: Some(format!("scripted action {}", self.next)),
            action,
            intent,
            timings: Timings::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_is_named_by_file_and_line() {
        let err = ScriptBackend::parse(
            "{\"action\":\"wait\",\"ms\":1}\n\n{\"action\":\"clik\"}\n",
            Path::new("s.jsonl"),
        )
        .err()
        .unwrap_or_default();
        assert!(err.starts_with("s.jsonl:3: "), "{err}");
        assert!(ScriptBackend::parse("# nothing\n", Path::new("e.jsonl")).is_err());
    }
}
