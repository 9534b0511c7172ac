//! The tools deskhand offers an MCP client: their names, descriptions, argument schemas and
//! annotations, and their arguments turned into deskhand's actions, with points mapped from
//! the client's last screenshot to the screen exactly as a model's points are.

use rmcp::handler::server::common::schema_for_input;
use rmcp::model::{Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::input::{Action, MouseButton};
use crate::model::ModelAction;
use crate::screen::{FrameMap, FrameTarget, ModelPoint, MonitorInfo, PointFormat};

/// The tools that send input (through the policy, one step of the session's run each).
pub const INPUT_TOOLS: &[&str] = &[
    "click",
    "double_click",
    "move",
    "drag",
    "scroll",
    "type",
    "key",
    "wait",
];

/// A point in the last screenshot's pixels.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointArgs {
    /// Pixels from the screenshot's left edge (0 to its width - 1).
    pub x: f64,
    /// Pixels from the screenshot's top edge (0 to its height - 1).
    pub y: f64,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Button {
    #[default]
    Left,
    Right,
    Middle,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClickArgs {
    /// Pixels from the screenshot's left edge.
    pub x: f64,
    /// Pixels from the screenshot's top edge.
    pub y: f64,
    /// The mouse button (default: left).
    #[serde(default)]
    pub button: Button,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DragArgs {
    /// The points to drag through, in the screenshot's pixels, as [x, y] pairs: the button
    /// goes down at the first and up at the last. At least two.
    pub path: Vec<[f64; 2]>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScrollArgs {
    /// Where to scroll, in the screenshot's pixels.
    pub x: f64,
    pub y: f64,
    /// Wheel notches across: positive scrolls right.
    #[serde(default)]
    pub dx: i32,
    /// Wheel notches down: positive scrolls down, negative up.
    #[serde(default)]
    pub dy: i32,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TypeArgs {
    /// The text to type into the window that has the keyboard focus.
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyArgs {
    /// A key or chord, as "Return", "ctrl+s", "ctrl+shift+t", "alt+F4".
    pub chord: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitArgs {
    /// Milliseconds to wait (at most 60000).
    pub ms: u64,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScreenshotArgs {
    /// The monitor to capture, as `list_monitors` numbers them (default: the session's).
    // A plain integer in the schema: `["integer", "null"]` is less portable between clients.
    #[serde(default)]
    #[schemars(with = "u32")]
    pub monitor: Option<usize>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainArgs {
    /// The input tool to judge: click, double_click, move, drag, scroll, type, key or wait.
    pub tool: String,
    /// Its arguments, as that tool takes them (points in the last screenshot's pixels).
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunTaskArgs {
    /// What to do, in plain words.
    pub task: String,
    /// Stop after this many steps (default 30).
    #[serde(default)]
    #[schemars(with = "u32")]
    pub max_steps: Option<u32>,
}

/// Every tool with its schema and annotations.
pub fn all() -> Result<Vec<Tool>, String> {
    let read_only = |title: &str| {
        ToolAnnotations::with_title(title)
            .read_only(true)
            .destructive(false)
            .idempotent(true)
            .open_world(false)
    };
    // Input reaches whatever the desktop reaches: mail, shells, the web.
    let input = |title: &str| {
        ToolAnnotations::with_title(title)
            .read_only(false)
            .destructive(true)
            .idempotent(false)
            .open_world(true)
    };
    Ok(vec![
        tool::<ScreenshotArgs>(
            "screenshot",
            "Capture the screen. Returns the image (at most 1280 pixels wide) and a text block \
             with the monitor, the scale factor and how points map back. Points in later calls \
             are in the pixels of the latest screenshot.",
            read_only("Screenshot"),
        )?,
        tool::<ClickArgs>(
            "click",
            "Click at a point of the latest screenshot. deskhand's policy decides first: it may \
             allow, refuse (an error naming the rule and the reason) or ask the person.",
            input("Click"),
        )?,
        tool::<PointArgs>(
            "double_click",
            "Double-click with the left button at a point of the latest screenshot. Decided by \
             deskhand's policy like every input.",
            input("Double-click"),
        )?,
        tool::<PointArgs>(
            "move",
            "Move the pointer to a point of the latest screenshot (hover). Decided by deskhand's \
             policy like every input.",
            input("Move the pointer"),
        )?,
        tool::<DragArgs>(
            "drag",
            "Press the left button at the first point, move through the others and release at \
             the last (points in the latest screenshot's pixels). Decided by deskhand's policy.",
            input("Drag"),
        )?,
        tool::<ScrollArgs>(
            "scroll",
            "Turn the mouse wheel at a point of the latest screenshot: dy notches down (negative: \
             up), dx notches right. Decided by deskhand's policy.",
            input("Scroll"),
        )?,
        tool::<TypeArgs>(
            "type",
            "Type text into the window that has the keyboard focus. deskhand's policy judges the \
             text (secrets, commands, where it goes) before a key is pressed.",
            input("Type text"),
        )?,
        tool::<KeyArgs>(
            "key",
            "Press a key or chord (\"Return\", \"ctrl+s\", \"alt+F4\") in the window that has the \
             keyboard focus. Decided by deskhand's policy; chords that end or lock the session \
             are never allowed.",
            input("Press keys"),
        )?,
        tool::<WaitArgs>(
            "wait",
            "Wait, without touching anything, for the screen to catch up.",
            read_only("Wait"),
        )?,
        tool::<NoArgs>(
            "active_window",
            "The window that has the keyboard focus: its program, title and process id.",
            read_only("Active window"),
        )?,
        tool::<NoArgs>(
            "list_monitors",
            "The monitors: name, position, size and scale factor, and which one the screenshots \
             show by default.",
            read_only("List monitors"),
        )?,
        tool::<ExplainArgs>(
            "explain",
            "What deskhand's policy would decide for an input tool's call now, and why, without \
             running it: the decision, the deciding rule and where it is written, and every \
             rule that matched.",
            read_only("Explain a decision"),
        )?,
        tool::<RunTaskArgs>(
            "run_task",
            "Hand a whole task to deskhand's own loop with its local model (`deskhand run`): \
             see, think, check and act until done, under the same policy. Reports progress per \
             step and returns the summary and the run's trace.",
            input("Run a task with the local model"),
        )?,
    ])
}

fn tool<T: JsonSchema + 'static>(
    name: &'static str,
    description: &'static str,
    annotations: ToolAnnotations,
) -> Result<Tool, String> {
    let schema = schema_for_input::<T>().map_err(|e| format!("the {name} tool's schema: {e}"))?;
    let title = annotations.title.clone();
    let mut tool = Tool::new(name, description, schema).with_annotations(annotations);
    if let Some(title) = title {
        tool = tool.with_title(title);
    }
    Ok(tool)
}

/// The arguments of `tool`, or an error that names the tool and what was wrong.
pub fn parse<T: DeserializeOwned>(tool: &str, arguments: Map<String, Value>) -> Result<T, String> {
    serde_json::from_value(Value::Object(arguments))
        .map_err(|e| format!("bad arguments for {tool}: {e}"))
}

/// The input tool's call as deskhand's action in screen pixels: points are in the pixels of
/// the screenshot `map` describes, mapped exactly, never clamped.
pub fn action_for(
    tool: &str,
    arguments: Map<String, Value>,
    map: &FrameMap,
) -> Result<Action, String> {
    let at = |x: f64, y: f64| ModelPoint::new(x, y, PointFormat::FramePixels);
    let proposed = match tool {
        "click" => {
            let a: ClickArgs = parse(tool, arguments)?;
            ModelAction::Click {
                at: at(a.x, a.y),
                button: match a.button {
                    Button::Left => MouseButton::Left,
                    Button::Right => MouseButton::Right,
                    Button::Middle => MouseButton::Middle,
                },
            }
        }
        "double_click" => {
            let a: PointArgs = parse(tool, arguments)?;
            ModelAction::DoubleClick { at: at(a.x, a.y) }
        }
        "move" => {
            let a: PointArgs = parse(tool, arguments)?;
            ModelAction::Move { at: at(a.x, a.y) }
        }
        "drag" => {
            let a: DragArgs = parse(tool, arguments)?;
            if a.path.len() < 2 {
                return Err(format!(
                    "drag needs at least two points in its path, got {}",
                    a.path.len()
                ));
            }
            ModelAction::Drag {
                path: a.path.iter().map(|[x, y]| at(*x, *y)).collect(),
            }
        }
        "scroll" => {
            let a: ScrollArgs = parse(tool, arguments)?;
            ModelAction::Scroll {
                at: at(a.x, a.y),
                dx: a.dx,
                dy: a.dy,
            }
        }
        "type" => {
            let a: TypeArgs = parse(tool, arguments)?;
            ModelAction::Type { text: a.text }
        }
        "key" => {
            let a: KeyArgs = parse(tool, arguments)?;
            ModelAction::Key { chord: a.chord }
        }
        "wait" => {
            let a: WaitArgs = parse(tool, arguments)?;
            ModelAction::Wait { ms: a.ms }
        }
        other => {
            return Err(format!(
                "{other} is not an input tool; the input tools are {}",
                INPUT_TOOLS.join(", ")
            ));
        }
    };
    let action = proposed.to_action(map).map_err(|e| {
        format!(
            "{e}. Points are in the pixels of the latest screenshot ({}x{}); take a new one if \
             the screen changed",
            map.frame_width, map.frame_height
        )
    })?;
    action.validate().map_err(|e| e.to_string())?;
    Ok(action)
}

/// The size screenshots are given at: the monitor's own size up to `max_width` pixels wide,
/// shrunk to that width (aspect ratio kept) beyond it.
pub fn screenshot_target(monitor: &MonitorInfo, max_width: u32) -> FrameTarget {
    if monitor.width <= max_width || max_width == 0 {
        return FrameTarget::Original;
    }
    let height = (f64::from(monitor.height) * f64::from(max_width) / f64::from(monitor.width))
        .round()
        .max(1.0) as u32;
    FrameTarget::Fixed {
        width: max_width,
        height,
    }
}

/// The map a screenshot of `monitor` at `target` has, without taking one: what points mean
/// before the client's first screenshot.
pub fn map_without_screenshot(monitor: &MonitorInfo, target: FrameTarget) -> Option<FrameMap> {
    let (width, height) = target.frame_size(monitor.width, monitor.height).ok()?;
    Some(FrameMap::new(monitor, width, height))
}

/// The text block beside a screenshot: which monitor, at what size, and how points map.
pub fn describe_screenshot(
    monitor: &MonitorInfo,
    map: &FrameMap,
    format: &str,
    bytes: usize,
) -> String {
    format!(
        "Screenshot of monitor {} '{}': {}x{} screen pixels at ({}, {}), scale factor {:.2}. \
         The image is {}x{} ({format}, {bytes} bytes): one image pixel is {:.3} screen pixels \
         across and {:.3} down. Give points to click, double_click, move, drag, scroll and \
         explain in this image's pixels: x from 0 to {}, y from 0 to {}. deskhand maps them \
         to the screen itself and refuses points outside the image.",
        monitor.index,
        monitor.name,
        map.screen_width,
        map.screen_height,
        map.origin.x,
        map.origin.y,
        map.scale_factor,
        map.frame_width,
        map.frame_height,
        f64::from(map.screen_width) / f64::from(map.frame_width.max(1)),
        f64::from(map.screen_height) / f64::from(map.frame_height.max(1)),
        map.frame_width.saturating_sub(1),
        map.frame_height.saturating_sub(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn full_hd_at_1280() -> FrameMap {
        let monitor = MonitorInfo::single("screen", 1920, 1080);
        let target = screenshot_target(&monitor, 1280);
        assert_eq!(
            target,
            FrameTarget::Fixed {
                width: 1280,
                height: 720
            }
        );
        map_without_screenshot(&monitor, target).unwrap_or_else(|| FrameMap::new(&monitor, 1, 1))
    }

    #[test]
    fn points_map_from_the_screenshot_to_the_screen_and_outside_ones_are_refused() {
        let map = full_hd_at_1280();
        let click = action_for("click", args(json!({"x": 640, "y": 360})), &map);
        assert_eq!(
            click,
            Ok(Action::Click {
                x: 960,
                y: 540,
                button: MouseButton::Left
            })
        );
        let right = action_for(
            "click",
            args(json!({"x": 0, "y": 719, "button": "right"})),
            &map,
        );
        assert_eq!(
            right,
            Ok(Action::Click {
                x: 0,
                y: 1079,
                button: MouseButton::Right
            })
        );
        let outside = action_for("click", args(json!({"x": 1280, "y": 10})), &map);
        assert!(
            outside.as_ref().is_err_and(|e| e.contains("1280x720")),
            "{outside:?}"
        );
        let negative = action_for("move", args(json!({"x": -1, "y": 10})), &map);
        assert!(negative.is_err(), "{negative:?}");
    }

    #[test]
    fn bad_arguments_name_the_tool_and_the_problem() {
        let map = full_hd_at_1280();
        for (tool, bad) in [
            ("click", json!({"x": 1})),
            ("click", json!({"x": 1, "y": 2, "button": "thumb"})),
            ("click", json!({"x": 1, "y": 2, "force": true})),
            ("type", json!({"text": 5})),
            ("drag", json!({"path": [[1, 2]]})),
            ("key", json!({"chord": "ctrl+nosuchkey"})),
            ("wait", json!({"ms": 600000})),
            ("run_task", json!({"task": "x"})),
        ] {
            let result = action_for(tool, args(bad.clone()), &map);
            assert!(result.is_err(), "{tool} {bad} gave {result:?}");
        }
        let missing = action_for("click", args(json!({"x": 1})), &map);
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.starts_with("bad arguments for click") && e.contains("`y`")),
            "{missing:?}"
        );
    }

    #[test]
    fn every_tool_has_a_schema_a_description_and_annotations() {
        let tools = all().unwrap_or_default();
        assert_eq!(tools.len(), 13);
        for tool in &tools {
            assert!(tool.description.as_ref().is_some_and(|d| d.len() > 20));
            let annotations = tool.annotations.as_ref();
            assert!(
                annotations.is_some_and(|a| a.read_only_hint.is_some()),
                "{}",
                tool.name
            );
            assert_eq!(tool.input_schema.get("type"), Some(&json!("object")));
        }
        let click = tools.iter().find(|t| t.name == "click");
        assert!(click.is_some_and(|t| {
            t.annotations
                .as_ref()
                .is_some_and(|a| a.destructive_hint == Some(true))
        }));
        let required = click.and_then(|t| t.input_schema.get("required")).cloned();
        assert_eq!(required, Some(json!(["x", "y"])));
    }

    #[test]
    fn a_small_monitor_is_shown_at_its_own_size() {
        let monitor = MonitorInfo::single("small", 1024, 768);
        assert_eq!(screenshot_target(&monitor, 1280), FrameTarget::Original);
        let tall = MonitorInfo::single("tall", 2560, 1600);
        assert_eq!(
            screenshot_target(&tall, 1280),
            FrameTarget::Fixed {
                width: 1280,
                height: 800
            }
        );
    }
}
