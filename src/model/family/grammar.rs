//! Building blocks for the families' GBNF grammars (llama.cpp's `grammars/README.md` syntax).
//!
//! Every rule is written on one line: llama.cpp ends a rule at a newline outside parentheses.
//! Only the escapes llama.cpp's grammar parser knows are used (`\\ \" \[ \] \n \r \t \xHH`);
//! a `-` in a character class comes last, where it cannot start a range. Rule names use
//! letters, digits and `-` only.

use std::fmt::Write;

/// Longest line of thought, in characters: a thought is free text before the action, one line
/// in the Qwen and Gemma families. The engine's thought budget (tokens) is what bounds a
/// rambling model; this only keeps a line a line.
pub(super) const THOUGHT_MAX_CHARS: usize = 300;
/// Lines a UI-TARS thought may add after its first: its published prompt asks for "a small
/// plan" and then the next action in one sentence.
pub(super) const THOUGHT_MAX_LINES: usize = 12;
/// Longest text to type in one action.
pub(super) const TYPE_MAX_CHARS: usize = 500;
/// Longest summary, failure reason or question to the user.
pub(super) const MESSAGE_MAX_CHARS: usize = 300;

/// A grammar under construction; the first rule added is `root`.
pub(super) struct Gbnf {
    text: String,
}

impl Gbnf {
    pub(super) fn new() -> Gbnf {
        Gbnf {
            text: String::new(),
        }
    }

    pub(super) fn rule(&mut self, name: &str, body: &str) -> &mut Gbnf {
        debug_assert!(!body.contains('\n'), "rule {name} spans lines");
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "{name} ::= {body}");
        self
    }

    pub(super) fn finish(&mut self) -> String {
        std::mem::take(&mut self.text)
    }
}

/// A GBNF string literal for `s`.
pub(super) fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Alternatives of literals.
pub(super) fn one_of(words: &[&str]) -> String {
    let alternatives: Vec<String> = words.iter().map(|w| lit(w)).collect();
    format!("( {} )", alternatives.join(" | "))
}

/// A key name whose first letter may be upper or lower case (`Return`, `return`): models
/// capitalize names the way xdotool does, and `Chord::parse` ignores case.
fn either_case(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) if first.is_ascii_alphabetic() => format!(
            "[{}{}] {}",
            first.to_ascii_uppercase(),
            first.to_ascii_lowercase(),
            lit(chars.as_str())
        ),
        _ => lit(name),
    }
}

/// Modifier names `Chord::parse` knows.
const MODIFIERS: &[&str] = &["ctrl", "alt", "shift", "super", "cmd", "meta", "win"];

/// Named keys `Chord::parse` knows (besides F1–F24).
const NAMED_KEYS: &[&str] = &[
    "return",
    "enter",
    "tab",
    "escape",
    "esc",
    "backspace",
    "delete",
    "insert",
    "home",
    "end",
    "pageup",
    "pagedown",
    "up",
    "down",
    "left",
    "right",
    "space",
    "menu",
    "print",
    "capslock",
    "plus",
    "minus",
];

/// Rules `modifier` and `key`: the key names of a chord, each one `Chord::parse` accepts, so
/// the grammar never lets through a chord the parser rejects. `key` is any single key (a
/// modifier alone is a key too: `super` opens the launcher). Characters exclude quotes,
/// backslash and space, which would need escaping in some of the syntaxes.
pub(super) fn key_rules(g: &mut Gbnf) {
    let modifiers: Vec<String> = MODIFIERS.iter().map(|m| either_case(m)).collect();
    let named: Vec<String> = NAMED_KEYS.iter().map(|k| either_case(k)).collect();
    g.rule("modifier", &format!("( {} )", modifiers.join(" | ")))
        .rule(
            "key",
            &format!(
                "modifier | {} | function-key | [a-zA-Z0-9`=;,./*+\\[\\]-]",
                named.join(" | ")
            ),
        )
        .rule("function-key", "[Ff] ( [1-9] | \"1\" [0-9] | \"2\" [0-4] )");
}

