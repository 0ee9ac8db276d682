//! The checker: every problem of a set of pathways, all at once.
//!
//! [`check`] takes the texts of pathway files and their templates (the caller reads the files;
//! the engine does no I/O) and returns every diagnostic, plus the pathways that passed, ready
//! for [`step`](crate::step). A pathway with any error is refused whole.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::decode::{self, Located, closest};
use crate::diagnostic::{Code, Diagnostic, LineIndex, Severity};
use crate::expr::{Expression, Scope};
use crate::graph;
use crate::json::escape_pointer;
use crate::pathway::{
    Action, Channel, Enroll, FieldType, Pathway, appointment_events, enrolled_roles,
};
use crate::template::{self, TemplateFile};

/// The largest pathway or template file the checker reads, in bytes.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;

/// The most findings listed for one file; the rest are counted in a last one.
pub const MAX_DIAGNOSTICS_PER_FILE: usize = 100;

/// Keeps at most [`MAX_DIAGNOSTICS_PER_FILE`] findings per file, errors first, in reading
/// order, and says how many more there were: a broken 20 MB file gives a short report.
fn cap(diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut files: Vec<(String, Vec<Diagnostic>)> = Vec::new();
    for d in diagnostics {
        match files.iter_mut().find(|(f, _)| *f == d.file) {
            Some((_, list)) => list.push(d),
            None => files.push((d.file.clone(), vec![d])),
        }
    }
    let mut out = Vec::new();
    for (file, mut list) in files {
        if list.len() <= MAX_DIAGNOSTICS_PER_FILE {
            out.extend(list);
            continue;
        }
        // Stable: errors first, each kind in reading order.
        list.sort_by_key(|d| d.severity);
        let rest = list.split_off(MAX_DIAGNOSTICS_PER_FILE);
        list.sort_by_key(|d| (d.line, d.column));
        let errors = rest
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        let code = Code::TooManyDiagnostics;
        out.extend(list);
        out.push(Diagnostic {
            severity: code.severity(),
            code,
            message: format!(
                "{} more findings in this file ({}, {}) are not listed",
                rest.len(),
                count(errors, "error"),
                count(rest.len() - errors, "warning")
            ),
            file,
            line: 1,
            column: 1,
            pointer: String::new(),
            hint: Some("fix the findings above and check again".into()),
            source_line: String::new(),
            caret: 1,
            width: 1,
        });
    }
    out
}

/// Whether a template's path (`fields.*`, `fields`, the whole data as ``) can show the
/// value at `target` (`fields.cpr`).
fn reaches(path: &str, target: &str) -> bool {
    if path.is_empty() {
        return true;
    }
    let mut p = path.split('.');
    let mut t = target.split('.');
    loop {
        match (p.next(), t.next()) {
            (None, _) => return true,
            (Some(_), None) => return false,
            (Some(a), Some(b)) if a == b || a == "*" => {}
            _ => return false,
        }
    }
}

/// `1 error`, `2 errors`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// One file's name (as it should be shown) and text.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    /// The path as the user should see it in diagnostics.
    pub path: String,
    /// The file's text.
    pub text: String,
}

/// A pathway's files: `pathway.json` and its templates.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathwaySource {
    /// `pathway.json`.
    pub pathway: SourceFile,
    /// The files under `templates/`.
    pub templates: Vec<SourceFile>,
}

/// A pathway that passed every check, with its templates and compiled expressions.
#[derive(Debug)]
pub struct CheckedPathway {
    /// The declared pathway.
    pub pathway: Pathway,
    /// Its templates.
    pub templates: Vec<TemplateFile>,
    expressions: HashMap<String, Expression>,
}

impl CheckedPathway {
    /// The compiled guard or `set` expression with this text.
    pub fn expression(&self, text: &str) -> Option<&Expression> {
        self.expressions.get(text)
    }

