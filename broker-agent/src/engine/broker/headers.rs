//! Headers exchange matching (`x-match` all / any; RabbitMQ 3.10 also accepts all-with-x and
//! any-with-x, which include `x-` keys in the comparison).

use amq_protocol::types::{AMQPValue, FieldTable};

/// Whether a message's headers match a binding's arguments.
pub fn headers_match(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = binding
        .inner()
        .get("x-match")
        .and_then(super::args::as_str)
        .unwrap_or_else(|| "all".to_owned());
    let (any, with_x) = match mode.as_str() {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty);
    let mut matched_any = false;
    for (k, want) in binding.inner() {
        if k.as_str() == "x-match" || (!with_x && k.as_str().starts_with("x-")) {
            continue;
        }
        let ok = match headers.inner().get(k.as_str()) {
            None => false,
            // A void binding value matches any value of a present header.
            Some(_) if matches!(want, AMQPValue::Void) => true,
            Some(got) => values_equal(want, got),
        };
        if any && ok {
            return true;
        }
        if !any && !ok {
            return false;
        }
        matched_any |= ok;
    }
    !any || matched_any
}

fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    if a == b {
        return true;
    }
    if let (Some(x), Some(y)) = (super::args::as_str(a), super::args::as_str(b)) {
        return x == y;
    }
    matches!((super::args::as_int(a), super::args::as_int(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pairs: &[(&str, &str)]) -> FieldTable {
        let mut f = FieldTable::default();
        for (k, v) in pairs {
            f.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        f
    }

    #[test]
    fn all_and_any() {
        let all = t(&[("x-match", "all"), ("a", "1"), ("b", "2")]);
        let any = t(&[("x-match", "any"), ("a", "1"), ("b", "2")]);
        assert!(headers_match(
            &all,
            Some(&t(&[("a", "1"), ("b", "2"), ("c", "3")]))
        ));
        assert!(!headers_match(&all, Some(&t(&[("a", "1")]))));
        assert!(headers_match(&any, Some(&t(&[("b", "2")]))));
        assert!(!headers_match(&any, Some(&t(&[("b", "3")]))));
        assert!(!headers_match(&any, None));
        assert!(headers_match(&t(&[]), None));
    }
}
