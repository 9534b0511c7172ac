//! Secret and sensitive-text detectors: what the runtime finds for itself in text the model
//! wants to type, so that a policy can ask or deny even when the model declared nothing.
//!
//! Detectors only ever report names and counts. The matched text never leaves this module,
//! because hits end up in logs, prompts to the user and the model's own context.
//!
//! Word boundaries here are ASCII-only (`(?-u:\b)` and the card scanner agree on this), which
//! keeps every pattern on the regex crate's fast DFA path even for non-ASCII text, and makes
//! `redact` stable: every match starts and ends at a boundary, so replacing it with
//! `[redacted:NAME]` (which begins and ends with punctuation) cannot create a new match next
//! to it.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// One detector that fired on a text: its name, whether it counts as a secret, and how many
/// distinct places matched. Never the matched text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorHit {
    pub name: String,
    pub secret: bool,
    pub count: usize,
}

const PASSWORD_CONTEXT: &str = "password_context";

/// The built-in detectors as `(name, secret, description)`, for docs and the CLI.
pub const BUILTIN_DETECTORS: &[(&str, bool, &str)] = &[
    (
        "api_token",
        true,
        "well-known API token shapes (GitHub, OpenAI/Anthropic sk-, AWS key ids and secret access keys, Slack, Google, GitLab, Hugging Face, npm, Stripe, JWTs)",
    ),
    (
        "card_number",
        true,
        "payment card numbers: 13-19 digits with a known issuer prefix that pass the Luhn check",
    ),
    (
        "iban",
        false,
        "IBANs (compact or in groups of four) whose mod-97 check holds",
    ),
    (
        PASSWORD_CONTEXT,
        true,
        "the window is a password, passphrase or PIN prompt (judged from its title and app, not from the text)",
    ),
    (
        "private_key",
        true,
        "PEM private key blocks (RSA, EC, OpenSSH, encrypted, PKCS#8), their base64 bodies without the header, PGP private key blocks, age secret keys and PuTTY key files",
    ),
];

/// How one pattern finds matches.
#[derive(Debug, Clone)]
enum Matcher {
    Regex(Regex),
    /// A regex that finds candidates and a check that confirms one, returning the length of
    /// the confirmed prefix: some shapes cannot be pinned down by a regex alone (mod-97
    /// checksums, "random-looking" token bodies).
    Checked {
        candidates: Regex,
        accept: fn(&str) -> Option<usize>,
    },
    /// Cards are scanned by hand: a valid number may start at any digit group inside a longer
    /// run of grouped digits, which a leftmost regex would swallow whole.
    CardNumber,
    /// A scanner of its own, for shapes defined by a whole run of characters (a regex
    /// without look-behind would find them inside longer runs too).
    Scanner(fn(&str, &mut Vec<(usize, usize)>)),
}

impl Matcher {
    fn spans(&self, text: &str, out: &mut Vec<(usize, usize)>) {
        match self {
            Matcher::Regex(re) => out.extend(
                re.find_iter(text)
                    .filter(|m| !m.is_empty())
                    .map(|m| (m.start(), m.end())),
            ),
            Matcher::Checked { candidates, accept } => {
                let mut at = 0;
                while at <= text.len() {
                    let Some(m) = candidates.find_at(text, at) else {
                        break;
                    };
                    match accept(m.as_str()).filter(|&len| len > 0 && len <= m.len()) {
                        Some(len) => {
                            out.push((m.start(), m.start() + len));
                            at = m.start() + len;
                        }
                        // A rejected candidate may hide a valid one that starts inside it
                        // (an IBAN-like word followed by a real IBAN's groups).
                        None => at = next_char_boundary(text, m.start()),
                    }
                }
            }
            Matcher::CardNumber => card_spans(text, out),
            Matcher::Scanner(scan) => scan(text, out),
        }
    }
}

fn next_char_boundary(text: &str, at: usize) -> usize {
    text[at..]
        .chars()
        .next()
        .map_or(text.len() + 1, |c| at + c.len_utf8())
}

#[derive(Debug, Clone)]
struct Detector {
    secret: bool,
    matchers: Vec<Matcher>,
    /// Whether it also reads the text with separators between digits taken out (numbers
    /// typed box by box). Only number detectors do: joining digits across separators makes
    /// runs of letters and digits that other shapes would mistake for tokens.
    joins_digits: bool,
}