    /// The template file for a name, channel and language, falling back to the pathway's
    /// default language.
    pub fn template(&self, name: &str, channel: Channel, language: &str) -> Option<&TemplateFile> {
        let find = |lang: &str| {
            self.templates
                .iter()
                .find(|t| t.name == name && t.channel == channel && t.language == lang)
        };
        find(language).or_else(|| find(&self.pathway.default_language))
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// The pathways with no errors, in the order given.
    pub pathways: Vec<CheckedPathway>,
    /// Every finding, errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// The number of errors and of warnings.
    pub fn counts(&self) -> (usize, usize) {
        let errors = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        (errors, self.diagnostics.len() - errors)
    }
}

/// Checks a set of pathways together (so that `enroll` can name one another).
pub fn check(sources: &[PathwaySource]) -> Report {
    let mut report = Report::default();
    let decoded: Vec<_> = sources
        .iter()
        .map(|s| decode::decode(&s.pathway.path, &s.pathway.text))
        .collect();
    let known: HashMap<&str, &Pathway> = decoded
        .iter()
        .filter_map(|d| d.pathway.as_ref())
        .map(|p| (p.id.as_str(), p))
        .collect();
    for (source, d) in sources.iter().zip(&decoded) {
        let mut diagnostics = d.diagnostics.clone();
        let mut templates = Vec::new();
        let (html, text): (Vec<_>, Vec<_>) = source
            .templates
            .iter()
            .partition(|f| template::html_file_name(&f.path).is_some());
        for file in text {
            if file.text.len() > MAX_FILE_BYTES {
                diagnostics.push(at_template(
                    file.path.as_str(),
                    "",
                    Code::FileTooLarge,
                    &format!(
                        "the template has {} bytes, more than the {MAX_FILE_BYTES} carepath reads",
                        file.text.len()
                    ),
                    1,
                    1,
                    Some("a notice is a few lines: shorten the template".into()),
                ));
                continue;
            }
            match template::read(&file.path, &file.text) {
                Ok(t) => templates.push(t),
                Err(problem) => {
                    diagnostics.push(at_template(
                        file.path.as_str(),
                        &file.text,
                        Code::TemplateError,
                        &problem.message,
                        problem.line,
                        problem.column,
                        problem.hint,
                    ));
                }
            }
        }
        attach_html(&mut templates, &html, &mut diagnostics);
        let mut expressions = HashMap::new();
        if let Some(p) = &d.pathway {
            let mut cx = Checker {
                p,
                at: &d.located,
                out: &mut diagnostics,
                templates: &templates,
                sources: &source.templates,
                usage: BTreeMap::new(),
                expressions: &mut expressions,
            };
            cx.references(&known);
            cx.templates();
            graph::check(p, &d.located, &mut diagnostics);
        }
        // Pathway file first, then its templates; within a file, in reading order.
        diagnostics.sort_by(|a, b| {
            (a.file != source.pathway.path, &a.file, a.line, a.column).cmp(&(
                b.file != source.pathway.path,
                &b.file,
                b.line,
                b.column,
            ))
        });
        let failed = diagnostics.iter().any(|d| d.severity == Severity::Error);
        report.diagnostics.extend(cap(diagnostics));
        if let (false, Some(p)) = (failed, &d.pathway) {
            report.pathways.push(CheckedPathway {
                pathway: p.clone(),
                templates,
                expressions,
            });
        }
    }
    let mut seen: HashMap<(&str, u32), &str> = HashMap::new();
    for (source, d) in sources.iter().zip(&decoded) {
        if let Some(p) = &d.pathway
            && let Some(first) =
                seen.insert((p.id.as_str(), p.version), source.pathway.path.as_str())
        {
            report.diagnostics.push(d.located.at(
                Code::DuplicateName,
                "/id",
                format!(
                    "pathway \"{}\" version {} is also declared in {first}",
                    p.id, p.version
                ),
                Some("give each pathway its own id, or raise the version".into()),
            ));
            report
                .pathways
                .retain(|c| !(c.pathway.id == p.id && c.pathway.version == p.version));
        }
    }
    report
}

/// Puts each HTML body beside its email template; an HTML body without one is an error,
/// since every email needs a text body for the clients that show no HTML.
fn attach_html(templates: &mut [TemplateFile], html: &[&SourceFile], out: &mut Vec<Diagnostic>) {
    for file in html {
        let Some((name, language)) = template::html_file_name(&file.path) else {
            continue;
        };
        let sibling = templates
            .iter_mut()
            .find(|t| t.channel == Channel::Email && t.name == name && t.language == language);
        match sibling {
            Some(t) if t.html.is_none() => {
                t.html = Some(template::HtmlBody {
                    body: file.text.trim_start_matches('\u{feff}').to_string(),
                    path: file.path.clone(),
                });
            }
            Some(_) => out.push(at_template(
                &file.path,
                &file.text,
                Code::DuplicateName,
                &format!("a second HTML body for template \"{name}\" in \"{language}\""),
                1,
                1,
                None,
            )),
            None => out.push(at_template(
                &file.path,
                &file.text,
                Code::TemplateError,
                &format!(
                    "HTML body without its text template: there is no {name}.{language}.email.hbs"
                ),
                1,
                1,
                Some(format!(
                    "an email needs a text body; write templates/{name}.{language}.email.hbs with the subject and the plain text"
                )),
            )),
        }
    }
}

fn at_template(
    path: &str,
    text: &str,
    code: Code,
    message: &str,
    line: usize,
    column: usize,
    hint: Option<String>,
) -> Diagnostic {
    let index = LineIndex::new(text);
    let start = index.offset(line, column);
    let end = text[start..]
        .find(['}', '\n'])
        .map_or(text.len(), |i| start + i + 1);
    index.diagnostic(
        path,
        code,
        message.to_string(),
        crate::json::Span { start, end },
        "",
        hint,
    )
}

const EXPRESSION_HINT: &str = "an expression sees fields.NAME and, on a transition, payload.NAME; see docs/pathway-language.md#expressions";

/// Where a template is used, which decides the variables it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Context {
    Plain,
    Handoff,
    Activity,
    Appointment,
}

impl Context {
    fn extra(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Context::Plain => ("", &[]),
            Context::Handoff => ("handoff", &["from", "to", "deadline"]),
            Context::Activity => ("activity", &["name", "title", "due_from", "due_to"]),
            Context::Appointment => ("appointment", &["at", "place"]),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Context::Plain => "a notice",
            Context::Handoff => "a handoff notice",
            Context::Activity => "an activity reminder or escalation",
            Context::Appointment => "an appointment reminder",
        }
    }
}

