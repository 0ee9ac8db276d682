//! Rendering a notice: the template in the recipient's language (the pathway's default when
//! there is none), Handlebars in strict mode, dates in the recipient's language and the
//! pathway's time zone.

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde_json::Value;

use carepath_engine::CheckedPathway;
use carepath_engine::pathway::Channel;

/// Why a notice could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The pathway has no template of that name for the channel (the checker prevents this).
    #[error("no template \"{template}\" for {channel} in \"{language}\" or the default language")]
    NoTemplate {
        /// The template's name.
        template: String,
        /// The channel.
        channel: &'static str,
        /// The language asked for.
        language: String,
    },
    /// A template did not compile.
    #[error("template {path}: {source}")]
    Compile {
        /// The file.
        path: String,
        /// What Handlebars said.
        source: Box<handlebars::TemplateError>,
    },
    /// Rendering failed: a variable missing from the data, a helper given a bad value.
    #[error("rendering \"{template}\": {source}")]
    Render {
        /// The template's name.
        template: String,
        /// What Handlebars said.
        source: Box<handlebars::RenderError>,
    },
}

/// A rendered notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The language it was rendered in.
    pub language: String,
    /// The subject, for email.
    pub subject: Option<String>,
    /// The text.
    pub body: String,
    /// The HTML alternative, for an email template with an HTML body.
    pub html: Option<String>,
}

/// The compiled templates of one pathway version.
pub struct Renderer {
    registry: Handlebars<'static>,
    /// HTML bodies, in a registry of their own because there every value is HTML-escaped.
    html: Handlebars<'static>,
    templates: Vec<(String, Channel, String)>,
    default_language: String,
    time_zone: String,
}

fn key(name: &str, channel: Channel, language: &str) -> String {
    format!("{name}.{language}.{}", channel.as_str())
}

impl Renderer {
    /// Compiles every template of a checked pathway.
    pub fn new(p: &CheckedPathway) -> Result<Self, RenderError> {
        let registry = |escape: bool| {
            let mut r = Handlebars::new();
            r.set_strict_mode(true);
            if !escape {
                r.register_escape_fn(handlebars::no_escape);
            }
            for name in ["date", "time", "datetime"] {
                r.register_helper(name, Box::new(DateHelper(name)));
            }
            r
        };
        // Text notices are plain text: nothing is escaped. HTML bodies escape every value.
        let (mut text, mut html) = (registry(false), registry(true));
        let mut templates = Vec::new();
        for t in &p.templates {
            let compile = |r: &mut Handlebars<'static>, k: &str, body: &str, path: &str| {
                r.register_template_string(k, body)
                    .map_err(|e| RenderError::Compile {
                        path: path.to_string(),
                        source: Box::new(e),
                    })
            };
            let k = key(&t.name, t.channel, &t.language);
            compile(&mut text, &k, &t.body, &t.path)?;
            if let Some(subject) = &t.subject {
                compile(&mut text, &format!("{k}.subject"), subject, &t.path)?;
            }
            if let Some(h) = &t.html {
                compile(&mut html, &k, &h.body, &h.path)?;
            }
            templates.push((t.name.clone(), t.channel, t.language.clone()));
        }
        Ok(Renderer {
            registry: text,
            html,
            templates,
            default_language: p.pathway.default_language.clone(),
            time_zone: p.pathway.time_zone.clone(),
        })
    }

    /// Renders `template` for `channel` in `language` (or the default language) with `data`.
    pub fn render(
        &self,
        template: &str,
        channel: Channel,
        language: &str,
        data: &Value,
    ) -> Result<Rendered, RenderError> {
        let has = |lang: &str| {
            self.templates
                .iter()
                .any(|(n, c, l)| n == template && *c == channel && l == lang)
        };
        let language = if has(language) {
            language
        } else if has(&self.default_language) {
            &self.default_language
        } else {
            return Err(RenderError::NoTemplate {
                template: template.into(),
                channel: channel.as_str(),
                language: language.into(),
            });
        };
        let mut data = data.clone();
        if let Some(obj) = data.as_object_mut() {
            obj.insert(
                "_locale".into(),
                serde_json::json!({"language": language, "time_zone": self.time_zone}),
            );
        }
        // One context for the subject, the body and the HTML: `render` would serialise the
        // data into a fresh context for each of them.
        let data = Context::from(data);
        let k = key(template, channel, language);
        let render_in = |registry: &Handlebars<'static>, k: &str| {
            registry
                .render_with_context(k, &data)
                .map_err(|e| RenderError::Render {
                    template: template.into(),
                    source: Box::new(e),
                })
        };
        let render = |k: &str| render_in(&self.registry, k);
        let subject = match channel {
            Channel::Email => Some(render(&format!("{k}.subject"))?),
            Channel::Sms => None,
        };
        let html = if self.html.has_template(&k) {
            Some(render_in(&self.html, &k)?)
        } else {
            None
        };
        // A template file ends with a newline, as editors save it: that newline is not part
        // of the message, so it is neither sent nor counted towards an SMS segment.
        let body = render(&k)?.trim_end().to_string();
        Ok(Rendered {
            language: language.to_string(),
            subject,
            body,
            html,
        })
    }
}

