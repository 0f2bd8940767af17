//! Just enough XML to read AWS Query-protocol answers: the text of a named element.
//! STS's GetCallerIdentity answer and its error document are small, flat and of a
//! fixed shape, so a full XML parser would buy nothing but build time.

/// The unescaped text of the first `<name>…</name>` in `doc`, if any. Elements with
/// attributes (`<name a="b">`) are not looked for: AWS writes none on these.
pub fn element_text(doc: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = doc.find(&open)? + open.len();
    let len = doc[start..].find(&close)?;
    Some(unescape(&doc[start..start + len]))
}

/// Replaces XML's five predefined entities and numeric character references; an
/// unknown or malformed reference is kept as written.
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|&i| i <= 12) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_unescapes_elements() {
        let doc = "<A><Arn>arn:aws:iam::1:user/a&amp;b</Arn><Arn>second</Arn></A>";
        assert_eq!(
            element_text(doc, "Arn").as_deref(),
            Some("arn:aws:iam::1:user/a&b")
        );
        assert_eq!(element_text(doc, "UserId"), None);
        assert_eq!(element_text("<Arn>unclosed", "Arn"), None);
    }

    #[test]
    fn unescapes_entities_and_keeps_junk() {
        assert_eq!(unescape("&lt;&gt;&quot;&apos;&amp;"), "<>\"'&");
        assert_eq!(unescape("&#65;&#x42;"), "AB");
        assert_eq!(unescape("a & b &bogus; &#xZZ; &"), "a & b &bogus; &#xZZ; &");
    }
}
