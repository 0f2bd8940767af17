//! Mooring's AMQP 0-9-1 load generator (`mooring-loadgen`) and the side-by-side engine
//! benchmark (`mooring-bench-engine`), built on amq-protocol's codec over tokio TCP so
//! that the client is never the bottleneck; and the API load generator
//! (`mooring-api-load`) with its own SigV4 signer.

pub mod client;
pub mod config;
pub mod consumer;
pub mod cpu;
pub mod engine;
pub mod publisher;
pub mod report;
pub mod run;
pub mod sigv4;
pub mod stats;
pub mod wire;
