//! What the KV cache holds, unit by unit, so that a step evaluates only what its prompt does
//! not share with what is already there.
//!
//! The conversation grows at its end from step to step, so the cache usually holds all of the
//! new prompt but its last user turn; the reply the model generated is in it too, as the
//! tokens it decoded. Where the new prompt differs (a screenshot left the conversation, the
//! reply re-tokenizes differently, old turns were left out for room), everything from the
//! first difference on is evaluated again: under M-RoPE (Qwen2-VL and later) positions cannot
//! be shifted, and every token after a change attended to what changed.

/// One unit of a prompt as the cache holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Token(i32),
    /// An image, by the identity of its pixels ([`crate::model::llama`]'s frame id).
    Image(u64),
}

/// The units in the cache, in order, with the position each starts at (an image spans many
/// positions, and under M-RoPE fewer positions than tokens).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheLine {
    units: Vec<Unit>,
    starts: Vec<i32>,
    end: i32,
    /// The tokens each image put in the cache, for counting.
    image_tokens: Vec<(u64, usize)>,
}

impl CacheLine {
    /// How many leading units of `wanted` the cache holds already. At least the last unit is
    /// always left to evaluate: its logits are where the reply starts.
    pub fn shared(&self, wanted: &[Unit]) -> usize {
        let same = self
            .units
            .iter()
            .zip(wanted)
            .take_while(|(a, b)| a == b)
            .count();
        same.min(wanted.len().saturating_sub(1))
    }

    /// Forget every unit from `n` on; returns the position the cache must be cut at.
    pub fn truncate(&mut self, n: usize) -> i32 {
        if n < self.units.len() {
            self.end = self.starts[n];
            self.units.truncate(n);
            self.starts.truncate(n);
            let kept: std::collections::HashSet<u64> = self
                .units
                .iter()
                .filter_map(|u| match u {
                    Unit::Image(id) => Some(*id),
                    Unit::Token(_) => None,
                })
                .collect();
            self.image_tokens.retain(|(id, _)| kept.contains(id));
        }
        self.end
    }

    /// Everything is gone (a new run, or the cache was cleared).
    pub fn clear(&mut self) {
        *self = CacheLine::default();
    }

    pub fn push_token(&mut self, token: i32) {
        self.units.push(Unit::Token(token));
        self.starts.push(self.end);
        self.end += 1;
    }

    /// An image that took `positions` positions and put `tokens` tokens in the cache.
    pub fn push_image(&mut self, id: u64, positions: i32, tokens: usize) {
        self.units.push(Unit::Image(id));
        self.starts.push(self.end);
        self.end += positions;
        self.image_tokens.push((id, tokens));
    }

    /// Where unit `n` starts (the end, past the last unit).
    pub fn truncated_end(&self, n: usize) -> i32 {
        self.starts.get(n).copied().unwrap_or(self.end)
    }

    /// The position after the last unit: where the next one goes.
    pub fn end(&self) -> i32 {
        self.end
    }

    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// The tokens the units up to `n` put in the cache (an image counts its own tokens).
    pub fn tokens_before(&self, n: usize) -> usize {
        self.units[..n.min(self.units.len())]
            .iter()
            .map(|u| match u {
                Unit::Token(_) => 1,
                Unit::Image(id) => self
                    .image_tokens
                    .iter()
                    .find(|(i, _)| i == id)
                    .map_or(0, |(_, n)| *n),
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(units: &[Unit]) -> CacheLine {
        let mut c = CacheLine::default();
        for u in units {
            match *u {
                Unit::Token(t) => c.push_token(t),
                Unit::Image(id) => c.push_image(id, 10, 40),
            }
        }
        c
    }

    #[test]
    fn a_grown_prompt_shares_everything_the_cache_holds() {
        let cached = [
            Unit::Token(1),
            Unit::Image(7),
            Unit::Token(2),
            Unit::Token(3),
        ];
        let c = line(&cached);
        let mut wanted = cached.to_vec();
        wanted.extend([Unit::Token(4), Unit::Image(8), Unit::Token(5)]);
        assert_eq!(c.shared(&wanted), 4);
        assert_eq!(c.end(), 13);
        assert_eq!(c.tokens_before(4), 43);
    }

    #[test]
    fn the_last_unit_is_always_evaluated_for_its_logits() {
        let cached = [Unit::Token(1), Unit::Token(2)];
        assert_eq!(line(&cached).shared(&cached), 1);
        assert_eq!(line(&cached).shared(&[]), 0);
    }

    #[test]
    fn an_evicted_image_cuts_the_cache_where_it_was() {
        let cached = [
            Unit::Token(1),
            Unit::Image(7),
            Unit::Token(2),
            Unit::Image(8),
            Unit::Token(3),
        ];
        let mut c = line(&cached);
        let wanted = [
            Unit::Token(1),
            Unit::Token(2),
            Unit::Image(8),
            Unit::Token(3),
            Unit::Token(4),
        ];
        let n = c.shared(&wanted);
        assert_eq!(n, 1);
        assert_eq!(c.truncate(n), 1);
        assert_eq!(c.units(), &[Unit::Token(1)]);
        assert_eq!(c.tokens_before(5), 1);
        c.push_token(2);
        assert_eq!(c.end(), 2);
    }
}
