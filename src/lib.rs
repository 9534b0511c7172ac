//! deskhand: a local desktop agent runtime. One step of the loop is see → think → check →
//! act → record; each stage is a module here (see DESIGN.md).

pub mod agent;
pub mod bench;
pub mod cli;
pub mod files;
pub mod input;
pub mod mcp;
pub mod model;
pub mod policy;
pub mod screen;
pub mod trace;
