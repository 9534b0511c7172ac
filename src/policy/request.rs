//! `Request`: everything the policy may look at for one proposed action.

use serde::{Deserialize, Serialize};

use super::Intent;
use crate::input::Action;
use crate::screen::MonitorInfo;

/// A point as a fraction of its monitor: `(0, 0)` is the top-left corner, `(1, 1)` the
/// bottom-right one. Region rules are written in these units so they survive resolution
/// changes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizedPoint {
    pub monitor: usize,
    pub x: f64,
    pub y: f64,
}

/// A window as the policy sees it: its program and title, and its X id where known (what this
/// run typed into it is kept by id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
}

/// One proposed action and its context. It is recorded in every trace step, so a later policy
/// can be replayed against it (`deskhand policy test`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub action: Action,
    /// The active window's program name (the executable's file name), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The active window's title. Web pages set it, so rules use it as secondary evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The active window's X id, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_id: Option<u32>,
    /// The windows under the action's points, where they are not the active window: a click
    /// reaches the window under the pointer, whichever has the focus. The policy decides for
    /// each of them too, and the strictest decision wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub under_pointer: Vec<WindowRef>,
    /// For a paste: the text it would insert (the selections it pastes, read just before
    /// deciding), judged as typed text. `None` on a paste means it could not be read. Traces
    /// keep it redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pasted: Option<String>,
    /// Every point the action touches, on the monitor that holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<NormalizedPoint>,
    /// What the model said the action is for.
    #[serde(default = "other_intent")]
    pub declared_intent: Intent,
    /// Intents the runtime inferred itself; the policy adds its own inferences to these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inferred_intents: Vec<Intent>,
    /// Names of detectors that fired on this action when it was proposed. A trace stores the
    /// text redacted, so replays rely on these names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detector_hits: Vec<String>,
}

fn other_intent() -> Intent {
    Intent::Other
}

impl Request {
    /// A request with no window context; fill the rest with the builder methods.
    pub fn new(action: Action) -> Request {
        Request {
            action,
            app: None,
            title: None,
            window_id: None,
            under_pointer: Vec::new(),
            pasted: None,
            points: Vec::new(),
            declared_intent: Intent::Other,
            inferred_intents: Vec::new(),
            detector_hits: Vec::new(),
        }
    }

    pub fn with_window(mut self, app: Option<String>, title: Option<String>) -> Request {
        self.app = app.filter(|a| !a.is_empty());
        self.title = title.filter(|t| !t.is_empty());
        self
    }

    /// The active window, as `with_window_ref` set it.
    pub fn with_window_ref(self, window: WindowRef) -> Request {
        let mut request = self.with_window(window.app, window.title);
        request.window_id = window.id;
        request
    }

    /// The active window.
    pub fn window(&self) -> WindowRef {
        WindowRef {
            app: self.app.clone(),
            title: self.title.clone(),
            id: self.window_id,
        }
    }

    /// Records the windows under the action's points; the active window itself is left out.
    pub fn with_windows_under_pointer(mut self, windows: Vec<WindowRef>) -> Request {
        let active = self.window();
        self.under_pointer = Vec::new();
        for window in windows {
            let window = WindowRef {
                app: window.app.filter(|a| !a.is_empty()),
                title: window.title.filter(|t| !t.is_empty()),
                id: window.id,
            };
            if window != active && !self.under_pointer.contains(&window) {
                self.under_pointer.push(window);
            }
        }
        self
    }

    /// The same action as if `window` were the active window.
    pub fn in_window(&self, window: &WindowRef) -> Request {
        let mut request = self.clone();
        request.app = window.app.clone();
        request.title = window.title.clone();
        request.window_id = window.id;
        request.under_pointer.clear();
        request
    }

    /// What a paste would insert, where the action is one.
    pub fn with_pasted(mut self, pasted: Option<String>) -> Request {
        self.pasted = pasted;
        self
    }

    /// The text this request enters into the window: what it types, or what it pastes.
    pub fn entered_text(&self) -> Option<String> {
        if self.action.pastes().is_empty() {
            self.action.typed_text()
        } else {
            self.pasted.clone()
        }
    }

    pub fn with_intent(mut self, intent: Intent) -> Request {
        self.declared_intent = intent;
        self
    }

    /// Normalizes the action's screen points against the monitors that contain them. A point
    /// on no monitor gets no entry, so no region rule can match it.
    pub fn with_monitors(mut self, monitors: &[MonitorInfo]) -> Request {
        self.points = self
            .action
            .points()
            .into_iter()
            .filter_map(|p| {
                let m = monitors.iter().find(|m| m.contains(p))?;
                Some(NormalizedPoint {
                    monitor: m.index,
                    x: (f64::from(p.x) - f64::from(m.x)) / f64::from(m.width.max(1)),
                    y: (f64::from(p.y) - f64::from(m.y)) / f64::from(m.height.max(1)),
                })
            })
            .collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(index: usize, x: i32, y: i32, width: u32, height: u32) -> MonitorInfo {
        MonitorInfo {
            index,
            name: format!("M{index}"),
            x,
            y,
            width,
            height,
            scale_factor: 1.0,
            primary: index == 0,
        }
    }

    #[test]
    fn points_are_normalized_to_the_monitor_that_holds_them() {
        let monitors = [monitor(0, 0, 0, 1000, 500), monitor(1, 1000, 0, 2000, 1000)];
        let request = Request::new(Action::Drag {
            path: vec![[500, 250], [2000, 500], [5000, 5000]],
        })
        .with_monitors(&monitors);
        assert_eq!(
            request.points,
            vec![
                NormalizedPoint {
                    monitor: 0,
                    x: 0.5,
                    y: 0.5
                },
                NormalizedPoint {
                    monitor: 1,
                    x: 0.5,
                    y: 0.5
                },
            ]
        );
    }

    #[test]
    fn round_trips_through_json_and_defaults_the_intent() {
        let request: Request =
            serde_json::from_str(r#"{"action":{"action":"type","text":"hi"},"app":"xterm"}"#)
                .unwrap();
        assert_eq!(request.declared_intent, Intent::Other);
        assert_eq!(request.app.as_deref(), Some("xterm"));
        let back: Request =
            serde_json::from_str(&serde_json::to_string(&request).unwrap()).unwrap();
        assert_eq!(back, request);
    }
}
