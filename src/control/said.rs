//! Warnings about the same thing are said once, not at every re-read: a bad lease in a registry
//! polled five times a second would otherwise fill the log.

use std::collections::HashSet;
use std::sync::Mutex;

/// The warnings said so far, by their text.
#[derive(Debug, Default)]
pub struct SaidOnce(Mutex<HashSet<String>>);

impl SaidOnce {
    /// True the first time `what` is asked about (so the caller says it), false after.
    pub fn first(&self, what: &str) -> bool {
        match self.0.lock() {
            Ok(mut said) => said.insert(what.to_string()),
            Err(_) => true,
        }
    }

    /// Forgets what was said about things no longer `current` (so a problem that comes back is
    /// said again).
    pub fn retain(&self, current: impl Fn(&str) -> bool) {
        if let Ok(mut said) = self.0.lock() {
            said.retain(|s| current(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_once_until_forgotten() {
        let s = SaidOnce::default();
        assert!(s.first("a"));
        assert!(!s.first("a"));
        assert!(s.first("b"));
        s.retain(|w| w == "b");
        assert!(s.first("a"));
        assert!(!s.first("b"));
    }
}
