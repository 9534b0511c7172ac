//! A small GBNF reader for the tests: it parses the subset of llama.cpp's grammar syntax the
//! families write, decides whether a text matches, and generates random texts the grammar
//! allows. It lets the tests check, without llama.cpp, that what a grammar lets the model
//! write is what the parser reads.
//!
//! It is deliberately stricter than llama.cpp where that catches mistakes: one rule per line,
//! only the escapes llama.cpp knows (`\x \u \U \t \r \n \\ \" \[ \]`), every referenced rule
//! defined, a `root` rule present.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone)]
enum Node {
    Literal(Vec<char>),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Rule(String),
    Sequence(Vec<Node>),
    Choice(Vec<Node>),
    Repeat {
        node: Box<Node>,
        min: usize,
        max: Option<usize>,
    },
}

pub(super) struct Grammar {
    rules: HashMap<String, Node>,
}

struct Reader<'a> {
    chars: &'a [char],
    pos: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

impl Reader<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_word_char) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected '{c}' at {}", self.context()))
        }
    }

    fn context(&self) -> String {
        self.chars[self.pos.min(self.chars.len())..]
            .iter()
            .take(30)
            .collect()
    }

    fn hex(&mut self, digits: usize) -> Result<char, String> {
        let text: String = self
            .chars
            .get(self.pos..self.pos + digits)
            .ok_or("short hex escape")?
            .iter()
            .collect();
        self.pos += digits;
        let value =
            u32::from_str_radix(&text, 16).map_err(|e| format!("bad hex escape {text}: {e}"))?;
        char::from_u32(value).ok_or_else(|| format!("bad code point {text}"))
    }

    /// One character of a literal or class, with llama.cpp's escapes.
    fn char(&mut self) -> Result<char, String> {
        let c = self.peek().ok_or("unexpected end of rule")?;
        self.pos += 1;
        if c != '\\' {
            return Ok(c);
        }
        let e = self.peek().ok_or("unexpected end after backslash")?;
        self.pos += 1;
        match e {
            'x' => self.hex(2),
            'u' => self.hex(4),
            'U' => self.hex(8),
            't' => Ok('\t'),
            'r' => Ok('\r'),
            'n' => Ok('\n'),
            '\\' | '"' | '[' | ']' => Ok(e),
            other => Err(format!(
                "llama.cpp has no escape \\{other} (at {})",
                self.context()
            )),
        }
    }

    fn choice(&mut self) -> Result<Node, String> {
        let mut alternatives = vec![self.sequence()?];
        loop {
            self.skip_space();
            if self.peek() != Some('|') {
                break;
            }
            self.pos += 1;
            alternatives.push(self.sequence()?);
        }
        Ok(if alternatives.len() == 1 {
            alternatives.remove(0)
        } else {
            Node::Choice(alternatives)
        })
    }

    fn sequence(&mut self) -> Result<Node, String> {
        let mut items = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                None | Some('|' | ')') => break,
                _ => items.push(self.item()?),
            }
        }
        if items.is_empty() {
            return Err(format!("empty alternative at {}", self.context()));
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Node::Sequence(items)
        })
    }

    fn number(&mut self) -> Result<usize, String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        text.parse()
            .map_err(|_| format!("expected a number at {}", self.context()))
    }

    /// `{m}`, `{m,}` or `{m,n}`, leaving the cursor on the closing brace.
    fn bounds(&mut self) -> Result<(usize, Option<usize>), String> {
        self.expect('{')?;
        let min = self.number()?;
        let max = if self.peek() == Some(',') {
            self.pos += 1;
            if self.peek() == Some('}') {
                None
            } else {
                Some(self.number()?)
            }
        } else {
            Some(min)
        };
        if self.peek() != Some('}') {
            return Err(format!("expected '}}' at {}", self.context()));
        }
        Ok((min, max))
    }

    fn item(&mut self) -> Result<Node, String> {
        let mut node = match self.peek() {
            Some('"') => {
                self.pos += 1;
                let mut text = Vec::new();
                while self.peek() != Some('"') {
                    text.push(self.char()?);
                }
                self.pos += 1;
                Node::Literal(text)
            }
            Some('[') => {
                self.pos += 1;
                let negated = self.peek() == Some('^');
                if negated {
                    self.pos += 1;
                }
                let mut ranges = Vec::new();
                while self.peek() != Some(']') {
                    let first = self.char()?;
                    let is_range = self.peek() == Some('-')
                        && self.chars.get(self.pos + 1).is_some_and(|c| *c != ']');
                    if is_range {
                        self.pos += 1;
                        let last = self.char()?;
                        if last < first {
                            return Err(format!("backwards range {first:?}-{last:?}"));
                        }
                        ranges.push((first, last));
                    } else {
                        ranges.push((first, first));
                    }
                }
                self.pos += 1;
                Node::Class { negated, ranges }
            }
            Some('(') => {
                self.pos += 1;
                let inner = self.choice()?;
                self.skip_space();
                self.expect(')')?;
                inner
            }
            Some(c) if is_word_char(c) => Node::Rule(self.word()),
            _ => return Err(format!("unexpected text at {}", self.context())),
        };
        loop {
            let (min, max) = match self.peek() {
                Some('?') => (0, Some(1)),
                Some('*') => (0, None),
                Some('+') => (1, None),
                Some('{') => self.bounds()?,
                _ => break,
            };
            // `bounds` stops on its closing brace; step over it or over the operator.
            self.pos += 1;
            node = Node::Repeat {
                node: Box::new(node),
                min,
                max,
            };
        }
        Ok(node)
    }
}

