//! The executor: turns an `Action` into primitive input events and runs them, tracking every
//! key and button it holds so that all of them are released at the normal end, on any error,
//! on panic (Drop) and on abort.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use super::abort::{AbortReason, AbortSignal, Releaser};
use super::action::{Action, ActionError, MouseButton};
use super::chord::{ChordKey, text_keys};
use crate::screen::{MonitorInfo, ScreenPoint};

/// A device error, from whatever injects the events.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct DeviceError(pub String);

/// The primitive events the executor needs from an input backend.
pub trait InputDevice: Send {
    fn move_to(&mut self, p: ScreenPoint) -> Result<(), DeviceError>;
    fn button(&mut self, button: MouseButton, down: bool) -> Result<(), DeviceError>;
    fn key(&mut self, key: ChordKey, down: bool) -> Result<(), DeviceError>;
    /// Wheel notches: `dy > 0` down, `dx > 0` right.
    fn scroll(&mut self, dx: i32, dy: i32) -> Result<(), DeviceError>;
    /// Where the real pointer is now.
    fn pointer(&mut self) -> Result<ScreenPoint, DeviceError>;
}

/// One primitive event, or a pause between two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    MoveTo(ScreenPoint),
    Button(MouseButton, bool),
    Key(ChordKey, bool),
    Scroll { dx: i32, dy: i32 },
    Pause(Duration),
}

/// Something held down right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Key(ChordKey),
    Button(MouseButton),
}

#[derive(Debug, Error)]
pub enum InputError {
    #[error(transparent)]
    Action(#[from] ActionError),
    #[error("{action}: point {point} is not on any monitor ({monitors}); see `deskhand monitors`")]
    OffScreen {
        action: &'static str,
        point: ScreenPoint,
        monitors: String,
    },
    #[error(
        "{action}: point {point} is in the failsafe corner zone (within {margin} px of a screen corner), where parking the pointer aborts deskhand; aim elsewhere or turn the failsafe off (--no-failsafe)"
    )]
    CornerTarget {
        action: &'static str,
        point: ScreenPoint,
        margin: i32,
    },
    #[error(
        "{action}: point {point} is on deskhand's own ask dialog, which only the person may answer"
    )]
    OwnWindow {
        action: &'static str,
        point: ScreenPoint,
    },
    #[error("aborted: {0}; every held key and button was released")]
    Aborted(AbortReason),
    #[error(
        "{action} would take {planned_ms} ms of pauses alone; one action may take at most {} ms, so split it (fewer drag points, a shorter hold)",
        MAX_ACTION_TIME.as_millis()
    )]
    TooLong {
        action: &'static str,
        planned_ms: u128,
    },
    #[error(
        "{action} ran past {what} after {elapsed_ms} ms and was stopped; every held key and button was released"
    )]
    OutOfTime {
        action: &'static str,
        what: &'static str,
        elapsed_ms: u128,
    },
    #[error("input device failed during {action}: {error}; every held key and button was released")]
    Device {
        action: &'static str,
        error: DeviceError,
    },
}

/// What an action did, in screen pixels.
#[derive(Debug, Clone, Serialize)]
pub struct Performed {
    pub action: Action,
    /// The monitor under the action's first point, if it has one.
    pub monitor: Option<usize>,
    pub events: usize,
    pub elapsed_ms: f64,
}

/// The act stage's boundary.
pub trait Hands {
    fn perform(&mut self, action: &Action) -> Result<Performed, InputError>;
    /// Release everything held; returns how many inputs were released.
    fn release_all(&mut self) -> usize;
    /// The run's time limit: an action still running then is stopped and its input released.
    fn set_deadline(&mut self, deadline: Option<Instant>);
}

/// The longest one action may take (a drag through many points, a held key): a model that
/// asks for more is wrong, and held input must not outlast a moment.
pub const MAX_ACTION_TIME: Duration = Duration::from_secs(15);
/// How long the release path waits for the executor's lock before giving up on it (a device
/// call stuck in the X server must not keep the abort from ending the process).
const RELEASE_LOCK_WAIT: Duration = Duration::from_millis(500);

