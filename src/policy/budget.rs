//! Budgets: limits on how much a run may do before a person looks again. A budget that runs
//! out turns the decision into an ask; the run never goes on silently past one.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Intent;
use crate::input::Action;

/// The limits in force. `None` means no limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BudgetLimits {
    pub steps_per_task: Option<u32>,
    pub actions_per_minute: Option<u32>,
    /// How many identical actions may run back to back before the next one asks.
    pub identical_actions: Option<u32>,
    pub task_timeout: Option<Duration>,
    pub per_intent_per_hour: BTreeMap<Intent, u32>,
}

impl BudgetLimits {
    /// Limits that apply when no policy file sets any: generous, but never unbounded.
    pub fn built_in() -> BudgetLimits {
        BudgetLimits {
            steps_per_task: Some(200),
            actions_per_minute: Some(120),
            identical_actions: Some(8),
            task_timeout: Some(Duration::from_secs(3600)),
            per_intent_per_hour: BTreeMap::new(),
        }
    }

    /// Combines the limits of several files: a limit set anywhere applies, and where two files
    /// set the same one the tighter wins, so no layer can loosen another's.
    pub fn combine<'a>(files: impl IntoIterator<Item = &'a BudgetLimits>) -> BudgetLimits {
        fn tighter<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        let mut combined = BudgetLimits::default();
        let mut any = false;
        for file in files {
            any = true;
            combined.steps_per_task = tighter(combined.steps_per_task, file.steps_per_task);
            combined.actions_per_minute =
                tighter(combined.actions_per_minute, file.actions_per_minute);
            combined.identical_actions =
                tighter(combined.identical_actions, file.identical_actions);
            combined.task_timeout = tighter(combined.task_timeout, file.task_timeout);
            for (&intent, &cap) in &file.per_intent_per_hour {
                let entry = combined.per_intent_per_hour.entry(intent).or_insert(cap);
                *entry = (*entry).min(cap);
            }
        }
        let built_in = BudgetLimits::built_in();
        if !any {
            return built_in;
        }
        // Files that leave a budget out get the built-in one rather than none.
        combined.steps_per_task = combined.steps_per_task.or(built_in.steps_per_task);
        combined.actions_per_minute = combined.actions_per_minute.or(built_in.actions_per_minute);
        combined.identical_actions = combined.identical_actions.or(built_in.identical_actions);
        combined.task_timeout = combined.task_timeout.or(built_in.task_timeout);
        combined
    }
}

/// Which budget ran out, and a sentence for the person who must decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetExceeded {
    /// The budget's key in the policy file, e.g. `steps_per_task`.
    pub budget: String,
    pub message: String,
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// The counters of one task.
#[derive(Debug, Clone)]
pub struct BudgetTracker {
    limits: BudgetLimits,
    started: Instant,
    steps: u32,
    /// Steps allowed so far; each "once" answer to the step budget adds another budget's worth.
    step_allowance: Option<u32>,
    timeout_allowance: Option<Duration>,
    executed: VecDeque<Instant>,
    executed_intents: VecDeque<(Instant, Intent)>,
    last_action: Option<Action>,
    identical_run: u32,
}

impl BudgetTracker {
    pub fn new(limits: BudgetLimits, now: Instant) -> BudgetTracker {
        BudgetTracker {
            step_allowance: limits.steps_per_task,
            timeout_allowance: limits.task_timeout,
            limits,
            started: now,
            steps: 0,
            executed: VecDeque::new(),
            executed_intents: VecDeque::new(),
            last_action: None,
            identical_run: 0,
        }
    }