struct Checker<'a, 'p> {
    p: &'p Pathway,
    at: &'a Located<'a>,
    out: &'a mut Vec<Diagnostic>,
    templates: &'a [TemplateFile],
    sources: &'a [SourceFile],
    /// (template name, channel) → where it is used.
    usage: BTreeMap<(String, Channel), Vec<(Context, String)>>,
    expressions: &'a mut HashMap<String, Expression>,
}

impl Checker<'_, '_> {
    fn push(&mut self, code: Code, pointer: &str, message: String, hint: Option<String>) {
        let d = self.at.at(code, pointer, message, hint);
        self.out.push(d);
    }

    fn role(&mut self, name: &str, pointer: &str) -> bool {
        if self.p.roles.contains_key(name) {
            return true;
        }
        let names: Vec<&str> = self.p.roles.keys().map(String::as_str).collect();
        self.push(
            Code::UnknownRole,
            pointer,
            format!("unknown role \"{name}\""),
            Some(suggest(name, &names, "roles")),
        );
        false
    }

    fn state(&mut self, name: &str, pointer: &str) {
        if self.p.states.contains_key(name) {
            return;
        }
        let names: Vec<&str> = self.p.states.keys().map(String::as_str).collect();
        self.push(
            Code::UnknownState,
            pointer,
            format!("unknown state \"{name}\""),
            Some(suggest(name, &names, "states")),
        );
    }

    fn event(&mut self, name: &str, pointer: &str) -> bool {
        if self.p.event(name).is_some() {
            return true;
        }
        let names: Vec<&str> = self.p.events.keys().map(String::as_str).collect();
        self.push(
            Code::UnknownEvent,
            pointer,
            format!("unknown event \"{name}\""),
            Some(suggest(name, &names, "events")),
        );
        false
    }

    fn field(&mut self, name: &str, pointer: &str) -> bool {
        if self.p.fields.contains_key(name) {
            return true;
        }
        let names: Vec<&str> = self.p.fields.keys().map(String::as_str).collect();
        self.push(
            Code::UnknownField,
            pointer,
            format!("unknown field \"{name}\""),
            Some(suggest(name, &names, "fields")),
        );
        false
    }

    fn anchor(&mut self, name: &str, pointer: &str) {
        if self.field(name, pointer) && self.p.fields[name].ty != FieldType::Date {
            self.push(
                Code::WrongType,
                pointer,
                format!(
                    "anchor \"{name}\" is a {} field; timers count from date fields",
                    self.p.fields[name].ty.as_str()
                ),
                Some("anchor on a field of type \"date\"".into()),
            );
        }
    }

    fn expression(&mut self, text: &str, pointer: &str, event: Option<&str>) {
        let payload = event.and_then(|e| self.p.event(e)).map(|e| e.payload);
        let scope = Scope {
            fields: &self.p.fields,
            payload: match (&payload, event) {
                (Some(p), Some(e)) => Some((e, p)),
                _ => None,
            },
        };
        // Parse each distinct text once: a large pathway repeats its guards.
        if !self.expressions.contains_key(text) {
            if let Err(e) = crate::expr::limits(text) {
                self.push(
                    Code::GuardTooComplex,
                    pointer,
                    e,
                    Some("keep a guard to a short condition; compute anything longer into a field with an event".into()),
                );
                return;
            }
            match Expression::compile(text) {
                Ok(e) => {
                    self.expressions.insert(text.to_string(), e);
                }
                Err(e) => {
                    self.push(Code::BadGuard, pointer, e, Some(EXPRESSION_HINT.into()));
                    return;
                }
            }
        }
        if let Some(Err(e)) = self.expressions.get(text).map(|x| x.check(&scope)) {
            self.push(Code::BadGuard, pointer, e, Some(EXPRESSION_HINT.into()));
        }
    }

    fn notice(
        &mut self,
        role: &str,
        template: &str,
        context: Context,
        pointer: &str,
        role_ptr: &str,
        template_ptr: &str,
    ) {
        if !self.role(role, role_ptr) {
            return;
        }
        let channels = self.p.roles[role].channels();
        let named: Vec<&TemplateFile> = self
            .templates
            .iter()
            .filter(|t| t.name == template)
            .collect();
        if named.is_empty() {
            let mut names: Vec<&str> = self.templates.iter().map(|t| t.name.as_str()).collect();
            names.dedup();
            self.push(
                Code::UnknownTemplate,
                template_ptr,
                format!(
                    "unknown template \"{template}\": no file templates/{template}.LANG.CHANNEL.hbs"
                ),
                Some(match closest(template, &names) {
                    Some(c) => format!("did you mean \"{c}\"?"),
                    None => format!(
                        "add templates/{template}.{}.{}.hbs",
                        self.p.default_language,
                        channels.first().map_or("email", |c| c.as_str())
                    ),
                }),
            );
            return;
        }
        for channel in channels {
            let files: Vec<_> = named.iter().filter(|t| t.channel == channel).collect();
            if files.is_empty() {
                self.push(
                    Code::UnknownTemplate,
                    template_ptr,
                    format!(
                        "template \"{template}\" has no {} file, and role \"{role}\" receives {}",
                        channel.as_str(),
                        channel.as_str()
                    ),
                    Some(format!(
                        "add templates/{template}.{}.{}.hbs, or change the role's \"channels\"",
                        self.p.default_language,
                        channel.as_str()
                    )),
                );
                continue;
            }
            if !files.iter().any(|t| t.language == self.p.default_language) {
                let have: Vec<&str> = files.iter().map(|t| t.language.as_str()).collect();
                self.push(
                    Code::MissingTranslation,
                    template_ptr,
                    format!(
                        "template \"{template}\" ({}) has no version in the default language \"{}\" (has: {})",
                        channel.as_str(),
                        self.p.default_language,
                        have.join(", ")
                    ),
                    Some(format!(
                        "add templates/{template}.{}.{}.hbs: it is what a recipient without a translation gets",
                        self.p.default_language,
                        channel.as_str()
                    )),
                );
            }
            self.usage
                .entry((template.to_string(), channel))
                .or_default()
                .push((context, pointer.to_string()));
        }
    }

