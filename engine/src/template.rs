//! Notice templates: the files beside a pathway, and what the checker reads out of them.
//!
//! A template is `templates/NAME.LANG.CHANNEL.hbs` (`birth_notice.da.email.hbs`): Handlebars
//! text. An email template starts with a `Subject: ...` line, then a blank line, then the body.
//! An email may also have an HTML body, `NAME.LANG.email.html.hbs`, beside its text template:
//! sent as the alternative part, with every value HTML-escaped.
//! Rendering is the notifier's; the engine only parses, to check names, variables and helpers.

use handlebars::template::{Parameter, Template as Ast, TemplateElement};

use crate::pathway::Channel;

/// The helpers a template may call: Handlebars' own and the notifier's date helpers.
pub const HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "eq", "ne", "gt", "gte", "lt", "lte", "and", "or",
    "not", "len", // built in
    "date", "time",
    "datetime", // the notifier's, in the recipient's language and the pathway's zone
];

/// Block helpers inside which `this` is something else: the walker follows it.
const SCOPING: &[&str] = &["each", "with"];

/// One template file, parsed from its name and text.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateFile {
    /// The template's name, as actions refer to it.
    pub name: String,
    /// ISO 639-1 language code.
    pub language: String,
    /// The channel it is for.
    pub channel: Channel,
    /// For email: the subject line's template.
    pub subject: Option<String>,
    /// The body's template.
    pub body: String,
    /// The file it came from, as the caller named it.
    pub path: String,
    /// The 1-based line where the body starts in the file.
    pub body_line: usize,
    /// For email: the HTML alternative of the body, from `NAME.LANG.email.html.hbs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<HtmlBody>,
}

/// The HTML body of an email template: a file of its own, the whole file a template.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HtmlBody {
    /// The template text.
    pub body: String,
    /// The file it came from.
    pub path: String,
}

/// The HTML body file's name and language when `path` names one (`NAME.LANG.email.html.hbs`).
pub fn html_file_name(path: &str) -> Option<(String, String)> {
    let file_name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    let stem = file_name.strip_suffix(".email.html.hbs")?;
    let (name, language) = stem.rsplit_once('.')?;
    Some((name.to_string(), language.to_string()))
}

/// Why a template file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateProblem {
    /// What is wrong.
    pub message: String,
    /// 1-based line and column in the file.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What to do.
    pub hint: Option<String>,
}

/// Splits a file name `NAME.LANG.CHANNEL.hbs` into its parts.
pub fn parse_file_name(file_name: &str) -> Result<(String, String, Channel), String> {
    let stem = file_name
        .strip_suffix(".hbs")
        .ok_or_else(|| format!("template file {file_name:?} does not end in .hbs"))?;
    let parts: Vec<&str> = stem.split('.').collect();
    let [name, lang, channel] = parts[..] else {
        return Err(format!(
            "template file {file_name:?} is not named NAME.LANG.CHANNEL.hbs"
        ));
    };
    let channel = match channel {
        "email" => Channel::Email,
        "sms" => Channel::Sms,
        other => {
            return Err(format!(
                "unknown channel {other:?} in {file_name:?}: expected email or sms"
            ));
        }
    };
    if name.is_empty() || lang.len() != 2 || !lang.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "template file {file_name:?}: expected NAME.LANG.CHANNEL.hbs with a two-letter language"
        ));
    }
    Ok((name.to_string(), lang.to_string(), channel))
}

/// Reads a template file: its name parts and, for email, the subject line.
pub fn read(path: &str, text: &str) -> Result<TemplateFile, TemplateProblem> {
    // A byte-order mark is what some Windows editors write first: not part of the text.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let file_name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    let (name, language, channel) =
        parse_file_name(file_name).map_err(|message| TemplateProblem {
            message,
            line: 1,
            column: 1,
            hint: Some(
                "name template files NAME.LANG.CHANNEL.hbs, e.g. birth_notice.da.email.hbs".into(),
            ),
        })?;
    let (subject, body, body_line) = match channel {
        Channel::Sms => (None, text.to_string(), 1),
        Channel::Email => {
            let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
            let Some(subject) = first.trim_end_matches('\r').strip_prefix("Subject:") else {
                return Err(TemplateProblem {
                    message: "an email template must start with a \"Subject: ...\" line".into(),
                    line: 1,
                    column: 1,
                    hint: Some(
                        "write the subject on the first line, then a blank line, then the body"
                            .into(),
                    ),
                });
            };
            let (body, line) = match rest
                .strip_prefix('\n')
                .or_else(|| rest.strip_prefix("\r\n"))
            {
                Some(body) => (body, 3),
                None => (rest, 2),
            };
            (Some(subject.trim().to_string()), body.to_string(), line)
        }
    };
    Ok(TemplateFile {
        name,
        language,
        channel,
        subject,
        body,
        path: path.to_string(),
        body_line,
        html: None,
    })
}

