//! Policy variables: `${aws:username}`, `${aws:PrincipalTag/team}`, any other
//! single-valued context key, the escapes `${*}`, `${?}`, `${$}`, and an
//! optional default (`${aws:username, 'anonymous'}`). Only policies of
//! Version 2012-10-17 substitute them; older ones read `${...}` literally.

use super::context::RequestContext;
use super::wildcard::Token;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Text from the policy itself (its `*` and `?` are wildcards where the
    /// operator takes wildcards).
    Text(String),
    /// A variable: lowercase key, and its default.
    Var {
        key: String,
        default: Option<String>,
    },
    /// `${*}`, `${?}`, `${$}`: always the literal character.
    Escaped(char),
}

/// A policy string that may contain variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Reads `s`; with `substitute` false (Version 2008-10-17) it is all text.
    pub fn parse(s: &str, substitute: bool) -> Template {
        if !substitute || !s.contains("${") {
            return Template {
                parts: vec![Part::Text(s.to_owned())],
            };
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start + 2..].find('}') else {
                break;
            };
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let inner = &rest[start + 2..start + 2 + len];
            parts.push(match inner {
                "*" => Part::Escaped('*'),
                "?" => Part::Escaped('?'),
                "$" => Part::Escaped('$'),
                _ => {
                    let (key, default) = match inner.split_once(',') {
                        Some((k, d)) => {
                            let d = d.trim();
                            let d = d
                                .strip_prefix('\'')
                                .and_then(|d| d.strip_suffix('\''))
                                .unwrap_or(d);
                            (k.trim(), Some(d.to_owned()))
                        }
                        None => (inner.trim(), None),
                    };
                    Part::Var {
                        key: key.to_ascii_lowercase(),
                        default,
                    }
                }
            });
            rest = &rest[start + 2 + len + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Template { parts }
    }

    /// The text when static.
    pub fn as_static(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Text(t)] => Some(t),
            [] => Some(""),
            _ => None,
        }
    }

    fn var_value<'c>(
        ctx: &'c RequestContext,
        key: &str,
        default: &'c Option<String>,
    ) -> Option<&'c str> {
        match ctx.values(key) {
            // Only single-valued keys can be substituted.
            Some([one]) => Some(one.as_str()),
            _ => default.as_deref(),
        }
    }

    /// The text with variables replaced; `None` when a variable has no value
    /// (the element using it then matches nothing).
    pub fn resolve_text(&self, ctx: &RequestContext) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Escaped(c) => out.push(*c),
                Part::Var { key, default } => out.push_str(Self::var_value(ctx, key, default)?),
            }
        }
        Some(out)
    }

    /// The wildcard tokens of a template without variables.
    pub fn resolve_tokens_static(&self) -> Option<Vec<Token>> {
        self.resolve_tokens(&RequestContext::default())
    }

    /// The wildcard tokens with variables replaced: wildcards come only from
    /// the policy's own text, never from a substituted value or an escape.
    pub fn resolve_tokens(&self, ctx: &RequestContext) -> Option<Vec<Token>> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.extend(super::wildcard::tokens(t)),
                Part::Escaped(c) => out.push(Token::Char(*c)),
                Part::Var { key, default } => {
                    out.extend(Self::var_value(ctx, key, default)?.chars().map(Token::Char))
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestContext {
        let mut c = RequestContext::new("mq:DescribeBroker", "*");
        c.set("aws:username", "alice");
        c.set("aws:PrincipalTag/team", "blue*");
        c
    }

    #[test]
    fn substitutes_variables_and_escapes() {
        let t = Template::parse("home/${aws:username}/${*}${?}${$}", true);
        assert_eq!(t.resolve_text(&ctx()).as_deref(), Some("home/alice/*?$"));
        let t = Template::parse("${aws:principaltag/TEAM}", true);
        assert_eq!(t.resolve_text(&ctx()).as_deref(), Some("blue*"));
    }

    #[test]
    fn substituted_wildcards_are_literal() {
        let t = Template::parse("x/${aws:PrincipalTag/team}/*", true);
        let toks = t.resolve_tokens(&ctx()).expect("resolves");
        assert_eq!(toks[6], Token::Char('*'));
        assert_eq!(toks.last(), Some(&Token::AnyMany));
    }

    #[test]
    fn missing_variables_resolve_to_nothing_unless_defaulted() {
        let t = Template::parse("${aws:userid}", true);
        assert_eq!(t.resolve_text(&ctx()), None);
        let t = Template::parse("${aws:userid, 'nobody'}", true);
        assert_eq!(t.resolve_text(&ctx()).as_deref(), Some("nobody"));
    }

    #[test]
    fn old_version_and_unclosed_are_literal() {
        let t = Template::parse("${aws:username}", false);
        assert_eq!(t.resolve_text(&ctx()).as_deref(), Some("${aws:username}"));
        let t = Template::parse("a${aws:username", true);
        assert_eq!(t.resolve_text(&ctx()).as_deref(), Some("a${aws:username"));
    }
}