    fn actions(&mut self, actions: &[Action], base: &str, event: Option<&str>) {
        for (i, a) in actions.iter().enumerate() {
            let ptr = format!("{base}/{i}");
            match a {
                Action::Notify(n) => {
                    let p = format!("{ptr}/notify");
                    self.notice(
                        &n.to,
                        &n.template,
                        Context::Plain,
                        &p,
                        &format!("{p}/to"),
                        &format!("{p}/template"),
                    );
                }
                Action::Handoff(h) => {
                    let p = format!("{ptr}/handoff");
                    self.notice(
                        &h.to,
                        &h.template,
                        Context::Handoff,
                        &p,
                        &format!("{p}/to"),
                        &format!("{p}/template"),
                    );
                    let mut missing = Vec::new();
                    if h.ack_on.is_none() {
                        missing.push("ack_on");
                    }
                    if h.ack_within.is_none() {
                        missing.push("ack_within");
                    }
                    if h.escalate_to.is_none() {
                        missing.push("escalate_to");
                    }
                    if h.escalation_template.is_none() {
                        missing.push("escalation_template");
                    }
                    if !missing.is_empty() {
                        self.push(
                            Code::HandoffWithoutDeadline,
                            &p,
                            format!(
                                "handoff to \"{}\" lacks {}: nobody would notice if the family is never received",
                                h.to,
                                missing.join(", ")
                            ),
                            Some("give the receiver an event to acknowledge by (ack_on), a deadline (ack_within), and someone to tell when it passes (escalate_to, escalation_template)".into()),
                        );
                    }
                    if let Some(e) = &h.ack_on {
                        self.event(e, &format!("{p}/ack_on"));
                    }
                    if let (Some(to), Some(t)) = (&h.escalate_to, &h.escalation_template) {
                        self.notice(
                            to,
                            t,
                            Context::Handoff,
                            &p,
                            &format!("{p}/escalate_to"),
                            &format!("{p}/escalation_template"),
                        );
                    } else if let Some(to) = &h.escalate_to {
                        self.role(to, &format!("{p}/escalate_to"));
                    }
                }
                Action::Enroll(e) => {
                    let p = format!("{ptr}/enroll");
                    for (j, f) in e.fields.iter().enumerate() {
                        self.field(f, &format!("{p}/fields/{j}"));
                    }
                    for (theirs, mine) in &e.roles {
                        self.role(mine, &format!("{p}/roles/{}", escape_pointer(theirs)));
                    }
                }
                Action::Set(s) => {
                    let p = format!("{ptr}/set");
                    if self.field(&s.field, &format!("{p}/field"))
                        && let Some(v) = &s.value
                        && let Err(e) = self.p.fields[&s.field].check_value(v)
                    {
                        self.push(
                            Code::WrongType,
                            &format!("{p}/value"),
                            format!("field \"{}\": {e}", s.field),
                            None,
                        );
                    }
                    if let Some(x) = &s.expr {
                        self.expression(x, &format!("{p}/expr"), event);
                    }
                }
            }
        }
    }

    fn enroll_targets(&mut self, known: &HashMap<&str, &Pathway>) {
        for (ptr, a) in self.p.action_sites() {
            let Action::Enroll(e) = a else { continue };
            match known.get(e.pathway.as_str()) {
                None => {
                    let names: Vec<&str> = known.keys().copied().collect();
                    self.push(
                        Code::UnknownPathway,
                        &format!("{ptr}/enroll/pathway"),
                        format!("unknown pathway \"{}\" to enroll into", e.pathway),
                        Some(match closest(&e.pathway, &names) {
                            Some(c) => format!("did you mean \"{c}\"?"),
                            None => "check it together with the pathway it names: carepath validate pathways/".into(),
                        }),
                    );
                }
                Some(target) => {
                    self.enrolled_values(&ptr, e, target);
                    self.enrolled_roles(&ptr, e, target);
                    for (j, f) in e.fields.iter().enumerate() {
                        if !target.fields.contains_key(f) {
                            self.push(
                                Code::UnknownField,
                                &format!("{ptr}/enroll/fields/{j}"),
                                format!(
                                    "pathway \"{}\" has no field \"{f}\" to copy into",
                                    target.id
                                ),
                                Some(format!(
                                    "declare \"{f}\" in \"{}\" too, or stop copying it",
                                    target.id
                                )),
                            );
                        } else if let Some(mine) = self.p.fields.get(f)
                            && mine.ty != target.fields[f].ty
                        {
                            self.push(
                                Code::WrongType,
                                &format!("{ptr}/enroll/fields/{j}"),
                                format!(
                                    "field \"{f}\" is {} here and {} in \"{}\"",
                                    mine.ty.as_str(),
                                    target.fields[f].ty.as_str(),
                                    target.id
                                ),
                                None,
                            );
                        }
                    }
                }
            }
        }
    }

