//! Reads a `pathway.json` into the model, reporting every structural problem at once.
//!
//! `serde` stops at the first error; a coordinator wants them all. The decoder walks the
//! [`json`](crate::json) tree, and for each object marks the keys it asks for, so whatever is
//! left over is an `unknown-key` with a "did you mean" hint. Values of the wrong type are
//! reported and skipped, so one typo does not hide the next.

use indexmap::IndexMap;

use crate::diagnostic::{Code, Diagnostic, LineIndex};
use crate::duration::IsoDuration;
use crate::json::{self, Kind, Locations, Member, Node, escape_pointer};
use crate::pathway::*;

/// A file's text with what is needed to locate findings in it.
pub struct Located<'a> {
    /// The file name, as the caller named it.
    pub file: &'a str,
    /// Line starts of the text.
    pub index: LineIndex<'a>,
    /// Spans by JSON pointer.
    pub locations: Locations,
}

impl Located<'_> {
    /// A finding about the value at `pointer`.
    pub fn at(
        &self,
        code: Code,
        pointer: &str,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        self.index.diagnostic(
            self.file,
            code,
            message,
            self.locations.value(pointer),
            pointer,
            hint,
        )
    }

    /// A finding about the key of the member at `pointer`.
    pub fn at_key(
        &self,
        code: Code,
        pointer: &str,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        self.index.diagnostic(
            self.file,
            code,
            message,
            self.locations.key(pointer),
            pointer,
            hint,
        )
    }
}

/// The result of decoding one file.
pub struct Decoded<'a> {
    /// The pathway, if the file was well-formed enough to build one. Present even when some
    /// diagnostics were found, as long as they were all recoverable, so that later checks can
    /// still run and report their findings too.
    pub pathway: Option<Pathway>,
    /// Where things are in the file (absent for a file that is not JSON).
    pub located: Located<'a>,
    /// What was wrong.
    pub diagnostics: Vec<Diagnostic>,
}

/// Decodes the text of a `pathway.json`.
/// A file refused before its JSON could be read: its one diagnostic, and no pathway.
fn refused<'a>(file: &'a str, index: LineIndex<'a>, d: Diagnostic) -> Decoded<'a> {
    Decoded {
        pathway: None,
        located: Located {
            file,
            index,
            locations: Locations::default(),
        },
        diagnostics: vec![d],
    }
}

pub fn decode<'a>(file: &'a str, text: &'a str) -> Decoded<'a> {
    let index = LineIndex::new(text);
    if text.len() > crate::check::MAX_FILE_BYTES {
        let d = index.diagnostic(
            file,
            Code::FileTooLarge,
            format!(
                "the file has {} bytes, more than the {} a pathway may have",
                text.len(),
                crate::check::MAX_FILE_BYTES
            ),
            json::Span { start: 0, end: 1 },
            "",
            Some("a pathway is a few hundred kilobytes at most: split it into pathways that refer to each other with enroll".into()),
        );
        return refused(file, index, d);
    }
    let root = match json::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let d = index.diagnostic(
                file,
                Code::ParseError,
                format!("invalid JSON: {}", e.message),
                json::Span {
                    start: e.offset,
                    end: e.offset + 1,
                },
                "",
                Some("fix the JSON syntax; the checks run once the file parses".into()),
            );
            return refused(file, index, d);
        }
    };
    let located = Located {
        file,
        index,
        locations: Locations::of(&root),
    };
    let mut cx = Cx {
        located: &located,
        diagnostics: Vec::new(),
    };
    let pathway = cx.pathway(&root);
    let diagnostics = cx.diagnostics;
    Decoded {
        pathway,
        located,
        diagnostics,
    }
}

struct Cx<'l, 'a> {
    located: &'l Located<'a>,
    diagnostics: Vec<Diagnostic>,
}

/// An object being decoded: remembers which keys were asked for.
struct Obj<'n> {
    pointer: String,
    members: &'n [Member],
    asked: Vec<&'static str>,
}

impl<'n> Obj<'n> {
    fn child(&self, key: &str) -> String {
        format!("{}/{}", self.pointer, escape_pointer(key))
    }
}

impl Cx<'_, '_> {
    fn report(&mut self, code: Code, pointer: &str, message: String, hint: Option<String>) {
        let d = self.located.at(code, pointer, message, hint);
        self.diagnostics.push(d);
    }

