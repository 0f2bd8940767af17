//! ARN matching as IAM does it for `Resource` and the `Arn*` operators: the
//! six colon-separated components (`arn:partition:service:region:account:resource`)
//! are matched one by one, wildcards staying within their component, except
//! that a pattern with fewer components whose last one ends in `*` lets that
//! `*` run to the end of the ARN (`arn:aws:mq:*`).

use super::wildcard::{Glob, Token};

const COMPONENTS: usize = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnPattern {
    /// At most six components; the sixth (the resource) includes any further colons.
    parts: Vec<Glob>,
    /// The pattern is `*` alone: matches anything, ARN or not.
    any: bool,
    /// Fewer than six components and the last ends in `*`.
    open_ended: bool,
}

impl ArnPattern {
    pub fn from_tokens(toks: &[Token]) -> Self {
        if toks == [Token::AnyMany] {
            return ArnPattern {
                parts: Vec::new(),
                any: true,
                open_ended: true,
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
        ArnPattern {
            parts: parts.into_iter().map(Glob::from_tokens).collect(),
            any: false,
            open_ended,
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

    pub fn matches(&self, arn: &str) -> bool {
        if self.any {
            return true;
        }
        let n = self.parts.len();
        if n < COMPONENTS && !self.open_ended {
            return false;
        }
        let mut rest = arn;
        for (i, glob) in self.parts.iter().enumerate() {
            let last = i + 1 == n;
            // The last component of an open-ended pattern, and the sixth, take
            // the rest of the ARN; the others end at the next colon.
            let part = if last {
                std::mem::take(&mut rest)
            } else {
                match rest.split_once(':') {
                    Some((p, r)) => {
                        rest = r;
                        p
                    }
                    None => return false,
                }
            };
            if !glob.matches(part) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROKER: &str = "arn:aws:mq:us-east-1:123456789012:broker:orders:b-1234";

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
