//! Drive a program nobody here wrote: xcalc (Debian's x11-apps). Its buttons are found in the
//! screenshot, 7 x 6 = is clicked, and the display must then show 42.

#[path = "common/calc.rs"]
mod calc;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use calc::{centre, crop, find_calculator};
use common::{Kill, display};
use deskhand::input::{AbortSignal, Action, EnigoDevice, Executor, Hands, MouseButton};
use deskhand::screen::{
    FrameTarget, ModelPoint, PointFormat, Screen, SettleOptions, X11Screen, wait_until_stable,
};
use image::RgbImage;

#[test]
fn xcalc_computes_seven_times_six() {
    let display = display(1024, 768);
    let xcalc = Command::new("xcalc")
        .args(["-display", display.name(), "-geometry", "+60+40"])
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start xcalc (Debian: apt-get install x11-apps): {e}"));
    let _xcalc = Kill(xcalc);

    let mut screen = X11Screen::connect(Some(display.name())).unwrap();
    let monitor = screen.monitor(None).unwrap();
    let settle = SettleOptions {
        stable_frames: 3,
        ..SettleOptions::default()
    };
    let look = |screen: &mut X11Screen| {
        wait_until_stable(screen, &monitor, FrameTarget::Original, settle)
            .unwrap()
            .frame
    };

    let started = Instant::now();
    let (first, calc) = loop {
        let frame = look(&mut screen);
        if let Some(calc) = find_calculator(&frame) {
            break (frame, calc);
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "xcalc's buttons never appeared on screen"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let key = |name: &str| calc.key(name).unwrap_or_else(|| panic!("no button {name}"));

    let monitors = screen.monitors().unwrap();
    let mut hands = Executor::new(
        EnigoDevice::connect(Some(display.name())).unwrap(),
        monitors,
        AbortSignal::new(),
        true,
    );
    let mut press = |names: &[&str], screen: &mut X11Screen| -> RgbImage {
        for name in names {
            let (fx, fy) = centre(&key(name));
            let p = first
                .map
                .to_screen(ModelPoint::new(fx, fy, PointFormat::FramePixels))
                .unwrap();
            hands
                .perform(&Action::Click {
                    x: p.x,
                    y: p.y,
                    button: MouseButton::Left,
                })
                .unwrap();
        }
        crop(&look(screen), &calc.display)
    };

    let zero = crop(&first, &calc.display);
    let product = press(&["7", "*", "6", "="], &mut screen);
    let typed_42 = press(&["AC", "4", "2"], &mut screen);
    let typed_43 = press(&["AC", "4", "3"], &mut screen);
    if let Ok(dir) = std::env::var("DESKHAND_TEST_ARTIFACTS") {
        let _ = product.save(format!("{dir}/xcalc-product.png"));
        let _ = typed_42.save(format!("{dir}/xcalc-typed-42.png"));
    }
    // xcalc draws the product exactly as it draws "42" typed in by hand, and differently
    // from "0" and from "43": the display shows 42.
    assert!(product != zero, "the display did not change after 7 * 6 =");
    assert!(typed_42 != typed_43, "the comparison can tell 42 from 43");
    assert!(
        product == typed_42,
        "7 * 6 = does not display the same as typing 42"
    );
}