    /// The literals an `enroll` sets must be fields of the other pathway, of its types.
    fn enrolled_values(&mut self, ptr: &str, e: &Enroll, target: &Pathway) {
        for (f, v) in &e.values {
            let p = format!("{ptr}/enroll/values/{}", escape_pointer(f));
            match target.fields.get(f) {
                None => {
                    let names: Vec<&str> = target.fields.keys().map(String::as_str).collect();
                    self.push(
                        Code::UnknownField,
                        &p,
                        format!("pathway \"{}\" has no field \"{f}\" to set", target.id),
                        Some(suggest(f, &names, "fields")),
                    );
                }
                Some(decl) => {
                    if let Err(reason) = decl.check_value(v) {
                        self.push(
                            Code::WrongType,
                            &p,
                            format!("field \"{f}\" of \"{}\": {reason}", target.id),
                            None,
                        );
                    }
                }
            }
        }
    }

    /// The roles an `enroll` passes contacts to must be the other pathway's; a contact
    /// passed by name to a role of another sector is most likely somebody else (the
    /// region's coordinator is not the Red Cross's).
    fn enrolled_roles(&mut self, ptr: &str, e: &Enroll, target: &Pathway) {
        let names: Vec<&str> = target.roles.keys().map(String::as_str).collect();
        for theirs in e.roles.keys() {
            if !target.roles.contains_key(theirs) {
                self.push(
                    Code::UnknownRole,
                    &format!("{ptr}/enroll/roles/{}", escape_pointer(theirs)),
                    format!("pathway \"{}\" has no role \"{theirs}\"", target.id),
                    Some(suggest(theirs, &names, "roles")),
                );
            }
        }
        if !e.roles.is_empty() {
            return;
        }
        let pairs = enrolled_roles(&e.roles, &target.roles, |r| self.p.roles.contains_key(r));
        for (theirs, mine) in pairs {
            let (a, b) = (self.p.roles[&mine].sector, target.roles[&theirs].sector);
            if a != b {
                self.push(
                    Code::RoleAcrossSectors,
                    &format!("{ptr}/enroll"),
                    format!(
                        "the contact of role \"{mine}\" ({}) would go to role \"{theirs}\" of \"{}\" ({}), a different sector",
                        a.as_str(),
                        target.id,
                        b.as_str()
                    ),
                    Some(format!(
                        "say who plays each of its roles: \"roles\": {{\"{theirs}\": \"...\"}}; a role left out gets no contact"
                    )),
                );
            }
        }
    }