/// Pixels of the failsafe zone around each outer corner of the desktop.
pub const CORNER_MARGIN: i32 = 2;
/// How often a pause looks at the abort signal and the pointer.
const POLL: Duration = Duration::from_millis(10);
/// Between the clicks of a double or triple click: well inside every toolkit's threshold.
const MULTI_CLICK_GAP: Duration = Duration::from_millis(40);
/// After moving and before pressing, so hover-dependent widgets see the pointer arrive.
const SETTLE_AFTER_MOVE: Duration = Duration::from_millis(10);
/// A drag moves in steps of at most this many pixels, pausing between them, so applications
/// see a motion rather than a jump.
const DRAG_STEP_PX: f64 = 16.0;
const DRAG_STEP_PAUSE: Duration = Duration::from_millis(5);

/// The primitive events for an action. Every press in a plan has its release later in it.
pub fn plan(action: &Action) -> Result<Vec<Step>, ActionError> {
    let mut steps = Vec::new();
    let click = |steps: &mut Vec<Step>, x: i32, y: i32, button: MouseButton, times: usize| {
        steps.push(Step::MoveTo(ScreenPoint::new(x, y)));
        steps.push(Step::Pause(SETTLE_AFTER_MOVE));
        for i in 0..times {
            if i > 0 {
                steps.push(Step::Pause(MULTI_CLICK_GAP));
            }
            steps.push(Step::Button(button, true));
            steps.push(Step::Button(button, false));
        }
    };
    match action {
        Action::Click { x, y, button } => click(&mut steps, *x, *y, *button, 1),
        Action::DoubleClick { x, y, button } => click(&mut steps, *x, *y, *button, 2),
        Action::TripleClick { x, y, button } => click(&mut steps, *x, *y, *button, 3),
        Action::Move { x, y } => steps.push(Step::MoveTo(ScreenPoint::new(*x, *y))),
        Action::Drag { path } => {
            let points: Vec<ScreenPoint> =
                path.iter().map(|[x, y]| ScreenPoint::new(*x, *y)).collect();
            if let Some(&start) = points.first() {
                steps.push(Step::MoveTo(start));
                steps.push(Step::Pause(SETTLE_AFTER_MOVE));
                steps.push(Step::Button(MouseButton::Left, true));
                for pair in points.windows(2) {
                    interpolate(&mut steps, pair[0], pair[1]);
                }
                steps.push(Step::Pause(SETTLE_AFTER_MOVE));
                steps.push(Step::Button(MouseButton::Left, false));
            }
        }
        Action::Scroll { x, y, dx, dy } => {
            steps.push(Step::MoveTo(ScreenPoint::new(*x, *y)));
            steps.push(Step::Pause(SETTLE_AFTER_MOVE));
            // One notch at a time, so an abort can land between them.
            for _ in 0..dy.unsigned_abs() {
                steps.push(Step::Scroll {
                    dx: 0,
                    dy: dy.signum(),
                });
            }
            for _ in 0..dx.unsigned_abs() {
                steps.push(Step::Scroll {
                    dx: dx.signum(),
                    dy: 0,
                });
            }
        }
        Action::Type { text } => {
            for key in text_keys(text) {
                steps.push(Step::Key(key, true));
                steps.push(Step::Key(key, false));
            }
        }
        Action::Key { .. } | Action::HoldKey { .. } => {
            if let Some(chord) = action.chord()? {
                let keys = chord.press_order();
                steps.extend(keys.iter().map(|&k| Step::Key(k, true)));
                if let Action::HoldKey { ms, .. } = action {
                    steps.push(Step::Pause(Duration::from_millis(*ms)));
                }
                steps.extend(keys.iter().rev().map(|&k| Step::Key(k, false)));
            }
        }
        Action::Wait { ms } => steps.push(Step::Pause(Duration::from_millis(*ms))),
        Action::Done { .. } | Action::Fail { .. } | Action::CallUser { .. } => {}
    }
    Ok(steps)
}

fn interpolate(steps: &mut Vec<Step>, from: ScreenPoint, to: ScreenPoint) {
    let (dx, dy) = (f64::from(to.x - from.x), f64::from(to.y - from.y));
    let n = ((dx.hypot(dy) / DRAG_STEP_PX).ceil() as i32).max(1);
    for i in 1..=n {
        let t = f64::from(i) / f64::from(n);
        steps.push(Step::MoveTo(ScreenPoint::new(
            from.x + (dx * t).round() as i32,
            from.y + (dy * t).round() as i32,
        )));
        steps.push(Step::Pause(DRAG_STEP_PAUSE));
    }
}

struct Shared<D> {
    device: D,
    held: Vec<Held>,
}

