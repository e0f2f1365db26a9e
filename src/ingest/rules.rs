//! Business rules and extracts: CEL expressions over the normalised event (SPEC §3.5).
//!
//! Invariants: every expression is compiled when the configuration is loaded (a rule that does
//! not compile is a config error); a rule passes only when it evaluates to `true`: `false`, a
//! non-boolean or an evaluation error (a missing key, say) rejects the event (fail closed).
//! An extract that cannot be evaluated is left out of the response.
//!
//! Rules run before the commit, so `event.stateVersion` is 0 in rules; the committed event
//! carries the real value. Only the event fields the route's expressions may read are converted
//! for CEL (`expr::EventFields`), since the conversion, above all of `event.payload` (the
//! original body), dominates the cost.

use std::collections::BTreeMap;

use cel::{Program, Value as CelValue};
use serde_json::{Map, Value};

use crate::config::RuleConfig;
use crate::event::NormalisedEvent;
use crate::expr::direct::Direct;
pub use crate::expr::EventExpr;
use crate::expr::{event_value, one_line, with_event, EventFields};

/// A compiled rule.
pub struct Rule {
    pub expr: String,
    pub message: String,
    program: Program,
    direct: Option<Direct>,
}

/// A compiled extract: a name in the response `data` and the expression that fills it.
pub struct Extract {
    pub name: String,
    program: Program,
    direct: Option<Direct>,
}

/// The rules and extracts of one route.
#[derive(Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    extracts: Vec<Extract>,
    /// The event fields any expression may read: all an evaluation converts.
    fields: EventFields,
    /// Whether every rule and extract has a direct form (`expr::direct`): then no CEL map of
    /// the event is built.
    direct: bool,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules: Vec<_> = self.rules.iter().map(|r| r.expr.as_str()).collect();
        let extracts: Vec<_> = self.extracts.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("RuleSet")
            .field("rules", &rules)
            .field("extracts", &extracts)
            .finish()
    }
}

/// The first rule that did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub message: String,
}

impl RuleSet {
    /// Compiles rules and extracts; returns every expression that does not compile.
    pub fn compile(
        rules: &[RuleConfig],
        extracts: &BTreeMap<String, String>,
    ) -> Result<RuleSet, Vec<String>> {
        let mut errors = Vec::new();
        let mut set = RuleSet {
            fields: EventFields::read_by(
                rules
                    .iter()
                    .map(|r| r.expr.as_str())
                    .chain(extracts.values().map(String::as_str)),
            ),
            ..RuleSet::default()
        };
        for (i, r) in rules.iter().enumerate() {
            match Program::compile(&r.expr) {
                Ok(program) => set.rules.push(Rule {
                    expr: r.expr.clone(),
                    message: r.message.clone(),
                    program,
                    direct: Direct::compile(&r.expr),
                }),
                Err(e) => errors.push(format!(
                    "rules[{i}] `{}` does not compile: {}",
                    r.expr,
                    one_line(&e.to_string())
                )),
            }
        }
        for (name, expr) in extracts {
            match Program::compile(expr) {
                Ok(program) => set.extracts.push(Extract {
                    name: name.clone(),
                    program,
                    direct: Direct::compile(expr),
                }),
                Err(e) => errors.push(format!(
                    "extract.{name} `{expr}` does not compile: {}",
                    one_line(&e.to_string())
                )),
            }
        }
        set.direct = set.rules.iter().all(|r| r.direct.is_some())
            && set.extracts.iter().all(|e| e.direct.is_some());
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.extracts.is_empty()
    }

    /// Runs the rules in order, then the extracts. Returns the extracted values.
    pub fn evaluate(&self, event: &NormalisedEvent) -> Result<Map<String, Value>, Rejection> {
        let mut out = Map::new();
        if self.is_empty() {
            return Ok(out);
        }
        if self.direct {
            return self.evaluate_directly(event, out);
        }
        let value = event_value(event, &self.fields);
        with_event(value, |ctx| {
            for rule in &self.rules {
                match rule.program.execute(ctx) {
                    Ok(CelValue::Bool(true)) => {}
                    _ => {
                        return Err(Rejection {
                            message: rule.message.clone(),
                        })
                    }
                }
            }
            for ex in &self.extracts {
                if let Ok(v) = ex.program.execute(ctx) {
                    if let Ok(j) = v.json() {
                        out.insert(ex.name.clone(), j);
                    }
                }
            }
            Ok(out)
        })
    }

