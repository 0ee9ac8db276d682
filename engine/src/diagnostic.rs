//! Findings of the checker, and their two renderings: text for a terminal, JSON for tools.
//!
//! A [`Diagnostic`] is data: a stable [`Code`], a message, where it is (file, line, column, JSON
//! pointer) and a hint. Rendering is separate ([`Diagnostic::render`], [`to_json`]), so the
//! terminal text and `--format json` can never disagree.

use serde::Serialize;

use crate::json::Span;

/// How bad a finding is: an error refuses the pathway, a warning does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The pathway is refused.
    Error,
    /// The pathway is accepted, but something looks wrong.
    Warning,
}

macro_rules! codes {
    ($( $variant:ident = $name:literal, $severity:ident, $doc:literal; )*) => {
        /// The stable code of every finding. Codes never change meaning; new ones may be added.
        ///
        /// `docs/pathway-language.md` shows, for each code, a pathway that has the problem and
        /// the fix; those examples are run by the test suite.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $( #[doc = $doc] $variant, )*
        }

        impl Code {
            /// Every code, in documentation order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// The kebab-case name, as printed and as matched by tools.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $name,)* }
            }

            /// Whether this code refuses the pathway.
            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$severity,)* }
            }

            /// What the code finds, in one sentence.
            pub fn description(self) -> &'static str {
                match self { $(Code::$variant => $doc,)* }
            }

            /// Looks a code up by its kebab-case name.
            pub fn from_name(name: &str) -> Option<Code> {
                match name { $($name => Some(Code::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    ParseError = "parse-error", Error,
        "The file is not valid JSON (or a template file cannot be read as a template).";
    FileTooLarge = "file-too-large", Error,
        "A pathway or template file larger than carepath reads (16 MiB).";
    UnknownKey = "unknown-key", Error,
        "A key the language does not know: usually a typo.";
    MissingKey = "missing-key", Error,
        "A key the language requires is absent.";
    WrongType = "wrong-type", Error,
        "A value of the wrong JSON type, or not one of the allowed values.";
    DuplicateName = "duplicate-name", Error,
        "Two things of one kind share a name (states, keys, templates).";
    UnknownState = "unknown-state", Error,
        "A transition, timer or `initial` names a state that is not declared.";
    UnknownRole = "unknown-role", Error,
        "An owner, notice, handoff or activity names a role that is not declared.";
    UnknownField = "unknown-field", Error,
        "A guard, anchor, `set` or enrolment names a field that is not declared.";
    UnknownEvent = "unknown-event", Error,
        "A transition or acknowledgement names an event that is not declared.";
    UnknownTemplate = "unknown-template", Error,
        "A notice names a template with no file for the recipient's channel.";
    UnknownPathway = "unknown-pathway", Error,
        "An `enroll` action names a pathway that is not among those checked together.";
    UnreachableState = "unreachable-state", Error,
        "A state that no sequence of events and timers can reach from `initial`.";
    Trap = "trap", Error,
        "Non-terminal states from which no terminal state can be reached: a family would stay forever.";
    TerminalHasExit = "terminal-has-exit", Error,
        "A terminal state with transitions, timers or activities.";
    AmbiguousTransition = "ambiguous-transition", Error,
        "Two unguarded transitions on one event from one state.";
    ZeroTimeCycle = "zero-time-cycle", Error,
        "Timer transitions that can loop without time passing.";
    NoOwner = "no-owner", Error,
        "A non-terminal state with nobody responsible for the family.";
    HandoffWithoutDeadline = "handoff-without-deadline", Error,
        "A handoff without an acknowledgement deadline or an escalation target.";
    BadDuration = "bad-duration", Error,
        "A duration that is not ISO 8601.";
    BadCron = "bad-cron", Error,
        "A cron schedule that does not parse.";
    BadGuard = "bad-guard", Error,
        "A guard or `set` expression that does not parse or uses undeclared names.";
    GuardTooComplex = "guard-too-complex", Error,
        "A guard or `set` expression nested deeper or longer than carepath evaluates safely.";
    BadTimeZone = "bad-time-zone", Error,
        "A time zone that is not an IANA name.";
    TemplateError = "template-error", Error,
        "A template that does not compile, or an email template without a subject.";
    TemplateUnknownVariable = "template-unknown-variable", Error,
        "A template uses a variable the pathway does not provide where the template is used.";
    MissingTranslation = "missing-translation", Error,
        "A template has no file in the pathway's default language.";
    UnsafeTemplateConstruct = "unsafe-template-construct", Error,
        "A template construct whose output cannot be known before sending (a partial, a computed key, a helper with the wrong parameters).";
    SensitiveInSms = "sensitive-in-sms", Error,
        "A sensitive field is used in an SMS template.";
    SensitiveInEmail = "sensitive-in-email", Error,
        "A sensitive field is used in an email template.";
    HorizonExceeded = "horizon-exceeded", Error,
        "The longest run driven by timers alone outlasts the pathway's horizon.";
    HorizonStopNotTerminal = "horizon-stop-not-terminal", Error,
        "The state `on_horizon` moves a family to is not terminal: the family would outlive the horizon.";
    DurationBeyondHorizon = "duration-beyond-horizon", Error,
        "A duration longer than the pathway's horizon, or negative where only a positive one makes sense: its timer could never fire in time.";
    WaitWithoutTimeout = "wait-without-timeout", Warning,
        "A non-terminal state that only an event can leave: a family may wait forever.";
    ExitWaitsForField = "exit-waits-for-field", Warning,
        "A state whose only exits are timers on a date field that may never be set.";
    RoleAcrossSectors = "role-across-sectors", Warning,
        "An `enroll` without `roles` passes a contact to a role of the same name in another sector.";
    UnusedTemplate = "unused-template", Warning,
        "A template file that no notice uses.";
    TooManyDiagnostics = "too-many-diagnostics", Warning,
        "A file has more findings than are shown (100): the rest are counted, not listed.";
    SmsSegments = "sms-segments", Warning,
        "An SMS template that, with sample values, needs more segments than configured (`carepath validate`, from the notifier).";
    RoleNotInDirectory = "role-not-in-directory", Warning,
        "A referral leaves a role of the pathway it refers to without a contact, and the directory given to `carepath validate --directory` has nobody for it.";
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One finding, located.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning; follows from the code.
    pub severity: Severity,
    /// The stable code.
    pub code: Code,
    /// What is wrong, naming the bad value.
    pub message: String,
    /// The file, as the caller named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The JSON pointer of the value in the pathway file (empty for the whole document or for
    /// a template file).
    pub pointer: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// The source line, for rendering with a caret: for a long line, only a window of it
    /// around the column (with `…` where it was cut), so a 20 MB one-line file gives short
    /// diagnostics.
    #[serde(skip)]
    pub source_line: String,
    /// The 1-based column of the caret in `source_line` (the column itself, unless the line
    /// was cut).
    #[serde(skip)]
    pub caret: usize,
    /// How many characters the caret underlines.
    #[serde(skip)]
    pub width: usize,
}

/// The most characters of a source line a diagnostic shows.
pub const SNIPPET_WIDTH: usize = 100;

/// A window of at most [`SNIPPET_WIDTH`] characters of `line` around the 1-based `column`,
/// with `…` where it was cut; returns it with the caret's column in it and the width the
/// caret may underline.
pub fn snippet(line: &str, column: usize, width: usize) -> (String, usize, usize) {
    let length = line.chars().count();
    if length <= SNIPPET_WIDTH {
        return (line.to_string(), column, width.max(1));
    }
    // Some context before the column, most of the window after it.
    let start = column.saturating_sub(1).saturating_sub(30).min(length);
    let end = (start + SNIPPET_WIDTH).min(length);
    let mut window: String = line.chars().skip(start).take(end - start).collect();
    let mut caret = column - start;
    if start > 0 {
        window.insert(0, '…');
        caret += 1;
    }
    let room = end.saturating_sub(column - 1).max(1);
    if end < length {
        window.push('…');
    }
    (window, caret, width.clamp(1, room))
}

impl Diagnostic {
    /// Renders the finding the way a compiler does, with the source line and a caret.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{sev}[{}]: {}", self.code, self.message);
        let number = self.line.to_string();
        let pad = " ".repeat(number.len());
        let at = if self.pointer.is_empty() {
            String::new()
        } else {
            format!(" at {}", self.pointer)
        };
        let _ = writeln!(
            out,
            "{pad} --> {}:{}:{}{at}",
            self.file, self.line, self.column
        );
        if !self.source_line.is_empty() {
            let line = self.source_line.replace('\t', " ");
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{number} | {line}");
            let _ = writeln!(
                out,
                "{pad} | {}{}",
                " ".repeat(self.caret.saturating_sub(1)),
                "^".repeat(self.width.max(1))
            );
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "{pad} = hint: {hint}");
        }
        out
    }
}

/// The `--format json` rendering: `{"diagnostics": [...]}`.
pub fn to_json(diagnostics: &[Diagnostic]) -> serde_json::Value {
    serde_json::json!({ "diagnostics": diagnostics })
}

/// Every this many bytes, [`LineIndex`] notes how many characters came before: a column is
/// then counted from the nearest note, not from the line's start, so a long one-line file
/// with many findings is indexed in linear time.
const CHECKPOINT: usize = 4096;

/// Turns byte offsets of one text into lines and columns.
#[derive(Clone, Debug)]
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
    /// (byte offset, characters before it), every [`CHECKPOINT`] bytes or so.
    checkpoints: Vec<(usize, usize)>,
}

