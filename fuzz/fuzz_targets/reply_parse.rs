//! Any bytes as a model's reply, for every family: parsing must return the action or an
//! error, never panic. A parsed reply maps to screen pixels or refuses a point outside the
//! frame, and what it maps to is a valid action.

#![no_main]

use deskhand::model::FamilyId;
use deskhand::screen::{FrameMap, MonitorInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let monitor = MonitorInfo::single("fuzz", 1920, 1080);
    let map = FrameMap::new(&monitor, 1288, 728);
    for id in FamilyId::ALL {
        let Ok(reply) = id.family().parse(text) else {
            continue;
        };
        if let Ok(action) = reply.action.to_action(&map) {
            if let Err(e) = action.validate() {
                panic!("{id} parsed {text:?} into an invalid action {action:?}: {e}");
            }
        }
    }
});
