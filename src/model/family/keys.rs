//! Key names as models write them, turned into deskhand chords.

use crate::input::Chord;

use super::{ParseError, quote};

/// Names models use that `Chord::parse` does not know. UI-TARS's own parser maps the arrow
/// names (`codes/ui_tars/action_parser.py`, `parsing_response_to_pyautogui_code`).
fn known_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let alias = match lower.as_str() {
        "arrowleft" => "left",
        "arrowright" => "right",
        "arrowup" => "up",
        "arrowdown" => "down",
        "spacebar" => "space",
        _ => return name.to_owned(),
    };
    alias.to_owned()
}

/// One chord from keys pressed together (`["ctrl", "c"]`, or `ctrl c` split on spaces), in
/// `Chord::normalized` form. `raw` is the reply text quoted on error.
pub(super) fn chord_from_keys<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    raw: &str,
) -> Result<String, ParseError> {
    let names: Vec<String> = keys
        .into_iter()
        .map(|key| {
            // A key that is only whitespace is the space bar, written as a character.
            if !key.is_empty() && key.trim().is_empty() {
                "space".to_owned()
            } else {
                known_name(key.trim())
            }
        })
        .collect();
    if names.is_empty() {
        return Err(ParseError::new(format!("no keys in {}", quote(raw))));
    }
    normalized_chord(&names.join("+"), raw)
}

/// A chord written with `+`, in `Chord::normalized` form.
pub(super) fn normalized_chord(chord: &str, raw: &str) -> Result<String, ParseError> {
    Chord::parse(chord)
        .map(|c| c.normalized())
        .map_err(|e| ParseError::new(format!("{e} (in {})", quote(raw))))
}

/// The key names of a chord, modifiers first, for syntaxes that list keys. The normalized
/// form names the `+` key `plus`, so splitting it on `+` is safe.
pub(super) fn key_names(chord: &str) -> Vec<String> {
    let normalized = Chord::parse(chord).map_or_else(|_| chord.to_owned(), |c| c.normalized());
    normalized.split('+').map(str::to_owned).collect()
}