/// A variable or helper a template uses, with its position in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Use {
    /// A helper's name, or a variable as a dotted path from the top of the notice's data
    /// (`fields.due_date`), whatever way the template reached it: `this.fields.x`,
    /// `@root.fields.x`, `{{#with fields}}{{x}}`, `(lookup this "fields")` all name
    /// `fields.x`. `*` stands for every member (`{{#each fields}}` reaches `fields.*`); the
    /// empty path is the whole data (`{{this}}` at the top).
    pub name: String,
    /// Whether it is a helper call rather than a variable.
    pub helper: bool,
    /// Why the template cannot be read statically here (a partial, a computed key): such a
    /// template is refused, since nobody could say what it sends.
    pub unsafe_construct: Option<String>,
    /// Whether the use stands inside `{{#if PATH}}` (or `with`, `each`, the `else` of
    /// `unless`) on its own path or one above it: it is only rendered when the value is set.
    pub guarded: bool,
    /// 1-based line in the file.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl TemplateFile {
    /// The variables and helpers the template uses, or why it does not compile.
    pub fn uses(&self) -> Result<Vec<Use>, TemplateProblem> {
        let mut out = Vec::new();
        if let Some(subject) = &self.subject {
            let ast = compile(subject, 1, 10)?;
            Walker::new(1, 10, &mut out).walk(&ast);
        }
        let ast = compile(&self.body, self.body_line, 1)?;
        Walker::new(self.body_line, 1, &mut out).walk(&ast);
        Ok(out)
    }

    /// The variables and helpers the HTML body uses (positions in its own file), if there is
    /// one.
    pub fn html_uses(&self) -> Option<Result<Vec<Use>, TemplateProblem>> {
        let html = self.html.as_ref()?;
        Some(compile(&html.body, 1, 1).map(|ast| {
            let mut out = Vec::new();
            Walker::new(1, 1, &mut out).walk(&ast);
            out
        }))
    }
}

fn compile(text: &str, line0: usize, col0: usize) -> Result<Ast, TemplateProblem> {
    Ast::compile(text).map_err(|e| {
        if let Some((message, line, column)) = unbalanced_block(text) {
            return TemplateProblem {
                message,
                line: line0 + line - 1,
                column: if line == 1 { col0 + column - 1 } else { column },
                hint: Some("close every {{#block}} with its {{/block}}, innermost first".into()),
            };
        }
        let (line, column) = e.pos().unwrap_or((1, 1));
        TemplateProblem {
            message: format!("template does not compile: {}", e.reason()),
            line: line0 + line - 1,
            column: if line == 1 { col0 + column - 1 } else { column },
            hint: Some("check that every {{ has its }} and every {{#block}} its {{/block}}".into()),
        }
    })
}

/// Finds the first block that is closed by the wrong name or never closed: Handlebars' own
/// message for these points at the end of the file and lists its grammar.
fn unbalanced_block(text: &str) -> Option<(String, usize, usize)> {
    let index = crate::diagnostic::LineIndex::new(text);
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut rest = 0;
    while let Some(i) = text[rest..].find("{{") {
        let at = rest + i;
        let tag = &text[at + 2..];
        let tag = tag.strip_prefix('~').unwrap_or(tag);
        let name_of = |t: &str| -> String {
            t.chars()
                .take_while(|c| !c.is_whitespace() && *c != '}' && *c != '~')
                .collect()
        };
        if let Some(t) = tag.strip_prefix('#') {
            open.push((name_of(t), at));
        } else if let Some(t) = tag.strip_prefix('/') {
            let name = name_of(t);
            match open.pop() {
                Some((o, _)) if *o == name => {}
                Some((o, _)) => {
                    let (line, column) = index.line_col(at);
                    return Some((
                        format!("{{{{/{name}}}}} closes {{{{#{o}}}}}: close the inner block first"),
                        line,
                        column,
                    ));
                }
                None => {
                    let (line, column) = index.line_col(at);
                    return Some((
                        format!("{{{{/{name}}}}} closes a block that was never opened"),
                        line,
                        column,
                    ));
                }
            }
        }
        rest = at + 2;
    }
    let (name, at) = open.pop()?;
    let (line, column) = index.line_col(at);
    Some((
        format!("block {{{{#{name}}}}} is never closed"),
        line,
        column,
    ))
}

