//! IAM wildcard matching (`*` any run of characters, `?` exactly one), in
//! time linear in the text.
//!
//! A pattern is split at its `*`s into segments. The first segment must match
//! the start of the text and the last its end; each middle segment is matched
//! at its leftmost occurrence after the previous one. Leftmost is always the
//! right choice (a later segment can only gain from more text to its right),
//! so nothing is ever retried: no backtracking, no blow-up on patterns like
//! `*a*a*a*b`. A segment without `?` is found with the standard library's
//! substring search (Two-Way, linear); a segment with `?` with a bit-parallel
//! shift-and over the text, linear for segments up to 64 characters and
//! O(n * len/64) beyond.

/// One element of a pattern, after policy variables have been substituted
/// (a `${*}` variable yields a literal `*`, not a wildcard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Char(char),
    AnyOne,
    AnyMany,
}

/// Reads a pattern string: `*` and `?` are wildcards, everything else literal.
pub fn tokens(pattern: &str) -> Vec<Token> {
    pattern
        .chars()
        .map(|c| match c {
            '*' => Token::AnyMany,
            '?' => Token::AnyOne,
            c => Token::Char(c),
        })
        .collect()
}

/// A run of the pattern between two `*`s.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    /// `Some` when the segment has no `?`: matched as a plain string.
    literal: Option<String>,
    /// `None` = `?`.
    chars: Vec<Option<char>>,
}

impl Segment {
    fn new(chars: Vec<Option<char>>) -> Self {
        let literal = chars.iter().copied().collect::<Option<String>>();
        Segment { literal, chars }
    }

    /// Byte offset just past this segment when it matches at the start of `text`.
    fn match_prefix(&self, text: &str) -> Option<usize> {
        if let Some(lit) = &self.literal {
            return text.starts_with(lit.as_str()).then_some(lit.len());
        }
        let mut it = text.char_indices();
        for want in &self.chars {
            let (_, c) = it.next()?;
            if want.is_some_and(|w| w != c) {
                return None;
            }
        }
        Some(it.next().map_or(text.len(), |(i, _)| i))
    }

    /// Byte offset where this segment starts when it matches the end of `text`.
    fn match_suffix(&self, text: &str) -> Option<usize> {
        if let Some(lit) = &self.literal {
            return text.ends_with(lit.as_str()).then(|| text.len() - lit.len());
        }
        let mut it = text.char_indices().rev();
        let mut start = text.len();
        for want in self.chars.iter().rev() {
            let (i, c) = it.next()?;
            if want.is_some_and(|w| w != c) {
                return None;
            }
            start = i;
        }
        Some(start)
    }

    /// Byte offset just past the leftmost occurrence of this segment in `text`.
    fn find_end(&self, text: &str) -> Option<usize> {
        if let Some(lit) = &self.literal {
            return text.find(lit.as_str()).map(|i| i + lit.len());
        }
        shift_and_find_end(&self.chars, text)
    }
}

/// Shift-and (bitap) search: bit `i` of the state says "the last i+1 text
/// characters match the first i+1 segment elements".
fn shift_and_find_end(seg: &[Option<char>], text: &str) -> Option<usize> {
    let k = seg.len();
    if k == 0 {
        return Some(0);
    }
    let words = k.div_ceil(64);
    let mut any = vec![0u64; words];
    let mut by_char: Vec<(char, Vec<u64>)> = Vec::new();
    for (i, c) in seg.iter().enumerate() {
        let (w, b) = (i / 64, i % 64);
        match c {
            None => any[w] |= 1 << b,
            Some(c) => {
                let pos = match by_char.binary_search_by(|(x, _)| x.cmp(c)) {
                    Ok(p) => p,
                    Err(p) => {
                        by_char.insert(p, (*c, vec![0u64; words]));
                        p
                    }
                };
                by_char[pos].1[w] |= 1 << b;
            }
        }
    }
    let last = ((k - 1) / 64, (k - 1) % 64);
    let mut state = vec![0u64; words];
    for (i, c) in text.char_indices() {
        let mask = by_char
            .binary_search_by(|(x, _)| x.cmp(&c))
            .ok()
            .map(|p| &by_char[p].1);
        // state = ((state << 1) | 1) & mask, across words.
        let mut carry = 1u64;
        for w in 0..words {
            let next_carry = state[w] >> 63;
            let m = any[w] | mask.map_or(0, |m| m[w]);
            state[w] = ((state[w] << 1) | carry) & m;
            carry = next_carry;
        }
        if state[last.0] & (1 << last.1) != 0 {
            return Some(i + c.len_utf8());
        }
    }
    None
}