/// `date`, `time` and `datetime`: a timestamp or date in the recipient's language, in the
/// pathway's time zone.
struct DateHelper(&'static str);

impl handlebars::HelperDef for DateHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = h
            .param(0)
            .map(|p| p.value().clone())
            .ok_or_else(|| RenderErrorReason::ParamNotFoundForIndex(self.0, 0))?;
        let text = value
            .as_str()
            .ok_or_else(|| RenderErrorReason::InvalidParamType("a date or timestamp string"))?;
        let locale = &ctx.data()["_locale"];
        let language = locale["language"].as_str().unwrap_or("da");
        let tz = locale["time_zone"]
            .as_str()
            .and_then(|z| jiff::tz::TimeZone::get(z).ok())
            .unwrap_or(jiff::tz::TimeZone::UTC);
        let formatted = format_moment(self.0, text, language, &tz).ok_or_else(|| {
            RenderErrorReason::Other(format!("{}: not a date or timestamp: {text:?}", self.0))
        })?;
        out.write(&formatted)?;
        Ok(())
    }
}

const DA_DAYS: [&str; 7] = [
    "mandag", "tirsdag", "onsdag", "torsdag", "fredag", "lørdag", "søndag",
];
const DA_MONTHS: [&str; 12] = [
    "januar",
    "februar",
    "marts",
    "april",
    "maj",
    "juni",
    "juli",
    "august",
    "september",
    "oktober",
    "november",
    "december",
];
const EN_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const EN_MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Formats a date (`2027-03-02`) or a timestamp (`2027-03-02T09:00:00Z`, any offset) as `kind`
/// (`date`, `time`, `datetime`) in `language`, in `tz`. Danish: "tirsdag den 2. marts 2027 kl.
/// 10.00"; English: "Tuesday 2 March 2027 at 10:00"; other languages: "2027-03-02 10:00".
pub fn format_moment(
    kind: &str,
    text: &str,
    language: &str,
    tz: &jiff::tz::TimeZone,
) -> Option<String> {
    let (date, clock) = match text.parse::<jiff::Timestamp>() {
        Ok(ts) => {
            let z = ts.to_zoned_datetime(tz.clone());
            (z.date(), Some((z.hour(), z.minute())))
        }
        Err(_) => (text.parse::<jiff::civil::Date>().ok()?, None),
    };
    let weekday = date.weekday().to_monday_zero_offset() as usize;
    let month = (date.month() - 1) as usize;
    let (day, year) = (date.day(), date.year());
    let date_text = match language {
        "da" => format!(
            "{} den {day}. {} {year}",
            DA_DAYS[weekday], DA_MONTHS[month]
        ),
        "en" => format!("{} {day} {} {year}", EN_DAYS[weekday], EN_MONTHS[month]),
        _ => date.to_string(),
    };
    let time_text = clock.map(|(h, m)| match language {
        "da" => format!("{h:02}.{m:02}"),
        _ => format!("{h:02}:{m:02}"),
    });
    Some(match (kind, time_text) {
        ("time", t) => t?,
        ("date", _) | (_, None) => date_text,
        (_, Some(t)) => match language {
            "da" => format!("{date_text} kl. {t}"),
            "en" => format!("{date_text} at {t}"),
            _ => format!("{date_text} {t}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cph() -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get("Europe/Copenhagen").unwrap()
    }

    #[test]
    fn danish_and_english_dates_in_local_time() {
        // 09:00 UTC on 2 March 2027 is 10:00 in Copenhagen (winter time).
        let t = "2027-03-02T09:00:00Z";
        assert_eq!(
            format_moment("datetime", t, "da", &cph()).unwrap(),
            "tirsdag den 2. marts 2027 kl. 10.00"
        );
        assert_eq!(
            format_moment("datetime", t, "en", &cph()).unwrap(),
            "Tuesday 2 March 2027 at 10:00"
        );
        assert_eq!(
            format_moment("date", "2027-03-02", "da", &cph()).unwrap(),
            "tirsdag den 2. marts 2027"
        );
        assert_eq!(format_moment("time", t, "ar", &cph()).unwrap(), "10:00");
        // Summer time: 09:00 UTC is 11:00.
        assert_eq!(
            format_moment("time", "2027-06-01T09:00:00Z", "da", &cph()).unwrap(),
            "11.00"
        );
        assert!(format_moment("date", "tomorrow", "da", &cph()).is_none());
    }
}
