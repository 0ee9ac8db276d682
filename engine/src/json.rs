//! A JSON parser that remembers where every value and key came from.
//!
//! `serde_json` reports the position of a syntax error but forgets the positions of the values it
//! parsed, and a compiler must point at the value a finding is about. This parser keeps, for every
//! value, its byte span and its JSON pointer (RFC 6901), so that the decoder and the checks can
//! speak of pointers and the renderer can turn them into line and column.

use std::collections::HashMap;

/// A byte range in a source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// The first byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// A JSON value with the span it was parsed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// What the value is.
    pub kind: Kind,
    /// Where it stands in the text.
    pub span: Span,
}

/// The kinds of JSON values; objects keep their members in source order, duplicates included,
/// so that the decoder can report a duplicated key instead of silently keeping the last one.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number, kept exactly as `serde_json` would.
    Number(serde_json::Number),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Node>),
    /// An object: members in source order.
    Object(Vec<Member>),
}

/// One `"key": value` member of an object.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The key, unescaped.
    pub key: String,
    /// Where the key (with its quotes) stands.
    pub key_span: Span,
    /// The value.
    pub value: Node,
}

impl Kind {
    /// The name of this kind as a user would say it in an error message.
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Number(_) => "a number",
            Kind::String(_) => "a string",
            Kind::Array(_) => "an array",
            Kind::Object(_) => "an object",
        }
    }
}

