//! Helpers for the HTTP/2 and gRPC tests (being written).