/// A compiled wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `*`
    Any,
    /// No wildcard at all; `hash` is [`prefix_hashes`]'s last entry for it.
    Exact { text: String, hash: u64 },
    /// `literal*`, the common `mq:Describe*`.
    Prefix { text: String, hash: u64 },
    /// No `*`; one or more `?`.
    Single(Segment),
    /// At least one `*`: `first*middle*...*last`.
    General {
        first: Segment,
        middle: Vec<Segment>,
        last: Segment,
    },
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Self::from_tokens(&tokens(pattern))
    }

    pub fn from_tokens(toks: &[Token]) -> Self {
        let mut segments: Vec<Vec<Option<char>>> = vec![Vec::new()];
        for t in toks {
            match t {
                Token::AnyMany => segments.push(Vec::new()),
                Token::AnyOne => segments.last_mut().map_or((), |s| s.push(None)),
                Token::Char(c) => segments.last_mut().map_or((), |s| s.push(Some(*c))),
            }
        }
        // Consecutive stars are one star: drop empty middle segments.
        let n = segments.len();
        let kind = if n == 1 {
            let seg = Segment::new(segments.remove(0));
            match seg.literal {
                Some(lit) => Kind::Exact {
                    hash: fnv1a(lit.as_bytes()),
                    text: lit,
                },
                None => Kind::Single(seg),
            }
        } else {
            let last = Segment::new(segments.pop().unwrap_or_default());
            let first = Segment::new(segments.remove(0));
            let middle: Vec<Segment> = segments
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(Segment::new)
                .collect();
            match (&first.literal, middle.is_empty(), last.chars.is_empty()) {
                (Some(f), true, true) if f.is_empty() => Kind::Any,
                (Some(f), true, true) => Kind::Prefix {
                    hash: fnv1a(f.as_bytes()),
                    text: f.clone(),
                },
                _ => Kind::General {
                    first,
                    middle,
                    last,
                },
            }
        };
        Glob { kind }
    }

    /// Whether the pattern has no wildcard (it is then just a string).
    pub fn is_literal(&self) -> bool {
        matches!(self.kind, Kind::Exact { .. })
    }

    pub fn matches(&self, text: &str) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact { text: s, .. } => s == text,
            Kind::Prefix { text: p, .. } => text.starts_with(p.as_str()),
            Kind::Single(seg) => seg.match_prefix(text) == Some(text.len()),
            Kind::General {
                first,
                middle,
                last,
            } => {
                let Some(mut pos) = first.match_prefix(text) else {
                    return false;
                };
                let Some(tail_start) = last.match_suffix(text) else {
                    return false;
                };
                if tail_start < pos {
                    return false;
                }
                for seg in middle {
                    match seg.find_end(&text[pos..tail_start]) {
                        Some(end) => pos += end,
                        None => return false,
                    }
                }
                true
            }
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// The FNV-1a hash of every prefix of `text` (entry `i` hashes `text[..i]`).
/// Computed once per request for the action, it lets each statement reject
/// a literal or `prefix*` action pattern with one integer comparison instead
/// of a string comparison.
pub fn prefix_hashes(text: &str) -> Vec<u64> {
    let mut out = Vec::with_capacity(text.len() + 1);
    let mut h = FNV_OFFSET;
    out.push(h);
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        out.push(h);
    }
    out
}

