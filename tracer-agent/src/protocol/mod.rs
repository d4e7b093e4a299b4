//! Protocol parsers: pure functions and per-connection state machines over
//! captured byte segments. No I/O, no clock; partial input is "incomplete",
//! garbage is "not this protocol" — never a panic.

pub mod db;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;

pub use http1::Segment;

/// A finished request/response exchange of any protocol.
#[derive(Debug)]
pub enum Exchange {
    Http1(http1::Exchange),
    Http2(http2::H2Exchange),
    Db(db::DbExchange),
}