    /// Counts one more step and says whether running `action` now would break a budget.
    pub fn check(
        &mut self,
        action: &Action,
        intents: &[Intent],
        now: Instant,
    ) -> Option<BudgetExceeded> {
        self.steps = self.steps.saturating_add(1);
        self.forget_old(now);
        let exceeded = |budget: &str, message: String| {
            Some(BudgetExceeded {
                budget: budget.to_owned(),
                message,
            })
        };
        if let Some(allowance) = self.step_allowance
            && self.steps > allowance
        {
            return exceeded(
                "steps_per_task",
                format!("this task has taken {allowance} steps, its step budget"),
            );
        }
        if let Some(allowance) = self.timeout_allowance {
            let elapsed = now.saturating_duration_since(self.started);
            if elapsed >= allowance {
                return exceeded(
                    "task_timeout_s",
                    format!(
                        "this task has run for {} s, its time budget",
                        elapsed.as_secs()
                    ),
                );
            }
        }
        if let Some(limit) = self.limits.actions_per_minute
            && self.executed.len() >= limit as usize
        {
            return exceeded(
                "actions_per_minute",
                format!("{limit} actions ran in the last minute, the rate budget"),
            );
        }
        if let Some(limit) = self.limits.identical_actions
            && self.last_action.as_ref() == Some(action)
            && self.identical_run >= limit
        {
            return exceeded(
                "identical_actions",
                format!("the same action ran {limit} times in a row: {action}"),
            );
        }
        for intent in intents {
            let Some(&cap) = self.limits.per_intent_per_hour.get(intent) else {
                continue;
            };
            let used = self
                .executed_intents
                .iter()
                .filter(|(_, i)| i == intent)
                .count();
            if used >= cap as usize {
                return exceeded(
                    &format!("per_intent_per_hour.{intent}"),
                    format!("{used} {intent} actions ran in the last hour, the cap for {intent}"),
                );
            }
        }
        None
    }

    /// Notes that `action` ran.
    pub fn record(&mut self, action: &Action, intents: &[Intent], now: Instant) {
        self.executed.push_back(now);
        for &intent in intents {
            self.executed_intents.push_back((now, intent));
        }
        if self.last_action.as_ref() == Some(action) {
            self.identical_run = self.identical_run.saturating_add(1);
        } else {
            self.last_action = Some(action.clone());
            self.identical_run = 1;
        }
    }

