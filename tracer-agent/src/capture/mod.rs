//! Capture: the kernel side and what comes out of it.
//!
//! In: the probe object embedded in the agent and the running kernel (its
//! BTF, its verifier). Out: raw event records from the ring buffers
//! (`event`), optionally written to and read back from a file (`record`).
//! `probes` loads and attaches the programs, choosing for each hook the
//! first variant this kernel accepts; `verifier` reads the kernel verifier's
//! own statistics of every program; `doctor` reports what a host offers.

pub mod btf;
pub mod doctor;
pub mod event;
pub mod probes;
pub mod record;
pub mod verifier;
