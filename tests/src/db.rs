//! Helpers for the database and cache tests (being written).