impl Detector {
    /// Matched regions of the original text, found in it and in each of its `views`, with
    /// overlaps merged, so two patterns (or two views) that find the same place count it once.
    fn regions(&self, views: &Views, out: &mut Vec<(usize, usize)>) {
        out.clear();
        let mut found = Vec::new();
        for view in views.for_detector(self) {
            for m in &self.matchers {
                found.clear();
                m.spans(view.text(), &mut found);
                out.extend(found.iter().map(|&span| view.to_original(span)));
            }
        }
        out.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(out.len());
        for &(s, e) in out.iter() {
            match merged.last_mut() {
                Some(last) if s < last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *out = merged;
    }
}

/// One way of reading a text, with the place in the original each of its bytes came from.
struct View {
    text: String,
    /// For each byte of `text`: the byte range of the original character it came from.
    origin: Vec<(usize, usize)>,
}

impl View {
    fn text(&self) -> &str {
        &self.text
    }

    fn to_original(&self, (start, end): (usize, usize)) -> (usize, usize) {
        match (
            self.origin.get(start),
            end.checked_sub(1).and_then(|e| self.origin.get(e)),
        ) {
            (Some(first), Some(last)) => (first.0, last.1),
            _ => (start, end),
        }
    }

    fn push(&mut self, c: char, from: (usize, usize)) {
        self.text.push(c);
        self.origin.extend(std::iter::repeat_n(from, c.len_utf8()));
    }

    /// The text as a detector should read it: NFKC (fullwidth and mathematical letters and
    /// digits become ASCII), digits of every script as ASCII digits, invisible characters
    /// (zero-width spaces and joiners, soft hyphens, byte order marks) gone.
    fn folded(original: &str) -> View {
        let mut view = View {
            text: String::with_capacity(original.len()),
            origin: Vec::with_capacity(original.len()),
        };
        for (at, c) in original.char_indices() {
            let from = (at, at + c.len_utf8());
            if INVISIBLE.contains(&c) {
                continue;
            }
            for n in std::iter::once(c).nfkc() {
                view.push(ascii_digit(n).unwrap_or(n), from);
            }
        }
        view
    }

    /// The folded text with short runs of separators between digits taken out, so digits
    /// entered in boxes (a tab between groups, as four-box card forms are filled) or spelt
    /// with dots or slashes read as one number.
    fn digits_joined(&self) -> View {
        let mut view = View {
            text: String::with_capacity(self.text.len()),
            origin: Vec::with_capacity(self.origin.len()),
        };
        let chars: Vec<(usize, char)> = self.text.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let (at, c) = chars[i];
            view.push(c, self.origin[at]);
            i += 1;
            if c.is_ascii_digit() {
                let run = chars[i..]
                    .iter()
                    .take_while(|(_, c)| DIGIT_SEPARATORS.contains(c))
                    .count();
                let next_is_digit = chars.get(i + run).is_some_and(|(_, c)| c.is_ascii_digit());
                if run > 0 && run <= 3 && next_is_digit {
                    i += run;
                }
            }
        }
        view
    }
}

/// The original text and the other ways detectors read it.
struct Views {
    original: View,
    folded: Option<View>,
    joined: Option<View>,
}

impl Views {
    fn of(text: &str) -> Views {
        let original = View {
            text: text.to_owned(),
            origin: text
                .char_indices()
                .flat_map(|(at, c)| std::iter::repeat_n((at, at + c.len_utf8()), c.len_utf8()))
                .collect(),
        };
        let folded = View::folded(text);
        let joined = folded.digits_joined();
        let joined = (joined.text != folded.text).then_some(joined);
        let folded = (folded.text != original.text).then_some(folded);
        Views {
            original,
            folded,
            joined,
        }
    }

    fn for_detector(&self, detector: &Detector) -> impl Iterator<Item = &View> {
        let joined = self.joined.as_ref().filter(|_| detector.joins_digits);
        std::iter::once(&self.original)
            .chain(self.folded.as_ref())
            .chain(joined)
    }
}

/// Characters that show nothing and separate nothing; attackers put them inside secrets.
const INVISIBLE: &[char] = &[
    '\u{00AD}', '\u{034F}', '\u{180E}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{2061}',
    '\u{2062}', '\u{2063}', '\u{2064}', '\u{FEFF}',
];

/// What may stand between the digit groups of one number (after NFKC, a no-break space is a
/// space).
const DIGIT_SEPARATORS: &[char] = &[' ', '\t', '.', '/', '-'];

/// The first code point of every run of ten decimal digits (Unicode category Nd) outside
/// ASCII that NFKC leaves alone: Arabic-Indic, Devanagari, Thai and the rest.
const DIGIT_ZEROS: &[u32] = &[
    0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6, 0x0D66,
    0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x11F50, 0x16A60, 0x16AC0,
    0x16B50, 0x1E140, 0x1E2F0, 0x1E4F0, 0x1E950, 0x1FBF0,
];

/// The ASCII digit a decimal digit of any script stands for.
fn ascii_digit(c: char) -> Option<char> {
    let code = u32::from(c);
    if c.is_ascii() || !c.is_numeric() {
        return None;
    }
    let zero = DIGIT_ZEROS.iter().rev().find(|&&z| z <= code)?;
    let value = code - zero;
    (value < 10).then(|| char::from(b'0' + value as u8))
}

/// The text detectors in force: the built-ins plus the user's regex detectors.
#[derive(Debug, Clone)]
pub struct Detectors {
    // A BTreeMap so that scan results come out sorted by name without a sort per call.
    by_name: BTreeMap<String, Detector>,
}

static BUILTIN: LazyLock<Detectors> = LazyLock::new(compile_builtins);

// The patterns are constants checked by the tests; a failure here is a bug in this file, not
// something input can cause.
fn builtin_regex(pattern: &str) -> Regex {
    match Regex::new(pattern) {
        Ok(re) => re,
        Err(e) => panic!("built-in detector pattern does not compile: {e}"),
    }
}

const TOKEN_PATTERN: &str = r"(?x)
    (?-u:\b)(?:
        gh[pousr]_[A-Za-z0-9]{36,}(?-u:\b)
      | github_pat_[A-Za-z0-9_]{22,}
      | (?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)
      | xox[abprs]-[A-Za-z0-9-]{10,}
      | AIza[A-Za-z0-9_-]{35,}
      | glpat-[A-Za-z0-9_-]{20,}
      | hf_[A-Za-z0-9]{30,}(?-u:\b)
      | npm_[A-Za-z0-9]{36,}(?-u:\b)
      | [sr]k_(?:live|test)_[A-Za-z0-9]{16,}(?-u:\b)
      | eyJ[A-Za-z0-9_-]{7,}\.eyJ[A-Za-z0-9_-]{7,}\.[A-Za-z0-9_-]{10,}
    )";

const SK_PATTERN: &str = r"(?-u:\b)sk-[A-Za-z0-9_-]{20,}";

// A whole PEM block when its END line is there, so the key body is redacted too; otherwise the
// header and the base64 lines that follow it (a key being typed line by line).
const PRIVATE_KEY_PATTERN: &str = r"(?x)
      -----BEGIN\ [A-Z0-9\ ]{0,40}PRIVATE\ KEY-----
      (?:
          (?s:.*?)-----END\ [A-Z0-9\ ]{0,40}PRIVATE\ KEY-----
        | (?:\r?\n[A-Za-z0-9+/=]+)*
      )
    | -----BEGIN\ PGP\ PRIVATE\ KEY\ BLOCK-----
      (?:
          (?s:.*?)-----END\ PGP\ PRIVATE\ KEY\ BLOCK-----
        | (?:\r?\n(?:[A-Za-z-]+:\ [^\r\n]*|[A-Za-z0-9+/=]*))*
      )
    | (?-u:\b)PuTTY-User-Key-File-[0-9]+:[^\r\n]*
      (?:\r?\n(?:[A-Za-z-]+:[^\r\n]*|[A-Za-z0-9+/=]+))*
    | (?-u:\b)AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}(?-u:\b)
    ";

