//! weft: a flannel-compatible overlay forwarder that measures and cuts user-space costs.
#![deny(unsafe_code)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod control;
pub mod dataplane;
pub mod lab;
pub mod proto;
