//! ARN matching as IAM does it for `Resource` and the `Arn*` operators: the
//! six colon-separated components (`arn:partition:service:region:account:resource`)
//! are matched one by one, wildcards staying within their component, except
//! that a pattern with fewer components whose last one ends in `*` lets that
//! `*` run to the end of the ARN (`arn:aws:mq:*`).

use super::wildcard::{prefix_hashes, Glob, Token};

const COMPONENTS: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnPattern {
    /// The text before the first wildcard: every match starts with it, so
    /// one comparison rejects most ARNs before any component is split.
    literal_prefix: String,
    /// FNV-1a of `literal_prefix`, compared before the string itself.
    literal_prefix_hash: u64,
    /// The whole pattern when it has no wildcard: then only equality matches.
    exact: Option<String>,
    /// At most six components; the sixth (the resource) includes any further colons.
    parts: Vec<Glob>,
    /// The pattern is `*` alone: matches anything, ARN or not.
    any: bool,
    /// Fewer than six components and the last ends in `*`.
    open_ended: bool,
    /// With six components: the length and FNV-1a hash of the literal text the
    /// resource component (the sixth) must start with.
    resource_prefix: Option<(usize, u64)>,
}

/// A necessary condition for an [`ArnPattern`] to match, checked with two
/// integer comparisons against [`SplitArn`]'s precomputed prefix hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PrefixCheck {
    whole: (usize, u64),
    resource: Option<(usize, u64)>,
}

impl PrefixCheck {
    /// False only when the pattern cannot match `arn`.
    pub(super) fn may_match(&self, arn: &SplitArn<'_>) -> bool {
        let (len, hash) = self.whole;
        if arn.hashes.get(len) != Some(&hash) {
            return false;
        }
        match self.resource {
            None => true,
            Some((len, hash)) => arn.resource_hashes.get(len) == Some(&hash),
        }
    }
}

/// The literal characters a token list starts with, as (byte length, FNV-1a hash).
fn literal_prefix_of(toks: &[Token]) -> (usize, u64) {
    let text: String = toks
        .iter()
        .map_while(|t| match t {
            Token::Char(c) => Some(*c),
            _ => None,
        })
        .collect();
    let hash = prefix_hashes(&text).last().copied().unwrap_or_default();
    (text.len(), hash)
}

impl ArnPattern {
    pub fn from_tokens(toks: &[Token]) -> Self {
        let literal_prefix: String = toks
            .iter()
            .map_while(|t| match t {
                Token::Char(c) => Some(*c),
                _ => None,
            })
            .collect();
        let exact = (literal_prefix.chars().count() == toks.len()).then(|| literal_prefix.clone());
        let literal_prefix_hash = prefix_hashes(&literal_prefix)
            .last()
            .copied()
            .unwrap_or_default();
        if toks == [Token::AnyMany] {
            return ArnPattern {
                literal_prefix,
                literal_prefix_hash,
                exact,
                parts: Vec::new(),
                any: true,
                open_ended: true,
                resource_prefix: None,
            };
        }
        let mut parts: Vec<&[Token]> = Vec::with_capacity(COMPONENTS);
        let mut rest = toks;
        while parts.len() < COMPONENTS - 1 {
            match rest.iter().position(|t| *t == Token::Char(':')) {
                Some(i) => {
                    parts.push(&rest[..i]);
                    rest = &rest[i + 1..];
                }
                None => break,
            }
        }
        parts.push(rest);
        let open_ended = parts.len() < COMPONENTS && rest.last() == Some(&Token::AnyMany);
        let resource_prefix = (parts.len() == COMPONENTS).then(|| literal_prefix_of(rest));
        ArnPattern {
            literal_prefix,
            literal_prefix_hash,
            exact,
            parts: parts.into_iter().map(Glob::from_tokens).collect(),
            any: false,
            open_ended,
            resource_prefix,
        }
    }

    pub fn new(pattern: &str) -> Self {
        Self::from_tokens(&super::wildcard::tokens(pattern))
    }

    /// The number of components written, for validating policies.
    pub fn component_count(&self) -> usize {
        self.parts.len()
    }

    pub fn is_open_ended(&self) -> bool {
        self.open_ended
    }

    /// A cheap necessary condition for [`ArnPattern::matches_split`]; `None` for
    /// `*`, which matches anything.
    pub(super) fn prefix_check(&self) -> Option<PrefixCheck> {
        if self.any {
            return None;
        }
        Some(PrefixCheck {
            whole: (self.literal_prefix.len(), self.literal_prefix_hash),
            // Only a six-component pattern confines its last part to the resource
            // component; an open-ended one may run across components.
            resource: self.resource_prefix.filter(|_| !self.open_ended),
        })
    }

    pub fn matches(&self, arn: &str) -> bool {
        self.matches_split(&SplitArn::new(arn))
    }

