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
    /// Boxed: much larger than the others.
    Http2(Box<http2::H2Exchange>),
    Db(db::DbExchange),
}

impl Exchange {
    /// An HTTP/2 stream's exchange.
    pub fn http2(ex: http2::H2Exchange) -> Self {
        Exchange::Http2(Box::new(ex))
    }
}
