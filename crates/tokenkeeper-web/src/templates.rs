//! The page's templates, embedded in the binary with `include_str!`.
//!
//! Why minijinja rather than maud or askama: it is already the project's template engine (the
//! sinks render files with it), the templates stay plain HTML that a designer can read, and
//! `.html` templates are auto-escaped, so an account name or a provider's error text can never
//! inject markup. The templates are parsed once, when the state is built.
//!
//! The style sheet is inlined into every page (one request per page, fast on a phone) and
//! allowed by its SHA-256 in the Content-Security-Policy, which forbids everything else: scripts
//! only from this origin (the dashboard's one optional file; no inline script, no handler
//! attributes), requests only to this origin, forms only to this origin, no framing.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use minijinja::{Environment, Value};
use sha2::{Digest, Sha256};

use crate::error::WebError;

/// The style sheet, inlined into every page.
pub const CSS: &str = include_str!("../templates/style.css");

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("dashboard.html", include_str!("../templates/dashboard.html")),
    ("remove.html", include_str!("../templates/remove.html")),
    ("wizard.html", include_str!("../templates/wizard.html")),
    ("wizard_done.html", include_str!("../templates/wizard_done.html")),
    ("paste.html", include_str!("../templates/paste.html")),
    ("message.html", include_str!("../templates/message.html")),
];

/// Percent-encodes a value for one URL path segment. Account names are already limited to
/// path-safe characters; this keeps a link right even if that rule ever loosens.
pub(crate) fn path_segment(value: String) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@+".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The parsed templates and the policy that allows their style sheet.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    csp: HeaderValue,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// Parses the embedded templates.
    pub fn new() -> Templates {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            // The sources are part of the binary and covered by tests that render every page,
            // so a syntax error cannot ship; it is logged rather than panicking all the same.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "embedded template does not parse");
            }
        }
        env.add_filter("segment", path_segment);
        env.add_global("css", Value::from_safe_string(CSS.to_owned()));
        let hash = STANDARD.encode(Sha256::digest(CSS.as_bytes()));
        let policy = format!(
            "default-src 'none'; style-src 'sha256-{hash}'; script-src 'self'; connect-src 'self'; \
             img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
        let csp = HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
        Templates { env, csp }
    }

    /// The Content-Security-Policy header of every page.
    pub fn content_security_policy(&self) -> &HeaderValue {
        &self.csp
    }

    /// Renders `template` with `ctx`.
    pub fn render(&self, template: &'static str, ctx: Value) -> Result<String, WebError> {
        self.env
            .get_template(template)
            .and_then(|t| t.render(ctx))
            .map_err(|source| WebError::Template { template, source })
    }

    /// Renders `template` into a response with `status`; a rendering failure becomes a plain
    /// 500 (logged), since the templates themselves are what failed.
    pub fn page(&self, status: StatusCode, template: &'static str, ctx: Value) -> Response {
        match self.render(template, ctx) {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_template_parses() {
        let mut env = Environment::new();
        env.add_filter("segment", path_segment);
        for (name, source) in TEMPLATES {
            env.add_template(name, source).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn path_segment_encodes_everything_but_name_characters() {
        assert_eq!(path_segment("a.b_c-d@e+f".into()), "a.b_c-d@e+f");
        assert_eq!(path_segment("a/b c?".into()), "a%2Fb%20c%3F");
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_style_sheet() {
        let t = Templates::new();
        let csp = t.content_security_policy().to_str().unwrap();
        let hash = STANDARD.encode(Sha256::digest(CSS.as_bytes()));
        assert!(csp.contains(&format!("style-src 'sha256-{hash}'")), "{csp}");
        let page = t.render("message.html", minijinja::context! { heading => "h", text => "t" }).unwrap();
        assert!(page.contains(&format!("<style>{CSS}</style>")), "the hashed text is what is inlined");
    }
}