/// Rule `frame-coord`: a pixel coordinate of a frame, a non-negative integer of at most four
/// digits without leading zeros (JSON forbids them).
/// Rule `intent`: `before`, then one of the intents a reply can declare, then a closing
/// quote. `before` ends with the opening quote, in the spacing of the family's JSON.
pub(super) fn intent_rule(g: &mut Gbnf, before: &str) {
    let body = format!(
        "{} {} {}",
        lit(before),
        one_of(&super::declarable_intents()),
        lit("\"")
    );
    g.rule("intent", &body);
}

pub(super) fn frame_coord_rule(g: &mut Gbnf) {
    g.rule("frame-coord", "\"0\" | [1-9] [0-9]{0,3}");
}

/// Rule `norm-coord`: an integer from 0 to 1000.
pub(super) fn norm_coord_rule(g: &mut Gbnf) {
    g.rule("norm-coord", "\"0\" | [1-9] [0-9]{0,2} | \"1000\"");
}

/// Rule `name`: a JSON string of `min` to `max` characters (escapes count as one). Of the
/// escapes only `\" \\ \/ \n \r \t` are allowed: every other character is written as
/// itself, so no `\u` escape can name a lone surrogate (which JSON parsers reject) or a control
/// character nobody means to type. DEL and the C1 controls are excluded too: typed, they
/// would reach applications as keys, and `Action::validate` refuses them.
pub(super) fn json_string_rule(g: &mut Gbnf, name: &str, min: usize, max: usize) {
    g.rule(name, &format!("\"\\\"\" json-char{{{min},{max}}} \"\\\"\""));
}

/// Rule `json-char`, used by [`json_string_rule`].
pub(super) fn json_char_rule(g: &mut Gbnf) {
    g.rule("json-char", r#"[^"\\\x00-\x1F\x7F-\x9F] | "\\" ["\\/nrt]"#);
}

/// Rule `thought-char`: anything but a control character (line breaks and tabs included), and
/// anything in `also_excluded` (a character-class body). A thought can become the text of a
/// terminal action, so it must be writable in every family's string syntax.
pub(super) fn thought_char_rule(g: &mut Gbnf, also_excluded: &str) {
    g.rule(
        "thought-char",
        &format!(r"[^\x00-\x1F\x7F-\x9F{also_excluded}]"),
    );
}

/// Rule `name`: one line, its "\n" included, that does not begin with `prefix` (printable
/// ASCII, no character-class metacharacters). It is empty; or its first character is not the
/// prefix's, and rule `rest` (the remainder, "\n" included) follows; or it is the prefix's
/// first character, then the line ends or its second character is not the prefix's, and so on.
/// So a line may be any beginning of `prefix` ("Act"), but never `prefix` and more.
pub(super) fn line_without_prefix_rule(
    g: &mut Gbnf,
    name: &str,
    prefix: &str,
    rest: &str,
    also_excluded: &str,
) {
    debug_assert!(
        prefix
            .chars()
            .all(|c| c.is_ascii_graphic() && !"[]^-\\".contains(c)),
        "{prefix:?} needs escaping in a character class"
    );
    let other_than = |c: char| format!(r"[^{c}\x00-\x1F\x7F-\x9F{also_excluded}] {rest}");
    let mut chars = prefix.chars().rev();
    let Some(last) = chars.next() else {
        return;
    };
    let mut body = format!(r#""\n" | {}"#, other_than(last));
    for c in chars {
        body = format!(
            r#""\n" | {} | {} ( {body} )"#,
            other_than(c),
            lit(&c.to_string())
        );
    }
    g.rule(name, &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_what_gbnf_needs() {
        assert_eq!(lit("a\"b\\c\nd"), r#""a\"b\\c\nd""#);
        assert_eq!(either_case("return"), r#"[Rr] "eturn""#);
        assert_eq!(one_of(&["up", "down"]), r#"( "up" | "down" )"#);
    }

    #[test]
    fn a_line_that_does_not_start_with_a_prefix() {
        let mut g = Gbnf::new();
        line_without_prefix_rule(&mut g, "line", "Ab:", "rest", "");
        let class = |c: char| format!("[^{c}\\x00-\\x1F\\x7F-\\x9F] rest");
        assert_eq!(
            g.finish(),
            format!(
                "line ::= \"\\n\" | {} | \"A\" ( \"\\n\" | {} | \"b\" ( \"\\n\" | {} ) )\n",
                class('A'),
                class('b'),
                class(':')
            )
        );
    }
}
