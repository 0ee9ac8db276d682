//! SMS length: GSM-7 fits 160 characters in one message and 153 per part; anything outside
//! the GSM-7 alphabet (Arabic, emoji) forces UCS-2, with 70 and 67. [`estimate`] sizes a
//! pathway's SMS templates before any family sees them.

use serde_json::{Map, Value};

use carepath_engine::pathway::{Channel, FieldType};
use carepath_engine::template::TemplateFile;
use carepath_engine::{CheckedPathway, Code, Diagnostic, Report};

use crate::render::{Renderer, format_moment};

/// How a message is encoded on the air.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The GSM 03.38 default alphabet (æ, ø, å fit).
    Gsm7,
    /// UTF-16: 16 bits a unit.
    Ucs2,
}

impl Encoding {
    /// The name, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

/// The size of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    /// The encoding the message needs.
    pub encoding: Encoding,
    /// Length in the encoding's units (septets for GSM-7, UTF-16 units for UCS-2).
    pub units: usize,
    /// How many messages it is billed and delivered as.
    pub segments: usize,
}

const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const EXTENDED: &str = "^{}\\[~]|€\u{c}";

/// Counts the segments of `text`.
pub fn segments(text: &str) -> Segments {
    let mut septets = 0;
    let mut gsm = true;
    for c in text.chars() {
        if BASIC.contains(c) {
            septets += 1;
        } else if EXTENDED.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (encoding, units, single, part) = if gsm {
        (Encoding::Gsm7, septets, 160, 153)
    } else {
        (Encoding::Ucs2, text.encode_utf16().count(), 70, 67)
    };
    let segments = match units {
        0 => 0,
        n if n <= single => 1,
        n => n.div_ceil(part),
    };
    Segments {
        encoding,
        units,
        segments,
    }
}

/// The characters a text value stands for when a template's length is estimated: a name, a
/// place, a title.
pub const SAMPLE_TEXT_CHARS: usize = 24;

/// How long one SMS template renders, estimated with sample values: the longest date of the
/// year in the template's language, constants as declared, the longest title, state or enum
/// value, and [`SAMPLE_TEXT_CHARS`] characters for each free text; conditional parts included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// The template's name.
    pub template: String,
    /// Its language.
    pub language: String,
    /// The file.
    pub path: String,
    /// The 1-based line where the body starts.
    pub line: usize,
    /// The size of the sample rendering, or why it could not be rendered.
    pub size: Result<Segments, String>,
}

/// How many segments an SMS may need before `carepath validate` warns, unless configured.
pub const DEFAULT_MAX_SEGMENTS: usize = 3;

/// Estimates the SMS templates of every pathway the checker accepted, adding an
/// `sms-segments` warning to the report for each over `max_segments`. Returns the estimates
/// by pathway id.
pub fn check(report: &mut Report, max_segments: usize) -> Vec<(String, Vec<Estimate>)> {
    let mut out = Vec::new();
    for p in &report.pathways {
        let estimates = estimate(p);
        report
            .diagnostics
            .extend(warnings(&estimates, p, max_segments));
        out.push((p.pathway.id.clone(), estimates));
    }
    out
}

