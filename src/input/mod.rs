//! Act: the canonical `Action`, key chords, and the executor that injects mouse and keyboard
//! events while tracking everything it holds down.

mod abort;
mod action;
mod chord;
mod enigo_device;
mod executor;

pub use abort::{
    ABORT_EXIT_CODE, AbortReason, AbortSignal, Releaser, exit_on_signals, stop_on_signals,
};
pub use action::{Action, ActionError, MouseButton, Selection};
pub use chord::{Chord, ChordError, ChordKey, Modifier, NamedKey, text_keys};
pub use enigo_device::EnigoDevice;
pub use executor::{
    CORNER_MARGIN, DeviceError, Executor, Hands, Held, InputDevice, InputError, Performed, Step,
    describe_monitors, in_corner_zone, plan,
};
