//! See the `storage` module docs.
