//! Expressions evaluated straight off the event, without converting it into a CEL map.
//!
//! A route's rules are mostly of a few shapes: a field compared with a literal
//! (`event.intent.score >= 0.75`), a presence test (`has(event.entities.orderId)`), a field
//! (an extract), joined by `&&`, `||` and `!`. For those, building the CEL map of the event
//! and walking it cost several times the comparison itself (bench/README.md, seventeenth
//! session). [`Direct::compile`] recognises these shapes in the parsed expression and
//! [`Direct::eval`] evaluates them reading the event through [`View`], converting only the
//! values it reaches. Any other shape gives `None` and the caller runs the CEL program.
//!
//! Each step does what the CEL interpreter (`cel` 0.12, `Value::resolve`) does at that node,
//! with the same value operations (`PartialEq`, `PartialOrd` of CEL values): a missing member
//! or a member of what is not a map fails, `has` of what is not a map is false, `&&` and `||`
//! evaluate their left side first and fail on a non-boolean one. A test evaluates a set of
//! expressions both ways over events of every field shape and requires the same results.

use std::cmp::Ordering;

use cel::common::ast::{operators, Expr, IdedExpr};
use cel::common::value::CelVal;
use cel::Value as CelValue;

use super::{field, field_index, View};
use crate::event::NormalisedEvent;

/// An expression in one of the shapes evaluated directly.
#[derive(Debug)]
pub(crate) enum Direct {
    Literal(CelValue),
    /// `event.FIELD.a.b…`
    Path(Path),
    /// `has(event.FIELD)`
    HasField(Option<usize>),
    /// `has(event.FIELD.a….NAME)`: the path, then the member tested.
    Has(Path, String),
    Compare(Compare, Box<Direct>, Box<Direct>),
    And(Box<Direct>, Box<Direct>),
    Or(Box<Direct>, Box<Direct>),
    Not(Box<Direct>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compare {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// `event.FIELD` followed by members. `field` is `None` for a name the event never has
/// (reading it fails, as a missing key does).
#[derive(Debug)]
pub(crate) struct Path {
    field: Option<usize>,
    members: Vec<String>,
}

impl Path {
    fn resolve<'e>(&self, e: &'e NormalisedEvent) -> Option<View<'e>> {
        let mut v = field(e, self.field?)?;
        for m in &self.members {
            v = v.member(m)?;
        }
        Some(v)
    }
}

/// Why a direct evaluation failed; rules reject on it and extracts leave the value out, as
/// they do on any CEL error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failed;

impl Direct {
    /// The direct form of `source`, or `None` when it has another shape (or does not parse).
    pub(crate) fn compile(source: &str) -> Option<Direct> {
        let ast = cel::parser::Parser::default().parse(source).ok()?;
        Direct::from_ast(&ast)
    }

