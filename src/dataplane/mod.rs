//! Packet I/O and forwarding engines. `unsafe` lives only in [`sys`].

pub mod counters;
pub mod engine;
pub mod forward;
pub mod offloads;
pub mod packet;
pub mod peers;
#[allow(unsafe_code)]
pub mod sys;
