//! Errors as one line of text, for logs, status output and API bodies.

/// The error and its chain of causes on one line (`a: b: c`). A cause whose text the line
/// already holds is skipped: `thiserror` messages often embed their source (`"… : {0}"`), and
/// printing it twice makes the line harder to read, not more informative.
///
/// This is the one place that walks `source()`; the server, sync, alert and doctor use it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
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
    fn an_error_without_sources_is_its_message() {
        let io = std::io::Error::other("boom");
        assert_eq!(error_chain(&io), "boom");
    }
}