    fn from_ast(e: &IdedExpr) -> Option<Direct> {
        match &e.expr {
            Expr::Literal(v) => literal(v).map(Direct::Literal),
            Expr::Select(s) if s.test => match &s.operand.expr {
                Expr::Ident(name) if name == "event" => {
                    Some(Direct::HasField(field_index(&s.field)))
                }
                _ => Some(Direct::Has(path(&s.operand)?, s.field.clone())),
            },
            Expr::Select(_) => path(e).map(Direct::Path),
            Expr::Call(c) if c.target.is_none() => {
                let arg = |i: usize| c.args.get(i).and_then(Direct::from_ast).map(Box::new);
                let compare = match c.func_name.as_str() {
                    operators::EQUALS => Some(Compare::Eq),
                    operators::NOT_EQUALS => Some(Compare::Ne),
                    operators::LESS => Some(Compare::Lt),
                    operators::LESS_EQUALS => Some(Compare::Le),
                    operators::GREATER => Some(Compare::Gt),
                    operators::GREATER_EQUALS => Some(Compare::Ge),
                    _ => None,
                };
                match (c.func_name.as_str(), c.args.len()) {
                    (_, 2) if compare.is_some() => {
                        Some(Direct::Compare(compare?, arg(0)?, arg(1)?))
                    }
                    (operators::LOGICAL_AND, 2) => Some(Direct::And(arg(0)?, arg(1)?)),
                    (operators::LOGICAL_OR, 2) => Some(Direct::Or(arg(0)?, arg(1)?)),
                    (operators::LOGICAL_NOT, 1) => Some(Direct::Not(arg(0)?)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Evaluates against `e`.
    pub(crate) fn eval(&self, e: &NormalisedEvent) -> Result<CelValue, Failed> {
        match self {
            Direct::Literal(v) => Ok(v.clone()),
            Direct::Path(p) => p.resolve(e).map(View::to_cel).ok_or(Failed),
            Direct::HasField(i) => Ok(CelValue::Bool(i.and_then(|i| field(e, i)).is_some())),
            Direct::Has(p, name) => Ok(CelValue::Bool(p.resolve(e).ok_or(Failed)?.has(name))),
            Direct::Compare(op, l, r) => {
                let (l, r) = (l.eval(e)?, r.eval(e)?);
                let b = match op {
                    Compare::Eq => l == r,
                    Compare::Ne => l != r,
                    _ => {
                        let o = l.partial_cmp(&r).ok_or(Failed)?;
                        match op {
                            Compare::Lt => o == Ordering::Less,
                            Compare::Le => o != Ordering::Greater,
                            Compare::Gt => o == Ordering::Greater,
                            _ => o != Ordering::Less,
                        }
                    }
                };
                Ok(CelValue::Bool(b))
            }
            Direct::And(l, r) => {
                if !truth(&l.eval(e)?)? {
                    return Ok(CelValue::Bool(false));
                }
                Ok(CelValue::Bool(truth(&r.eval(e)?)?))
            }
            Direct::Or(l, r) => {
                let left = l.eval(e)?;
                if truth(&left)? {
                    Ok(left)
                } else {
                    r.eval(e)
                }
            }
            Direct::Not(x) => Ok(CelValue::Bool(!truth(&x.eval(e)?)?)),
        }
    }
}

/// A boolean's value; anything else fails (CEL: no such overload).
fn truth(v: &CelValue) -> Result<bool, Failed> {
    match v {
        CelValue::Bool(b) => Ok(*b),
        _ => Err(Failed),
    }
}

/// A literal as the interpreter turns it into a value (the kinds it converts).
fn literal(v: &CelVal) -> Option<CelValue> {
    match v {
        CelVal::String(_)
        | CelVal::Boolean(_)
        | CelVal::Int(_)
        | CelVal::UInt(_)
        | CelVal::Double(_)
        | CelVal::Bytes(_)
        | CelVal::Null => Some(v.clone().into()),
        _ => None,
    }
}

/// `event.FIELD.a.b…` as a path; `None` for any other expression.
fn path(e: &IdedExpr) -> Option<Path> {
    let mut members = Vec::new();
    let mut at = e;
    loop {
        match &at.expr {
            Expr::Select(s) if !s.test => {
                members.push(s.field.clone());
                at = &s.operand;
            }
            Expr::Ident(name) if name == "event" => break,
            _ => return None,
        }
    }
    let first = members.pop()?;
    members.reverse();
    Some(Path {
        field: field_index(&first),
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Intent;
    use crate::expr::{event_value, with_event, EventFields};
    use cel::Program;
    use serde_json::json;

    /// Every shape `compile` takes, and some it must leave to CEL.
    const DIRECT: &[&str] = &[
        "event.intent.score >= 0.75",
        "event.intent.score < 1",
        "event.intent.score > 0u",
        "0.5 <= event.intent.score",
        "event.intent.name == 'order_status'",
        "event.intent.name != 'x'",
        "event.intent.missing == 1",
        "has(event.entities.orderId)",
        "has(event.entities)",
        "has(event.text)",
        "has(event.channel)",
        "has(event.nothing)",
        "has(event.intent.score)",
        "has(event.intent.other)",
        "has(event.text.x)",
        "has(event.payload.a.b)",
        "has(event.nothing.x)",
        "event.entities.orderId",
        "event.entities.count > 2",
        "event.entities.count == 3",
        "event.entities.count == 3.0",
        "event.entities.count == 3u",
        "event.entities.flag == true",
        "event.entities.flag",
        "event.entities.nothing == null",
        "event.entities.list == null",
        "event.entities.obj.k == 'v'",
        "event.entities.obj",
        "event.entities.orderId > 'A'",
        "event.entities.orderId > 1",
        "event.payload.channel == 'voice'",
        "event.payload.n",
        "event.text == 'hi'",
        "event.text",
        "event.locale >= 'en'",
        "event.stateVersion == 0",
        "event.simulated == false",
        "!event.simulated",
        "!event.text",
        "event.nothing == 1",
        "event.intent.score >= 0.75 && has(event.entities.orderId)",
        "has(event.text) && !has(event.channel)",
        "event.text == 'hi' || event.entities.count > 2",
        "event.text || true",
        "event.entities.flag || event.nothing",
        "false && event.nothing",
        "event.nothing && false",
        "true || event.nothing",
        "event.entities.count || true",
        "event.sessionId == 's' && event.userId == 'u' && event.eventType != ''",
        "event.route == 'r' && event.eventId != '' && event.receivedAt != ''",
        "event.correlationId == 'c' || event.transactionId == 't'",
        "has(event.urlToken) || has(event.traceId)",
        "null == null",
        "b'x' == b'x'",
    ];

    const NOT_DIRECT: &[&str] = &[
        "event",
        "size(event.text) > 2",
        "event.text.startsWith('h')",
        "event.entities['orderId'] == 'A'",
        "event.intent.score + 1.0 > 1.0",
        "-event.intent.score < 0.0",
        "'x' in event.entities",
        "event.text == 'a' ? true : false",
        "[1, 2] == [1, 2]",
        "x.y == 1",
        "event.intent.score >=",
    ];

    fn events() -> Vec<NormalisedEvent> {
        let entity_shapes = [
            json!({}),
            json!({"orderId": "A-1", "count": 3, "flag": true, "nothing": null,
                   "list": [1, "a"], "obj": {"k": "v"}}),
            json!({"orderId": 7, "count": 3.0, "flag": "yes", "obj": "not a map"}),
            json!({"orderId": "", "count": 18446744073709551615u64, "flag": false,
                   "obj": {"k": 1}}),
            json!({"count": -2, "flag": null, "list": null, "obj": {}}),
        ];
        let payloads = [
            json!({}),
            json!({"channel": "voice", "n": [1, 2.5, null], "a": {"b": 1}}),
            json!({"channel": "chat", "a": 5}),
        ];
        let mut out = Vec::new();
        for (i, entities) in entity_shapes.iter().enumerate() {
            for (j, payload) in payloads.iter().enumerate() {
                let mut e = NormalisedEvent::new(
                    "r",
                    "c".into(),
                    "t".into(),
                    "s".into(),
                    "u".into(),
                    "nlu.input".into(),
                    payload.clone(),
                );
                e.entities = entities.as_object().cloned().unwrap_or_default();
                if (i + j) % 2 == 0 {
                    e.text = Some("hi".into());
                    e.locale = Some("en-US".into());
                    e.intent = Some(Intent {
                        name: "order_status".into(),
                        score: [0.94, 0.5, 0.75, f64::NAN][i % 4],
                    });
                }
                if j == 1 {
                    e.channel = Some("voice".into());
                    e.url_token = Some("tok".into());
                    e.simulated = true;
                    e.state_version = 3;
                }
                out.push(e);
            }
        }
        out
    }

    /// The CEL interpreter's answer, errors collapsed (only success or failure matters).
    fn by_cel(program: &Program, e: &NormalisedEvent) -> Result<CelValue, Failed> {
        with_event(event_value(e, &EventFields::all()), |ctx| {
            program.execute(ctx).map_err(|_| Failed)
        })
    }

    #[test]
    fn direct_evaluation_gives_what_the_cel_interpreter_gives() {
        let events = events();
        for source in DIRECT {
            let direct = Direct::compile(source)
                .unwrap_or_else(|| panic!("`{source}` should be evaluated directly"));
            let program = Program::compile(source).expect("compiles");
            for (n, e) in events.iter().enumerate() {
                let (got, want) = (direct.eval(e), by_cel(&program, e));
                // NaN is not equal to itself, in either evaluation.
                let same = match (&got, &want) {
                    (Ok(CelValue::Float(a)), Ok(CelValue::Float(b))) => a.to_bits() == b.to_bits(),
                    _ => got == want,
                };
                assert!(
                    same,
                    "`{source}` on event {n}: direct {got:?}, CEL {want:?}"
                );
            }
        }
    }

    #[test]
    fn other_shapes_are_left_to_the_interpreter() {
        for source in NOT_DIRECT {
            assert!(Direct::compile(source).is_none(), "`{source}`");
        }
    }

    #[test]
    fn the_seed_rules_are_evaluated_directly() {
        let routes = crate::config::Config::default().routes;
        let exprs = routes
            .iter()
            .flat_map(|r| r.rules.iter().map(|r| r.expr.as_str()))
            .chain(
                routes
                    .iter()
                    .flat_map(|r| r.extract.values().map(String::as_str)),
            );
        let mut n = 0;
        for source in exprs {
            assert!(Direct::compile(source).is_some(), "`{source}`");
            n += 1;
        }
        assert!(n >= 3, "the seed routes have rules and an extract");
    }
}
