//! Editing one variable of a `.env` file without disturbing anything else.
//!
//! [`set_var`] changes the value of one key and leaves every other byte exactly as it was:
//! comments (including a commented-out `# KEY=old`, which stays commented out), blank lines,
//! order, other keys' quoting, `export` prefixes, a byte-order mark, CRLF line endings and a
//! missing final newline. It understands what the common readers (docker compose, dotenvy,
//! python-dotenv, `source` in a shell) agree on:
//!
//! - `KEY=value`, `export KEY=value`, spaces or tabs around `=`, leading indentation;
//! - unquoted values ending at a ` #` inline comment or the end of the line;
//! - `'single'`, `"double"` (with backslash escapes) and `` `backtick` `` quoted values, which
//!   may span several lines: a line inside another key's multi-line value (a PEM key, JSON)
//!   that looks like `KEY=...` is *not* taken for an assignment;
//! - keys match whole: `XCLAUDE_CODE_OAUTH_TOKEN` is not `CLAUDE_CODE_OAUTH_TOKEN`.
//!
//! The new value keeps the old one's quoting where it can: unquoted stays unquoted when the
//! value needs no quoting (`sk-ant-oat01-…` tokens never do), single quotes stay single unless
//! the value holds a `'`, a backslash or a line break; otherwise double quotes, escaping `\`, `"`, `$` and
//! line breaks. An absent key is appended as `KEY=value` with the file's dominant line ending.
//!
//! **Duplicates**: when a key is assigned several times, every assignment is updated. Readers
//! disagree about which one wins (compose and `source` take the last, dotenvy's
//! no-override loading effectively the first), so updating all of them makes sure whichever a
//! reader picks is fresh.

use std::ops::Range;

/// How a value was (or will be) quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
    Backtick,
}

/// One assignment found in the text: its key and the byte range of its raw value (quotes
/// included, inline comment and surrounding blanks excluded).
#[derive(Debug)]
struct Assignment<'a> {
    key: &'a str,
    value: Range<usize>,
    quote: Quote,
}

/// Sets `key` to `value` in the `.env` text `existing` and returns the new text; see the
/// [module docs](self) for exactly what changes.
pub fn set_var(existing: &str, key: &str, value: &str) -> String {
    let out = set_in_place(existing, key, value);
    if get_var(&out, key).as_deref() == Some(value) {
        return out;
    }
    // In a broken file (a quote left open elsewhere), rewriting a value can change how the
    // quotes pair up, so that the line is swallowed by another value (found by the fuzz test).
    // Then leave the file as it was and append a fresh assignment: the last one wins.
    let mut out = existing.to_owned();
    let nl = dominant_line_ending(existing);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push_str(nl);
    }
    out.push_str(key);
    out.push('=');
    out.push_str(&encode(value, Quote::None));
    out.push_str(nl);
    out
}

/// [`set_var`]'s edit in place: every assignment of `key` rewritten, or one appended.
fn set_in_place(existing: &str, key: &str, value: &str) -> String {
    let mut out = String::with_capacity(existing.len() + value.len() + key.len() + 2);
    let mut copied = 0;
    let mut found = false;
    for a in assignments(existing).into_iter().filter(|a| a.key == key) {
        found = true;
        out.push_str(&existing[copied..a.value.start]);
        out.push_str(&encode(value, a.quote));
        copied = a.value.end;
    }
    out.push_str(&existing[copied..]);
    if !found {
        let nl = dominant_line_ending(existing);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(nl);
        }
        out.push_str(key);
        out.push('=');
        out.push_str(&encode(value, Quote::None));
        out.push_str(nl);
    }
    out
}

/// The value of the last assignment of `key`, unquoted and unescaped; `None` when absent.
/// (A reader for tests and `doctor`, matching what [`set_var`] writes.)
pub fn get_var(text: &str, key: &str) -> Option<String> {
    let a = assignments(text).into_iter().rev().find(|a| a.key == key)?;
    let raw = &text[a.value.clone()];
    Some(match a.quote {
        Quote::None => raw.to_owned(),
        Quote::Single | Quote::Backtick => raw.get(1..raw.len().saturating_sub(1)).unwrap_or("").to_owned(),
        Quote::Double => unescape_double(raw.get(1..raw.len().saturating_sub(1)).unwrap_or("")),
    })
}

fn unescape_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn dominant_line_ending(text: &str) -> &'static str {
    let crlf = text.matches("\r\n").count();
    let lf = text.matches('\n').count() - crlf;
    if crlf > lf {
        "\r\n"
    } else {
        "\n"
    }
}

/// Characters that need no quoting with any common reader.
fn is_plain(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@%,~^".contains(&b))
}