fn references(node: &Node, out: &mut Vec<String>) {
    match node {
        Node::Rule(name) => out.push(name.clone()),
        Node::Sequence(items) | Node::Choice(items) => {
            items.iter().for_each(|n| references(n, out))
        }
        Node::Repeat { node, .. } => references(node, out),
        Node::Literal(_) | Node::Class { .. } => {}
    }
}

impl Grammar {
    pub(super) fn parse(text: &str) -> Result<Grammar, String> {
        let mut rules = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let chars: Vec<char> = line.chars().collect();
            let mut reader = Reader {
                chars: &chars,
                pos: 0,
            };
            let name = reader.word();
            if name.is_empty() {
                return Err(format!("a rule must start with its name: {line}"));
            }
            reader.skip_space();
            for c in "::=".chars() {
                reader.expect(c)?;
            }
            let body = reader.choice().map_err(|e| format!("rule {name}: {e}"))?;
            if reader.pos != chars.len() {
                return Err(format!(
                    "rule {name}: unparsed text at {}",
                    reader.context()
                ));
            }
            if rules.insert(name.clone(), body).is_some() {
                return Err(format!("rule {name} defined twice"));
            }
        }
        if !rules.contains_key("root") {
            return Err("no root rule".into());
        }
        for (name, body) in &rules {
            let mut used = Vec::new();
            references(body, &mut used);
            if let Some(missing) = used.iter().find(|r| !rules.contains_key(*r)) {
                return Err(format!("rule {name} uses undefined rule {missing}"));
            }
        }
        Ok(Grammar { rules })
    }

    /// Whether the whole of `text` matches `root`.
    pub(super) fn accepts(&self, text: &str) -> bool {
        let input: Vec<char> = text.chars().collect();
        let mut memo = HashMap::new();
        self.ends(&Node::Rule("root".into()), &input, 0, &mut memo)
            .contains(&input.len())
    }

    /// Every position where a match of `node` starting at `pos` can end.
    fn ends(
        &self,
        node: &Node,
        input: &[char],
        pos: usize,
        memo: &mut HashMap<(String, usize), BTreeSet<usize>>,
    ) -> BTreeSet<usize> {
        match node {
            Node::Literal(text) => {
                let matches = input.get(pos..pos + text.len()) == Some(text.as_slice());
                matches.then_some(pos + text.len()).into_iter().collect()
            }
            Node::Class { negated, ranges } => match input.get(pos) {
                Some(c) if class_contains(*negated, ranges, *c) => BTreeSet::from([pos + 1]),
                _ => BTreeSet::new(),
            },
            Node::Rule(name) => {
                let key = (name.clone(), pos);
                if let Some(found) = memo.get(&key) {
                    return found.clone();
                }
                let found = self.ends(&self.rules[name], input, pos, memo);
                memo.insert(key, found.clone());
                found
            }
            Node::Sequence(items) => {
                let mut positions = BTreeSet::from([pos]);
                for item in items {
                    positions = positions
                        .iter()
                        .flat_map(|p| self.ends(item, input, *p, memo))
                        .collect();
                    if positions.is_empty() {
                        break;
                    }
                }
                positions
            }
            Node::Choice(alternatives) => alternatives
                .iter()
                .flat_map(|a| self.ends(a, input, pos, memo))
                .collect(),
            Node::Repeat { node, min, max } => {
                let mut result = BTreeSet::new();
                if *min == 0 {
                    result.insert(pos);
                }
                let mut frontier = BTreeSet::from([pos]);
                let limit = max.unwrap_or(input.len() + *min + 1);
                for count in 1..=limit {
                    let mut next: BTreeSet<usize> = frontier
                        .iter()
                        .flat_map(|p| self.ends(node, input, *p, memo))
                        .collect();
                    if max.is_none() && count > *min {
                        next.retain(|p| !result.contains(p));
                    }
                    if next.is_empty() {
                        break;
                    }
                    if count >= *min {
                        result.extend(next.iter().copied());
                    }
                    frontier = next;
                }
                result
            }
        }
    }

    /// A random text the grammar allows; `choices` drives every decision. Past its end every
    /// choice is 0 (first alternative, longest bounded repetition), which still terminates for
    /// grammars without recursion, as the families' are.
    pub(super) fn generate(&self, choices: &[u32]) -> String {
        let mut tape = Tape { choices, next: 0 };
        let mut out = String::new();
        self.generate_node(&Node::Rule("root".into()), &mut tape, &mut out);
        out
    }

    fn generate_node(&self, node: &Node, tape: &mut Tape<'_>, out: &mut String) {
        match node {
            Node::Literal(text) => out.extend(text.iter()),
            Node::Class { negated, ranges } => {
                let candidates: Vec<char> = CANDIDATE_CHARS
                    .chars()
                    .chain(ranges.iter().flat_map(|(a, b)| [*a, *b]))
                    .filter(|c| class_contains(*negated, ranges, *c))
                    .collect();
                assert!(
                    !candidates.is_empty(),
                    "class {ranges:?} matches no candidate"
                );
                out.push(candidates[tape.pick(candidates.len())]);
            }
            Node::Rule(name) => self.generate_node(&self.rules[name], tape, out),
            Node::Sequence(items) => items.iter().for_each(|i| self.generate_node(i, tape, out)),
            Node::Choice(alternatives) => {
                let chosen = &alternatives[tape.pick(alternatives.len())];
                self.generate_node(chosen, tape, out);
            }
            Node::Repeat { node, min, max } => {
                let max = max.unwrap_or(min + 4);
                // Usually short, sometimes as long as allowed: both ends need testing.
                let count = match tape.pick(4) {
                    0 => max,
                    _ => min + tape.pick((max - min).min(12) + 1),
                };
                for _ in 0..count {
                    self.generate_node(node, tape, out);
                }
            }
        }
    }
}