// The base64 body of a key without its BEGIN line: DER keys (RSA, PKCS#8, EC) open with
// `MII`, OpenSSH keys with the encoding of "openssh-key-v1". Certificates open with `MII`
// too; typing one by agent is rare enough that asking is the better mistake.
const PEM_BODY_PATTERN: &str = r"(?x)
    (?-u:\b)(?:MII[A-Za-z0-9+/]{60,}|b3BlbnNzaC1rZXktdjE[A-Za-z0-9+/]{40,})={0,2}
    (?:\r?\n[A-Za-z0-9+/]{16,}={0,2})*
    ";

const IBAN_PATTERN: &str = r"(?x)
    (?-u:\b)[A-Z]{2}[0-9]{2}
    (?:
        [A-Z0-9]{11,30}
      | (?:\ [A-Z0-9]{4})+(?:\ [A-Z0-9]{1,3})?
    )
    (?-u:\b)";

fn compile_builtins() -> Detectors {
    let mut by_name = BTreeMap::new();
    by_name.insert(
        "card_number".to_string(),
        Detector {
            secret: true,
            matchers: vec![Matcher::CardNumber],
            joins_digits: true,
        },
    );
    by_name.insert(
        "iban".to_string(),
        Detector {
            secret: false,
            matchers: vec![Matcher::Checked {
                candidates: builtin_regex(IBAN_PATTERN),
                accept: accept_iban,
            }],
            joins_digits: false,
        },
    );
    by_name.insert(
        "api_token".to_string(),
        Detector {
            secret: true,
            matchers: vec![
                Matcher::Regex(builtin_regex(TOKEN_PATTERN)),
                Matcher::Checked {
                    candidates: builtin_regex(SK_PATTERN),
                    accept: accept_sk_token,
                },
                Matcher::Scanner(aws_secret_spans),
            ],
            joins_digits: false,
        },
    );
    by_name.insert(
        "private_key".to_string(),
        Detector {
            secret: true,
            matchers: vec![
                Matcher::Regex(builtin_regex(PRIVATE_KEY_PATTERN)),
                Matcher::Regex(builtin_regex(PEM_BODY_PATTERN)),
            ],
            joins_digits: false,
        },
    );
    Detectors { by_name }
}

impl Detectors {
    /// The built-in text detectors. The regexes are compiled once per process; this clones
    /// them (cheap: compiled regexes are shared).
    pub fn builtin() -> Detectors {
        BUILTIN.clone()
    }

    /// Adds a user detector. Adding to an existing name (a built-in included) keeps what was
    /// there and runs both; the name is a secret if either said so, because a user detector
    /// must not be able to make a built-in secret count as harmless.
    pub fn add_regex(&mut self, name: &str, regex: Regex, secret: bool) {
        let detector = self.by_name.entry(name.to_string()).or_insert(Detector {
            secret: false,
            matchers: Vec::new(),
            joins_digits: false,
        });
        detector.secret |= secret;
        detector.matchers.push(Matcher::Regex(regex));
    }

    pub fn contains(&self, name: &str) -> bool {
        name == PASSWORD_CONTEXT || self.by_name.contains_key(name)
    }

    pub fn is_secret(&self, name: &str) -> bool {
        name == PASSWORD_CONTEXT || self.by_name.get(name).is_some_and(|d| d.secret)
    }

