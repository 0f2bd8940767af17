//! The store's error type: database errors converted once, naming the constraint.

use sqlx::error::ErrorKind;

/// A uniqueness or reference rule the schema enforces, by the name callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    BrokerName,
    BrokerCreatorRequestId,
    BrokerUser,
    ConfigurationRevision,
    /// A configuration some broker runs or is about to run cannot be deleted.
    ConfigurationInUse,
    /// An IAM user, group, role or managed policy name already taken in the account.
    IamEntityName,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row to read or change does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// An insert or update collided with a unique or foreign-key constraint.
    #[error("constraint {0:?} violated")]
    Constraint(Constraint),
    /// An optimistic update lost a race: the row's `version` moved since it was read.
    #[error("the row changed since it was read")]
    VersionConflict,
    /// A stored value could not be decoded (a bug or a hand-edited database).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if matches!(
                db.kind(),
                ErrorKind::UniqueViolation | ErrorKind::ForeignKeyViolation
            ) {
                // Postgres names the constraint; SQLite only says which columns in its
                // message ("UNIQUE constraint failed: brokers.name").
                let name = db.constraint().unwrap_or_default();
                let message = db.message();
                return StoreError::Constraint(constraint_named(name, message));
            }
        }
        StoreError::Database(e)
    }
}

fn constraint_named(pg_name: &str, sqlite_message: &str) -> Constraint {
    const TABLE: &[(&str, &str, Constraint)] = &[
        ("brokers_name_key", "brokers.name", Constraint::BrokerName),
        (
            "brokers_creator_request_id_key",
            "brokers.creator_request_id",
            Constraint::BrokerCreatorRequestId,
        ),
        (
            "broker_users_pkey",
            "broker_users.broker_id, broker_users.username",
            Constraint::BrokerUser,
        ),
        (
            "configuration_revisions_pkey",
            "configuration_revisions.configuration_id",
            Constraint::ConfigurationRevision,
        ),
    ];
    TABLE
        .iter()
        .find(|(pg, sqlite, _)| pg_name == *pg || sqlite_message.ends_with(sqlite))
        .map(|(_, _, c)| *c)
        .unwrap_or(Constraint::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_constraints_from_either_backend() {
        assert_eq!(
            constraint_named("brokers_name_key", ""),
            Constraint::BrokerName
        );
        assert_eq!(
            constraint_named("", "UNIQUE constraint failed: brokers.name"),
            Constraint::BrokerName
        );
        assert_eq!(
            constraint_named("", "UNIQUE constraint failed: brokers.creator_request_id"),
            Constraint::BrokerCreatorRequestId
        );
        assert_eq!(constraint_named("x", "y"), Constraint::Other);
    }
}
