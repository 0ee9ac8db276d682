//! Guards and `set` expressions: a small, safe language (CEL), checked against the declared
//! fields before a pathway is accepted and evaluated by the step function.
//!
//! An expression sees two variables: `fields` (the instance's fields) and, on a transition,
//! `payload` (the event's payload). CEL has no loops or side effects, so an expression always
//! terminates.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use indexmap::IndexMap;

use crate::pathway::Field;

/// The functions an expression may call: CEL's standard ones the interpreter provides.
pub const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "max",
    "min",
    "string",
    "int",
    "uint",
    "double",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "timestamp",
    "duration",
];

/// What an expression may refer to.
pub struct Scope<'a> {
    /// The pathway's fields.
    pub fields: &'a IndexMap<String, Field>,
    /// The event's payload members, when the expression belongs to a transition.
    pub payload: Option<(&'a str, &'a IndexMap<String, Field>)>,
}

/// A compiled expression.
pub struct Expression {
    program: cel::Program,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Expression")
    }
}

/// The longest expression carepath parses, in characters.
pub const MAX_LENGTH: usize = 500;
/// The deepest nesting of brackets an expression may have.
pub const MAX_NESTING: usize = 12;
/// The most operators an expression may chain.
pub const MAX_OPERATORS: usize = 48;

/// Refuses an expression too long, too deeply nested or with too many operators for the
/// parser and evaluator, which recurse, to handle safely on a thread's stack. A guard is a
/// short condition; anything near these limits belongs in a field set by an event.
pub fn limits(text: &str) -> Result<(), String> {
    let length = text.chars().count();
    if length > MAX_LENGTH {
        return Err(format!(
            "expression of {length} characters is longer than {MAX_LENGTH}"
        ));
    }
    let (mut depth, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for c in text.chars() {
        match quote {
            Some(q) if c == q && previous != '\\' => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                '+' | '-' | '*' | '/' | '%' | '<' | '>' | '!' | '?' | ',' => operators += 1,
                '&' | '|' | '=' if previous != c => operators += 1,
                _ => {}
            },
        }
        previous = c;
    }
    if deepest > MAX_NESTING {
        return Err(format!(
            "expression nests {deepest} brackets deep, more than {MAX_NESTING}"
        ));
    }
    if operators > MAX_OPERATORS {
        return Err(format!(
            "expression has {operators} operators, more than {MAX_OPERATORS}"
        ));
    }
    Ok(())
}

/// Parses `text` and checks every name in it against `scope`.
pub fn check(text: &str, scope: &Scope<'_>) -> Result<(), String> {
    Expression::compile(text)?.check(scope)
}

fn first_error(e: &cel::ParseErrors) -> String {
    e.errors.first().map_or_else(
        || "syntax error".to_string(),
        |e| format!("{} at column {}", e.msg, e.pos.1),
    )
}

