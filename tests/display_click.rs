//! Clicks found from real screenshots land on their targets, at two resolutions and on a
//! second monitor with an offset origin.

mod common;

use std::time::Duration;

use common::{TestWindow, display, find_colour, split_monitors};
use deskhand::input::{AbortSignal, Action, EnigoDevice, Executor, Hands, MouseButton};
use deskhand::screen::{FrameTarget, ModelPoint, PointFormat, Screen, ScreenPoint, X11Screen};

const TARGETS: [(&str, [u8; 3]); 3] = [
    ("red", [255, 0, 0]),
    ("blue", [0, 0, 255]),
    ("green", [0, 192, 0]),
];

/// Capture `monitor`, find each coloured target in the frame, map it to the screen through
/// the frame, click it, and check where the test window saw the click.
fn click_targets_found_in_frame(
    display: &deskhand::screen::VirtualDisplay,
    window: &TestWindow,
    monitor: Option<usize>,
    target: FrameTarget,
) {
    let mut screen = X11Screen::connect(Some(display.name())).unwrap();
    let monitor = screen.monitor(monitor).unwrap();
    let frame = screen.capture(&monitor, target).unwrap();
    let monitors = screen.monitors().unwrap();
    let device = EnigoDevice::connect(Some(display.name())).unwrap();
    let mut hands = Executor::new(device, monitors, AbortSignal::new(), true);
    for (name, rgb) in TARGETS {
        let (fx, fy) = find_colour(&frame, rgb, 60)
            .unwrap_or_else(|| panic!("{name} target not found in the {:?} frame", target));
        let aim = frame
            .map
            .to_screen(ModelPoint::new(fx, fy, PointFormat::FramePixels))
            .unwrap();
        hands
            .perform(&Action::Click {
                x: aim.x,
                y: aim.y,
                button: MouseButton::Left,
            })
            .unwrap();
        let press = window.wait_for(&format!("a click on {name}"), Duration::from_secs(5), |e| {
            e["event"] == "button_press" && e["target"] == name
        });
        let truth = window.target(name);
        let landed = ScreenPoint::new(
            press["root_x"].as_i64().unwrap() as i32,
            press["root_y"].as_i64().unwrap() as i32,
        );
        assert!(
            (landed.x - truth.x).abs() <= 1 && (landed.y - truth.y).abs() <= 1,
            "{name}: aimed at {aim} from frame point ({fx:.2}, {fy:.2}) of {}x{}, landed at {landed}, target centre {truth}",
            frame.map.frame_width,
            frame.map.frame_height
        );
    }
}

#[test]
fn clicks_land_within_one_pixel_at_native_resolution() {
    let display = display(1280, 720);
    let window = TestWindow::open(&display, "640x480+300+100", "click test");
    click_targets_found_in_frame(&display, &window, None, FrameTarget::Original);
}

#[test]
fn clicks_land_within_one_pixel_through_a_downscaled_frame() {
    // 2560x1600 shrunk to about 1.2 MP in 28-pixel blocks: the model sees 1.8x fewer pixels
    // per side, and the mapping must still put the click on the target's centre.
    let display = display(2560, 1600);
    let window = TestWindow::open(&display, "900x700+1200+500", "click test hi-res");
    click_targets_found_in_frame(
        &display,
        &window,
        None,
        FrameTarget::MaxPixels {
            max_pixels: 1_200_000,
            align: 28,
        },
    );
}

#[test]
fn clicks_land_on_a_second_monitor_with_an_offset_origin() {
    let display = display(2560, 1024);
    split_monitors(
        &display,
        &[("LEFT", 0, 0, 1280, 1024), ("RIGHT", 1280, 0, 1280, 1024)],
    );
    let screen = X11Screen::connect(Some(display.name())).unwrap();
    let monitors = screen.monitors().unwrap();
    assert_eq!(monitors.len(), 2, "{monitors:?}");
    assert_eq!(
        (monitors[1].name.as_str(), monitors[1].x, monitors[1].width),
        ("RIGHT", 1280, 1280)
    );
    let window = TestWindow::open(&display, "640x480+1500+300", "second monitor");
    click_targets_found_in_frame(
        &display,
        &window,
        Some(1),
        FrameTarget::MaxPixels {
            max_pixels: 600_000,
            align: 32,
        },
    );
}