impl<D: InputDevice> Shared<D> {
    /// Release in reverse order of pressing; keep going past failures so one bad release
    /// cannot leave the rest down.
    fn release_all(&mut self) -> usize {
        let mut released = 0;
        while let Some(held) = self.held.pop() {
            match self.send(held, false) {
                Ok(()) => released += 1,
                Err(e) => tracing::error!("could not release {held:?}: {e}"),
            }
        }
        released
    }

    fn run(&mut self, step: &Step) -> Result<(), DeviceError> {
        match *step {
            Step::MoveTo(p) => self.device.move_to(p),
            Step::Button(b, down) => self.press_tracked(Held::Button(b), down),
            Step::Key(k, down) => self.press_tracked(Held::Key(k), down),
            Step::Scroll { dx, dy } => self.device.scroll(dx, dy),
            Step::Pause(_) => Ok(()),
        }
    }

    /// Track before pressing: if a press half-happens and errors, its release is still
    /// attempted. Forget a release only once it succeeded.
    fn press_tracked(&mut self, input: Held, down: bool) -> Result<(), DeviceError> {
        if down {
            self.held.push(input);
        }
        let result = self.send(input, down);
        if !down && result.is_ok() {
            self.held.retain(|h| *h != input);
        }
        result
    }

    fn send(&mut self, input: Held, down: bool) -> Result<(), DeviceError> {
        match input {
            Held::Key(k) => self.device.key(k, down),
            Held::Button(b) => self.device.button(b, down),
        }
    }
}

fn lock<D>(shared: &Mutex<Shared<D>>) -> MutexGuard<'_, Shared<D>> {
    // A panic while holding the lock must not stop the release path.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The executor over a real or test device.
pub struct Executor<D: InputDevice + 'static> {
    shared: Arc<Mutex<Shared<D>>>,
    abort: AbortSignal,
    monitors: Vec<MonitorInfo>,
    failsafe: bool,
    deadline: Option<Instant>,
}