impl Glob {
    /// [`Glob::matches`], given `prefix_hashes(text)`.
    pub fn matches_hashed(&self, text: &str, hashes: &[u64]) -> bool {
        match &self.kind {
            Kind::Exact { text: s, hash } => {
                hashes.len() == s.len() + 1 && hashes[s.len()] == *hash && s == text
            }
            Kind::Prefix { text: p, hash } => {
                hashes.get(p.len()) == Some(hash) && text.starts_with(p.as_str())
            }
            _ => self.matches(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).matches(t)
    }

    #[test]
    fn basics() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("mq:Describe*", "mq:DescribeBroker"));
        assert!(!m("mq:Describe*", "mq:ListBrokers"));
        assert!(m("mq:*Broker", "mq:DeleteBroker"));
        assert!(!m("mq:*Broker", "mq:DeleteBrokers"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(!m("a?c", "abbc"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxcyyb"));
        assert!(m("*a?b*", "xxaZbyy"));
        assert!(m("**", "x"));
        assert!(m("a**b", "ab"));
        assert!(!m("", "x"));
        assert!(m("", ""));
        assert!(m("?", "ሴ"));
        assert!(m("*?", "ሴ"));
        assert!(!m("??", "ሴ"));
        assert!(m("x*ሴ?", "xaሴb"));
    }

    #[test]
    fn hashed_matching_agrees() {
        for (p, t) in [
            ("mq:describe*", "mq:describebroker"),
            ("mq:describe*", "mq:deletebroker"),
            ("mq:deletebroker", "mq:deletebroker"),
            ("mq:deletebroker", "mq:rebootbroker"),
            ("mq:deletebroker", "mq:deletebrokers"),
            ("mq:*", "mq:x"),
            ("*", ""),
            ("mq:*broker", "mq:deletebroker"),
            ("mq:list*", "mq:lis"),
        ] {
            let g = Glob::new(p);
            assert_eq!(
                g.matches_hashed(t, &prefix_hashes(t)),
                g.matches(t),
                "{p} {t}"
            );
        }
    }

    #[test]
    fn prefix_and_suffix_must_not_overlap() {
        assert!(!m("ab*ba", "aba"));
        assert!(m("ab*ba", "abba"));
        assert!(!m("a?*?a", "aba"));
    }

    #[test]
    fn question_marks_in_middle_segments() {
        assert!(m("*a?c*", "zzabczz"));
        assert!(m("*a?c*a?c", "abcabc"));
        assert!(!m("*a?c*a?c", "abc"));
        let long: String = "?".repeat(100);
        assert!(m(
            &format!("*x{long}y*"),
            &format!("qqx{}yqq", "z".repeat(100))
        ));
        assert!(!m(
            &format!("*x{long}y*"),
            &format!("qqx{}yqq", "z".repeat(99))
        ));
    }

    /// Compares against a plain recursive matcher on small inputs.
    #[test]
    fn agrees_with_a_naive_matcher() {
        fn naive(p: &[char], t: &[char]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some(('*', rest)) => (0..=t.len()).any(|i| naive(rest, &t[i..])),
                Some(('?', rest)) => !t.is_empty() && naive(rest, &t[1..]),
                Some((c, rest)) => t.first() == Some(c) && naive(rest, &t[1..]),
            }
        }
        let alphabet = ['a', 'b', '*', '?'];
        let texts = ["", "a", "b", "ab", "ba", "aab", "abab", "bbaab", "ababa"];
        // Every pattern of length <= 4 over the alphabet.
        let mut patterns = vec![String::new()];
        for _ in 0..4 {
            let more: Vec<String> = patterns
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            patterns.extend(more);
        }
        patterns.sort();
        patterns.dedup();
        for p in &patterns {
            let pc: Vec<char> = p.chars().collect();
            for t in texts {
                let tc: Vec<char> = t.chars().collect();
                assert_eq!(m(p, t), naive(&pc, &tc), "pattern {p:?} text {t:?}");
            }
        }
    }

    #[test]
    fn pathological_patterns_finish_quickly() {
        let text = format!("{}b", "a".repeat(100_000));
        let pattern = format!("{}c", "*a".repeat(5_000));
        let q_pattern = format!("{}c", "*a?".repeat(2_000));
        let start = Instant::now();
        assert!(!m(&pattern, &text));
        assert!(!m(&q_pattern, &text));
        assert!(m(&format!("{}b", "*a".repeat(5_000)), &text));
        // Tens of milliseconds at worst unoptimised; a backtracking matcher
        // would not finish at all.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
}