impl Node {
    /// This value as plain `serde_json`, for literals that the model keeps as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            Kind::Null => serde_json::Value::Null,
            Kind::Bool(b) => serde_json::Value::Bool(*b),
            Kind::Number(n) => serde_json::Value::Number(n.clone()),
            Kind::String(s) => serde_json::Value::String(s.clone()),
            Kind::Array(items) => {
                serde_json::Value::Array(items.iter().map(Node::to_json).collect())
            }
            Kind::Object(members) => serde_json::Value::Object(
                members
                    .iter()
                    .map(|m| (m.key.clone(), m.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A syntax error: what was wrong and the byte offset where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// What the parser expected or found, as a lowercase phrase.
    pub message: String,
    /// Byte offset of the problem.
    pub offset: usize,
}

/// Where every value of a document stands, by JSON pointer.
#[derive(Clone, Debug, Default)]
pub struct Locations {
    values: HashMap<String, Span>,
    keys: HashMap<String, Span>,
}

impl Locations {
    /// Records the spans of `node` and of everything below it, `node` being at `pointer`.
    pub fn of(node: &Node) -> Locations {
        let mut locations = Locations::default();
        locations.record(node, String::new());
        locations
    }

    fn record(&mut self, node: &Node, pointer: String) {
        match &node.kind {
            Kind::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.record(item, format!("{pointer}/{i}"));
                }
            }
            Kind::Object(members) => {
                for m in members {
                    let child = format!("{pointer}/{}", escape_pointer(&m.key));
                    // The first occurrence wins: a duplicate is reported at its own key span.
                    self.keys.entry(child.clone()).or_insert(m.key_span);
                    self.record(&m.value, child);
                }
            }
            _ => {}
        }
        self.values.entry(pointer).or_insert(node.span);
    }

    /// The span of the value at `pointer`, or of its nearest ancestor that exists (a missing
    /// member is reported at the object that lacks it).
    pub fn value(&self, pointer: &str) -> Span {
        let mut p = pointer;
        loop {
            if let Some(span) = self.values.get(p) {
                return *span;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Span::default(),
            }
        }
    }

    /// The span of the key of the member at `pointer`, falling back to its value.
    pub fn key(&self, pointer: &str) -> Span {
        self.keys
            .get(pointer)
            .copied()
            .unwrap_or_else(|| self.value(pointer))
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901: `~` as `~0`, `/` as `~1`).
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Parses a whole JSON document.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        text,
        pos: 0,
        depth: 0,
    };
    // A byte-order mark is what some Windows editors write first; it is not an error.
    if text.starts_with('\u{feff}') {
        p.pos = 3;
    }
    p.skip_ws();
    let node = p.value()?;
    p.skip_ws();
    if p.pos < p.bytes.len() {
        return Err(p.error("expected the end of the document after the top-level value"));
    }
    Ok(node)
}

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 128;

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            message: message.into(),
            offset: self.pos.min(self.bytes.len()),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn found(&self) -> String {
        match self.text[self.pos..].chars().next() {
            None => "the end of the file".to_string(),
            Some(c) => format!("{c:?}"),
        }
    }

    fn value(&mut self) -> Result<Node, SyntaxError> {
        let start = self.pos;
        let kind = match self.bytes.get(self.pos) {
            Some(b'{') => self.object()?,
            Some(b'[') => self.array()?,
            Some(b'"') => Kind::String(self.string()?),
            Some(b't') => self.literal("true", Kind::Bool(true))?,
            Some(b'f') => self.literal("false", Kind::Bool(false))?,
            Some(b'n') => self.literal("null", Kind::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return Err(self.error(format!("expected a value, found {}", self.found()))),
        };
        Ok(Node {
            kind,
            span: Span {
                start,
                end: self.pos,
            },
        })
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn object(&mut self) -> Result<Kind, SyntaxError> {
        self.enter()?;
        self.pos += 1;
        let mut members = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Kind::Object(members));
        }
        loop {
            self.skip_ws();
            if self.bytes.get(self.pos) != Some(&b'"') {
                return Err(self.error(format!("expected a quoted key, found {}", self.found())));
            }
            let key_start = self.pos;
            let key = self.string()?;
            let key_span = Span {
                start: key_start,
                end: self.pos,
            };
            self.skip_ws();
            if self.bytes.get(self.pos) != Some(&b':') {
                return Err(self.error(format!(
                    "expected ':' after the key \"{key}\", found {}",
                    self.found()
                )));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value()?;
            members.push(Member {
                key,
                key_span,
                value,
            });
            self.skip_ws();
            match self.bytes.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.bytes.get(self.pos) == Some(&b'}') {
                        return Err(self.error("trailing comma before '}': remove the comma"));
                    }
                }
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Kind::Object(members));
                }
                _ => {
                    return Err(self.error(format!(
                        "expected ',' or '}}' after an object member, found {}",
                        self.found()
                    )));
                }
            }
        }
    }

    fn array(&mut self) -> Result<Kind, SyntaxError> {
        self.enter()?;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Kind::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value()?);
            self.skip_ws();
            match self.bytes.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.bytes.get(self.pos) == Some(&b']') {
                        return Err(self.error("trailing comma before ']': remove the comma"));
                    }
                }
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Kind::Array(items));
                }
                _ => {
                    return Err(self.error(format!(
                        "expected ',' or ']' after an array element, found {}",
                        self.found()
                    )));
                }
            }
        }
    }

    fn literal(&mut self, word: &str, kind: Kind) -> Result<Kind, SyntaxError> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(kind)
        } else {
            Err(self.error(format!("expected a value, found {}", self.found())))
        }
    }

    fn number(&mut self) -> Result<Kind, SyntaxError> {
        let start = self.pos;
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let digits = |p: &mut Self| {
            let s = p.pos;
            while let Some(b'0'..=b'9') = p.bytes.get(p.pos) {
                p.pos += 1;
            }
            p.pos - s
        };
        if digits(self) == 0 {
            return Err(self.error("expected a digit in a number"));
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.error("expected a digit after the decimal point"));
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.error("expected a digit in the exponent"));
            }
        }
        let text = &self.text[start..self.pos];
        let leading_zero = text.trim_start_matches('-');
        if leading_zero.len() > 1
            && leading_zero.starts_with('0')
            && leading_zero.as_bytes()[1].is_ascii_digit()
        {
            self.pos = start;
            return Err(self.error("numbers may not have leading zeros"));
        }
        text.parse::<serde_json::Number>()
            .map(Kind::Number)
            .map_err(|e| SyntaxError {
                message: format!("invalid number {text}: {e}"),
                offset: start,
            })
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let rest = &self.text[self.pos..];
            let Some(i) = rest.find(['"', '\\', '\n']) else {
                self.pos = open;
                return Err(self.error("unterminated string: add the closing '\"'"));
            };
            let chunk = &rest[..i];
            if let Some(c) = chunk.chars().position(|c| (c as u32) < 0x20) {
                self.pos += chunk.char_indices().nth(c).map_or(0, |(b, _)| b);
                return Err(self.error("control character in a string: escape it"));
            }
            out.push_str(chunk);
            self.pos += i;
            match self.bytes[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                b'\n' => {
                    return Err(self.error("unterminated string: add the closing '\"'"));
                }
                _ => {
                    self.pos += 1;
                    let c = self.escape()?;
                    out.push(c);
                }
            }
        }
    }

    fn escape(&mut self) -> Result<char, SyntaxError> {
        let Some(&b) = self.bytes.get(self.pos) else {
            return Err(self.error("unterminated escape sequence"));
        };
        self.pos += 1;
        Ok(match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                if (0xD800..0xDC00).contains(&high) {
                    if !self.text[self.pos..].starts_with("\\u") {
                        return Err(self.error("unpaired surrogate in a \\u escape"));
                    }
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(self.error("unpaired surrogate in a \\u escape"));
                    }
                    let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    char::from_u32(c).ok_or_else(|| self.error("invalid \\u escape"))?
                } else {
                    char::from_u32(high)
                        .ok_or_else(|| self.error("unpaired surrogate in a \\u escape"))?
                }
            }
            _ => {
                self.pos -= 1;
                return Err(self.error(format!(
                    "invalid escape '\\{}': expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX",
                    self.found().trim_matches('\'')
                )));
            }
        })
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let digits = self.text.get(self.pos..self.pos + 4);
        match digits.and_then(|d| u32::from_str_radix(d, 16).ok()) {
            Some(v) if digits.is_some_and(|d| d.bytes().all(|b| b.is_ascii_hexdigit())) => {
                self.pos += 4;
                Ok(v)
            }
            _ => Err(self.error("expected four hex digits after \\u")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> (String, usize) {
        let e = parse(text).expect_err("should not parse");
        (e.message, e.offset)
    }

    #[test]
    fn parses_like_serde_json() {
        let text = r#"{"a": [1, -2.5e3, true, null, "x\u00e6\ud83d\ude00\n"], "b": {}}"#;
        let node = parse(text).unwrap();
        let expected: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(node.to_json(), expected);
    }

    #[test]
    fn spans_and_pointers() {
        let text = "{\n  \"a\": [10, {\"b/c\": \"x\"}]\n}";
        let node = parse(text).unwrap();
        let loc = Locations::of(&node);
        let s = loc.value("/a/1/b~1c");
        assert_eq!(&text[s.start..s.end], "\"x\"");
        let k = loc.key("/a");
        assert_eq!(&text[k.start..k.end], "\"a\"");
        // A missing member falls back to its parent.
        let m = loc.value("/a/1/missing");
        assert_eq!(&text[m.start..m.end], "{\"b/c\": \"x\"}");
    }

    #[test]
    fn duplicate_keys_are_kept() {
        let node = parse(r#"{"a": 1, "a": 2}"#).unwrap();
        let Kind::Object(members) = node.kind else {
            panic!("object")
        };
        assert_eq!(members.len(), 2);
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        assert_eq!(
            at("{\"a\": 1,}"),
            ("trailing comma before '}': remove the comma".to_string(), 8)
        );
        assert_eq!(at("{\"a\" 1}").1, 5);
        assert_eq!(at("[1 2]").1, 3);
        assert_eq!(at("\"abc").1, 0);
        assert_eq!(at("01").1, 0);
        assert_eq!(at("{} x").1, 3);
        assert!(at("").0.contains("the end of the file"));
        assert!(at("\"\\x\"").0.starts_with("invalid escape"));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let text = "[".repeat(10_000);
        assert!(at(&text).0.contains("nesting deeper"));
    }
}