    /// Matches an ARN split once per request (the evaluator checks the same
    /// resource against every statement).
    pub fn matches_split(&self, arn: &SplitArn<'_>) -> bool {
        if self.any {
            return true;
        }
        let prefix_len = self.literal_prefix.len();
        if arn.hashes.get(prefix_len) != Some(&self.literal_prefix_hash)
            || !arn.whole.starts_with(self.literal_prefix.as_str())
        {
            return false;
        }
        let n = self.parts.len();
        if let Some(exact) = &self.exact {
            // A six-component literal pattern is the ARN itself; a shorter
            // one (not open-ended) matches nothing.
            return n == COMPONENTS && exact.len() == arn.whole.len() && exact == arn.whole;
        }
        if n < COMPONENTS && !self.open_ended {
            return false;
        }
        if n > arn.count {
            return false;
        }
        // The last pattern component takes the rest of the ARN (the resource
        // part, or everything after an open-ended star). Checked first: it
        // is where patterns differ most.
        let last = n - 1;
        if !self.parts[last].matches(&arn.whole[arn.starts[last]..]) {
            return false;
        }
        self.parts[..last]
            .iter()
            .enumerate()
            .rev()
            .all(|(i, glob)| glob.matches(arn.component(i)))
    }
}

/// An ARN cut at its first five colons.
#[derive(Debug, Clone)]
pub struct SplitArn<'a> {
    whole: &'a str,
    /// `prefix_hashes(whole)`.
    hashes: Vec<u64>,
    /// `prefix_hashes` of the resource component (the sixth); empty when the
    /// text has fewer than six components.
    resource_hashes: Vec<u64>,
    /// Byte offset where each component starts.
    starts: [usize; COMPONENTS],
    /// How many components the text has (at most six).
    count: usize,
}

impl<'a> SplitArn<'a> {
    pub fn new(whole: &'a str) -> Self {
        let mut starts = [0usize; COMPONENTS];
        let mut count = 1;
        for (i, b) in whole.bytes().enumerate() {
            if count == COMPONENTS {
                break;
            }
            if b == b':' {
                starts[count] = i + 1;
                count += 1;
            }
        }
        SplitArn {
            whole,
            hashes: prefix_hashes(whole),
            resource_hashes: if count == COMPONENTS {
                prefix_hashes(&whole[starts[COMPONENTS - 1]..])
            } else {
                Vec::new()
            },
            starts,
            count,
        }
    }

    /// Component `i` (not the last one), without its trailing colon.
    fn component(&self, i: usize) -> &'a str {
        &self.whole[self.starts[i]..self.starts[i + 1] - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROKER: &str = "arn:aws:mq:us-east-1:123456789012:broker:orders:b-1234";

    #[test]
    fn prefix_checks_never_reject_a_match() {
        let arns = [
            BROKER,
            "arn:aws:mq:us-east-1:123456789012:broker:orders",
            "arn:aws:mq:us-east-1:123456789012:configuration:c-1",
            "arn:aws:mq:us-east-1:123456789012",
            "*",
            "",
            "arn:aws:mq:eu-west-1:123456789012:broker:ordersx:b-1:extra",
        ];
        let patterns = [
            "*",
            BROKER,
            "arn:aws:mq:*:*:broker:*",
            "arn:aws:mq:*:123456789012:broker:orders:*",
            "arn:aws:mq:*:123456789012:broker:ord?rs:*",
            "arn:aws:mq:*:123456789012:broker:orders*",
            "arn:aws:mq:*",
            "arn:aws:mq:us-*",
            "arn:aws:mq:us-east-1:123456789012:*",
            "arn:aws:mq:*:*:*",
            "arn:aws:mq:*:*:configuration:c-?",
            "arn:aws:mq:us-east-1:123456789012",
            "arn:aws:mq:us-east-1:123456789012:broker:orders",
            "arn:aws:mq:*:*:broker:*:b-1:extra",
            "arn:*:mq:*:*:broker:orders:b-1234",
            "arn:aws:mq:*:*:*:b-1234",
        ];
        let mut rejected = 0;
        for pattern in patterns {
            let p = ArnPattern::new(pattern);
            for arn in arns {
                let split = SplitArn::new(arn);
                let may = p.prefix_check().is_none_or(|c| c.may_match(&split));
                assert!(
                    may || !p.matches_split(&split),
                    "{pattern} matches {arn} but its prefix check says no"
                );
                rejected += usize::from(!may);
            }
        }
        assert!(rejected > 40, "the checks reject little: {rejected}");
    }

    #[test]
    fn component_wise() {
        assert!(ArnPattern::new("*").matches(BROKER));
        assert!(ArnPattern::new("*").matches("not-an-arn"));
        assert!(ArnPattern::new(BROKER).matches(BROKER));
        assert!(ArnPattern::new("arn:aws:mq:*:*:broker:*").matches(BROKER));
        assert!(ArnPattern::new("arn:aws:mq:*:123456789012:broker:orders:*").matches(BROKER));
        assert!(!ArnPattern::new("arn:aws:mq:*:123456789012:configuration:*").matches(BROKER));
        assert!(ArnPattern::new("arn:aws:mq:us-*-1:*:*").matches(BROKER));
        // A star in the middle does not run across components.
        assert!(!ArnPattern::new("arn:aws:*:123456789012:broker:orders:b-1234").matches(BROKER));
        // An open-ended pattern does.
        assert!(ArnPattern::new("arn:aws:mq:*").matches(BROKER));
        assert!(!ArnPattern::new("arn:aws:mq").matches(BROKER));
        assert!(!ArnPattern::new("arn:aws:mq:*:*:broker:*").matches("*"));
        assert!(
            ArnPattern::new("arn:aws:mq:us-east-1:123456789012:broker:orders:b-123?")
                .matches(BROKER)
        );
    }
}