impl<'a> LineIndex<'a> {
    /// Indexes `text`.
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut checkpoints = vec![(0, 0)];
        let (mut at, mut chars) = (0, 0);
        while at + CHECKPOINT < text.len() {
            let mut next = at + CHECKPOINT;
            while !text.is_char_boundary(next) {
                next += 1;
            }
            chars += text[at..next].chars().count();
            checkpoints.push((next, chars));
            at = next;
        }
        LineIndex {
            text,
            starts,
            checkpoints,
        }
    }

    /// How many characters come before the byte `offset` (a character boundary).
    fn chars_before(&self, offset: usize) -> usize {
        let i = self.checkpoints.partition_point(|&(b, _)| b <= offset) - 1;
        let (byte, chars) = self.checkpoints[i];
        chars + self.text.get(byte..offset).map_or(0, |s| s.chars().count())
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let column = self.chars_before(offset) - self.chars_before(start);
        (line + 1, column + 1)
    }

    /// The byte range of a 1-based line, without its line break.
    fn bounds(&self, line: usize) -> (usize, usize) {
        let start = self
            .starts
            .get(line - 1)
            .copied()
            .unwrap_or(self.text.len());
        let end = self
            .starts
            .get(line)
            .map_or(self.text.len(), |next| next - 1);
        (start, end.max(start))
    }

    /// The text of a 1-based line, without its line ending.
    pub fn line(&self, line: usize) -> &'a str {
        let (start, end) = self.bounds(line);
        self.text
            .get(start..end)
            .unwrap_or("")
            .trim_end_matches('\r')
    }

    /// The byte offset of a 1-based line and column (in characters).
    pub fn offset(&self, line: usize, column: usize) -> usize {
        let start = self
            .starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(self.text.len());
        let rest = &self.text[start..];
        rest.char_indices()
            .nth(column.saturating_sub(1))
            .map_or(self.text.len(), |(i, _)| start + i)
    }

    /// At most [`SNIPPET_WIDTH`] characters of `line` around `span`'s start, with `…` where
    /// the line was cut, the caret's column in them and the width it underlines. Only the
    /// bytes shown are looked at, so this is quick on a line of megabytes.
    fn window(&self, line: usize, span: Span) -> (String, usize, usize) {
        let (start, end) = self.bounds(line);
        let mut at = span.start.clamp(start, end);
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        let line_text = |from: usize, to: usize| self.text.get(from..to).unwrap_or("");
        // A short line is shown whole; a long one from up to 30 characters before the caret.
        let short = end - start <= SNIPPET_WIDTH * 4
            && line_text(start, end).chars().count() <= SNIPPET_WIDTH;
        let before = if short {
            start
        } else {
            line_text(start, at)
                .char_indices()
                .rev()
                .take(30)
                .last()
                .map_or(at, |(i, _)| start + i)
        };
        let shown_before = line_text(before, at).chars().count();
        let stop = line_text(before, end)
            .char_indices()
            .nth(SNIPPET_WIDTH)
            .map_or(end, |(i, _)| before + i);
        let mut window = line_text(before, stop).trim_end_matches('\r').to_string();
        let mut caret = shown_before + 1;
        if before > start {
            window.insert(0, '…');
            caret += 1;
        }
        if stop < end {
            window.push('…');
        }
        let room = line_text(at, stop).chars().count().max(1);
        let mut span_end = span.end.clamp(at, stop);
        while !self.text.is_char_boundary(span_end) {
            span_end -= 1;
        }
        let width = line_text(at, span_end).chars().count().clamp(1, room);
        (window, caret, width)
    }

    /// A diagnostic located at `span` of this text.
    #[allow(clippy::too_many_arguments)]
    pub fn diagnostic(
        &self,
        file: &str,
        code: Code,
        message: String,
        span: Span,
        pointer: &str,
        hint: Option<String>,
    ) -> Diagnostic {
        let (line, column) = self.line_col(span.start);
        let (source_line, caret, width) = self.window(line, span);
        Diagnostic {
            severity: code.severity(),
            code,
            message,
            file: file.to_string(),
            line,
            column,
            pointer: pointer.to_string(),
            hint,
            source_line,
            caret,
            width,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-')
            );
            assert_eq!(Code::from_name(code.as_str()), Some(*code));
        }
    }

    #[test]
    fn line_and_column_count_characters() {
        let idx = LineIndex::new("ab\næøå x\r\nlast");
        assert_eq!(idx.line_col(0), (1, 1));
        assert_eq!(idx.line_col(3), (2, 1));
        // "æøå " is 7 bytes, 4 characters: 'x' is the 5th character.
        assert_eq!(idx.line_col(3 + 7), (2, 5));
        assert_eq!(idx.line(2), "æøå x");
        assert_eq!(idx.line(3), "last");
    }

    #[test]
    fn renders_with_a_caret() {
        let text = "{\n  \"initial\": \"nowhere\"\n}";
        let idx = LineIndex::new(text);
        let start = text.find("\"nowhere\"").unwrap();
        let d = idx.diagnostic(
            "p.json",
            Code::UnknownState,
            "unknown state \"nowhere\"".into(),
            Span {
                start,
                end: start + 9,
            },
            "/initial",
            Some("declare it under \"states\"".into()),
        );
        assert_eq!(
            d.render(),
            "error[unknown-state]: unknown state \"nowhere\"\n  --> p.json:2:14 at /initial\n  |\n2 |   \"initial\": \"nowhere\"\n  |              ^^^^^^^^^\n  = hint: declare it under \"states\"\n"
        );
    }
}
