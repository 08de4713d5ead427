//! Property tests of `.env` editing: every line that does not assign the key survives
//! byte-for-byte, and a standard reader (dotenvy) reads back exactly the value set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tokenkeeper_sync::dotenv::set_var;

const KEY: &str = "CLAUDE_CODE_OAUTH_TOKEN";

/// One generated line without its ending, and whether it assigns KEY.
fn line() -> impl Strategy<Value = (String, bool)> {
    let value = "[A-Za-z0-9_./:-]{0,12}";
    let other_key = prop_oneof![
        Just("XCLAUDE_CODE_OAUTH_TOKEN".to_owned()),
        Just("CLAUDE_CODE_OAUTH_TOKEN_FILE".to_owned()),
        "[A-Z][A-Z0-9_]{0,8}".prop_filter("not the key", |k| k != KEY),
    ];
    let quoted = (value, 0..3usize).prop_map(|(v, q)| match q {
        0 => v,
        1 => format!("'{v}'"),
        _ => format!("\"{v}\""),
    });
    let quoted2 = quoted.clone();
    prop_oneof![
        Just((String::new(), false)),
        "[ \\t]{0,3}".prop_map(|s| (s, false)),
        "# [ -~]{0,20}".prop_map(|s| (s, false)),
        Just((format!("# {KEY}=commented"), false)),
        (other_key, quoted, any::<bool>())
            .prop_map(|(k, v, e)| (format!("{}{k}={v}", if e { "export " } else { "" }), false)),
        (quoted2, any::<bool>(), "[ ]{0,2}")
            .prop_map(|(v, e, sp)| (format!("{}{KEY}{sp}={sp}{v}", if e { "export " } else { "" }), true)),
    ]
}

fn file() -> impl Strategy<Value = (Vec<(String, bool, &'static str)>, bool)> {
    let l = (line(), prop_oneof![Just("\n"), Just("\r\n")]).prop_map(|((s, k), nl)| (s, k, nl));
    (proptest::collection::vec(l, 0..12), any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("TK_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn other_lines_survive_and_value_reads_back((lines, final_newline) in file(), new in "[ -~]{0,24}") {
        let mut text = String::new();
        for (i, (l, _, nl)) in lines.iter().enumerate() {
            text.push_str(l);
            if final_newline || i + 1 < lines.len() {
                text.push_str(nl);
            }
        }
        let out = set_var(&text, KEY, &new);
        let in_lines: Vec<&str> = text.split_inclusive('\n').collect();
        let out_lines: Vec<&str> = out.split_inclusive('\n').collect();
        let has_key = lines.iter().any(|(_, k, _)| *k);
        // Blank generated lines at the end of a file without final newline vanish from
        // split_inclusive; compare through the generated list instead.
        for (idx, (l, is_key, _)) in lines.iter().enumerate() {
            if text.is_empty() { break; }
            let original = in_lines.get(idx).copied().unwrap_or("");
            let now = out_lines.get(idx).copied().unwrap_or("");
            if !is_key {
                if original.ends_with('\n') || has_key {
                    prop_assert_eq!(now, original, "line {} changed", idx);
                } else {
                    // The last line without newline gets one only when the key is appended.
                    prop_assert!(now.starts_with(original), "last line {:?} became {:?}", original, now);
                }
            }
            prop_assert!(original.starts_with(l.as_str()));
        }
        if has_key {
            prop_assert_eq!(out_lines.len(), in_lines.len());
        } else {
            prop_assert_eq!(out_lines.len(), in_lines.len() + 1);
        }
        // dotenvy rejects some inputs itself (a blank last line without newline); the reading
        // check applies to the files it can read.
        if dotenvy::from_read_iter(text.as_bytes()).any(|r| r.is_err()) {
            return Ok(());
        }
        let parsed: Vec<(String, String)> = dotenvy::from_read_iter(out.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(format!("dotenvy cannot read {out:?}: {e}")))?;
        let values: Vec<&String> = parsed.iter().filter(|(k, _)| k == KEY).map(|(_, v)| v).collect();
        prop_assert!(!values.is_empty());
        for v in values {
            prop_assert_eq!(v, &new);
        }
    }
}
