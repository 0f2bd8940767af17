//! Topic exchange matching: words separated by `.`, `*` matches one word, `#` zero or more.

/// Whether `key` matches `pattern`.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    // As RabbitMQ: the empty string has no words (so `*` does not match it, `#` does).
    let p = words(pattern);
    let k = words(key);
    matches_from(&p, &k)
}

fn words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

/// Iterative matcher with one backtrack point per `#` (the classic wildcard algorithm), so the
/// work is bounded by `pattern words * key words` even for patterns like `#.#.#`.
fn matches_from(p: &[&str], k: &[&str]) -> bool {
    let (mut pi, mut ki) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ki < k.len() {
        if pi < p.len() && p[pi] == "#" {
            star = Some((pi, ki));
            pi += 1;
        } else if pi < p.len() && (p[pi] == "*" || p[pi] == k[ki]) {
            pi += 1;
            ki += 1;
        } else if let Some((sp, sk)) = star {
            // Let the last `#` swallow one more word and retry.
            pi = sp + 1;
            ki = sk + 1;
            star = Some((sp, sk + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == "#" {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn rabbitmq_tutorial_cases() {
        let cases = [
            ("*.orange.*", "quick.orange.rabbit", true),
            ("*.*.rabbit", "quick.orange.rabbit", true),
            ("lazy.#", "lazy.orange.elephant", true),
            ("*.orange.*", "lazy.brown.fox", false),
            ("lazy.#", "lazy", true),
            ("*.orange.*", "quick.orange.male.rabbit", false),
            ("#", "", true),
            ("#", "a.b.c", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c.y", false),
            ("*", "", false),
            ("*.#", "", false),
            ("#.*", "", false),
            ("#.#", "", true),
            ("a..b", "a..b", true),
            ("a.*.b", "a..b", true),
            ("*", "a.b", false),
            ("#.#", "a", true),
            ("a.*.#", "a", false),
            ("", "", true),
            ("a", "a", true),
        ];
        for (p, k, want) in cases {
            assert_eq!(topic_matches(p, k), want, "{p} vs {k}");
        }
    }
}