fn walk(e: &IdedExpr, scope: &Scope<'_>, bound: &mut Vec<String>) -> Result<(), String> {
    match &e.expr {
        Expr::Ident(name) => {
            if name == "fields" || bound.contains(name) {
                Ok(())
            } else if name == "payload" {
                match scope.payload {
                    Some(_) => Ok(()),
                    None => Err(
                        "\"payload\" is only available in a transition's guard and actions".into(),
                    ),
                }
            } else {
                Err(format!(
                    "unknown name {name:?}: an expression sees \"fields\" and, on a transition, \"payload\""
                ))
            }
        }
        Expr::Select(s) => {
            if let Expr::Ident(root) = &s.operand.expr {
                if root == "fields" && !bound.contains(root) {
                    if !scope.fields.contains_key(&s.field) {
                        return Err(format!(
                            "unknown field {:?}: declare it under \"fields\"",
                            s.field
                        ));
                    }
                    return Ok(());
                }
                if root == "payload" && !bound.contains(root) {
                    return match scope.payload {
                        Some((_, members)) if members.contains_key(&s.field) => Ok(()),
                        Some((event, _)) => Err(format!(
                            "the payload of event {event:?} has no member {:?}",
                            s.field
                        )),
                        None => Err(
                            "\"payload\" is only available in a transition's guard and actions"
                                .into(),
                        ),
                    };
                }
            }
            walk(&s.operand, scope, bound)
        }
        Expr::Call(c) => {
            let internal = c.func_name.starts_with('_')
                || c.func_name.starts_with('@')
                || c.func_name.starts_with('!');
            if !internal && !FUNCTIONS.contains(&c.func_name.as_str()) {
                return Err(format!("unknown function {:?}", c.func_name));
            }
            if let Some(t) = &c.target {
                walk(t, scope, bound)?;
            }
            c.args.iter().try_for_each(|a| walk(a, scope, bound))
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, scope, bound)?;
            walk(&c.accu_init, scope, bound)?;
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            let r = walk(&c.loop_cond, scope, bound)
                .and_then(|_| walk(&c.loop_step, scope, bound))
                .and_then(|_| walk(&c.result, scope, bound));
            bound.truncate(depth);
            r
        }
        Expr::List(l) => l.elements.iter().try_for_each(|x| walk(x, scope, bound)),
        Expr::Map(m) => m.entries.iter().try_for_each(|x| match &x.expr {
            EntryExpr::MapEntry(me) => {
                walk(&me.key, scope, bound).and_then(|_| walk(&me.value, scope, bound))
            }
            EntryExpr::StructField(sf) => walk(&sf.value, scope, bound),
        }),
        Expr::Struct(s) => s.entries.iter().try_for_each(|x| match &x.expr {
            EntryExpr::MapEntry(me) => walk(&me.value, scope, bound),
            EntryExpr::StructField(sf) => walk(&sf.value, scope, bound),
        }),
        Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

impl Expression {
    /// Compiles an expression (checked before, so this only fails on text never checked).
    pub fn compile(text: &str) -> Result<Expression, String> {
        limits(text)?;
        cel::Program::compile(text)
            .map(|program| Expression { program })
            .map_err(|e| format!("expression {text:?} does not parse: {}", first_error(&e)))
    }

    /// Checks every name in the expression against `scope`.
    pub fn check(&self, scope: &Scope<'_>) -> Result<(), String> {
        let mut bound = Vec::new();
        walk(self.program.expression(), scope, &mut bound)
    }

    /// Evaluates the expression with the instance's fields and an event's payload.
    pub fn eval(
        &self,
        fields: &serde_json::Map<String, serde_json::Value>,
        payload: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let mut cx = cel::Context::default();
        cx.add_variable_from_value("fields", to_cel(&serde_json::Value::Object(fields.clone())));
        cx.add_variable_from_value("payload", to_cel(payload));
        let value = self.program.execute(&cx).map_err(|e| e.to_string())?;
        value.json().map_err(|e| e.to_string())
    }
}

/// JSON to CEL, keeping whole numbers signed: CEL does not mix `uint` and `int`, and
/// `fields.count + 1` must work on a count of 9.
fn to_cel(v: &serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match v {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => cel::Value::String(Arc::new(s.clone())),
        J::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        J::Object(members) => {
            let map: HashMap<String, cel::Value> = members
                .iter()
                .map(|(k, v)| (k.clone(), to_cel(v)))
                .collect();
            cel::Value::from(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pathway::FieldType;

    fn fields() -> IndexMap<String, Field> {
        let f = |ty| Field {
            ty,
            required: false,
            sensitive: false,
            values: None,
            within: None,
            description: None,
        };
        let mut m = IndexMap::new();
        m.insert("care_level".into(), f(FieldType::Int));
        m.insert("consent".into(), f(FieldType::Bool));
        m
    }

    #[test]
    fn checks_names() {
        let fields = fields();
        let payload = fields.clone();
        let on_event = Scope {
            fields: &fields,
            payload: Some(("referral", &payload)),
        };
        let in_timer = Scope {
            fields: &fields,
            payload: None,
        };
        assert!(check("fields.care_level >= 3 && payload.consent", &on_event).is_ok());
        assert!(check("[1,2].exists(x, x == fields.care_level)", &in_timer).is_ok());
        let e = check("fields.carelevel >= 3", &in_timer).unwrap_err();
        assert!(e.contains("unknown field \"carelevel\""), "{e}");
        let e = check("payload.consent", &in_timer).unwrap_err();
        assert!(e.contains("only available"), "{e}");
        let e = check("payload.nope", &on_event).unwrap_err();
        assert!(e.contains("has no member \"nope\""), "{e}");
        let e = check("system('rm')", &on_event).unwrap_err();
        assert!(e.contains("unknown function"), "{e}");
        let e = check("fields.care_level >=", &on_event).unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
    }

    #[test]
    fn evaluates() {
        let e = Expression::compile("fields.n + 1").unwrap();
        let mut f = serde_json::Map::new();
        f.insert("n".into(), 9.into());
        assert_eq!(
            e.eval(&f, &serde_json::Value::Null).unwrap(),
            serde_json::json!(10)
        );
        let g = Expression::compile("payload.consent == true && fields.n < 10").unwrap();
        assert_eq!(
            g.eval(&f, &serde_json::json!({"consent": true})).unwrap(),
            serde_json::json!(true)
        );
    }
}