/// How many parameters each helper takes: (at least, at most).
fn arity(helper: &str) -> Option<(usize, usize)> {
    Some(match helper {
        "if" | "unless" | "each" | "with" | "not" | "len" | "date" | "time" | "datetime" => (1, 1),
        "lookup" | "eq" | "ne" | "gt" | "gte" | "lt" | "lte" => (2, 2),
        "and" | "or" => (2, usize::MAX),
        _ => return None,
    })
}

/// Reads a template the way the renderer will, keeping track of what `this` is inside
/// `with` and `each`, so that every path it can take is named from the top of the data.
struct Walker<'o> {
    line0: usize,
    col0: usize,
    /// What `this` is, innermost last; the top of the data is the empty path.
    scopes: Vec<String>,
    /// Paths known to be set where the walker is: the conditions of enclosing `if` blocks.
    guards: Vec<String>,
    out: &'o mut Vec<Use>,
}

/// What a parameter stands for.
enum Resolved {
    /// A path in the data.
    Path(String),
    /// A literal, or a value computed by a helper: no path.
    Value,
    /// Cannot be known before rendering: why.
    Unknown(String),
}

impl<'o> Walker<'o> {
    fn new(line0: usize, col0: usize, out: &'o mut Vec<Use>) -> Self {
        Walker {
            line0,
            col0,
            scopes: vec![String::new()],
            guards: Vec::new(),
            out,
        }
    }