impl<D: InputDevice + 'static> Executor<D> {
    /// `monitors` are where actions may point; with `failsafe`, a pointer parked in an outer
    /// corner of the desktop aborts before the next event.
    pub fn new(device: D, monitors: Vec<MonitorInfo>, abort: AbortSignal, failsafe: bool) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                device,
                held: Vec::new(),
            })),
            abort,
            monitors,
            failsafe,
            deadline: None,
        }
    }

    /// A handle that releases everything held, from any thread (the signal handler's). It
    /// waits at most `RELEASE_LOCK_WAIT` for the executor's lock, which a device call stuck
    /// in the X server may hold; then it gives up and reports nothing released rather than
    /// hang the abort.
    pub fn releaser(&self) -> Releaser {
        let shared = Arc::clone(&self.shared);
        Arc::new(move || {
            let started = Instant::now();
            loop {
                match shared.try_lock() {
                    Ok(mut guard) => return guard.release_all(),
                    Err(std::sync::TryLockError::Poisoned(p)) => {
                        return p.into_inner().release_all();
                    }
                    Err(std::sync::TryLockError::WouldBlock) => {
                        if started.elapsed() >= RELEASE_LOCK_WAIT {
                            tracing::error!(
                                "the input device is busy; could not release held input within {RELEASE_LOCK_WAIT:?}"
                            );
                            return 0;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        })
    }

    pub fn held(&self) -> Vec<Held> {
        lock(&self.shared).held.clone()
    }

    fn check_points(&self, action: &Action) -> Result<Option<usize>, InputError> {
        let mut first_monitor = None;
        for (i, p) in action.points().into_iter().enumerate() {
            let Some(m) = self.monitors.iter().find(|m| m.contains(p)) else {
                return Err(InputError::OffScreen {
                    action: action.kind(),
                    point: p,
                    monitors: describe_monitors(&self.monitors),
                });
            };
            if i == 0 {
                first_monitor = Some(m.index);
            }
            if crate::screen::in_own_window(p).is_some() {
                return Err(InputError::OwnWindow {
                    action: action.kind(),
                    point: p,
                });
            }
            if self.failsafe && in_corner_zone(&self.monitors, p) {
                return Err(InputError::CornerTarget {
                    action: action.kind(),
                    point: p,
                    margin: CORNER_MARGIN,
                });
            }
        }
        Ok(first_monitor)
    }

    /// The abort reason, if the run must stop now: a signal, or the pointer in a corner.
    fn stop_reason(&self, shared: &mut Shared<D>) -> Option<AbortReason> {
        if let Some(reason) = self.abort.reason() {
            return Some(reason);
        }
        if self.failsafe {
            match shared.device.pointer() {
                Ok(p) if in_corner_zone(&self.monitors, p) => {
                    self.abort.trigger(AbortReason::CornerFailsafe);
                    return Some(AbortReason::CornerFailsafe);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("failsafe could not read the pointer: {e}"),
            }
        }
        None
    }

    fn run_steps(&self, action: &Action, steps: &[Step]) -> Result<usize, InputError> {
        let started = Instant::now();
        let own_limit = started + MAX_ACTION_TIME;
        let out_of_time = || {
            let now = Instant::now();
            let what = if now >= own_limit {
                "the time one action may take"
            } else if self.deadline.is_some_and(|d| now >= d) {
                "the run's time limit"
            } else {
                return None;
            };
            Some(InputError::OutOfTime {
                action: action.kind(),
                what,
                elapsed_ms: started.elapsed().as_millis(),
            })
        };
        let mut events = 0;
        for step in steps {
            if let Some(error) = out_of_time() {
                return Err(error);
            }
            if let Step::Pause(duration) = step {
                // Pauses do not hold the device, so the signal thread can always get in.
                let until = Instant::now() + *duration;
                loop {
                    if let Some(reason) = self.stop_reason(&mut lock(&self.shared)) {
                        return Err(InputError::Aborted(reason));
                    }
                    if let Some(error) = out_of_time() {
                        return Err(error);
                    }
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    std::thread::sleep(POLL.min(until - now));
                }
                continue;
            }
            let mut shared = lock(&self.shared);
            if let Some(reason) = self.stop_reason(&mut shared) {
                return Err(InputError::Aborted(reason));
            }
            shared.run(step).map_err(|error| InputError::Device {
                action: action.kind(),
                error,
            })?;
            events += 1;
        }
        Ok(events)
    }
}

impl<D: InputDevice + 'static> Hands for Executor<D> {
    fn perform(&mut self, action: &Action) -> Result<Performed, InputError> {
        let started = Instant::now();
        action.validate()?;
        let monitor = self.check_points(action)?;
        let steps = plan(action)?;
        let planned: Duration = steps
            .iter()
            .map(|s| match s {
                Step::Pause(d) => *d,
                _ => Duration::ZERO,
            })
            .sum();
        if planned > MAX_ACTION_TIME {
            return Err(InputError::TooLong {
                action: action.kind(),
                planned_ms: planned.as_millis(),
            });
        }
        let result = self.run_steps(action, &steps);
        // Whatever happened, nothing stays down. After a complete plan this releases nothing.
        let released = lock(&self.shared).release_all();
        if released > 0 {
            tracing::info!("released {released} held input(s) after {}", action.kind());
        }
        let events = result?;
        Ok(Performed {
            action: action.clone(),
            monitor,
            events,
            elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn release_all(&mut self) -> usize {
        lock(&self.shared).release_all()
    }

    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }
}

impl<D: InputDevice + 'static> Drop for Executor<D> {
    fn drop(&mut self) {
        // Runs on panic unwinding too.
        let released = lock(&self.shared).release_all();
        if released > 0 {
            tracing::warn!("released {released} held input(s) while shutting the executor down");
        }
    }
}

/// Whether `p` is within CORNER_MARGIN of an outer corner of the desktop's bounding box.
pub fn in_corner_zone(monitors: &[MonitorInfo], p: ScreenPoint) -> bool {
    let Some(left) = monitors.iter().map(|m| m.x).min() else {
        return false;
    };
    let top = monitors.iter().map(|m| m.y).min().unwrap_or(0);
    let right = monitors
        .iter()
        .map(|m| m.x + m.width as i32 - 1)
        .max()
        .unwrap_or(0);
    let bottom = monitors
        .iter()
        .map(|m| m.y + m.height as i32 - 1)
        .max()
        .unwrap_or(0);
    let near = |v: i32, edge: i32| (v - edge).abs() <= CORNER_MARGIN;
    (near(p.x, left) || near(p.x, right)) && (near(p.y, top) || near(p.y, bottom))
}

pub fn describe_monitors(monitors: &[MonitorInfo]) -> String {
    monitors
        .iter()
        .map(|m| {
            format!(
                "{} '{}' at {},{} {}x{}",
                m.index, m.name, m.x, m.y, m.width, m.height
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Clone, PartialEq)]
    enum Event {
        Move(ScreenPoint),
        Button(MouseButton, bool),
        Key(ChordKey, bool),
        Scroll(i32, i32),
    }

    /// Records events; can be told to fail or panic on the Nth key press.
    #[derive(Clone, Default)]
    struct Fake {
        log: Arc<Mutex<Vec<Event>>>,
        pointer: Arc<Mutex<ScreenPoint>>,
        fail_on_key_press: Option<usize>,
        panic_on_key_press: Option<usize>,
        presses: Arc<AtomicUsize>,
    }

    impl Fake {
        fn events(&self) -> Vec<Event> {
            self.log.lock().unwrap().clone()
        }
        /// Keys and buttons pressed and not released, replaying the log.
        fn still_down(&self) -> Vec<Event> {
            let mut down: Vec<Event> = Vec::new();
            for e in self.events() {
                match e {
                    Event::Key(k, true) => down.push(Event::Key(k, true)),
                    Event::Key(k, false) => down.retain(|d| *d != Event::Key(k, true)),
                    Event::Button(b, true) => down.push(Event::Button(b, true)),
                    Event::Button(b, false) => down.retain(|d| *d != Event::Button(b, true)),
                    _ => {}
                }
            }
            down
        }
    }

    impl InputDevice for Fake {
        fn move_to(&mut self, p: ScreenPoint) -> Result<(), DeviceError> {
            *self.pointer.lock().unwrap() = p;
            self.log.lock().unwrap().push(Event::Move(p));
            Ok(())
        }
        fn button(&mut self, b: MouseButton, down: bool) -> Result<(), DeviceError> {
            self.log.lock().unwrap().push(Event::Button(b, down));
            Ok(())
        }
        fn key(&mut self, k: ChordKey, down: bool) -> Result<(), DeviceError> {
            if down {
                let n = self.presses.fetch_add(1, Ordering::SeqCst) + 1;
                if self.panic_on_key_press == Some(n) {
                    panic!("device exploded on key press {n}");
                }
                if self.fail_on_key_press == Some(n) {
                    return Err(DeviceError(format!("key press {n} failed")));
                }
            }
            self.log.lock().unwrap().push(Event::Key(k, down));
            Ok(())
        }
        fn scroll(&mut self, dx: i32, dy: i32) -> Result<(), DeviceError> {
            self.log.lock().unwrap().push(Event::Scroll(dx, dy));
            Ok(())
        }
        fn pointer(&mut self) -> Result<ScreenPoint, DeviceError> {
            Ok(*self.pointer.lock().unwrap())
        }
    }

    fn monitors() -> Vec<MonitorInfo> {
        vec![
            MonitorInfo {
                index: 0,
                name: "L".into(),
                x: 0,
                y: 0,
                width: 1280,
                height: 1024,
                scale_factor: 1.0,
                primary: true,
            },
            MonitorInfo {
                index: 1,
                name: "R".into(),
                x: 1280,
                y: 0,
                width: 1280,
                height: 1024,
                scale_factor: 1.0,
                primary: false,
            },
        ]
    }

    fn executor(fake: &Fake) -> Executor<Fake> {
        *fake.pointer.lock().unwrap() = ScreenPoint::new(640, 512);
        Executor::new(fake.clone(), monitors(), AbortSignal::new(), true)
    }

    #[test]
    fn an_action_longer_than_the_cap_is_refused_before_anything_is_pressed() {
        let fake = Fake::default();
        let mut ex = executor(&fake);
        // The review's drag: many points far apart held the button for 20 s.
        let path: Vec<[i32; 2]> = (0..41)
            .map(|i| if i % 2 == 0 { [100, 100] } else { [2400, 900] })
            .collect();
        let err = ex.perform(&Action::Drag { path }).unwrap_err();
        assert!(matches!(err, InputError::TooLong { .. }), "{err}");
        assert!(
            fake.events().is_empty(),
            "nothing may be pressed: {:?}",
            fake.events()
        );
    }

    #[test]
    fn the_run_deadline_stops_an_action_under_way_and_releases_it() {
        let fake = Fake::default();
        let mut ex = executor(&fake);
        ex.set_deadline(Some(Instant::now() + Duration::from_millis(100)));
        let started = Instant::now();
        let err = ex
            .perform(&Action::HoldKey {
                chord: "shift".into(),
                ms: 3000,
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                InputError::OutOfTime {
                    what: "the run's time limit",
                    ..
                }
            ),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(fake.still_down().is_empty());
        assert!(ex.held().is_empty());
    }

    #[test]
    fn releasing_does_not_wait_forever_on_a_stuck_device() {
        let fake = Fake::default();
        let ex = executor(&fake);
        let release = ex.releaser();
        let shared = Arc::clone(&ex.shared);
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        // A device call that never returns holds the executor's lock.
        std::thread::spawn(move || {
            let _guard = shared.lock().unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(5));
        });
        locked_rx.recv().unwrap();
        let started = Instant::now();
        assert_eq!(release(), 0);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_chord_presses_in_order_and_releases_in_reverse() {
        let fake = Fake::default();
        let mut ex = executor(&fake);
        ex.perform(&Action::Key {
            chord: "ctrl+shift+t".into(),
        })
        .unwrap();
        use crate::input::chord::Modifier::*;
        assert_eq!(
            fake.events(),
            vec![
                Event::Key(ChordKey::Modifier(Ctrl), true),
                Event::Key(ChordKey::Modifier(Shift), true),
                Event::Key(ChordKey::Char('t'), true),
                Event::Key(ChordKey::Char('t'), false),
                Event::Key(ChordKey::Modifier(Shift), false),
                Event::Key(ChordKey::Modifier(Ctrl), false),
            ]
        );
        assert!(ex.held().is_empty());
    }

    #[test]
    fn a_device_error_mid_chord_releases_what_was_pressed() {
        let fake = Fake {
            fail_on_key_press: Some(3),
            ..Fake::default()
        };
        let mut ex = executor(&fake);
        let err = ex
            .perform(&Action::Key {
                chord: "ctrl+alt+delete".into(),
            })
            .unwrap_err();
        assert!(matches!(err, InputError::Device { .. }), "{err}");
        assert_eq!(fake.still_down(), vec![]);
        assert!(ex.held().is_empty());
        // The two modifiers went down and came back up, and the key whose press failed got a
        // release too, in case it half-happened.
        assert_eq!(fake.events().len(), 5);
    }

    #[test]
    fn a_panic_mid_chord_still_releases_everything() {
        let fake = Fake {
            panic_on_key_press: Some(2),
            ..Fake::default()
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut ex = executor(&fake);
            let _ = ex.perform(&Action::Key {
                chord: "ctrl+shift+t".into(),
            });
        }));
        assert!(outcome.is_err(), "the device panicked");
        assert_eq!(fake.still_down(), vec![]);
        assert!(fake.events().contains(&Event::Key(
            ChordKey::Modifier(crate::input::chord::Modifier::Ctrl),
            false
        )));
    }

    #[test]
    fn an_abort_during_a_hold_releases_and_reports_the_reason() {
        let fake = Fake::default();
        let mut ex = executor(&fake);
        let abort = ex.abort.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            abort.trigger(AbortReason::Interrupt);
        });
        let started = Instant::now();
        let err = ex
            .perform(&Action::HoldKey {
                chord: "ctrl+a".into(),
                ms: 5000,
            })
            .unwrap_err();
        t.join().unwrap();
        assert!(
            matches!(err, InputError::Aborted(AbortReason::Interrupt)),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert_eq!(fake.still_down(), vec![]);
    }

    #[test]
    fn the_releaser_works_from_another_thread_during_a_hold() {
        let fake = Fake::default();
        let mut ex = executor(&fake);
        let release = ex.releaser();
        let abort = ex.abort.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let n = release();
            abort.trigger(AbortReason::Terminate);
            n
        });
        let _ = ex.perform(&Action::HoldKey {
            chord: "shift+x".into(),
            ms: 5000,
        });
        assert_eq!(
            t.join().unwrap(),
            2,
            "the signal thread released shift and x"
        );
        assert_eq!(fake.still_down(), vec![]);
    }

    #[test]
    fn pointer_parked_in_a_corner_aborts_before_the_next_event() {
        let fake = Fake::default();
        let mut ex = executor(&fake);
        *fake.pointer.lock().unwrap() = ScreenPoint::new(2559, 1023);
        let err = ex
            .perform(&Action::Click {
                x: 100,
                y: 100,
                button: MouseButton::Left,
            })
            .unwrap_err();
        assert!(
            matches!(err, InputError::Aborted(AbortReason::CornerFailsafe)),
            "{err}"
        );
        assert!(fake.events().is_empty(), "nothing was sent");
        // The abort is sticky: later actions refuse too.
        *fake.pointer.lock().unwrap() = ScreenPoint::new(600, 600);
        assert!(ex.perform(&Action::Move { x: 10, y: 10 }).is_err());
    }

    #[test]
    fn points_off_every_monitor_or_in_a_corner_are_refused_up_front() {
        let fake = Fake::default();
        let mut ex = executor(&fake);
        let err = ex
            .perform(&Action::Click {
                x: 2560,
                y: 10,
                button: MouseButton::Left,
            })
            .unwrap_err();
        assert!(err.to_string().contains("not on any monitor"), "{err}");
        let err = ex
            .perform(&Action::Drag {
                path: vec![[100, 100], [0, 1023]],
            })
            .unwrap_err();
        assert!(matches!(err, InputError::CornerTarget { .. }), "{err}");
        assert!(fake.events().is_empty());
        // Inner corners where two monitors meet are ordinary points.
        let done = ex.perform(&Action::Move { x: 1280, y: 0 }).unwrap();
        assert_eq!(done.monitor, Some(1));
    }

    #[test]
    fn points_on_deskhands_own_dialog_are_refused_while_it_is_open() {
        let fake = Fake::default();
        let mut ex = executor(&fake);
        let click = Action::Click {
            x: 2050,
            y: 920,
            button: MouseButton::Left,
        };
        {
            // Away from the points other tests act on: the registry is process-wide.
            let _dialog = crate::screen::OwnWindow::register(crate::screen::OwnArea {
                x: 2000,
                y: 900,
                width: 100,
                height: 50,
            });
            let err = ex.perform(&click).unwrap_err();
            assert!(matches!(err, InputError::OwnWindow { .. }), "{err}");
            assert!(err.to_string().contains("ask dialog"), "{err}");
            assert!(fake.events().is_empty());
        }
        assert!(ex.perform(&click).is_ok());
    }

    #[test]
    fn typing_sends_newline_and_tab_as_keys() {
        let fake = Fake::default();
        let mut ex = executor(&fake);
        ex.perform(&Action::Type {
            text: "a\n\t日".into(),
        })
        .unwrap();
        let downs: Vec<ChordKey> = fake
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Key(k, true) => Some(k),
                _ => None,
            })
            .collect();
        use crate::input::chord::NamedKey;
        assert_eq!(
            downs,
            vec![
                ChordKey::Char('a'),
                ChordKey::Named(NamedKey::Return),
                ChordKey::Named(NamedKey::Tab),
                ChordKey::Char('日')
            ]
        );
    }

    proptest! {
        // Every plan releases everything it presses, in any action.
        #[test]
        fn plans_are_balanced(
            chord in prop::sample::select(vec!["ctrl+shift+t", "super", "alt+F4", "ctrl++", "shift+Return"]),
            text in "\\PC{1,20}",
            path in prop::collection::vec(prop::array::uniform2(0i32..1000), 2..5),
            clicks in 0usize..3,
        ) {
            let actions = [
                Action::Key { chord: chord.to_owned() },
                Action::HoldKey { chord: chord.to_owned(), ms: 1 },
                Action::Type { text },
                Action::Drag { path },
                [Action::Click { x: 5, y: 5, button: MouseButton::Right },
                 Action::DoubleClick { x: 5, y: 5, button: MouseButton::Left },
                 Action::TripleClick { x: 5, y: 5, button: MouseButton::Middle }][clicks].clone(),
            ];
            for action in actions {
                let mut down: Vec<Held> = Vec::new();
                for step in plan(&action).unwrap() {
                    match step {
                        Step::Key(k, true) => down.push(Held::Key(k)),
                        Step::Key(k, false) => { prop_assert!(down.contains(&Held::Key(k))); down.retain(|h| *h != Held::Key(k)); }
                        Step::Button(b, true) => down.push(Held::Button(b)),
                        Step::Button(b, false) => { prop_assert!(down.contains(&Held::Button(b))); down.retain(|h| *h != Held::Button(b)); }
                        _ => {}
                    }
                }
                prop_assert!(down.is_empty(), "{action:?} leaves {down:?} down");
            }
        }
    }
}
