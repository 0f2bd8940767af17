//! Typed identifiers, so a broker id is never passed where a configuration id belongs.

use std::fmt;

use uuid::Uuid;

/// A broker's id, Amazon MQ style: `b-` followed by a UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerId(String);

/// A configuration's id, Amazon MQ style: `c-` followed by a UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigurationId(String);

macro_rules! prefixed_id {
    ($ty:ident, $prefix:literal) => {
        impl $ty {
            /// A fresh random id.
            pub fn generate() -> Self {
                Self(format!(concat!($prefix, "{}"), Uuid::new_v4()))
            }

            /// Parses an id received from a client; `None` when it is not of our shape,
            /// which callers answer as "not found" (it cannot name anything we hold).
            pub fn parse(s: &str) -> Option<Self> {
                let rest = s.strip_prefix($prefix)?;
                Uuid::parse_str(rest).ok()?;
                Some(Self(s.to_owned()))
            }

            /// Wraps an id read back from the database, which only ever holds valid ids.
            pub(crate) fn from_db(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(BrokerId, "b-");
prefixed_id!(ConfigurationId, "c-");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_foreign_shapes() {
        let b = BrokerId::generate();
        assert_eq!(BrokerId::parse(b.as_str()), Some(b.clone()));
        assert!(b.as_str().starts_with("b-"));
        assert_eq!(ConfigurationId::parse(b.as_str()), None);
        assert_eq!(BrokerId::parse("b-not-a-uuid"), None);
        assert_eq!(BrokerId::parse(""), None);
    }
}