    fn references(&mut self, known: &HashMap<&str, &Pathway>) {
        let p = self.p;
        if !p.states.contains_key(&p.initial) {
            self.state(&p.initial, "/initial");
        }
        if let Some(a) = &p.appointments {
            for name in [
                appointment_events::BOOKED,
                appointment_events::MOVED,
                appointment_events::CANCELLED,
            ] {
                if p.events.contains_key(name) {
                    self.push(
                        Code::DuplicateName,
                        &format!("/events/{name}"),
                        format!("event \"{name}\" is declared by \"appointments\" already"),
                        Some("remove it from \"events\"".into()),
                    );
                }
            }
            for (i, r) in a.reminders.iter().enumerate() {
                let ptr = format!("/appointments/reminders/{i}");
                if r.before.is_zero_or_negative() {
                    self.push(
                        Code::BadDuration,
                        &format!("{ptr}/before"),
                        format!("a reminder \"before\" must be positive, found {}", r.before),
                        None,
                    );
                }
                self.notice(
                    &a.to,
                    &r.template,
                    Context::Appointment,
                    &ptr,
                    "/appointments/to",
                    &format!("{ptr}/template"),
                );
            }
            if let Some(t) = &a.cancel_template {
                self.notice(
                    &a.to,
                    t,
                    Context::Appointment,
                    "/appointments",
                    "/appointments/to",
                    "/appointments/cancel_template",
                );
            }
        }
        for (name, state) in &p.states {
            let base = format!("/states/{}", escape_pointer(name));
            match &state.owner {
                Some(owner) => {
                    self.role(owner, &format!("{base}/owner"));
                }
                None if !state.terminal && !graph::has_owner(state) => {
                    let d = self.at.at_key(
                        Code::NoOwner,
                        &base,
                        format!("state \"{name}\" has no owner: nobody is responsible for a family there"),
                        Some("add \"owner\": a role, or hand the family off on entering".into()),
                    );
                    self.out.push(d);
                }
                None => {}
            }
            if state.terminal
                && (!state.on.is_empty()
                    || !state.timers.is_empty()
                    || !state.activities.is_empty())
            {
                let what = [
                    ("on", state.on.is_empty()),
                    ("timers", state.timers.is_empty()),
                    ("activities", state.activities.is_empty()),
                ]
                .iter()
                .filter(|(_, empty)| !empty)
                .map(|(k, _)| *k)
                .collect::<Vec<_>>();
                let d = self.at.at_key(
                    Code::TerminalHasExit,
                    &format!("{base}/{}", what[0]),
                    format!(
                        "terminal state \"{name}\" has {}: an end cannot be left",
                        what.join(" and ")
                    ),
                    Some("remove them, or remove \"terminal\"".into()),
                );
                self.out.push(d);
            }
            self.actions(&state.enter, &format!("{base}/enter"), None);
            let mut unguarded: HashMap<&str, usize> = HashMap::new();
            for (i, t) in state.on.iter().enumerate() {
                let ptr = format!("{base}/on/{i}");
                let known_event = self.event(&t.event, &format!("{ptr}/event"));
                if let Some(to) = &t.to {
                    self.state(to, &format!("{ptr}/to"));
                }
                if let Some(g) = &t.guard {
                    self.expression(
                        g,
                        &format!("{ptr}/guard"),
                        known_event.then_some(t.event.as_str()),
                    );
                } else if let Some(first) = unguarded.insert(&t.event, i) {
                    self.push(
                        Code::AmbiguousTransition,
                        &format!("{ptr}/event"),
                        format!("a second unguarded transition on \"{}\" from \"{name}\" (the first is {base}/on/{first})", t.event),
                        Some("give one of them a guard, or merge them".into()),
                    );
                }
                self.actions(
                    &t.actions,
                    &format!("{ptr}/actions"),
                    known_event.then_some(t.event.as_str()),
                );
            }
            let mut timer_names = HashSet::new();
            for (i, t) in state.timers.iter().enumerate() {
                let ptr = format!("{base}/timers/{i}");
                if let Some(n) = &t.name
                    && !timer_names.insert(n.as_str())
                {
                    self.push(
                        Code::DuplicateName,
                        &format!("{ptr}/name"),
                        format!("state \"{name}\" has two timers named \"{n}\""),
                        None,
                    );
                }
                if let Some(to) = &t.to {
                    self.state(to, &format!("{ptr}/to"));
                }
                if let Some(at) = &t.at {
                    self.anchor(&at.anchor, &format!("{ptr}/at/anchor"));
                }
                if let Some(after) = &t.after
                    && after.span().signum() < 0
                {
                    self.push(
                        Code::BadDuration,
                        &format!("{ptr}/after"),
                        format!("\"after\" must not be negative, found {after}"),
                        Some("to fire before a date, use \"at\" with a negative offset".into()),
                    );
                }
                self.actions(&t.actions, &format!("{ptr}/actions"), None);
            }
            let mut activity_names = HashSet::new();
            for (i, a) in state.activities.iter().enumerate() {
                let ptr = format!("{base}/activities/{i}");
                if !activity_names.insert(a.name.as_str()) {
                    self.push(
                        Code::DuplicateName,
                        &format!("{ptr}/name"),
                        format!("state \"{name}\" has two activities named \"{}\"", a.name),
                        None,
                    );
                }
                self.role(&a.role, &format!("{ptr}/role"));
                if let Some(anchor) = &a.window.anchor {
                    self.anchor(anchor, &format!("{ptr}/window/anchor"));
                }
                if crate::duration::approx_cmp(a.window.from.span(), a.window.to.span()).is_gt() {
                    self.push(
                        Code::BadDuration,
                        &format!("{ptr}/window"),
                        format!(
                            "the window closes ({}) before it opens ({})",
                            a.window.to, a.window.from
                        ),
                        Some("swap \"from\" and \"to\"".into()),
                    );
                }
                self.event(&a.done_on, &format!("{ptr}/done_on"));
                if let Some(t) = &a.reminder_template {
                    self.notice(
                        &a.role,
                        t,
                        Context::Activity,
                        &ptr,
                        &format!("{ptr}/role"),
                        &format!("{ptr}/reminder_template"),
                    );
                }
                self.notice(
                    &a.escalate_to,
                    &a.escalation_template,
                    Context::Activity,
                    &ptr,
                    &format!("{ptr}/escalate_to"),
                    &format!("{ptr}/escalation_template"),
                );
            }
        }
        if let Some(stop) = &p.on_horizon {
            self.state(&stop.to, "/on_horizon/to");
            if p.states.get(&stop.to).is_some_and(|s| !s.terminal) {
                self.push(
                    Code::HorizonStopNotTerminal,
                    "/on_horizon/to",
                    format!(
                        "\"on_horizon\" moves the family to \"{}\", which is not terminal: it would stay on the pathway past its horizon {}",
                        stop.to, p.horizon
                    ),
                    Some("name a terminal state (\"terminal\": true), such as a closing state".into()),
                );
            }
            self.actions(&stop.actions, "/on_horizon/actions", None);
        }
        self.durations();
        self.enroll_targets(known);
        if let Some(r) = &p.retention
            && r.is_zero_or_negative()
        {
            self.push(
                Code::BadDuration,
                "/retention",
                format!("\"retention\" must be positive, found {r}"),
                Some("say how long data is kept after the family finished, such as P5Y".into()),
            );
        }
    }