    /// Every name a policy may refer to, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.keys().cloned().collect();
        if !self.by_name.contains_key(PASSWORD_CONTEXT) {
            names.push(PASSWORD_CONTEXT.to_string());
            names.sort();
        }
        names
    }

    /// Which detectors fire on `text` and how often, sorted by name.
    pub fn scan(&self, text: &str) -> Vec<DetectorHit> {
        self.scan_after("", text)
    }

    /// Which detectors fire on `text` typed after `before` (the text already sent to the same
    /// window), counting only matches that reach into `text`: a card number typed group by
    /// group is found when its last group arrives.
    pub fn scan_after(&self, before: &str, text: &str) -> Vec<DetectorHit> {
        let combined = format!("{before}{text}");
        let views = Views::of(&combined);
        let mut regions = Vec::new();
        let mut hits = Vec::new();
        for (name, detector) in &self.by_name {
            detector.regions(&views, &mut regions);
            let count = regions
                .iter()
                .filter(|&&(_, end)| end > before.len())
                .count();
            if count > 0 {
                hits.push(DetectorHit {
                    name: name.clone(),
                    secret: detector.secret,
                    count,
                });
            }
        }
        hits
    }

    /// `text` with every match replaced by `[redacted:NAME]`. Overlapping matches become one
    /// replacement named after the one that starts first (the longest, on a tie).
    pub fn redact(&self, text: &str) -> String {
        let mut spans: Vec<(usize, usize, &str)> = Vec::new();
        let mut regions = Vec::new();
        let views = Views::of(text);
        for (name, detector) in &self.by_name {
            detector.regions(&views, &mut regions);
            spans.extend(regions.iter().map(|&(s, e)| (s, e, name.as_str())));
        }
        if spans.is_empty() {
            return text.to_string();
        }
        spans.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));

        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut i = 0;
        while i < spans.len() {
            let (start, mut end, name) = spans[i];
            i += 1;
            while i < spans.len() && spans[i].0 < end {
                end = end.max(spans[i].1);
                i += 1;
            }
            out.push_str(&text[copied..start]);
            out.push_str("[redacted:");
            out.push_str(name);
            out.push(']');
            copied = end;
        }
        out.push_str(&text[copied..]);
        out
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Finds card numbers: maximal runs of digit groups joined by single spaces or dashes, and in
/// each run the leftmost group sequence of 13-19 digits that is a valid card (the longest one
/// from that start, so a trailing group is not left behind in clear).
fn card_spans(text: &str, out: &mut Vec<(usize, usize)>) {
    let bytes = text.as_bytes();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        groups.clear();
        let mut start = i;
        loop {
            let mut end = start;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            groups.push((start, end));
            let joined = end + 1 < bytes.len()
                && matches!(bytes[end], b' ' | b'-')
                && bytes[end + 1].is_ascii_digit();
            if !joined {
                break;
            }
            start = end + 1;
        }
        let run_start = groups[0].0;
        let run_end = groups[groups.len() - 1].1;
        // Digits glued to letters are part of an identifier, not a card.
        let left_glued = run_start > 0 && is_word_byte(bytes[run_start - 1]);
        let right_glued = run_end < bytes.len() && is_word_byte(bytes[run_end]);
        let last = groups.len() - 1;

        let mut s = usize::from(left_glued);
        while s < groups.len() {
            let mut best = None;
            let mut digits = 0;
            for e in s..groups.len() {
                digits += groups[e].1 - groups[e].0;
                if digits > 19 {
                    break;
                }
                if digits >= 13 && !(e == last && right_glued) && is_card(bytes, &groups[s..=e]) {
                    best = Some(e);
                }
            }
            match best {
                Some(e) => {
                    out.push((groups[s].0, groups[e].1));
                    s = e + 1;
                }
                None => s += 1,
            }
        }
        i = run_end;
    }
}

fn is_card(bytes: &[u8], groups: &[(usize, usize)]) -> bool {
    let mut digits = [0u8; 19];
    let mut n = 0;
    for &(s, e) in groups {
        for &b in &bytes[s..e] {
            if n == digits.len() {
                return false;
            }
            digits[n] = b - b'0';
            n += 1;
        }
    }
    n >= 13 && issuer_known(&digits[..n]) && luhn_ok(&digits[..n])
}

fn issuer_known(d: &[u8]) -> bool {
    let p = |k: usize| d[..k].iter().fold(0u32, |acc, &x| acc * 10 + u32::from(x));
    let (p2, p3, p4) = (p(2), p(3), p(4));
    d[0] == 4 // Visa
        || (51..=55).contains(&p2) || (2221..=2720).contains(&p4) // Mastercard
        || p2 == 34 || p2 == 37 // Amex
        || p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 // Discover
        || (3528..=3589).contains(&p4) // JCB
        || (300..=305).contains(&p3) || p2 == 36 || p2 == 38 // Diners
        || p2 == 62 // UnionPay
}

