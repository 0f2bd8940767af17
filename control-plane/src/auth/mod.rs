//! Authentication and authorization, pure and I/O-free.
pub mod sigv4;