fn encode(value: &str, old: Quote) -> String {
    match old {
        // An empty value is written `""`: `KEY = ` (with spaces) is a parse error for dotenvy.
        Quote::None if !value.is_empty() && is_plain(value) => value.to_owned(),
        // A backslash inside single quotes is literal for compose and shells but an escape for
        // dotenvy, so such a value moves to double quotes where all agree.
        Quote::Single if !value.contains(['\'', '\\', '\n', '\r']) => format!("'{value}'"),
        Quote::Backtick if !value.contains(['`', '\\', '\n', '\r']) => format!("`{value}`"),
        _ => {
            let mut s = String::with_capacity(value.len() + 2);
            s.push('"');
            for c in value.chars() {
                match c {
                    '\\' => s.push_str("\\\\"),
                    '"' => s.push_str("\\\""),
                    // `$` would be expanded by compose, dotenvy and shells.
                    '$' => s.push_str("\\$"),
                    '\n' => s.push_str("\\n"),
                    '\r' => s.push_str("\\r"),
                    c => s.push(c),
                }
            }
            s.push('"');
            s
        }
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-'
}

/// End of the line starting at or containing `pos`: the index of its `\n`, or the text's end.
fn line_end(b: &[u8], pos: usize) -> usize {
    b[pos..].iter().position(|&c| c == b'\n').map_or(b.len(), |i| pos + i)
}

/// The end of a line's content: before a `\r` that ends it.
fn content_end(b: &[u8], start: usize, eol: usize) -> usize {
    if eol > start && b[eol - 1] == b'\r' {
        eol - 1
    } else {
        eol
    }
}

fn next_line(b: &[u8], eol: usize) -> usize {
    (eol + 1).min(b.len())
}

/// Every assignment in `text`, in order, skipping comments and the inside of multi-line
/// quoted values.
fn assignments(text: &str) -> Vec<Assignment<'_>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let eol = line_end(b, pos);
        let end = content_end(b, pos, eol);
        match parse_key(text, pos, end) {
            None => pos = next_line(b, eol),
            Some((key, eq, vstart)) => {
                let (value, quote, resume) = parse_value(b, eq, vstart, end, eol);
                out.push(Assignment { key, value, quote });
                pos = resume;
            }
        }
    }
    out
}

/// `[export ]KEY =` at the start of a line: the key, the index of `=`, and where the value
/// starts (after blanks).
fn parse_key(text: &str, start: usize, end: usize) -> Option<(&str, usize, usize)> {
    let b = text.as_bytes();
    let mut i = start;
    if start == 0 && text.starts_with('\u{feff}') {
        i += '\u{feff}'.len_utf8();
    }
    while i < end && is_blank(b[i]) {
        i += 1;
    }
    if i >= end || b[i] == b'#' {
        return None;
    }
    if b[i..end].starts_with(b"export") && i + 6 < end && is_blank(b[i + 6]) {
        i += 6;
        while i < end && is_blank(b[i]) {
            i += 1;
        }
    }
    let key_start = i;
    while i < end && is_key_byte(b[i]) {
        i += 1;
    }
    if i == key_start {
        return None;
    }
    let key = &text[key_start..i];
    while i < end && is_blank(b[i]) {
        i += 1;
    }
    if i >= end || b[i] != b'=' {
        return None;
    }
    let eq = i;
    i += 1;
    while i < end && is_blank(b[i]) {
        i += 1;
    }
    Some((key, eq, i))
}

/// The raw value's range, its quoting, and where the next line to scan starts.
fn parse_value(b: &[u8], eq: usize, vstart: usize, end: usize, eol: usize) -> (Range<usize>, Quote, usize) {
    let next = next_line(b, eol);
    // Empty value (`KEY=`, `KEY=   `, `KEY= # note`): the new value goes right after `=`. A
    // `#` right after `=` (`KEY=#x`) starts the value, as for every reader: only a `#` after a
    // blank starts a comment (found by the fuzz test: the new value used to be glued to it).
    if vstart >= end || (b[vstart] == b'#' && vstart > eq + 1) {
        return (eq + 1..eq + 1, Quote::None, next);
    }
    let quote = match b[vstart] {
        b'"' => Quote::Double,
        b'\'' => Quote::Single,
        b'`' => Quote::Backtick,
        _ => Quote::None,
    };
    if quote == Quote::None {
        let mut stop = end;
        for i in vstart..end {
            if b[i] == b'#' && is_blank(b[i - 1]) {
                stop = i;
                break;
            }
        }
        while stop > vstart && is_blank(b[stop - 1]) {
            stop -= 1;
        }
        return (vstart..stop, Quote::None, next);
    }
    match closing_quote(b, vstart) {
        // Closed on its own line.
        Some(close) if close < end => (vstart..close + 1, quote, next),
        // Closed on a later line, and only blanks or a comment follow: a multi-line value.
        Some(close) if only_comment_after(b, close + 1) => {
            let close_eol = line_end(b, close);
            (vstart..close + 1, quote, next_line(b, close_eol))
        }
        // Unclosed (a broken file): take the rest of this line only, so one stray quote cannot
        // swallow the assignments after it.
        _ => {
            let mut stop = end;
            while stop > vstart && is_blank(b[stop - 1]) {
                stop -= 1;
            }
            (vstart..stop, quote, next)
        }
    }
}