    /// Every duration must fit the horizon, and those that count forward (a deadline, a
    /// reminder's lead, an expiry) must not be negative: a timer on such a duration could
    /// never fire in time, or would fire at once for nothing.
    fn durations(&mut self) {
        #[derive(PartialEq)]
        enum Sign {
            /// Must not be negative.
            Forward,
            /// May be negative (an offset from a date).
            Either,
        }
        let p = self.p;
        let mut found: Vec<(String, &crate::duration::IsoDuration, Sign)> = Vec::new();
        for (ptr, a) in p.action_sites() {
            match a {
                Action::Notify(n) => {
                    if let Some(d) = &n.expires_after {
                        found.push((format!("{ptr}/notify/expires_after"), d, Sign::Forward));
                    }
                }
                Action::Handoff(h) => {
                    if let Some(d) = &h.ack_within {
                        found.push((format!("{ptr}/handoff/ack_within"), d, Sign::Forward));
                    }
                }
                Action::Enroll(_) | Action::Set(_) => {}
            }
        }
        for (name, state) in &p.states {
            let base = format!("/states/{}", escape_pointer(name));
            for (i, t) in state.timers.iter().enumerate() {
                // A negative "after" has its own finding above.
                if let Some(d) = &t.after {
                    found.push((format!("{base}/timers/{i}/after"), d, Sign::Either));
                }
                if let Some(at) = &t.at {
                    found.push((
                        format!("{base}/timers/{i}/at/offset"),
                        &at.offset,
                        Sign::Either,
                    ));
                }
            }
            for (i, a) in state.activities.iter().enumerate() {
                let ptr = format!("{base}/activities/{i}");
                let window = if a.window.anchor.is_some() {
                    Sign::Either
                } else {
                    Sign::Forward
                };
                found.push((format!("{ptr}/window/to"), &a.window.to, Sign::Either));
                found.push((format!("{ptr}/window/from"), &a.window.from, window));
                if let Some(d) = &a.remind_before {
                    found.push((format!("{ptr}/remind_before"), d, Sign::Forward));
                }
            }
        }
        if let Some(a) = &p.appointments {
            for (i, r) in a.reminders.iter().enumerate() {
                found.push((
                    format!("/appointments/reminders/{i}/before"),
                    &r.before,
                    Sign::Either,
                ));
            }
        }
        let limit = p.horizon.upper_days();
        for (ptr, d, sign) in found {
            let what = ptr.rsplit('/').next().unwrap_or_default().to_string();
            if sign == Sign::Forward && d.span().signum() < 0 {
                self.push(
                    Code::DurationBeyondHorizon,
                    &ptr,
                    format!("\"{what}\" must not be negative, found {d}"),
                    Some("count forward from the moment it is armed, such as P2D".into()),
                );
            } else if d.upper_days().abs() > limit {
                self.push(
                    Code::DurationBeyondHorizon,
                    &ptr,
                    format!(
                        "\"{what}\" is {d}, longer than the pathway's horizon {}: a timer on it could never fire while the family is on the pathway",
                        p.horizon
                    ),
                    Some(format!("use a duration within {} (a month counts as 31 days)", p.horizon)),
                );
            }
        }
    }

    /// Compiles every template and checks its variables against where it is used.
    fn templates(&mut self) {
        let mut files = HashSet::new();
        for t in self.templates {
            let Some(src) = self.sources.iter().find(|s| s.path == t.path) else {
                continue;
            };
            if !files.insert((t.name.clone(), t.language.clone(), t.channel)) {
                let d = at_template(
                    &t.path,
                    &src.text,
                    Code::DuplicateName,
                    &format!(
                        "a second template \"{}\" for {} in \"{}\"",
                        t.name,
                        t.channel.as_str(),
                        t.language
                    ),
                    1,
                    1,
                    None,
                );
                self.out.push(d);
            }
            let Some(sites) = self.usage.get(&(t.name.clone(), t.channel)).cloned() else {
                let d = at_template(
                    &t.path,
                    &src.text,
                    Code::UnusedTemplate,
                    &format!(
                        "template \"{}\" ({}) is not used by any notice",
                        t.name,
                        t.channel.as_str()
                    ),
                    1,
                    1,
                    Some("remove the file, or send it from an action".into()),
                );
                self.out.push(d);
                continue;
            };
            self.template_part(t, &t.path, &src.text, t.uses(), &sites);
            if let (Some(html), Some(uses)) = (&t.html, t.html_uses()) {
                self.template_part(t, &html.path, &html.body, uses, &sites);
            }
        }
    }

