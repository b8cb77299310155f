//! Every syscall of the data path that std does not wrap safely lives here, and only here, with
//! the one call into code compiled for a CPU feature found at run time ([`simd`]).
//! Each `unsafe` block carries a `// SAFETY:` comment.

pub mod mmsg;
pub mod netns;
pub mod poll;
pub mod simd;
pub mod sockaddr;
pub mod tun;
pub mod udp;
pub mod uring;
