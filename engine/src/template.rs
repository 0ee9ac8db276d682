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

/// Block helpers inside which `this` is something else, so paths are not checked.
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
    /// A dotted path (`fields.due_date`), or a helper's name.
    pub name: String,
    /// Whether it is a helper call rather than a variable.
    pub helper: bool,
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
            walk(&ast, 1, 10, &mut out);
        }
        let ast = compile(&self.body, self.body_line, 1)?;
        walk(&ast, self.body_line, 1, &mut out);
        Ok(out)
    }

    /// The variables and helpers the HTML body uses (positions in its own file), if there is
    /// one.
    pub fn html_uses(&self) -> Option<Result<Vec<Use>, TemplateProblem>> {
        let html = self.html.as_ref()?;
        Some(compile(&html.body, 1, 1).map(|ast| {
            let mut out = Vec::new();
            walk(&ast, 1, 1, &mut out);
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

fn walk(ast: &Ast, line0: usize, col0: usize, out: &mut Vec<Use>) {
    for (i, element) in ast.elements.iter().enumerate() {
        let (line, column) = ast.mapping.get(i).map_or((1, 1), |m| (m.0, m.1));
        let pos = (
            line0 + line - 1,
            if line == 1 { col0 + column - 1 } else { column },
        );
        match element {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                if h.params.is_empty() && h.hash.is_empty() {
                    param(&h.name, pos, out);
                } else {
                    helper(&h.name, pos, out);
                    for p in h.params.iter().chain(h.hash.values()) {
                        param(p, pos, out);
                    }
                }
            }
            TemplateElement::HelperBlock(h) => {
                helper(&h.name, pos, out);
                for p in h.params.iter().chain(h.hash.values()) {
                    param(p, pos, out);
                }
                let scoping =
                    matches!(&h.name, Parameter::Name(n) if SCOPING.contains(&n.as_str()));
                if !scoping {
                    for inner in h.template.iter().chain(h.inverse.iter()) {
                        walk(inner, line0, col0, out);
                    }
                }
            }
            TemplateElement::DecoratorExpression(_)
            | TemplateElement::DecoratorBlock(_)
            | TemplateElement::PartialExpression(_)
            | TemplateElement::PartialBlock(_) => out.push(Use {
                name: ">".into(),
                helper: true,
                line: pos.0,
                column: pos.1,
            }),
            _ => {}
        }
    }
}

fn helper(name: &Parameter, pos: (usize, usize), out: &mut Vec<Use>) {
    if let Parameter::Name(n) = name {
        out.push(Use {
            name: n.clone(),
            helper: true,
            line: pos.0,
            column: pos.1,
        });
    }
}

fn param(p: &Parameter, pos: (usize, usize), out: &mut Vec<Use>) {
    let name = match p {
        Parameter::Name(n) => n.clone(),
        Parameter::Path(path) => match path {
            handlebars::Path::Relative((_, raw)) => raw.clone(),
            handlebars::Path::Local(_) => return,
        },
        Parameter::Literal(_) => return,
        Parameter::Subexpression(sub) => {
            if let TemplateElement::Expression(h) = sub.element.as_ref() {
                helper(&h.name, pos, out);
                for p in h.params.iter().chain(h.hash.values()) {
                    param(p, pos, out);
                }
            }
            return;
        }
        _ => return,
    };
    if name == "this"
        || name.starts_with("this.")
        || name.starts_with("../")
        || name.starts_with('@')
    {
        return;
    }
    out.push(Use {
        name,
        helper: false,
        line: pos.0,
        column: pos.1,
    });
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
                "xs"
            ]
        );
        assert_eq!(helpers, vec!["datetime", "if", "each"]);
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