/// Characters tried for a class: ASCII, the controls and escapes that trip parsers, and
/// some non-ASCII text.
const CANDIDATE_CHARS: &str = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\n\r\t\u{1}\u{1f}\u{7f}éß中文😀\u{a0}";

fn class_contains(negated: bool, ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)) != negated
}

struct Tape<'a> {
    choices: &'a [u32],
    next: usize,
}

impl Tape<'_> {
    fn pick(&mut self, n: usize) -> usize {
        let value = self.choices.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        value as usize % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_matches_the_syntax_the_families_use() {
        let g = Grammar::parse(
            r#"root ::= "a" ( [0-9]{1,3} | word ) [^"\\\x00-\x1F0-9]* "\n"?
word ::= [a-z-]+"#,
        )
        .unwrap();
        assert!(g.accepts("a123"));
        assert!(g.accepts("a12é\n"));
        assert!(g.accepts("ab-c"));
        assert!(!g.accepts("a1234"));
        assert!(!g.accepts("a1\"\n"));
        assert!(!g.accepts("b1"));
        for seed in 0..50u32 {
            let choices: Vec<u32> = (0..100)
                .map(|i| seed.wrapping_mul(7919).wrapping_add(i * 31))
                .collect();
            let text = g.generate(&choices);
            assert!(g.accepts(&text), "{text:?}");
        }
    }

    #[test]
    fn rejects_what_llama_cpp_would_reject() {
        assert!(Grammar::parse(r#"root ::= "\-""#).is_err());
        assert!(Grammar::parse(r#"root ::= other"#).is_err());
        assert!(Grammar::parse(r#"start ::= "a""#).is_err());
        assert!(Grammar::parse(r#"root ::= ( "a" "#).is_err());
        assert!(Grammar::parse("root_rule ::= \"a\"\nroot ::= root_rule").is_err());
    }
}
