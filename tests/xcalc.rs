//! Drive a program nobody here wrote: xcalc (Debian's x11-apps). Its buttons are found in the
//! screenshot, 7 x 6 = is clicked, and the display must then show 42.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{display, regions};
use deskhand::input::{AbortSignal, Action, EnigoDevice, Executor, Hands, MouseButton};
use deskhand::screen::{
    Frame, FrameTarget, ModelPoint, PointFormat, Screen, SettleOptions, X11Screen,
    wait_until_stable,
};
use image::RgbImage;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Region = (u32, u32, u32, u32, u32);

/// xcalc's buttons, as rows of regions from top to bottom, and its display.
struct Calculator {
    rows: Vec<Vec<Region>>,
    display: Region,
}

fn centre(r: &Region) -> (f64, f64) {
    (f64::from(r.0 + r.2) / 2.0, f64::from(r.1 + r.3) / 2.0)
}

/// Buttons are light rectangles of similar size inside dark borders; the display is the wide
/// light rectangle inside the thick border above them.
fn find_calculator(frame: &Frame) -> Option<Calculator> {
    let light = regions(frame, |p| p[0] > 200 && p[1] > 200 && p[2] > 200);
    let mut buttons: Vec<Region> = light
        .iter()
        .copied()
        .filter(|r| {
            let (w, h) = (r.2 - r.0 + 1, r.3 - r.1 + 1);
            (20..90).contains(&w) && (12..50).contains(&h) && r.4 * 2 > w * h
        })
        .collect();
    buttons.sort_by(|a, b| centre(a).1.total_cmp(&centre(b).1));
    let mut rows: Vec<Vec<Region>> = Vec::new();
    for b in buttons {
        match rows.last_mut() {
            Some(row) if (centre(&row[0]).1 - centre(&b).1).abs() < 8.0 => row.push(b),
            _ => rows.push(vec![b]),
        }
    }
    for row in &mut rows {
        row.sort_by(|a, b| centre(a).0.total_cmp(&centre(b).0));
    }
    if rows.len() < 5 || rows.iter().any(|r| r.len() != 5) {
        return None;
    }
    let top_of_buttons = rows[0][0].1;
    let display = light
        .iter()
        .copied()
        .filter(|r| r.2 - r.0 > 150 && r.3 - r.1 > 25 && r.3 < top_of_buttons)
        .max_by_key(|r| r.4)?;
    Some(Calculator { rows, display })
}

fn crop(frame: &Frame, r: &Region) -> RgbImage {
    image::imageops::crop_imm(&frame.image, r.0, r.1, r.2 - r.0 + 1, r.3 - r.1 + 1).to_image()
}

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
    // The bottom four rows of xcalc's TI-30 layout, whatever rows the build puts above them:
    //   STO 7 8 9 *  /  RCL 4 5 6 -  /  SUM 1 2 3 +  /  EXC 0 . +/- =
    let n = calc.rows.len();
    let key = |name: &str| -> Region {
        let (row, col) = match name {
            "7" => (n - 4, 1),
            "*" => (n - 4, 4),
            "4" => (n - 3, 1),
            "6" => (n - 3, 3),
            "2" => (n - 2, 2),
            "3" => (n - 2, 3),
            "=" => (n - 1, 4),
            "AC" => (0, 4),
            other => panic!("no button {other}"),
        };
        calc.rows[row][col]
    };

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