    /// The person answered "once" to a budget's ask: give that budget a fresh allowance.
    pub fn extend(&mut self, budget: &str, now: Instant) {
        match budget {
            "steps_per_task" => {
                self.step_allowance = self.limits.steps_per_task.map(|per| self.steps + per);
            }
            "task_timeout_s" => {
                self.timeout_allowance = self
                    .limits
                    .task_timeout
                    .map(|per| now.saturating_duration_since(self.started) + per);
            }
            "actions_per_minute" => self.executed.clear(),
            "identical_actions" => self.identical_run = 0,
            other => {
                if let Some(name) = other.strip_prefix("per_intent_per_hour.") {
                    self.executed_intents.retain(|(_, i)| i.name() != name);
                }
            }
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .executed
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
        {
            self.executed.pop_front();
        }
        while self
            .executed_intents
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= HOUR)
        {
            self.executed_intents.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BudgetLimits {
        BudgetLimits {
            steps_per_task: Some(3),
            actions_per_minute: Some(2),
            identical_actions: Some(2),
            task_timeout: Some(Duration::from_secs(100)),
            per_intent_per_hour: BTreeMap::from([(Intent::SendEmail, 1)]),
        }
    }

    fn wait(ms: u64) -> Action {
        Action::Wait { ms }
    }

    #[test]
    fn the_step_budget_asks_after_its_last_step_and_once_renews_it() {
        let t0 = Instant::now();
        let mut tracker = BudgetTracker::new(
            BudgetLimits {
                steps_per_task: Some(2),
                ..BudgetLimits::default()
            },
            t0,
        );
        assert_eq!(tracker.check(&wait(1), &[], t0), None);
        assert_eq!(tracker.check(&wait(2), &[], t0), None);
        let hit = tracker.check(&wait(3), &[], t0).unwrap();
        assert_eq!(hit.budget, "steps_per_task");
        tracker.extend("steps_per_task", t0);
        assert_eq!(tracker.check(&wait(4), &[], t0), None);
        assert_eq!(tracker.check(&wait(5), &[], t0), None);
        assert!(tracker.check(&wait(6), &[], t0).is_some());
    }

    #[test]
    fn the_rate_budget_counts_only_the_last_minute() {
        let t0 = Instant::now();
        let mut tracker = BudgetTracker::new(limits(), t0);
        tracker.record(&wait(1), &[], t0);
        tracker.record(&wait(2), &[], t0);
        assert_eq!(
            tracker.check(&wait(3), &[], t0).unwrap().budget,
            "actions_per_minute"
        );
        let later = t0 + Duration::from_secs(61);
        assert_eq!(tracker.check(&wait(3), &[], later), None);
    }

    #[test]
    fn identical_actions_in_a_row_ask_and_a_different_one_resets_the_run() {
        let t0 = Instant::now();
        let mut tracker = BudgetTracker::new(
            BudgetLimits {
                identical_actions: Some(2),
                ..BudgetLimits::default()
            },
            t0,
        );
        tracker.record(&wait(1), &[], t0);
        tracker.record(&wait(1), &[], t0);
        assert_eq!(
            tracker.check(&wait(1), &[], t0).unwrap().budget,
            "identical_actions"
        );
        assert_eq!(tracker.check(&wait(2), &[], t0), None);
        tracker.record(&wait(2), &[], t0);
        tracker.record(&wait(1), &[], t0);
        assert_eq!(tracker.check(&wait(1), &[], t0), None);
    }

    #[test]
    fn per_intent_caps_count_the_last_hour() {
        let t0 = Instant::now();
        let mut tracker = BudgetTracker::new(limits(), t0);
        tracker.record(&wait(1), &[Intent::SendEmail], t0);
        let later = t0 + Duration::from_secs(61);
        let hit = tracker
            .check(&wait(2), &[Intent::SendEmail], later)
            .unwrap();
        assert_eq!(hit.budget, "per_intent_per_hour.send_email");
        assert_eq!(tracker.check(&wait(2), &[Intent::Delete], later), None);
        tracker.extend("per_intent_per_hour.send_email", later);
        assert_eq!(tracker.check(&wait(2), &[Intent::SendEmail], later), None);
    }

    #[test]
    fn the_task_timeout_asks_and_once_extends_it() {
        let t0 = Instant::now();
        let mut tracker = BudgetTracker::new(limits(), t0);
        let late = t0 + Duration::from_secs(100);
        assert_eq!(
            tracker.check(&wait(1), &[], late).unwrap().budget,
            "task_timeout_s"
        );
        tracker.extend("task_timeout_s", late);
        assert_eq!(tracker.check(&wait(2), &[], late), None);
    }

    #[test]
    fn combining_files_keeps_the_tighter_limit_and_fills_in_built_ins() {
        let system = BudgetLimits {
            steps_per_task: Some(10),
            per_intent_per_hour: BTreeMap::from([(Intent::SendEmail, 5)]),
            ..BudgetLimits::default()
        };
        let user = BudgetLimits {
            steps_per_task: Some(50),
            actions_per_minute: Some(30),
            per_intent_per_hour: BTreeMap::from([(Intent::SendEmail, 2)]),
            ..BudgetLimits::default()
        };
        let combined = BudgetLimits::combine([&system, &user]);
        assert_eq!(combined.steps_per_task, Some(10));
        assert_eq!(combined.actions_per_minute, Some(30));
        assert_eq!(combined.per_intent_per_hour[&Intent::SendEmail], 2);
        assert_eq!(
            combined.identical_actions,
            BudgetLimits::built_in().identical_actions
        );
        assert_eq!(BudgetLimits::combine([]), BudgetLimits::built_in());
    }
}
