//! The embedded queue engine: an AMQP 0-9-1 server wire-compatible with RabbitMQ clients.
pub mod admin;
pub mod storage;