    fn wrong_type(&mut self, node: &Node, pointer: &str, expected: &str) {
        self.report(
            Code::WrongType,
            pointer,
            format!(
                "{} must be {expected}, found {}",
                describe_pointer(pointer),
                node.kind.describe()
            ),
            None,
        );
    }

    fn obj<'n>(&mut self, node: &'n Node, pointer: &str) -> Option<Obj<'n>> {
        let Kind::Object(members) = &node.kind else {
            self.wrong_type(node, pointer, "an object");
            return None;
        };
        let mut seen = std::collections::HashSet::new();
        for m in members {
            if !seen.insert(m.key.as_str()) {
                let p = format!("{pointer}/{}", escape_pointer(&m.key));
                let d = self.located.index.diagnostic(
                    self.located.file,
                    Code::DuplicateName,
                    format!("duplicate key \"{}\"", m.key),
                    m.key_span,
                    &p,
                    Some("a key may appear once in an object: merge or rename them".into()),
                );
                self.diagnostics.push(d);
            }
        }
        Some(Obj {
            pointer: pointer.to_string(),
            members,
            asked: Vec::new(),
        })
    }

    /// The member `key` of `o`, if present.
    fn get<'n>(&mut self, o: &mut Obj<'n>, key: &'static str) -> Option<(&'n Node, String)> {
        o.asked.push(key);
        o.members
            .iter()
            .find(|m| m.key == key)
            .map(|m| (&m.value, o.child(key)))
    }

    /// The member `key` of `o`, reported as `missing-key` if absent.
    fn req<'n>(&mut self, o: &mut Obj<'n>, key: &'static str) -> Option<(&'n Node, String)> {
        let found = self.get(o, key);
        if found.is_none() {
            let what = describe_pointer(&o.pointer);
            self.report(
                Code::MissingKey,
                &o.pointer,
                format!("{what} lacks the required key \"{key}\""),
                Some(format!("add \"{key}\"")),
            );
        }
        found
    }

    /// Reports every member of `o` that was not asked for.
    fn finish(&mut self, o: Obj<'_>) {
        for m in o.members {
            if !o.asked.contains(&m.key.as_str()) {
                let p = o.child(&m.key);
                let hint = match closest(&m.key, &o.asked) {
                    Some(k) => format!("did you mean \"{k}\"?"),
                    None => format!("allowed here: {}", o.asked.join(", ")),
                };
                let d = self.located.at_key(
                    Code::UnknownKey,
                    &p,
                    format!(
                        "unknown key \"{}\" in {}",
                        m.key,
                        describe_pointer(&o.pointer)
                    ),
                    Some(hint),
                );
                self.diagnostics.push(d);
            }
        }
    }

    fn string(&mut self, node: &Node, pointer: &str) -> Option<String> {
        match &node.kind {
            Kind::String(s) => Some(s.clone()),
            _ => {
                self.wrong_type(node, pointer, "a string");
                None
            }
        }
    }

    fn name(&mut self, node: &Node, pointer: &str) -> Option<String> {
        let s = self.string(node, pointer)?;
        if s.is_empty() {
            self.report(
                Code::WrongType,
                pointer,
                format!("{} must not be empty", describe_pointer(pointer)),
                None,
            );
            return None;
        }
        if s.chars().any(char::is_control) {
            self.report(
                Code::WrongType,
                pointer,
                format!(
                    "{} {:?} holds a control character",
                    describe_pointer(pointer),
                    s
                ),
                Some("names are printable text".into()),
            );
            return None;
        }
        Some(s)
    }

    /// A pathway's id: lowercase letters and digits in words joined by dashes, as documented;
    /// it becomes part of file names, keys and URLs, so nothing else is accepted.
    fn pathway_id(&mut self, node: &Node, pointer: &str) -> Option<String> {
        let s = self.name(node, pointer)?;
        let ok = s.len() <= 64
            && s.split('-').all(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if !ok {
            let suggestion: String = s
                .to_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
                .split('-')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join("-");
            self.report(
                Code::WrongType,
                pointer,
                format!(
                    "pathway id {s:?} is not lowercase words joined by dashes (at most 64 characters)"
                ),
                Some(if suggestion.is_empty() {
                    "use an id such as \"standard-track\"".into()
                } else {
                    format!("use an id such as {suggestion:?}")
                }),
            );
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, node: &Node, pointer: &str) -> Option<bool> {
        match &node.kind {
            Kind::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(node, pointer, "true or false");
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, pointer: &str) -> Option<IsoDuration> {
        let s = self.string(node, pointer)?;
        match s.parse::<IsoDuration>() {
            Ok(d) => Some(d),
            Err(e) => {
                self.report(
                    Code::BadDuration,
                    pointer,
                    e.to_string(),
                    Some("write an ISO 8601 duration such as P4D, P6M, PT2H or -P2W".into()),
                );
                None
            }
        }
    }

    fn array<'n>(&mut self, node: &'n Node, pointer: &str) -> Vec<(&'n Node, String)> {
        match &node.kind {
            Kind::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (n, format!("{pointer}/{i}")))
                .collect(),
            _ => {
                self.wrong_type(node, pointer, "an array");
                Vec::new()
            }
        }
    }

    /// An object used as a map from names to `T`.
    fn map<T>(
        &mut self,
        node: &Node,
        pointer: &str,
        mut item: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> IndexMap<String, T> {
        let mut out = IndexMap::new();
        let Some(o) = self.obj(node, pointer) else {
            return out;
        };
        for m in o.members {
            let p = o.child(&m.key);
            if let Some(v) = item(self, &m.value, &p) {
                out.entry(m.key.clone()).or_insert(v);
            }
        }
        out
    }

    fn list<T>(
        &mut self,
        node: Option<(&Node, String)>,
        mut item: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Vec<T> {
        let Some((node, pointer)) = node else {
            return Vec::new();
        };
        self.array(node, &pointer)
            .into_iter()
            .filter_map(|(n, p)| item(self, n, &p))
            .collect()
    }

    fn opt<T>(
        &mut self,
        found: Option<(&Node, String)>,
        f: impl FnOnce(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        let (n, p) = found?;
        f(self, n, &p)
    }

    fn pathway(&mut self, root: &Node) -> Option<Pathway> {
        let mut o = self.obj(root, "")?;
        let schema = self.get(&mut o, "$schema");
        let schema = self.opt(schema, Self::string);
        let id = self.req(&mut o, "id");
        let id = self.opt(id, Self::pathway_id);
        let version = self.req(&mut o, "version");
        let version = self.opt(version, |cx, n, p| match &n.kind {
            Kind::Number(num) => match num.as_u64().and_then(|v| u32::try_from(v).ok()) {
                Some(v) if v >= 1 => Some(v),
                _ => {
                    cx.report(
                        Code::WrongType,
                        p,
                        format!("version must be a whole number from 1, found {num}"),
                        None,
                    );
                    None
                }
            },
            _ => {
                cx.wrong_type(n, p, "a whole number");
                None
            }
        });
        let title = self.req(&mut o, "title");
        let title = self.opt(title, Self::string);
        let description = self.get(&mut o, "description");
        let description = self.opt(description, Self::string);
        let time_zone = self.get(&mut o, "time_zone");
        let time_zone = self.opt(time_zone, |cx, n, p| {
            let tz = cx.string(n, p)?;
            if jiff::tz::TimeZone::get(&tz).is_err() {
                cx.report(
                    Code::BadTimeZone,
                    p,
                    format!("unknown time zone {tz:?}"),
                    Some(format!("use an IANA name such as {DEFAULT_TIME_ZONE:?}")),
                );
                return None;
            }
            Some(tz)
        });
        let default_language = self.get(&mut o, "default_language");
        let default_language = self.opt(default_language, Self::name);
        let horizon = self.req(&mut o, "horizon");
        let horizon = self.opt(horizon, Self::duration);
        let on_horizon = self.get(&mut o, "on_horizon");
        let on_horizon = self.opt(on_horizon, |cx, n, p| {
            let mut o = cx.obj(n, p)?;
            let to = cx.req(&mut o, "to");
            let to = cx.opt(to, Self::name);
            let actions = cx.get(&mut o, "actions");
            let actions = cx.list(actions, Self::action);
            cx.finish(o);
            Some(HorizonStop { to: to?, actions })
        });
        let retention = self.get(&mut o, "retention");
        let retention = self.opt(retention, Self::duration);
        let constants = self.get(&mut o, "constants");
        let constants = self
            .opt(constants, |cx, n, p| Some(cx.map(n, p, Self::string)))
            .unwrap_or_default();
        let roles = self.req(&mut o, "roles");
        let roles = self
            .opt(roles, |cx, n, p| Some(cx.map(n, p, Self::role)))
            .unwrap_or_default();
        let fields = self.get(&mut o, "fields");
        let fields = self
            .opt(fields, |cx, n, p| Some(cx.map(n, p, Self::field)))
            .unwrap_or_default();
        let events = self.get(&mut o, "events");
        let events = self
            .opt(events, |cx, n, p| Some(cx.map(n, p, Self::event)))
            .unwrap_or_default();
        let appointments = self.get(&mut o, "appointments");
        let appointments = self.opt(appointments, Self::appointments);
        let offer = self.get(&mut o, "offer");
        let offer = self.opt(offer, Self::offer);
        let initial = self.req(&mut o, "initial");
        let initial = self.opt(initial, Self::name);
        let states = self.req(&mut o, "states");
        let states = self
            .opt(states, |cx, n, p| Some(cx.map(n, p, Self::state)))
            .unwrap_or_default();
        self.finish(o);
        Some(Pathway {
            schema,
            id: id?,
            version: version?,
            title: title?,
            description,
            time_zone: time_zone.unwrap_or_else(|| DEFAULT_TIME_ZONE.to_string()),
            default_language: default_language.unwrap_or_else(|| DEFAULT_LANGUAGE.to_string()),
            horizon: horizon?,
            on_horizon,
            retention,
            constants,
            roles,
            fields,
            events,
            appointments,
            offer,
            initial: initial?,
            states,
        })
    }

    fn sector(&mut self, node: &Node, pointer: &str) -> Option<Sector> {
        self.one_of(
            node,
            pointer,
            &[
                ("region", Sector::Region),
                ("municipality", Sector::Municipality),
                ("civil_society", Sector::CivilSociety),
                ("family", Sector::Family),
            ],
        )
    }

    fn offer(&mut self, node: &Node, pointer: &str) -> Option<Offer> {
        let mut o = self.obj(node, pointer)?;
        let organisation = self.req(&mut o, "organisation");
        let organisation = self.opt(organisation, Self::string);
        let audience = self.req(&mut o, "for");
        let audience = self.opt(audience, Self::string);
        let referral = self.req(&mut o, "referral");
        let referral = self.opt(referral, Self::string);
        let duration = self.req(&mut o, "duration");
        let duration = self.opt(duration, Self::string);
        let sector = self.req(&mut o, "sector");
        let sector = self.opt(sector, Self::sector);
        let summary = self.get(&mut o, "summary");
        let summary = self.opt(summary, Self::string);
        self.finish(o);
        Some(Offer {
            organisation: organisation?,
            sector: sector?,
            audience: audience?,
            referral: referral?,
            duration: duration?,
            summary,
        })
    }

    fn role(&mut self, node: &Node, pointer: &str) -> Option<Role> {
        let mut o = self.obj(node, pointer)?;
        let sector = self.req(&mut o, "sector");
        let sector = self.opt(sector, Self::sector);
        let title = self.get(&mut o, "title");
        let title = self.opt(title, Self::string);
        let channels = self.get(&mut o, "channels");
        let channels = self.opt(channels, |cx, n, p| {
            Some(
                cx.array(n, p)
                    .into_iter()
                    .filter_map(|(n, p)| {
                        cx.one_of(n, &p, &[("email", Channel::Email), ("sms", Channel::Sms)])
                    })
                    .collect(),
            )
        });
        self.finish(o);
        Some(Role {
            sector: sector?,
            title,
            channels,
        })
    }

    fn one_of<T: Copy>(&mut self, node: &Node, pointer: &str, allowed: &[(&str, T)]) -> Option<T> {
        let s = self.string(node, pointer)?;
        match allowed.iter().find(|(name, _)| *name == s) {
            Some((_, v)) => Some(*v),
            None => {
                let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                self.report(
                    Code::WrongType,
                    pointer,
                    format!(
                        "{} must be one of {}, found {s:?}",
                        describe_pointer(pointer),
                        names.join(", ")
                    ),
                    closest(&s, &names).map(|c| format!("did you mean {c:?}?")),
                );
                None
            }
        }
    }

    fn field(&mut self, node: &Node, pointer: &str) -> Option<Field> {
        let mut o = self.obj(node, pointer)?;
        let ty = self.req(&mut o, "type");
        let ty = self.opt(ty, |cx, n, p| {
            cx.one_of(
                n,
                p,
                &[
                    ("date", FieldType::Date),
                    ("datetime", FieldType::Datetime),
                    ("text", FieldType::Text),
                    ("int", FieldType::Int),
                    ("bool", FieldType::Bool),
                    ("enum", FieldType::Enum),
                ],
            )
        });
        let required = self.get(&mut o, "required");
        let required = self.opt(required, Self::boolean).unwrap_or(false);
        let sensitive = self.get(&mut o, "sensitive");
        let sensitive = self.opt(sensitive, Self::boolean).unwrap_or(false);
        let values_at = self.get(&mut o, "values");
        let values_pointer = values_at.as_ref().map(|(_, p)| p.clone());
        let values = self.opt(values_at, |cx, n, p| {
            Some(
                cx.array(n, p)
                    .into_iter()
                    .filter_map(|(n, p)| cx.name(n, &p))
                    .collect::<Vec<_>>(),
            )
        });
        let within = self.get(&mut o, "within");
        let within = self.opt(within, Self::duration);
        let description = self.get(&mut o, "description");
        let description = self.opt(description, Self::string);
        let pointer = o.pointer.clone();
        self.finish(o);
        let ty = ty?;
        match (ty, &values) {
            (FieldType::Enum, None) => self.report(
                Code::MissingKey,
                &pointer,
                "an enum field lacks the required key \"values\"".into(),
                Some("list the allowed values: \"values\": [\"a\", \"b\"]".into()),
            ),
            (FieldType::Enum, Some(v)) if v.is_empty() => self.report(
                Code::WrongType,
                values_pointer.as_deref().unwrap_or(&pointer),
                "an enum field needs at least one value".into(),
                None,
            ),
            (t, Some(_)) if t != FieldType::Enum => self.report(
                Code::UnknownKey,
                values_pointer.as_deref().unwrap_or(&pointer),
                format!(
                    "\"values\" is for enum fields, and this field is {}",
                    t.as_str()
                ),
                Some("remove \"values\" or make the type \"enum\"".into()),
            ),
            _ => {}
        }
        if within.is_some() && ty != FieldType::Date {
            self.report(
                Code::UnknownKey,
                &format!("{pointer}/within"),
                format!(
                    "\"within\" is for date fields, and this field is {}",
                    ty.as_str()
                ),
                Some("remove \"within\"".into()),
            );
        }
        Some(Field {
            ty,
            required,
            sensitive,
            values,
            within,
            description,
        })
    }

    fn event(&mut self, node: &Node, pointer: &str) -> Option<EventDecl> {
        let mut o = self.obj(node, pointer)?;
        let payload = self.get(&mut o, "payload");
        let payload = self
            .opt(payload, |cx, n, p| Some(cx.map(n, p, Self::field)))
            .unwrap_or_default();
        let description = self.get(&mut o, "description");
        let description = self.opt(description, Self::string);
        let life_event = self.get(&mut o, "life_event");
        let life_event = self.opt(life_event, Self::boolean).unwrap_or(false);
        self.finish(o);
        Some(EventDecl {
            payload,
            description,
            life_event,
        })
    }

    fn appointments(&mut self, node: &Node, pointer: &str) -> Option<AppointmentPolicy> {
        let mut o = self.obj(node, pointer)?;
        let to = self.req(&mut o, "to");
        let to = self.opt(to, Self::name);
        let neutral_place = self.get(&mut o, "neutral_place");
        let neutral_place = self.opt(neutral_place, Self::boolean).unwrap_or(false);
        let cancel_template = self.get(&mut o, "cancel_template");
        let cancel_template = self.opt(cancel_template, Self::name);
        let reminders = self.req(&mut o, "reminders");
        let reminders = self.list(reminders, |cx, n, p| {
            let mut o = cx.obj(n, p)?;
            let before = cx.req(&mut o, "before");
            let before = cx.opt(before, Self::duration);
            let template = cx.req(&mut o, "template");
            let template = cx.opt(template, Self::name);
            cx.finish(o);
            Some(Reminder {
                before: before?,
                template: template?,
            })
        });
        self.finish(o);
        Some(AppointmentPolicy {
            to: to?,
            reminders,
            neutral_place,
            cancel_template,
        })
    }

    fn state(&mut self, node: &Node, pointer: &str) -> Option<State> {
        let mut o = self.obj(node, pointer)?;
        let title = self.get(&mut o, "title");
        let title = self.opt(title, Self::string);
        let description = self.get(&mut o, "description");
        let description = self.opt(description, Self::string);
        let owner = self.get(&mut o, "owner");
        let owner = self.opt(owner, Self::name);
        let terminal = self.get(&mut o, "terminal");
        let terminal = self.opt(terminal, Self::boolean).unwrap_or(false);
        let enter = self.get(&mut o, "enter");
        let enter = self.list(enter, Self::action);
        let on = self.get(&mut o, "on");
        let on = self.list(on, Self::transition);
        let timers = self.get(&mut o, "timers");
        let timers = self.list(timers, Self::timer);
        let activities = self.get(&mut o, "activities");
        let activities = self.list(activities, Self::activity);
        self.finish(o);
        Some(State {
            title,
            description,
            owner,
            terminal,
            enter,
            on,
            timers,
            activities,
        })
    }

    fn transition(&mut self, node: &Node, pointer: &str) -> Option<Transition> {
        let mut o = self.obj(node, pointer)?;
        let event = self.req(&mut o, "event");
        let event = self.opt(event, Self::name);
        let guard = self.get(&mut o, "guard");
        let guard = self.opt(guard, Self::string);
        let to = self.get(&mut o, "to");
        let to = self.opt(to, Self::name);
        let actions = self.get(&mut o, "actions");
        let actions = self.list(actions, Self::action);
        self.finish(o);
        Some(Transition {
            event: event?,
            guard,
            to,
            actions,
        })
    }

    fn timer(&mut self, node: &Node, pointer: &str) -> Option<Timer> {
        let mut o = self.obj(node, pointer)?;
        let name = self.get(&mut o, "name");
        let name = self.opt(name, Self::name);
        let after = self.get(&mut o, "after");
        let has_after = after.is_some();
        let after = self.opt(after, Self::duration);
        let at = self.get(&mut o, "at");
        let has_at = at.is_some();
        let at = self.opt(at, |cx, n, p| {
            let mut o = cx.obj(n, p)?;
            let anchor = cx.req(&mut o, "anchor");
            let anchor = cx.opt(anchor, Self::name);
            let offset = cx.req(&mut o, "offset");
            let offset = cx.opt(offset, Self::duration);
            let time = cx.get(&mut o, "time");
            let time = cx.opt(time, |cx, n, p| {
                let t = cx.string(n, p)?;
                if parse_time_of_day(&t).is_none() {
                    cx.report(
                        Code::WrongType,
                        p,
                        format!("invalid time of day {t:?}: expected HH:MM, 00:00 to 23:59"),
                        None,
                    );
                    return None;
                }
                Some(t)
            });
            cx.finish(o);
            Some(At {
                anchor: anchor?,
                offset: offset?,
                time,
            })
        });
        let every = self.get(&mut o, "every");
        let has_every = every.is_some();
        let every = self.opt(every, |cx, n, p| {
            let s = cx.string(n, p)?;
            let problem = match crate::cron::Cron::parse(&s) {
                Err(e) => Some(e.to_string()),
                // Any fixed start will do: a schedule that matches no day in eight years
                // matches none ever (29 February comes every four).
                Ok(c) if c
                    .next_after(jiff::Timestamp::UNIX_EPOCH, &jiff::tz::TimeZone::UTC)
                    .is_none() =>
                {
                    Some("it never fires: no date matches its day and month".into())
                }
                Ok(_) => None,
            };
            if let Some(e) = problem {
                cx.report(
                    Code::BadCron,
                    p,
                    format!("invalid cron schedule {s:?}: {e}"),
                    Some(
                        "write five fields, minute hour day-of-month month day-of-week, as in crontab(5): \"0 10 * * MON,THU\" is Mondays and Thursdays at 10:00 (0 and 7 are Sunday)"
                            .into(),
                    ),
                );
                return None;
            }
            Some(s)
        });
        let to = self.get(&mut o, "to");
        let to = self.opt(to, Self::name);
        let actions = self.get(&mut o, "actions");
        let actions = self.list(actions, Self::action);
        let pointer = o.pointer.clone();
        self.finish(o);
        let kinds = [has_after, has_at, has_every]
            .iter()
            .filter(|b| **b)
            .count();
        if kinds != 1 {
            self.report(
                if kinds == 0 {
                    Code::MissingKey
                } else {
                    Code::WrongType
                },
                &pointer,
                format!(
                    "a timer needs exactly one of \"after\", \"at\" and \"every\", found {kinds}"
                ),
                Some("split it into one timer per kind".into()),
            );
            return None;
        }
        if after.is_none() && at.is_none() && every.is_none() {
            return None;
        }
        Some(Timer {
            name,
            after,
            at,
            every,
            to,
            actions,
        })
    }

    fn activity(&mut self, node: &Node, pointer: &str) -> Option<Activity> {
        let mut o = self.obj(node, pointer)?;
        let name = self.req(&mut o, "name");
        let name = self.opt(name, Self::name);
        let title = self.get(&mut o, "title");
        let title = self.opt(title, Self::string);
        let role = self.req(&mut o, "role");
        let role = self.opt(role, Self::name);
        let window = self.req(&mut o, "window");
        let window = self.opt(window, |cx, n, p| {
            let mut o = cx.obj(n, p)?;
            let anchor = cx.get(&mut o, "anchor");
            let anchor = cx.opt(anchor, Self::name);
            let from = cx.req(&mut o, "from");
            let from = cx.opt(from, Self::duration);
            let to = cx.req(&mut o, "to");
            let to = cx.opt(to, Self::duration);
            cx.finish(o);
            Some(Window {
                anchor,
                from: from?,
                to: to?,
            })
        });
        let remind_before = self.get(&mut o, "remind_before");
        let remind_before = self.opt(remind_before, Self::duration);
        let reminder_template = self.get(&mut o, "reminder_template");
        let reminder_template = self.opt(reminder_template, Self::name);
        let escalate_to = self.req(&mut o, "escalate_to");
        let escalate_to = self.opt(escalate_to, Self::name);
        let escalation_template = self.req(&mut o, "escalation_template");
        let escalation_template = self.opt(escalation_template, Self::name);
        let done_on = self.req(&mut o, "done_on");
        let done_on = self.opt(done_on, Self::name);
        let pointer = o.pointer.clone();
        self.finish(o);
        if remind_before.is_some() != reminder_template.is_some() {
            self.report(
                Code::MissingKey,
                &pointer,
                "an activity with a reminder needs both \"remind_before\" and \"reminder_template\""
                    .into(),
                None,
            );
        }
        Some(Activity {
            name: name?,
            title,
            role: role?,
            window: window?,
            remind_before,
            reminder_template,
            escalate_to: escalate_to?,
            escalation_template: escalation_template?,
            done_on: done_on?,
        })
    }

    fn action(&mut self, node: &Node, pointer: &str) -> Option<Action> {
        let Kind::Object(members) = &node.kind else {
            self.wrong_type(
                node,
                pointer,
                "an object with one of \"notify\", \"handoff\", \"enroll\", \"set\"",
            );
            return None;
        };
        const KINDS: [&str; 4] = ["notify", "handoff", "enroll", "set"];
        if members.len() != 1 {
            self.report(
                Code::WrongType,
                pointer,
                format!(
                    "an action is an object with exactly one key, one of {}; found {}",
                    KINDS.join(", "),
                    members.len()
                ),
                Some("write each action as its own array element".into()),
            );
            return None;
        }
        let m = &members[0];
        let p = format!("{pointer}/{}", escape_pointer(&m.key));
        let mut o = self.obj(&m.value, &p)?;
        let action = match m.key.as_str() {
            "notify" => {
                let to = self.req(&mut o, "to");
                let to = self.opt(to, Self::name);
                let template = self.req(&mut o, "template");
                let template = self.opt(template, Self::name);
                let expires_after = self.get(&mut o, "expires_after");
                let expires_after = self.opt(expires_after, Self::duration);
                match (to, template) {
                    (Some(to), Some(template)) => Some(Action::Notify(Notify {
                        to,
                        template,
                        expires_after,
                    })),
                    _ => None,
                }
            }
            "handoff" => {
                let to = self.req(&mut o, "to");
                let to = self.opt(to, Self::name);
                let template = self.req(&mut o, "template");
                let template = self.opt(template, Self::name);
                let ack_on = self.get(&mut o, "ack_on");
                let ack_on = self.opt(ack_on, Self::name);
                let ack_within = self.get(&mut o, "ack_within");
                let ack_within = self.opt(ack_within, Self::duration);
                let escalate_to = self.get(&mut o, "escalate_to");
                let escalate_to = self.opt(escalate_to, Self::name);
                let escalation_template = self.get(&mut o, "escalation_template");
                let escalation_template = self.opt(escalation_template, Self::name);
                match (to, template) {
                    (Some(to), Some(template)) => Some(Action::Handoff(Handoff {
                        to,
                        template,
                        ack_on,
                        ack_within,
                        escalate_to,
                        escalation_template,
                    })),
                    _ => None,
                }
            }
            "enroll" => {
                let pathway = self.req(&mut o, "pathway");
                let pathway = self.opt(pathway, Self::name);
                let fields = self.get(&mut o, "fields");
                let fields = self.list(fields, Self::name);
                let values = self.get(&mut o, "values");
                let values = self
                    .opt(values, |cx, n, p| {
                        Some(cx.map(n, p, |_, v, _| Some(v.to_json())))
                    })
                    .unwrap_or_default();
                let roles = self.get(&mut o, "roles");
                let roles = self
                    .opt(roles, |cx, n, p| Some(cx.map(n, p, Self::name)))
                    .unwrap_or_default();
                pathway.map(|pathway| {
                    Action::Enroll(Enroll {
                        pathway,
                        fields,
                        values,
                        roles,
                    })
                })
            }
            "set" => {
                let field = self.req(&mut o, "field");
                let field = self.opt(field, Self::name);
                let value = self.get(&mut o, "value");
                let has_value = value.is_some();
                let value = value.map(|(n, _)| n.to_json());
                let expr = self.get(&mut o, "expr");
                let has_expr = expr.is_some();
                let expr = self.opt(expr, Self::string);
                if has_value == has_expr {
                    self.report(
                        Code::WrongType,
                        &p,
                        "a set action needs exactly one of \"value\" and \"expr\"".into(),
                        Some("\"value\" for a literal, \"expr\" for a CEL expression".into()),
                    );
                }
                field.map(|field| Action::Set(Set { field, value, expr }))
            }
            other => {
                let hint = closest(other, &KINDS).map_or_else(
                    || format!("an action is one of {}", KINDS.join(", ")),
                    |k| format!("did you mean \"{k}\"?"),
                );
                let d = self.located.at_key(
                    Code::UnknownKey,
                    &p,
                    format!("unknown action \"{other}\""),
                    Some(hint),
                );
                self.diagnostics.push(d);
                return None;
            }
        };
        self.finish(o);
        action
    }
}

/// Parses `HH:MM`.
pub fn parse_time_of_day(s: &str) -> Option<(i8, i8)> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some((h, m))
}

/// How a pointer reads in a message: `/states/birth/owner` is "states/birth/owner", the root is
/// "the pathway".
pub fn describe_pointer(pointer: &str) -> String {
    if pointer.is_empty() {
        "the pathway".to_string()
    } else {
        format!("\"{}\"", &pointer[1..])
    }
}

/// The candidate closest to `word` by edit distance, if close enough to be a likely typo.
pub fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbours ("dnoe" for "done") each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        assert_eq!(closest("ownr", &["owner", "on", "title"]), Some("owner"));
        assert_eq!(closest("zzzzzz", &["owner", "on"]), None);
        assert_eq!(closest("dnoe", &["waiting", "done"]), Some("done"));
    }

    #[test]
    fn time_of_day() {
        assert_eq!(parse_time_of_day("09:30"), Some((9, 30)));
        assert_eq!(parse_time_of_day("24:00"), None);
        assert_eq!(parse_time_of_day("9:30"), None);
    }
}
