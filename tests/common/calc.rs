//! xcalc as the tests see it: its buttons and display found in a screenshot.

#![allow(dead_code)] // each test binary uses a different part of this module

use deskhand::screen::Frame;
use image::RgbImage;

use super::common::regions;

pub type Region = (u32, u32, u32, u32, u32);

/// xcalc's buttons, as rows of regions from top to bottom, and its display.
pub struct Calculator {
    pub rows: Vec<Vec<Region>>,
    pub display: Region,
}

pub fn centre(r: &Region) -> (f64, f64) {
    (f64::from(r.0 + r.2) / 2.0, f64::from(r.1 + r.3) / 2.0)
}

/// Buttons are light rectangles of similar size inside dark borders; the display is the wide
/// light rectangle inside the thick border above them.
pub fn find_calculator(frame: &Frame) -> Option<Calculator> {
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

pub fn crop(frame: &Frame, r: &Region) -> RgbImage {
    image::imageops::crop_imm(&frame.image, r.0, r.1, r.2 - r.0 + 1, r.3 - r.1 + 1).to_image()
}

impl Calculator {
    /// A button by its label, from the bottom four rows of xcalc's TI-30 layout, whatever rows
    /// the build puts above them:
    ///   STO 7 8 9 *  /  RCL 4 5 6 -  /  SUM 1 2 3 +  /  EXC 0 . +/- =
    pub fn key(&self, name: &str) -> Option<Region> {
        let n = self.rows.len();
        let (row, col) = match name {
            "7" => (n - 4, 1),
            "*" => (n - 4, 4),
            "4" => (n - 3, 1),
            "6" => (n - 3, 3),
            "2" => (n - 2, 2),
            "3" => (n - 2, 3),
            "=" => (n - 1, 4),
            "AC" => (0, 4),
            _ => return None,
        };
        self.rows.get(row)?.get(col).copied()
    }
}