fn closing_quote(b: &[u8], open: usize) -> Option<usize> {
    let q = b[open];
    let mut i = open + 1;
    while i < b.len() {
        if q == b'"' && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn only_comment_after(b: &[u8], from: usize) -> bool {
    let eol = line_end(b, from.min(b.len()));
    let end = content_end(b, from, eol);
    let mut i = from;
    while i < end && is_blank(b[i]) {
        i += 1;
    }
    i >= end || b[i] == b'#'
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const K: &str = "CLAUDE_CODE_OAUTH_TOKEN";
    const V: &str = "sk-ant-oat01-NEW";

    #[test]
    fn simple_cases() {
        assert_eq!(set_var("", K, V), format!("{K}={V}\n"));
        assert_eq!(set_var("A=1\n", K, V), format!("A=1\n{K}={V}\n"));
        assert_eq!(set_var("A=1", K, V), format!("A=1\n{K}={V}\n"));
        assert_eq!(set_var("A=1\r\nB=2\r\n", K, V), format!("A=1\r\nB=2\r\n{K}={V}\r\n"));
        assert_eq!(set_var(&format!("{K}=old\n"), K, V), format!("{K}={V}\n"));
        assert_eq!(set_var(&format!("export {K} = 'old' # c\r\n"), K, V), format!("export {K} = '{V}' # c\r\n"));
        assert_eq!(set_var(&format!("{K}= # empty\n"), K, V), format!("{K}={V} # empty\n"));
        assert_eq!(set_var(&format!("{K}=\n"), K, V), format!("{K}={V}\n"));
        // A `#` right after `=` is part of the value, not a comment.
        assert_eq!(get_var(&format!("{K}=#ed\n"), K).as_deref(), Some("#ed"));
        assert_eq!(set_var(&format!("{K}=#ed\n"), K, V), format!("{K}={V}\n"));
    }

    #[test]
    fn quoting_follows_the_old_style_and_escapes() {
        assert_eq!(set_var("K=old\n", "K", "a b"), "K=\"a b\"\n");
        assert_eq!(set_var("K='old'\n", "K", "a b"), "K='a b'\n");
        assert_eq!(set_var("K='old'\n", "K", "it's"), "K=\"it's\"\n");
        assert_eq!(set_var("K=\"old\"\n", "K", "x"), "K=\"x\"\n");
        assert_eq!(set_var("K=old\n", "K", "a\"b\\c$d\ne"), "K=\"a\\\"b\\\\c\\$d\\ne\"\n");
        assert_eq!(set_var("K=`old`\n", "K", "x y"), "K=`x y`\n");
        assert_eq!(set_var("K=old\n", "K", "has#hash"), "K=\"has#hash\"\n");
    }

    #[test]
    fn get_var_reads_what_set_var_writes() {
        for v in ["plain", "a b", "q\"uote", "dollar$HOME", "new\nline", "back\\slash", ""] {
            for start in ["K=x\n", "K='x'\n", "K=\"x\"\n", "", "export K=x # c\n"] {
                let out = set_var(start, "K", v);
                assert_eq!(get_var(&out, "K").as_deref(), Some(v), "{start:?} -> {out:?}");
            }
        }
    }

    #[test]
    fn multiline_values_of_other_keys_are_not_assignments() {
        let text = format!("PEM=\"-----BEGIN\n{K}=fake\n-----END\"\n{K}=old\n");
        assert_eq!(set_var(&text, K, V), format!("PEM=\"-----BEGIN\n{K}=fake\n-----END\"\n{K}={V}\n"));
    }

    #[test]
    fn an_unclosed_quote_does_not_swallow_later_lines() {
        let text = format!("BROKEN=\"oops\nA=1\n{K}=old\n");
        assert_eq!(set_var(&text, K, V), format!("BROKEN=\"oops\nA=1\n{K}={V}\n"));
    }

    #[test]
    fn multiline_old_value_of_the_key_is_replaced_whole() {
        let text = format!("{K}=\"line1\nline2\" # c\nB=2\n");
        assert_eq!(set_var(&text, K, V), format!("{K}=\"{V}\" # c\nB=2\n"));
    }
}
