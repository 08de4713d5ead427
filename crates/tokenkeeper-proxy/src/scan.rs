//! Reads the `usage` objects of a response as its bytes pass, without parsing or changing the
//! response: a search for the key `"usage":` across chunk boundaries, then the balanced JSON
//! object after it (at most [`MAX_OBJECT`] bytes), parsed alone.
//!
//! Why a byte search is sound: inside a JSON string a quote is escaped (`\"`), so the bytes
//! `"usage":` can only be a key. Both the plain answer (`{"usage":{…}}`) and the stream's
//! `message_start` (`message.usage`) and `message_delta` (`usage`, cumulative) carry the
//! counts; taking the largest value of each field over all objects gives the totals.
//! Memory is bounded whatever the response's length: a carry of a few bytes between chunks
//! and one object being captured.

use serde::Deserialize;

const KEY: &[u8] = b"\"usage\":";

/// The longest `usage` object read; a longer one is skipped.
pub const MAX_OBJECT: usize = 2048;

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// `input_tokens`.
    pub input: u64,
    /// `output_tokens`.
    pub output: u64,
    /// `cache_read_input_tokens`.
    pub cache_read: u64,
    /// `cache_creation_input_tokens`.
    pub cache_creation: u64,
}

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

enum Mode {
    /// Looking for the key; `carry` holds the last bytes that may start it.
    Seek,
    /// After the key, before the object's `{` (whitespace allowed).
    Open,
    /// Inside the object.
    Object { depth: u32, in_string: bool, escaped: bool },
}

/// The scanner. Feed it every chunk in order.
pub struct UsageScanner {
    mode: Mode,
    carry: Vec<u8>,
    object: Vec<u8>,
    tokens: Tokens,
    seen: bool,
}

impl Default for UsageScanner {
    fn default() -> Self {
        Self {
            mode: Mode::Seek,
            carry: Vec::with_capacity(KEY.len()),
            object: Vec::new(),
            tokens: Tokens::default(),
            seen: false,
        }
    }
}

impl UsageScanner {
    /// The counts read so far, if any `usage` object was seen.
    pub fn tokens(&self) -> Option<Tokens> {
        self.seen.then_some(self.tokens)
    }

    /// Reads one chunk.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            match self.mode {
                Mode::Seek => {
                    // A key split across chunks: complete it from the carry.
                    if !self.carry.is_empty() {
                        let need = KEY.len() - self.carry.len();
                        let take = need.min(chunk.len());
                        self.carry.extend_from_slice(&chunk[..take]);
                        if self.carry.len() < KEY.len() {
                            if KEY.starts_with(&self.carry) {
                                return;
                            }
                            self.carry.clear();
                            continue;
                        }
                        if self.carry == KEY {
                            self.carry.clear();
                            chunk = &chunk[take..];
                            self.mode = Mode::Open;
                            continue;
                        }
                        self.carry.clear();
                    }
                    match memchr::memmem::find(chunk, KEY) {
                        Some(i) => {
                            chunk = &chunk[i + KEY.len()..];
                            self.mode = Mode::Open;
                        }
                        None => {
                            // Keep the longest tail that is a prefix of the key.
                            let max = (KEY.len() - 1).min(chunk.len());
                            for n in (1..=max).rev() {
                                if KEY.starts_with(&chunk[chunk.len() - n..]) {
                                    self.carry.extend_from_slice(&chunk[chunk.len() - n..]);
                                    break;
                                }
                            }
                            return;
                        }
                    }
                }
                Mode::Open => {
                    let skip = chunk.iter().take_while(|b| b.is_ascii_whitespace()).count();
                    chunk = &chunk[skip..];
                    match chunk.first() {
                        None => return,
                        Some(b'{') => {
                            self.object.clear();
                            self.mode = Mode::Object { depth: 0, in_string: false, escaped: false };
                        }
                        Some(_) => self.mode = Mode::Seek, // `"usage": null` and the like
                    }
                }
                Mode::Object { ref mut depth, ref mut in_string, ref mut escaped } => {
                    let mut end = None;
                    for (i, &b) in chunk.iter().enumerate() {
                        if *in_string {
                            if *escaped {
                                *escaped = false;
                            } else if b == b'\\' {
                                *escaped = true;
                            } else if b == b'"' {
                                *in_string = false;
                            }
                            continue;
                        }
                        match b {
                            b'"' => *in_string = true,
                            b'{' => *depth += 1,
                            b'}' => {
                                *depth -= 1;
                                if *depth == 0 {
                                    end = Some(i + 1);
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    let take = end.unwrap_or(chunk.len());
                    if self.object.len() + take <= MAX_OBJECT {
                        self.object.extend_from_slice(&chunk[..take]);
                    } else {
                        self.object.clear();
                        self.object.push(b'!'); // too long: remembered as unparsable
                    }
                    chunk = &chunk[take..];
                    if end.is_some() {
                        self.finish_object();
                        self.mode = Mode::Seek;
                    }
                }
            }
        }
    }

    fn finish_object(&mut self) {
        if let Ok(u) = serde_json::from_slice::<UsageJson>(&self.object) {
            self.seen = true;
            let t = &mut self.tokens;
            t.input = t.input.max(u.input_tokens.unwrap_or(0));
            t.output = t.output.max(u.output_tokens.unwrap_or(0));
            t.cache_read = t.cache_read.max(u.cache_read_input_tokens.unwrap_or(0));
            t.cache_creation = t.cache_creation.max(u.cache_creation_input_tokens.unwrap_or(0));
        }
        self.object = Vec::new();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":8,\"output_tokens\":1,\"cache_read_input_tokens\":2,\"cache_creation_input_tokens\":0}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"the key \\\"usage\\\": {\\\"output_tokens\\\": 999} in text\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":4}}\n\n";

    #[test]
    fn reads_start_and_delta_in_any_chunking_and_ignores_text() {
        let want = Tokens { input: 8, output: 4, cache_read: 2, cache_creation: 0 };
        let bytes = STREAM.as_bytes();
        for size in [1, 2, 3, 7, 8, 9, 64, bytes.len()] {
            let mut s = UsageScanner::default();
            for c in bytes.chunks(size) {
                s.feed(c);
            }
            assert_eq!(s.tokens(), Some(want), "chunks of {size}");
        }
    }

    #[test]
    fn plain_json_with_whitespace() {
        let mut s = UsageScanner::default();
        s.feed(br#"{"id":"x","usage": { "input_tokens": 3, "output_tokens": 5 } }"#);
        assert_eq!(s.tokens(), Some(Tokens { input: 3, output: 5, ..Tokens::default() }));
    }

    #[test]
    fn nothing_seen_and_oversized_objects_are_none() {
        let mut s = UsageScanner::default();
        s.feed(b"{\"type\":\"error\"}");
        assert_eq!(s.tokens(), None);
        let mut s = UsageScanner::default();
        s.feed(b"\"usage\":{\"x\":\"");
        s.feed(&vec![b'a'; MAX_OBJECT * 4]);
        s.feed(b"\"}");
        assert_eq!(s.tokens(), None);
        s.feed(b" \"usage\":{\"output_tokens\":2}");
        assert_eq!(s.tokens().unwrap().output, 2, "the scanner recovers after a skipped object");
    }
}