    fn walk(&mut self, ast: &Ast) {
        for (i, element) in ast.elements.iter().enumerate() {
            let (line, column) = ast.mapping.get(i).map_or((1, 1), |m| (m.0, m.1));
            let pos = (
                self.line0 + line - 1,
                if line == 1 {
                    self.col0 + column - 1
                } else {
                    column
                },
            );
            match element {
                TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                    if h.params.is_empty() && h.hash.is_empty() {
                        match &h.name {
                            // `{{name}}` is a helper call only when a helper has that name.
                            Parameter::Name(n) if HELPERS.contains(&n.as_str()) => {
                                self.helper(n, pos);
                                self.arity(n, 0, pos);
                            }
                            p => self.variable(p, pos),
                        }
                    } else {
                        self.call(h, pos);
                    }
                }
                TemplateElement::HelperBlock(h) => {
                    let name = match &h.name {
                        Parameter::Name(n) => n.as_str(),
                        _ => "",
                    };
                    if SCOPING.contains(&name) {
                        // The parameter opens a scope: what is used inside is the use.
                        self.helper(name, pos);
                        self.arity(name, h.params.len(), pos);
                    } else {
                        self.call(h, pos);
                    }
                    if h.block_param.is_some() {
                        self.refuse(
                            "block parameters (`as |x|`) cannot be followed statically: use `this` inside the block",
                            pos,
                        );
                        continue;
                    }
                    let scope = if SCOPING.contains(&name) {
                        match h.params.first().map(|p| self.resolve(p)) {
                            Some(Resolved::Path(path)) if name == "each" => Some(join(&path, "*")),
                            Some(Resolved::Path(path)) => Some(path),
                            Some(Resolved::Unknown(why)) => {
                                self.refuse(&why, pos);
                                continue;
                            }
                            _ => {
                                self.refuse(
                                    &format!("{{{{#{name}}}}} needs a path to the data it opens"),
                                    pos,
                                );
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    // The value a block tests is set inside it (`if`, `with`, `each`) or in
                    // its `else` (`unless`).
                    let tested = match h.params.first() {
                        Some(p @ (Parameter::Path(_) | Parameter::Name(_))) => {
                            match self.resolve(p) {
                                Resolved::Path(path) => Some(path),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    let (inner_guard, inverse_guard) = match name {
                        "if" | "with" | "each" => (tested, None),
                        "unless" => (None, tested),
                        _ => (None, None),
                    };
                    if let Some(scope) = &scope {
                        self.scopes.push(scope.clone());
                    }
                    if let Some(inner) = &h.template {
                        self.guarded_walk(inner, inner_guard);
                    }
                    if scope.is_some() {
                        self.scopes.pop();
                    }
                    // `{{else}}` of `each` and `with` renders in the outer scope.
                    if let Some(inverse) = &h.inverse {
                        self.guarded_walk(inverse, inverse_guard);
                    }
                }
                TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                    self.refuse("decorators cannot be followed statically", pos)
                }
                TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => self
                    .refuse(
                        "partials cannot be followed statically: write the text into the template",
                        pos,
                    ),
                _ => {}
            }
        }
    }

    fn guarded_walk(&mut self, ast: &Ast, guard: Option<String>) {
        let pushed = guard.is_some();
        if let Some(g) = guard {
            self.guards.push(g);
        }
        self.walk(ast);
        if pushed {
            self.guards.pop();
        }
    }

    /// A helper call: its name, how many parameters it got, and every parameter. `lookup`
    /// shows the member it looks up.
    fn call(&mut self, h: &handlebars::template::HelperTemplate, pos: (usize, usize)) {
        if let Parameter::Name(n) = &h.name {
            self.helper(n, pos);
            self.arity(n, h.params.len(), pos);
            if n == "lookup" && h.params.len() == 2 {
                match self.lookup(h) {
                    Resolved::Path(name) => self.path_use(name, pos),
                    Resolved::Value => {}
                    Resolved::Unknown(why) => self.refuse(&why, pos),
                }
                return;
            }
        }
        // The condition of `if` and `unless` tests whether its value is set: that is safe.
        let testing = matches!(&h.name, Parameter::Name(n) if n == "if" || n == "unless");
        for p in h.params.iter().chain(h.hash.values()) {
            let before = self.out.len();
            self.variable(p, pos);
            if testing {
                for u in &mut self.out[before..] {
                    if !u.helper && u.unsafe_construct.is_none() {
                        u.guarded = true;
                    }
                }
            }
        }
    }

    fn arity(&mut self, helper: &str, got: usize, pos: (usize, usize)) {
        if let Some((least, most)) = arity(helper)
            && (got < least || got > most)
        {
            let wants = if least == most {
                format!("{least}")
            } else {
                format!("at least {least}")
            };
            self.out.push(Use {
                name: format!("{helper}/{got}"),
                helper: true,
                guarded: false,
                unsafe_construct: Some(format!(
                    "helper \"{helper}\" takes {wants} parameter{}, found {got}: it would fail when the notice is rendered",
                    if wants == "1" { "" } else { "s" }
                )),
                line: pos.0,
                column: pos.1,
            });
        }
    }

    /// A variable's use, guarded when an enclosing condition covers its path.
    fn path_use(&mut self, name: String, pos: (usize, usize)) {
        let guarded = self
            .guards
            .iter()
            .any(|g| name == *g || name.starts_with(&format!("{g}.")));
        self.out.push(Use {
            name,
            helper: false,
            unsafe_construct: None,
            guarded,
            line: pos.0,
            column: pos.1,
        });
    }

    fn helper(&mut self, name: &str, pos: (usize, usize)) {
        self.out.push(Use {
            name: name.to_string(),
            helper: true,
            unsafe_construct: None,
            guarded: false,
            line: pos.0,
            column: pos.1,
        });
    }

    fn refuse(&mut self, why: &str, pos: (usize, usize)) {
        self.out.push(Use {
            name: String::new(),
            helper: false,
            guarded: false,
            unsafe_construct: Some(why.to_string()),
            line: pos.0,
            column: pos.1,
        });
    }

    /// A parameter that is used for its value: its path is a use.
    fn variable(&mut self, p: &Parameter, pos: (usize, usize)) {
        match self.resolve(p) {
            Resolved::Path(name) => self.path_use(name, pos),
            Resolved::Value => {}
            Resolved::Unknown(why) => self.refuse(&why, pos),
        }
    }

    /// What a parameter stands for, from the top of the data.
    fn resolve(&mut self, p: &Parameter) -> Resolved {
        match p {
            Parameter::Name(n) => self.path(n),
            Parameter::Path(handlebars::Path::Relative((_, raw))) => self.path(raw),
            // `@index`, `@key`, `@first`, `@last`: the loop's own counters.
            Parameter::Path(handlebars::Path::Local(_)) => Resolved::Value,
            Parameter::Literal(_) => Resolved::Value,
            Parameter::Subexpression(sub) => {
                let TemplateElement::Expression(h) = sub.element.as_ref() else {
                    return Resolved::Unknown("a sub-expression that is not a helper call".into());
                };
                let name = match &h.name {
                    Parameter::Name(n) => n.clone(),
                    _ => String::new(),
                };
                if name == "lookup" {
                    return self.lookup(h);
                }
                // Any other helper computes a value from its parameters, each a use.
                let pos = self
                    .out
                    .last()
                    .map_or((self.line0, self.col0), |u| (u.line, u.column));
                self.helper(&name, pos);
                self.arity(&name, h.params.len(), pos);
                for p in h.params.iter().chain(h.hash.values()) {
                    self.variable(p, pos);
                }
                Resolved::Value
            }
            _ => Resolved::Unknown("a parameter this version of carepath cannot read".into()),
        }
    }

    /// `(lookup PATH "key")`: the path's member, when the key is written in the template.
    fn lookup(&mut self, h: &handlebars::template::HelperTemplate) -> Resolved {
        let [base, key] = &h.params[..] else {
            return Resolved::Unknown("lookup takes a path and a key".into());
        };
        let key = match key {
            Parameter::Literal(serde_json::Value::String(k)) => k.clone(),
            Parameter::Literal(serde_json::Value::Number(n)) => n.to_string(),
            _ => {
                return Resolved::Unknown(
                    "lookup with a key computed when rendering: write the key in the template, or the path itself"
                        .into(),
                );
            }
        };
        match self.resolve(base) {
            Resolved::Path(path) => Resolved::Path(join(&path, &key)),
            Resolved::Value => Resolved::Unknown("lookup in a computed value".into()),
            unknown => unknown,
        }
    }

    /// A path as written (`this.a`, `../a`, `@root.a`, `a/b`, `a.[b]`), from the top.
    fn path(&self, raw: &str) -> Resolved {
        let mut rest = raw.trim();
        let mut base = match rest.strip_prefix("@root") {
            Some(after) => {
                rest = after.trim_start_matches(['.', '/']);
                String::new()
            }
            None => {
                if rest.starts_with('@') {
                    return Resolved::Value;
                }
                let mut depth = self.scopes.len() - 1;
                while let Some(after) = rest.strip_prefix("../") {
                    if depth == 0 {
                        return Resolved::Unknown(format!(
                            "\"{raw}\" climbs above the top of the data"
                        ));
                    }
                    depth -= 1;
                    rest = after;
                }
                self.scopes[depth].clone()
            }
        };
        let normal = rest.replace(['[', ']'], "").replace('/', ".");
        for segment in normal.split('.') {
            match segment {
                "" | "this" => {}
                ".." => {
                    return Resolved::Unknown(format!("\"{raw}\" climbs in the middle of a path"));
                }
                s => base = join(&base, s),
            }
        }
        Resolved::Path(base)
    }
}

fn join(base: &str, member: &str) -> String {
    if base.is_empty() {
        member.to_string()
    } else {
        format!("{base}.{member}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(
            parse_file_name("birth_notice.da.email.hbs").unwrap(),
            ("birth_notice".into(), "da".into(), Channel::Email)
        );
        assert!(parse_file_name("birth_notice.email.hbs").is_err());
        assert!(parse_file_name("birth_notice.da.fax.hbs").is_err());
        assert!(parse_file_name("birth_notice.dan.sms.hbs").is_err());
    }

    #[test]
    fn a_byte_order_mark_is_not_text() {
        let t = read("a.da.email.hbs", "\u{feff}Subject: Hej\n\nKrop\n").unwrap();
        assert_eq!(t.subject.as_deref(), Some("Hej"));
        let t = read("a.da.sms.hbs", "\u{feff}Hej").unwrap();
        assert_eq!(t.body, "Hej");
    }

    #[test]
    fn email_needs_a_subject() {
        let t = read(
            "x/a.da.email.hbs",
            "Subject: Hej {{recipient.name}}\n\nBody {{fields.x}}\n",
        )
        .unwrap();
        assert_eq!(t.subject.as_deref(), Some("Hej {{recipient.name}}"));
        let uses = t.uses().unwrap();
        let names: Vec<_> = uses
            .iter()
            .map(|u| (u.name.as_str(), u.line, u.column))
            .collect();
        assert_eq!(names, vec![("recipient.name", 1, 14), ("fields.x", 3, 6)]);
        let e = read("a.da.email.hbs", "Hej\n").unwrap_err();
        assert!(e.message.contains("Subject"));
    }

    #[test]
    fn finds_variables_in_helpers_and_blocks() {
        let t = read(
            "a.da.sms.hbs",
            "Tid: {{datetime appointment.at}}\n{{#if appointment.place}}Sted: {{appointment.place}}{{/if}}\n{{#each xs}}{{name}}{{/each}}",
        )
        .unwrap();
        let uses = t.uses().unwrap();
        let vars: Vec<_> = uses
            .iter()
            .filter(|u| !u.helper)
            .map(|u| u.name.as_str())
            .collect();
        let helpers: Vec<_> = uses
            .iter()
            .filter(|u| u.helper)
            .map(|u| u.name.as_str())
            .collect();
        assert_eq!(
            vars,
            vec![
                "appointment.at",
                "appointment.place",
                "appointment.place",
                "xs.*.name"
            ]
        );
        assert_eq!(helpers, vec!["datetime", "if", "each"]);
    }

    fn paths(body: &str) -> Vec<(String, Option<String>)> {
        read("a.da.sms.hbs", body)
            .unwrap()
            .uses()
            .unwrap()
            .into_iter()
            .filter(|u| !u.helper || u.unsafe_construct.is_some())
            .map(|u| (u.name, u.unsafe_construct))
            .collect()
    }

    #[test]
    fn every_way_to_a_value_is_named_from_the_top() {
        let named = |body: &str| -> Vec<String> {
            paths(body)
                .into_iter()
                .map(|(n, why)| {
                    assert_eq!(why, None, "{body}");
                    n
                })
                .collect()
        };
        assert_eq!(named("{{this.fields.cpr}}"), ["fields.cpr"]);
        assert_eq!(named("{{@root.fields.cpr}}"), ["fields.cpr"]);
        assert_eq!(named("{{./fields/cpr}}"), ["fields.cpr"]);
        assert_eq!(named("{{fields.[cpr]}}"), ["fields.cpr"]);
        assert_eq!(
            named("{{#with this}}{{fields.cpr}}{{/with}}"),
            ["fields.cpr"]
        );
        assert_eq!(
            named("{{#with fields}}{{cpr}}{{../instance.ref}}{{/with}}"),
            ["fields.cpr", "instance.ref"]
        );
        assert_eq!(
            named("{{#with fields}}{{@root.fields.cpr}}{{/with}}"),
            ["fields.cpr"]
        );
        assert_eq!(
            named("{{lookup (lookup this \"fields\") \"cpr\"}}"),
            ["fields.cpr"]
        );
        assert_eq!(
            named("{{#each (lookup this \"fields\")}}{{this}}{{/each}}"),
            ["fields.*"]
        );
        assert_eq!(
            named("{{#each fields}}{{@key}}{{/each}}"),
            Vec::<String>::new()
        );
        assert_eq!(named("{{this}}"), [""]);
        assert_eq!(
            named("{{#if fields.a}}{{fields.b}}{{else}}{{fields.c}}{{/if}}"),
            ["fields.a", "fields.b", "fields.c"]
        );
    }

    #[test]
    fn what_cannot_be_followed_is_refused() {
        let refused = |body: &str| -> String {
            paths(body)
                .into_iter()
                .find_map(|(_, why)| why)
                .unwrap_or_else(|| panic!("{body} was not refused: {:?}", paths(body)))
        };
        assert!(refused("{{> footer}}").contains("partials"));
        assert!(refused("{{lookup fields recipient.name}}").contains("key computed"));
        assert!(
            refused("{{#with (lookup fields recipient.name)}}{{this}}{{/with}}")
                .contains("key computed")
        );
        assert!(refused("{{#each fields as |v k|}}{{v}}{{/each}}").contains("block parameters"));
        assert!(refused("{{#if}}x{{/if}}").contains("takes 1 parameter, found 0"));
        assert!(refused("{{../fields.cpr}}").contains("climbs above"));
        assert!(refused("{{#with (eq 1 1)}}{{this}}{{/with}}").contains("path"));
    }

    #[test]
    fn names_the_unclosed_block() {
        let t = read("a.da.sms.hbs", "ok\n  {{#if x}}never closed").unwrap();
        let e = t.uses().unwrap_err();
        assert_eq!(
            (e.message.as_str(), e.line, e.column),
            ("block {{#if}} is never closed", 2, 3)
        );
        let t = read("a.da.sms.hbs", "{{#if x}}{{#each y}}{{/if}}{{/each}}").unwrap();
        let e = t.uses().unwrap_err();
        assert_eq!(
            e.message,
            "{{/if}} closes {{#each}}: close the inner block first"
        );
    }

    #[test]
    fn reports_compile_errors_with_position() {
        let t = read("a.da.sms.hbs", "ok\n{{ never closed").unwrap();
        let e = t.uses().unwrap_err();
        assert!(
            e.message.starts_with("template does not compile"),
            "{}",
            e.message
        );
        assert!(e.line >= 1);
    }
}