/// Estimates every SMS template of a checked pathway, in file order.
pub fn estimate(p: &CheckedPathway) -> Vec<Estimate> {
    let renderer = Renderer::new(p);
    p.templates
        .iter()
        .filter(|t| t.channel == Channel::Sms)
        .map(|t| {
            let size = match &renderer {
                Ok(r) => r
                    .render(&t.name, Channel::Sms, &t.language, &sample(p, t))
                    .map(|rendered| segments(&rendered.body))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            Estimate {
                template: t.name.clone(),
                language: t.language.clone(),
                path: t.path.clone(),
                line: t.body_line,
                size,
            }
        })
        .collect()
}

/// `sms-segments` warnings for the estimates over `max_segments`.
fn warnings(estimates: &[Estimate], p: &CheckedPathway, max_segments: usize) -> Vec<Diagnostic> {
    estimates
        .iter()
        .filter_map(|e| {
            let size = e.size.as_ref().ok()?;
            if size.segments <= max_segments {
                return None;
            }
            let t = p.templates.iter().find(|t| t.path == e.path)?;
            let first = t.body.lines().next().unwrap_or("");
            let (source_line, caret, width) = carepath_engine::diagnostic::snippet(
                first,
                1,
                first.chars().count(),
            );
            let (single, part) = match size.encoding {
                Encoding::Gsm7 => (160, 153),
                Encoding::Ucs2 => (70, 67),
            };
            let code = Code::SmsSegments;
            Some(Diagnostic {
                severity: code.severity(),
                code,
                message: format!(
                    "SMS template \"{}\" ({}) renders to about {} {} units: {} segments, more than the {max_segments} allowed",
                    e.template,
                    e.language,
                    size.units,
                    size.encoding.as_str(),
                    size.segments
                ),
                file: e.path.clone(),
                line: e.line,
                column: 1,
                pointer: String::new(),
                hint: Some(format!(
                    "an SMS holds time, place and a rebooking number: shorten it to {single} units ({part} a segment when split), or raise [sms] max_segments"
                )),
                width,
                caret,
                source_line,
            })
        })
        .collect()
}

/// Sample data for one template: every variable it uses, at its longest plausible length.
fn sample(p: &CheckedPathway, t: &TemplateFile) -> Value {
    let (date, timestamp) = longest_date(&t.language, &p.pathway.time_zone);
    let text = Value::String("x".repeat(SAMPLE_TEXT_CHARS));
    let longest = |items: &mut dyn Iterator<Item = &str>| {
        items
            .max_by_key(|s| s.chars().count())
            .map_or_else(|| text.clone(), |s| Value::String(s.to_string()))
    };
    let mut data = Value::Object(Map::new());
    for u in t.uses().unwrap_or_default() {
        let Some((root, rest)) = u.name.split_once('.').filter(|_| !u.helper) else {
            continue;
        };
        let value = match (root, rest) {
            ("fields", name) => match p.pathway.fields.get(name) {
                Some(f) => match f.ty {
                    FieldType::Date => date.clone(),
                    FieldType::Datetime => timestamp.clone(),
                    FieldType::Int => Value::from(100),
                    FieldType::Bool => Value::Bool(true),
                    FieldType::Enum => longest(&mut f.values.iter().flatten().map(String::as_str)),
                    FieldType::Text => text.clone(),
                },
                None => text.clone(),
            },
            ("constants", name) => p
                .pathway
                .constants
                .get(name)
                .map_or_else(|| text.clone(), |c| Value::String(c.clone())),
            ("pathway", "title") => Value::String(p.pathway.title.clone()),
            ("pathway", "id") => Value::String(p.pathway.id.clone()),
            ("state", "name") => longest(&mut p.pathway.states.keys().map(String::as_str)),
            ("state", "title") => longest(
                &mut p
                    .pathway
                    .states
                    .iter()
                    .map(|(k, s)| s.title.as_deref().unwrap_or(k)),
            ),
            (_, "at" | "deadline") => timestamp.clone(),
            (_, "due_from" | "due_to") => date.clone(),
            _ => text.clone(),
        };
        insert(&mut data, &u.name, value);
    }
    data
}

fn insert(data: &mut Value, path: &str, value: Value) {
    let mut at = data;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Some(obj) = at.as_object_mut() else {
            return;
        };
        if parts.peek().is_none() {
            obj.insert(part.to_string(), value);
            return;
        }
        at = obj
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// The date of next year whose rendering in `language` is longest, as a date and as a
/// timestamp at 10:00 in `zone`.
fn longest_date(language: &str, zone: &str) -> (Value, Value) {
    let tz = jiff::tz::TimeZone::get(zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let start = jiff::civil::date(2027, 1, 1);
    let date = (0..365)
        .filter_map(|d| start.checked_add(jiff::Span::new().days(d)).ok())
        .max_by_key(|d| {
            format_moment("date", &d.to_string(), language, &tz).map_or(0, |s| s.chars().count())
        })
        .unwrap_or(start);
    let timestamp = date
        .at(10, 0, 0, 0)
        .to_zoned_datetime(tz)
        .map_or_else(|_| date.to_string(), |z| z.timestamp().to_string());
    (Value::String(date.to_string()), Value::String(timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn danish_fits_gsm7() {
        let s = segments("Hej Åse, din aftale er flyttet. Ring på 70 20 30 40.");
        assert_eq!(s.encoding, Encoding::Gsm7);
        assert_eq!(s.segments, 1);
    }

    #[test]
    fn boundaries() {
        assert_eq!(segments(&"a".repeat(160)).segments, 1);
        assert_eq!(segments(&"a".repeat(161)).segments, 2);
        assert_eq!(segments(&"a".repeat(306)).segments, 2);
        assert_eq!(segments(&"a".repeat(307)).segments, 3);
        // The euro sign takes two septets.
        assert_eq!(segments(&"€".repeat(80)).units, 160);
        assert_eq!(segments(&"€".repeat(81)).segments, 2);
        assert_eq!(segments("").segments, 0);
    }

    #[test]
    fn arabic_forces_ucs2() {
        let s = segments("تذكير: لديك موعد");
        assert_eq!(s.encoding, Encoding::Ucs2);
        assert_eq!(segments(&"ت".repeat(70)).segments, 1);
        assert_eq!(segments(&"ت".repeat(71)).segments, 2);
        // An emoji is two UTF-16 units.
        assert_eq!(segments("😀").units, 2);
    }
}
