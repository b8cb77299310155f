//! Every syscall of the data path that std does not wrap safely lives here, and only here.
//! Each `unsafe` block carries a `// SAFETY:` comment.

pub mod mmsg;
pub mod netns;
pub mod poll;
pub mod tun;
pub mod udp;
pub mod uring;