    /// Checks one file of a template (the text file, or its HTML body): it compiles, its
    /// helpers exist, it holds no sensitive field, and its variables exist where it is used.
    fn template_part(
        &mut self,
        t: &TemplateFile,
        path: &str,
        text: &str,
        uses: Result<Vec<template::Use>, template::TemplateProblem>,
        sites: &[(Context, String)],
    ) {
        let uses = match uses {
            Ok(u) => u,
            Err(problem) => {
                let d = at_template(
                    path,
                    text,
                    Code::TemplateError,
                    &problem.message,
                    problem.line,
                    problem.column,
                    problem.hint,
                );
                self.out.push(d);
                return;
            }
        };
        let mut reported = HashSet::new();
        let sensitive: Vec<String> = self
            .p
            .fields
            .iter()
            .filter(|(_, f)| f.sensitive)
            .map(|(name, _)| format!("fields.{name}"))
            .collect();
        for u in uses {
            if let Some(why) = &u.unsafe_construct {
                let d = at_template(
                    path,
                    text,
                    Code::UnsafeTemplateConstruct,
                    why,
                    u.line,
                    u.column,
                    Some("a notice's template names each value it shows, as fields.NAME or appointment.at: carepath must be able to tell what it sends".into()),
                );
                self.out.push(d);
                continue;
            }
            if u.helper {
                if !template::HELPERS.contains(&u.name.as_str()) {
                    let d = at_template(
                        path,
                        text,
                        Code::TemplateError,
                        &format!("unknown helper \"{}\"", u.name),
                        u.line,
                        u.column,
                        Some(format!("helpers: {}", template::HELPERS.join(", "))),
                    );
                    self.out.push(d);
                }
                continue;
            }
            let reached: Vec<&str> = sensitive
                .iter()
                .filter(|s| reaches(&u.name, s))
                .map(|s| &s["fields.".len()..])
                .collect();
            if !reached.is_empty() {
                let code = match t.channel {
                    Channel::Sms => Code::SensitiveInSms,
                    Channel::Email => Code::SensitiveInEmail,
                };
                let what = if u.name.strip_prefix("fields.") == reached.first().copied() {
                    format!("sensitive field \"{}\"", reached[0])
                } else {
                    let shown = if u.name.is_empty() { "this" } else { &u.name };
                    format!(
                        "\"{shown}\" reaches the sensitive field{} {}",
                        if reached.len() == 1 { "" } else { "s" },
                        reached
                            .iter()
                            .map(|f| format!("\"{f}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let d = at_template(path, text, code, &format!("{what} in an {} template", t.channel.as_str()), u.line, u.column, Some("a notice may hold time, place and a rebooking number; never sensitive data. Remove the field".into()));
                self.out.push(d);
                continue;
            }
            if u.name == "appointment.place"
                && t.channel == Channel::Sms
                && !self
                    .p
                    .appointments
                    .as_ref()
                    .is_some_and(|a| a.neutral_place)
            {
                let d = at_template(
                    path,
                    text,
                    Code::SensitiveInSms,
                    "\"appointment.place\" is free text from the booking system, and the pathway does not declare it neutral: it could name a service that signals vulnerability",
                    u.line,
                    u.column,
                    Some("declare \"neutral_place\": true under \"appointments\" once the booking systems send neutral addresses only, or leave the place out of the SMS".into()),
                );
                self.out.push(d);
                continue;
            }
            // Strict rendering fails on a value that is not there: a field no enrolment
            // must give is shown only under a condition that it is set.
            if let Some(field) = u.name.strip_prefix("fields.")
                && self.p.fields.get(field).is_some_and(|f| !f.required)
                && !u.guarded
                && reported.insert(u.name.clone())
            {
                let d = at_template(
                    path,
                    text,
                    Code::TemplateUnknownVariable,
                    &format!(
                        "field \"{field}\" may not be set when this notice is made (it is not required at enrolment): the notice would fail to render"
                    ),
                    u.line,
                    u.column,
                    Some(format!(
                        "show it only when it is set: {{{{#if fields.{field}}}}}…{{{{/if}}}}, or make the field required"
                    )),
                );
                self.out.push(d);
                continue;
            }
            for (context, site) in sites {
                if !self.variable_allowed(&u.name, *context) && reported.insert(u.name.clone()) {
                    let d = at_template(
                        path,
                        text,
                        Code::TemplateUnknownVariable,
                        &format!(
                            "unknown variable \"{}\" in {} (used at {site} in {})",
                            u.name,
                            context.describe(),
                            self.at.file
                        ),
                        u.line,
                        u.column,
                        Some(self.variables_hint(*context)),
                    );
                    self.out.push(d);
                }
            }
        }
    }

    fn variable_allowed(&self, name: &str, context: Context) -> bool {
        let Some((root, rest)) = name.split_once('.') else {
            return false;
        };
        let (extra_root, extra) = context.extra();
        match root {
            "fields" => self.p.fields.contains_key(rest),
            "constants" => self.p.constants.contains_key(rest),
            "recipient" => ["name", "role"].contains(&rest),
            "pathway" => ["id", "title"].contains(&rest),
            "instance" => rest == "ref",
            "state" => ["name", "title"].contains(&rest),
            r if r == extra_root => extra.contains(&rest),
            _ => false,
        }
    }

    fn variables_hint(&self, context: Context) -> String {
        let (root, extra) = context.extra();
        let mut v = vec![
            "fields.NAME".to_string(),
            "constants.NAME".into(),
            "recipient.name".into(),
            "recipient.role".into(),
            "pathway.title".into(),
            "instance.ref".into(),
            "state.title".into(),
        ];
        v.extend(extra.iter().map(|e| format!("{root}.{e}")));
        format!("available here: {}", v.join(", "))
    }
}

fn suggest(name: &str, names: &[&str], section: &str) -> String {
    match closest(name, names) {
        Some(c) => format!("did you mean \"{c}\"?"),
        None if names.is_empty() => format!("declare it under \"{section}\""),
        None => format!("declared {section}: {}", names.join(", ")),
    }
}
