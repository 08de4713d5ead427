//! Errors as one line of text, for logs, status output and API bodies, and the walk over an
//! error's causes.

use std::error::Error;

/// The error and its chain of causes on one line (`a: b: c`). A cause whose text the line
/// already holds is skipped: `thiserror` messages often embed their source (`"… : {0}"`), and
/// printing it twice makes the line harder to read, not more informative.
///
/// This module is the one place that walks `source()`; the server, proxy, sync, alert and
/// doctor use it.
pub fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    for s in std::iter::successors(e.source(), |&s| s.source()) {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// `e` and then each of its causes, outermost first.
pub fn causes<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |&s| s.source())
}

/// Whether `e` or one of its causes is a `T` (say, a timeout buried in a body error).
pub fn caused_by<T: Error + 'static>(e: &(dyn Error + 'static)) -> bool {
    causes(e).any(|c| c.is::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write the sink")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot rename: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_cause_once_in_order() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let e = Outer(Middle(io));
        // The io error's text is already inside Middle's message, so it is not repeated.
        assert_eq!(error_chain(&e), "cannot write the sink: cannot rename: permission denied");
    }

    #[test]
    fn causes_are_walked_outermost_first_and_found_by_type() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let e = Outer(Middle(io));
        let texts: Vec<String> = causes(&e).map(|c| c.to_string()).collect();
        assert_eq!(texts, ["cannot write the sink", "cannot rename: permission denied", "permission denied"]);
        assert!(caused_by::<std::io::Error>(&e));
        assert!(caused_by::<Middle>(&e));
        assert!(!caused_by::<std::fmt::Error>(&e));
    }

    #[test]
    fn an_error_without_sources_is_its_message() {
        let io = std::io::Error::other("boom");
        assert_eq!(error_chain(&io), "boom");
    }
}