fn luhn_ok(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i & 1 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// AWS secret access keys: a run of exactly 40 base64 characters (letters, digits, `/`, `+`)
/// that mixes upper case, lower case and digits. Git's 40-digit hashes are lower-case hex,
/// so they never count.
fn aws_secret_spans(text: &str, out: &mut Vec<(usize, usize)>) {
    let bytes = text.as_bytes();
    let is_body = |b: u8| b.is_ascii_alphanumeric() || b == b'/' || b == b'+';
    let mut i = 0;
    while i < bytes.len() {
        if !is_body(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_body(bytes[i]) {
            i += 1;
        }
        let run = &bytes[start..i];
        let padded = bytes.get(i) == Some(&b'=');
        if run.len() == 40
            && !padded
            && run.iter().any(u8::is_ascii_uppercase)
            && run.iter().any(u8::is_ascii_lowercase)
            && run.iter().any(u8::is_ascii_digit)
        {
            out.push((start, i));
        }
    }
}

/// Accepts an IBAN candidate, or the longest prefix of a grouped one ending at a group, so
/// that words in groups of four after a real IBAN do not spoil it.
fn accept_iban(candidate: &str) -> Option<usize> {
    let b = candidate.as_bytes();
    if b.get(4) != Some(&b' ') {
        return iban_valid(candidate).then_some(candidate.len());
    }
    let mut end = candidate.len();
    loop {
        if iban_valid(&candidate[..end]) {
            return Some(end);
        }
        match candidate[..end].rfind(' ') {
            Some(space) if space > 4 => end = space,
            _ => return None,
        }
    }
}

/// ISO 13616: BBAN length 11-30 and (BBAN + country + check digits) mod 97 == 1, with
/// letters counted as 10..35.
fn iban_valid(iban: &str) -> bool {
    let (head, bban) = iban.split_at(4.min(iban.len()));
    let bban_len = bban.bytes().filter(|&c| c != b' ').count();
    if head.len() != 4 || !(11..=30).contains(&bban_len) {
        return false;
    }
    let mut rem: u32 = 0;
    for c in bban.bytes().chain(head.bytes()) {
        rem = match c {
            b'0'..=b'9' => (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(c - b'A') + 10) % 97,
            b' ' => rem,
            _ => return false,
        };
    }
    rem == 1
}

/// `sk-` is also how hyphenated words like "sk-learn-..." begin; real keys carry a long random
/// stretch, so require one `-`/`_`-separated segment of 16+ characters mixing letters and
/// digits.
fn accept_sk_token(candidate: &str) -> Option<usize> {
    let body = candidate.get(3..)?;
    body.split(['-', '_'])
        .any(|seg| {
            seg.len() >= 16
                && seg.bytes().any(|c| c.is_ascii_digit())
                && seg.bytes().any(|c| c.is_ascii_alphabetic())
        })
        .then_some(candidate.len())
}

// Apps that exist to ask for a password: whatever is typed into them is a secret. Matched as
// prefixes of the lowercased program name (a path's last component, WM_CLASS or app id).
const PROMPT_APP_PREFIXES: &[&str] = &[
    "pinentry",
    "ssh-askpass",
    "x11-ssh-askpass",
    "gnome-ssh-askpass",
    "ksshaskpass",
    "lxqt-openssh-askpass",
    "gcr-prompter",
    "gcr4-prompter",
    "kwalletd",
    "lxqt-sudo",
    "gksu",
    "kdesu",
    "gnome-keyring-prompt",
];

// Words in a window title that mean "type your secret here", in the languages desktops ship.
// Any title mentioning a password counts, "Password Manager Settings" and "Change password"
// included: such windows may well take a secret and a false alarm only costs a question, while
// a miss types a secret unguarded. Plain "Sign in"/"Log in" titles do not count: a sign-in page
// is the login intent, inferred elsewhere, and counting it here would make a user name a
// secret.
const PROMPT_TITLE_WORDS: &[&str] = &[
    "password",
    "passphrase",
    "passcode",
    "passwort",
    "kennwort",
    "mot de passe",
    "contraseña",
    "contrasena",
    "senha",
    "wachtwoord",
    "hasło",
    "пароль",
    "lösenord",
    "adgangskode",
    "passord",
    "salasana",
    "jelszó",
    "heslo",
    "parolă",
    "şifre",
    "パスワード",
    "密码",
    "密碼",
    "비밀번호",
    "authentication required",
    "authentication is required",
    "authenticate",
    "enter pin",
    "pin code",
    "pin entry",
    "pin:",
    "smart card pin",
];

/// Whether the focused window is a password prompt, judged from its app name and title.
/// Typing into one is typing a secret whatever the text looks like.
pub fn password_context(app: Option<&str>, title: Option<&str>) -> bool {
    app.is_some_and(is_prompt_app) || title.is_some_and(is_prompt_title)
}

fn is_prompt_app(app: &str) -> bool {
    let base = app.rsplit(['/', '\\']).next().unwrap_or(app).trim();
    let base = base.to_lowercase();
    // Every desktop names its polkit agent differently (polkit-gnome-authentication-agent-1,
    // polkit-kde-authentication-agent-1, xfce-polkit, lxpolkit, mate-polkit,
    // hyprpolkitagent), and polkit shows no window other than its password prompt.
    PROMPT_APP_PREFIXES.iter().any(|p| base.starts_with(p))
        || base.contains("askpass")
        || base.contains("polkit")
        || base.contains("systemprompter")
}

fn is_prompt_title(title: &str) -> bool {
    let lower = title.to_lowercase();
    if PROMPT_TITLE_WORDS.iter().any(|w| lower.contains(w)) {
        return true;
    }
    // "Unlock Keyring", "Unlock Database - KeePassXC", "Unlock private key": a word start, so
    // that "unlocked" still counts but "Dunlock" does not.
    if has_word(&lower, "unlock", false) {
        return true;
    }
    // A bare "PIN" counts only in capitals: "Dropped pin" in a maps title is not a prompt.
    has_word(title, "PIN", true)
}

pub(super) fn has_word(hay: &str, word: &str, whole: bool) -> bool {
    hay.match_indices(word).any(|(at, _)| {
        let before_ok = !hay[..at]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric);
        let after_ok = !whole
            || !hay[at + word.len()..]
                .chars()
                .next()
                .is_some_and(char::is_alphanumeric);
        before_ok && after_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(hits: &[DetectorHit]) -> Vec<&str> {
        hits.iter().map(|h| h.name.as_str()).collect()
    }

    fn hit_count(d: &Detectors, text: &str, name: &str) -> usize {
        d.scan(text)
            .iter()
            .find(|h| h.name == name)
            .map_or(0, |h| h.count)
    }

    /// Appends the Luhn check digit, so tests can make valid numbers for any prefix.
    fn with_check_digit(partial: &str) -> String {
        for c in 0..10 {
            let candidate = format!("{partial}{c}");
            let digits: Vec<u8> = candidate.bytes().map(|b| b - b'0').collect();
            if luhn_ok(&digits) {
                return candidate;
            }
        }
        unreachable!("some check digit always works")
    }

    #[test]
    fn builtins_compile_and_are_documented() {
        let d = Detectors::builtin();
        let documented: Vec<&str> = BUILTIN_DETECTORS.iter().map(|t| t.0).collect();
        assert_eq!(d.names(), documented);
        for &(name, secret, _) in BUILTIN_DETECTORS {
            assert!(d.contains(name), "{name}");
            assert_eq!(d.is_secret(name), secret, "{name}");
        }
        assert!(!d.contains("nope"));
        assert!(!d.is_secret("nope"));
    }

    #[test]
    fn card_numbers_valid_and_one_digit_changed() {
        let d = Detectors::builtin();
        for card in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "5555555555554444",
            "2223003122003222",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "6200000000000005",
        ] {
            assert_eq!(
                hit_count(&d, &format!("pay with {card} today"), "card_number"),
                1,
                "{card}"
            );
        }
        for not_card in [
            "4111 1111 1111 1112",
            "4111-1111-1111-1121",
            "5555555555554445",
            // valid Luhn, unknown issuer
            "1234567812345670",
            // digits that are part of a longer run
            "04111111111111111111",
            "x4111111111111111",
            "4111111111111111y",
            "4111    1111 1111 1111",
        ] {
            assert_eq!(hit_count(&d, not_card, "card_number"), 0, "{not_card}");
        }
    }

    #[test]
    fn card_inside_longer_grouped_run() {
        let d = Detectors::builtin();
        assert_eq!(
            hit_count(&d, "ref 12 4111 1111 1111 1111", "card_number"),
            1
        );
        assert_eq!(
            d.redact("ref 12 4111 1111 1111 1111 ok"),
            "ref 12 [redacted:card_number] ok"
        );
        assert_eq!(
            hit_count(&d, "4111111111111111 5555555555554444", "card_number"),
            2
        );
    }

    #[test]
    fn random_sixteen_digit_strings_mostly_do_not_match() {
        let d = Detectors::builtin();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut hits = 0;
        let total = 2000;
        for _ in 0..total {
            let mut s = String::new();
            for _ in 0..16 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(char::from(b'0' + ((state >> 33) % 10) as u8));
            }
            hits += hit_count(&d, &s, "card_number");
        }
        assert!(
            hits * 100 < total * 5,
            "{hits} of {total} random strings matched"
        );
    }

    #[test]
    fn iban_valid_and_wrong_check_digits() {
        let d = Detectors::builtin();
        for iban in [
            "DE89 3704 0044 0532 0130 00",
            "DE89370400440532013000",
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "FR14 2004 1010 0505 0001 3M02 606",
        ] {
            let hits = d.scan(&format!("IBAN: {iban}."));
            assert_eq!(
                hit_count(&d, &format!("IBAN: {iban}."), "iban"),
                1,
                "{iban}"
            );
            assert!(hits.iter().any(|h| h.name == "iban" && !h.secret));
        }
        for bad in [
            "DE88 3704 0044 0532 0130 00",
            "GB83WEST12345698765432",
            "GB82WEST1234569876543",
            "gb82west12345698765432",
        ] {
            assert_eq!(hit_count(&d, bad, "iban"), 0, "{bad}");
        }
        assert_eq!(
            d.redact("send to DE89 3704 0044 0532 0130 00 THIS WEEK"),
            "send to [redacted:iban] THIS WEEK"
        );
        // A rejected IBAN-shaped prefix must not hide a real one right after it.
        assert_eq!(hit_count(&d, "XX12 DE89 3704 0044 0532 0130 00", "iban"), 1);
    }

    #[test]
    fn api_tokens() {
        let d = Detectors::builtin();
        let a36 = "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5";
        assert_eq!(a36.len(), 36);
        let tokens = [
            format!("ghp_{a36}"),
            format!("gho_{a36}"),
            format!("ghs_{a36}"),
            format!("github_pat_{}", "11ABCDEFG0123456789_abcdefghij"),
            format!("sk-{}", "proj-Ab3De5Gh7Jk9Mn1Pq3St5Vw7Yz9"),
            format!("sk-{}", "ant-api03-Xy12Ab34Cd56Ef78Gh90Ij12Kl34-AA"),
            format!("sk-{a36}"),
            format!("AKIA{}", "IOSFODNN7EXAMPLE"),
            format!("ASIA{}", "Z2Y3X4W5V6U7T8S9"),
            format!("xoxb-{}", "1234567890-0987654321-AbCdEf"),
            format!("AIza{}", "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
            format!("glpat-{}", "Ab3De5Gh7Jk9Mn1Pq3St"),
            format!("hf_{}", "Ab3De5Gh7Jk9Mn1Pq3St5Vw7Yz9Bc1Df"),
            format!("npm_{a36}"),
            format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc"),
            format!("rk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc"),
            format!("sk_test_{}", "4eC39HqLyjWDarjtT1zdp7dc"),
            format!(
                "eyJ{}.eyJ{}.{}",
                "hbGciOiJIUzI1NiJ9",
                "zdWIiOiIxMjM0NTY3ODkwIn0",
                "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
            ),
        ];
        for t in &tokens {
            let text = format!("token = \"{t}\"\n");
            assert_eq!(hit_count(&d, &text, "api_token"), 1, "{t}");
            assert_eq!(d.redact(&text), "token = \"[redacted:api_token]\"\n", "{t}");
        }
        for not_token in [
            "sk-learn-is-a-python-library-for-ml",
            "ask-the-team-about-the-rollout-plan",
            "ghp_short",
            "AKIA1234",
            "the task-runner-configuration-file",
            "eyJhbGci.eyJzdWIi.sig",
        ] {
            assert_eq!(hit_count(&d, not_token, "api_token"), 0, "{not_token}");
        }
    }

    #[test]
    fn private_key_headers() {
        let d = Detectors::builtin();
        for kind in ["RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", "DSA ", ""] {
            let header = format!("-----BEGIN {kind}PRIVATE KEY-----");
            assert_eq!(hit_count(&d, &header, "private_key"), 1, "{header}");
        }
        let block = format!(
            "key:\n-----BEGIN {k}-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END {k}-----\nthanks",
            k = "PRIVATE KEY"
        );
        assert_eq!(d.redact(&block), "key:\n[redacted:private_key]\nthanks");
        let partial = format!(
            "-----BEGIN {}-----\nMIIEvQIBADANBgkq\nMIIEvQ",
            "RSA PRIVATE KEY"
        );
        assert_eq!(d.redact(&partial), "[redacted:private_key]");
        let putty = format!(
            "{}3: ssh-ed25519\nEncryption: none\nAAAAC3Nz\n\nbye",
            "PuTTY-User-Key-File-"
        );
        assert_eq!(d.redact(&putty), "[redacted:private_key]\n\nbye");
        for not_key in [
            "-----BEGIN PUBLIC KEY-----",
            "-----BEGIN CERTIFICATE-----",
            "my private key is safe",
        ] {
            assert_eq!(hit_count(&d, not_key, "private_key"), 0, "{not_key}");
        }
    }

    #[test]
    fn secrets_are_found_through_disguises() {
        let d = Detectors::builtin();
        let cases = [
            // Four-box card forms are filled with a tab between the groups.
            ("4111\t1111\t1111\t1111", "card_number"),
            ("4111.1111.1111.1111", "card_number"),
            ("4111/1111/1111/1111", "card_number"),
            ("4111  1111  1111  1111", "card_number"),
            ("4111\u{a0}1111\u{a0}1111\u{a0}1111", "card_number"),
            ("4111\u{200b}1111\u{200b}1111\u{200b}1111", "card_number"),
            // Fullwidth and Arabic-Indic digits.
            ("４１１１１１１１１１１１１１１１", "card_number"),
            (
                "\u{664}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}\u{661}",
                "card_number",
            ),
            ("AKIA\u{200b}IOSFODNN7EXAMPLE", "api_token"),
            ("ＡＫＩＡＩＯＳＦＯＤＮＮ７ＥＸＡＭＰＬＥ", "api_token"),
        ];
        for (text, name) in cases {
            assert_eq!(names(&d.scan(text)), [name], "{text:?}");
            let redacted = d.redact(text);
            assert_eq!(redacted, format!("[redacted:{name}]"), "{text:?}");
        }
    }

    #[test]
    fn new_secret_shapes() {
        let d = Detectors::builtin();
        let pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGN0c2EBCAC5\n=abcd\n-----END PGP PRIVATE KEY BLOCK-----";
        let age = "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSQ0LL8L";
        let pem_body = format!(
            "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7{}\n{}",
            "a".repeat(20),
            "b".repeat(64)
        );
        let openssh = format!(
            "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ{}",
            "A".repeat(30)
        );
        for text in [pgp, age, &pem_body, &openssh] {
            assert_eq!(names(&d.scan(text)), ["private_key"], "{text:?}");
            assert_eq!(d.redact(text), "[redacted:private_key]", "{text:?}");
        }
        let aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        assert_eq!(names(&d.scan(&format!("key={aws} "))), ["api_token"]);
        // A git hash is 40 characters too.
        assert!(
            d.scan("e83c5163316f89bfbde7d9ab23ca2e25604af290")
                .is_empty()
        );
        assert!(
            d.scan(&format!("{aws}x")).is_empty(),
            "41 characters are not a key"
        );
    }

    #[test]
    fn typed_in_pieces_is_found_when_the_last_piece_arrives() {
        let d = Detectors::builtin();
        assert!(d.scan_after("", "4111 1111").is_empty());
        assert_eq!(
            names(&d.scan_after("4111 1111", " 1111 1111")),
            ["card_number"]
        );
        // A secret typed earlier is not counted again by what follows it.
        assert!(d.scan_after("4111 1111 1111 1111", " thanks").is_empty());
    }

    #[test]
    fn every_listed_digit_zero_starts_ten_digits() {
        for &zero in DIGIT_ZEROS {
            for value in 0..10 {
                let c = char::from_u32(zero + value).unwrap();
                assert!(c.is_numeric(), "U+{:04X}", zero + value);
                assert_eq!(
                    ascii_digit(c),
                    char::from_digit(value, 10),
                    "U+{:04X}",
                    zero + value
                );
            }
        }
        assert_eq!(ascii_digit('7'), None);
        assert_eq!(ascii_digit('x'), None);
    }

    #[test]
    fn plain_prose_with_numbers_has_no_hits() {
        let d = Detectors::builtin();
        for text in [
            "call 555 0100 at 14:30, order 12345678",
            "The meeting moved to 2026-11-27 at 09:00; room 4.12, ext. 5521.",
            "Invoice 2024-00017 totals 1,234.56 EUR, due in 30 days.",
            "Hello world, nothing to see here. Ask-me-anything threads are fun.",
            "",
        ] {
            assert!(d.scan(text).is_empty(), "{text}: {:?}", d.scan(text));
            assert_eq!(d.redact(text), text);
        }
    }

    #[test]
    fn scan_never_carries_the_text() {
        let d = Detectors::builtin();
        let card = "4111111111111111";
        let iban = "GB82WEST12345698765432";
        let text = format!("{card} and {iban} and {card}");
        let hits = d.scan(&text);
        assert_eq!(names(&hits), ["card_number", "iban"]);
        assert_eq!(hits[0].count, 2);
        let serialized = format!("{hits:?}");
        assert!(!serialized.contains(card) && !serialized.contains("4111"));
        assert!(!serialized.contains(iban) && !serialized.contains("WEST"));
    }

    #[test]
    fn redact_merges_overlaps() {
        let mut d = Detectors::builtin();
        d.add_regex("digits", Regex::new(r"1111 1111 ok").unwrap(), false);
        assert_eq!(
            d.redact("a 4111 1111 1111 1111 ok b"),
            "a [redacted:card_number] b"
        );
        assert_eq!(d.redact("x 1111 ok"), "x 1111 ok");
    }

    #[test]
    fn user_regex_detectors() {
        let mut d = Detectors::builtin();
        d.add_regex("employee_id", Regex::new(r"\bEMP-\d{6}\b").unwrap(), false);
        assert!(d.contains("employee_id"));
        assert!(!d.is_secret("employee_id"));
        assert!(d.names().contains(&"employee_id".to_string()));
        let hits = d.scan("EMP-123456 and EMP-654321");
        assert_eq!(
            hits,
            vec![DetectorHit {
                name: "employee_id".into(),
                secret: false,
                count: 2
            }]
        );

        // A second add under the same name keeps the first pattern and can only raise secrecy.
        d.add_regex(
            "employee_id",
            Regex::new(r"\bCONTRACTOR-\d{4}\b").unwrap(),
            true,
        );
        assert!(d.is_secret("employee_id"));
        d.add_regex("employee_id", Regex::new(r"nothing").unwrap(), false);
        assert!(d.is_secret("employee_id"));
        assert_eq!(
            hit_count(&d, "EMP-123456 CONTRACTOR-1234", "employee_id"),
            2
        );

        // Adding to a built-in keeps the built-in running and its secrecy.
        d.add_regex("card_number", Regex::new(r"\bCARD#\d+\b").unwrap(), false);
        assert!(d.is_secret("card_number"));
        assert_eq!(hit_count(&d, "CARD#42, 4111111111111111", "card_number"), 2);
        // Digits joined by a space are one run: "42 4111..." is itself a valid 18-digit Visa
        // number here, overlapping CARD#42, so the two count as one region.
        assert_eq!(hit_count(&d, "CARD#42 4111111111111111", "card_number"), 1);

        // Empty matches flag nothing.
        d.add_regex("empty", Regex::new(r"x*").unwrap(), true);
        assert!(d.scan("abc").is_empty());
        assert_eq!(d.redact("abc"), "abc");
    }

    #[test]
    fn password_context_cases() {
        assert!(Detectors::builtin().contains("password_context"));
        assert!(Detectors::builtin().is_secret("password_context"));
        for title in [
            "Password",
            "Enter passphrase",
            "Passwort eingeben",
            "Saisir le mot de passe",
            "Introduzca la contraseña",
            "Authentication Required",
            "Unlock Keyring",
            "Unlock Login Keyring",
            "[sudo] password for alice",
            "Password Manager Settings",
            "Enter PIN",
            "Smart card PIN required",
            "Passwords.kdbx - KeePassXC",
        ] {
            assert!(password_context(None, Some(title)), "{title}");
        }
        for title in [
            "Sign in - Google Accounts",
            "Log in to GitHub",
            "Dropped pin - Google Maps",
            "Terminal",
            "Pinned messages",
            "",
        ] {
            assert!(!password_context(None, Some(title)), "{title}");
        }
        for app in [
            "pinentry-gtk-2",
            "pinentry-qt",
            "Pinentry",
            "ssh-askpass",
            "/usr/lib/openssh/gnome-ssh-askpass",
            "ksshaskpass",
            "polkit-gnome-authentication-agent-1",
            "polkit-kde-authentication-agent-1",
            "gcr-prompter",
            "kwalletd6",
            "lxqt-sudo",
            "gksudo",
        ] {
            assert!(password_context(Some(app), None), "{app}");
            assert!(password_context(Some(app), Some("Anything")), "{app}");
        }
        for app in ["xterm", "firefox", "kwalletmanager5", "keepassxc"] {
            assert!(!password_context(Some(app), Some("Untitled")), "{app}");
        }
        assert!(!password_context(None, None));
    }

    fn card_strategy() -> impl Strategy<Value = String> {
        let prefixes = prop::sample::select(vec![
            "4", "51", "55", "2221", "2720", "34", "37", "6011", "644", "649", "65", "3528",
            "3589", "300", "305", "36", "38", "62",
        ]);
        (
            prefixes,
            13usize..=19,
            prop::collection::vec(0u8..10, 19),
            0u8..3,
        )
            .prop_map(|(prefix, len, fill, sep)| {
                let mut partial = prefix.to_string();
                for d in fill.iter().take(len - 1 - prefix.len()) {
                    partial.push(char::from(b'0' + d));
                }
                let digits = with_check_digit(&partial);
                match sep {
                    0 => digits,
                    _ => {
                        let sep = if sep == 1 { " " } else { "-" };
                        let groups: Vec<&str> = digits
                            .as_bytes()
                            .chunks(4)
                            .filter_map(|c| std::str::from_utf8(c).ok())
                            .collect();
                        groups.join(sep)
                    }
                }
            })
    }

    proptest! {
        #[test]
        fn redacted_text_has_nothing_left_to_flag(
            parts in prop::collection::vec(
                prop_oneof![card_strategy(), "[a-zA-Z0-9 .,:-]{0,12}"],
                0..8,
            )
        ) {
            let d = Detectors::builtin();
            let text = parts.concat();
            let redacted = d.redact(&text);
            prop_assert!(d.scan(&redacted).is_empty(), "{text:?} -> {redacted:?}");
        }

        #[test]
        fn separated_cards_are_all_found(cards in prop::collection::vec(card_strategy(), 1..5)) {
            let d = Detectors::builtin();
            let text = cards.join(" | ");
            prop_assert_eq!(hit_count(&d, &text, "card_number"), cards.len());
        }
    }
}