    /// `evaluate` when every expression has a direct form: the same results, read straight
    /// off the event.
    fn evaluate_directly(
        &self,
        event: &NormalisedEvent,
        mut out: Map<String, Value>,
    ) -> Result<Map<String, Value>, Rejection> {
        for rule in &self.rules {
            let passed = rule
                .direct
                .as_ref()
                .is_some_and(|d| d.eval(event) == Ok(CelValue::Bool(true)));
            if !passed {
                return Err(Rejection {
                    message: rule.message.clone(),
                });
            }
        }
        for ex in &self.extracts {
            if let Some(Ok(v)) = ex.direct.as_ref().map(|d| d.eval(event)) {
                if let Ok(j) = v.json() {
                    out.insert(ex.name.clone(), j);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::payload::Intent;
    use serde_json::json;

    fn event(score: f64, order: Option<&str>) -> NormalisedEvent {
        let mut entities = Map::new();
        if let Some(o) = order {
            entities.insert("orderId".into(), json!(o));
        }
        let mut e = NormalisedEvent::new(
            "nlu-orders",
            "c".into(),
            "t".into(),
            "s".into(),
            "u".into(),
            "nlu.input".into(),
            json!({}),
        );
        e.intent = Some(Intent {
            name: "order_status".into(),
            score,
        });
        e.entities = entities;
        e
    }

    fn seed_rules() -> RuleSet {
        let routes = crate::config::Config::default().routes;
        RuleSet::compile(&routes[1].rules, &routes[1].extract).expect("seed rules compile")
    }

    #[test]
    fn seed_rules_accept_confident_intent_with_order_and_extract_it() {
        let out = seed_rules()
            .evaluate(&event(0.94, Some("A-1")))
            .expect("passes");
        assert_eq!(out["orderId"], "A-1");
    }

    #[test]
    fn seed_rules_reject_low_confidence_first() {
        let r = seed_rules()
            .evaluate(&event(0.5, None))
            .expect_err("rejected");
        assert_eq!(r.message, "Intent confidence below business threshold");
        let r = seed_rules()
            .evaluate(&event(0.75, None))
            .expect_err("rejected");
        assert_eq!(r.message, "Required entity orderId is missing");
    }

    #[test]
    fn rule_that_cannot_be_evaluated_rejects() {
        let rules = [RuleConfig {
            expr: "event.nothing.here > 1".into(),
            message: "nope".into(),
        }];
        let set = RuleSet::compile(&rules, &BTreeMap::new()).expect("compiles");
        assert_eq!(
            set.evaluate(&event(1.0, None))
                .expect_err("rejects")
                .message,
            "nope"
        );
        let rules = [RuleConfig {
            expr: "event.sessionId".into(),
            message: "not a bool".into(),
        }];
        let set = RuleSet::compile(&rules, &BTreeMap::new()).expect("compiles");
        assert!(set.evaluate(&event(1.0, None)).is_err());
    }

    #[test]
    fn expressions_that_do_not_compile_are_all_reported() {
        let rules = [
            RuleConfig {
                expr: "event.intent.score >=".into(),
                message: "m".into(),
            },
            RuleConfig {
                expr: "true".into(),
                message: "m".into(),
            },
        ];
        let extracts = BTreeMap::from([("x".to_string(), "((".to_string())]);
        let errs = RuleSet::compile(&rules, &extracts).expect_err("bad");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("rules[0]"));
        assert!(errs[1].starts_with("extract.x"));
    }

    #[test]
    fn rules_can_read_the_original_payload_and_state() {
        let rules = [RuleConfig {
            expr: "event.payload.channel == 'voice' && event.stateVersion == 0 && !event.simulated"
                .into(),
            message: "not voice".into(),
        }];
        let set = RuleSet::compile(&rules, &BTreeMap::new()).expect("compiles");
        let mut e = event(0.9, Some("A"));
        e.payload = json!({"channel": "voice", "n": [1, 2.5, null]}).into();
        assert!(set.evaluate(&e).is_ok());
        e.payload = json!({"channel": "chat"}).into();
        assert!(set.evaluate(&e).is_err());
    }

    #[test]
    fn missing_extract_is_left_out() {
        let extracts = BTreeMap::from([
            ("orderId".to_string(), "event.entities.orderId".to_string()),
            ("intent".to_string(), "event.intent.name".to_string()),
        ]);
        let set = RuleSet::compile(&[], &extracts).expect("compiles");
        let out = set.evaluate(&event(0.9, None)).expect("no rules");
        assert!(!out.contains_key("orderId"));
        assert_eq!(out["intent"], "order_status");
    }
}
