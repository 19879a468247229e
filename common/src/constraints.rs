//! Placement constraints of a task: `node.label.KEY==VALUE`,
//! `node.label.KEY!=VALUE`, `node.name==NAME`, `node.name!=NAME`. A node must
//! meet all of a task's constraints; a label the node lacks never equals.
use std::collections::HashMap;
use std::fmt;

use crate::validate::{err, ValidationError, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN};

/// Most constraints per task.
pub const MAX_CONSTRAINTS: usize = 16;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The node's name.
    Name,
    /// One of the node's labels.
    Label(String),
}

/// One parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub subject: Subject,
    /// `==` (true) or `!=` (false).
    pub equal: bool,
    pub value: String,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.equal { "==" } else { "!=" };
        match &self.subject {
            Subject::Name => write!(f, "node.name{op}{}", self.value),
            Subject::Label(k) => write!(f, "node.label.{k}{op}{}", self.value),
        }
    }
}

const FORMS: &str =
    "use node.label.KEY==VALUE, node.label.KEY!=VALUE, node.name==NAME or node.name!=NAME";

impl Constraint {
    /// Parses one constraint; the message says which forms exist.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (lhs, equal, value) = if let Some((l, v)) = text.split_once("==") {
            (l, true, v)
        } else if let Some((l, v)) = text.split_once("!=") {
            (l, false, v)
        } else {
            return Err(format!("{text:?} has no == or !=: {FORMS}"));
        };
        let (lhs, value) = (lhs.trim(), value.trim());
        let subject = if lhs == "node.name" {
            Subject::Name
        } else if let Some(key) = lhs.strip_prefix("node.label.") {
            if key.is_empty() || key.len() > MAX_LABEL_KEY_LEN {
                return Err(format!(
                    "{text:?}: the label key must be 1-{MAX_LABEL_KEY_LEN} bytes"
                ));
            }
            Subject::Label(key.to_string())
        } else {
            return Err(format!("{text:?} does not look at a node: {FORMS}"));
        };
        if value.len() > MAX_LABEL_VALUE_LEN || value.contains("==") || value.contains("!=") {
            return Err(format!(
                "{text:?}: the value must be at most {MAX_LABEL_VALUE_LEN} bytes, without == or !="
            ));
        }
        Ok(Self {
            subject,
            equal,
            value: value.to_string(),
        })
    }

    /// Whether a node with this name and labels meets the constraint.
    pub fn matches(&self, name: &str, labels: &HashMap<String, String>) -> bool {
        let actual = match &self.subject {
            Subject::Name => Some(name),
            Subject::Label(k) => labels.get(k).map(String::as_str),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

/// Parses a task's constraints, naming the offending one (`spec.constraints[i]`).
pub fn parse_all(texts: &[String]) -> Result<Vec<Constraint>, ValidationError> {
    if texts.len() > MAX_CONSTRAINTS {
        return Err(err(
            "spec.constraints",
            format!("{} constraints: at most {MAX_CONSTRAINTS}", texts.len()),
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| Constraint::parse(t).map_err(|m| err(format!("spec.constraints[{i}]"), m)))
        .collect()
}

/// The constraints as one phrase for reasons: `a, b and c`.
pub fn describe(constraints: &[Constraint]) -> String {
    let parts: Vec<String> = constraints.iter().map(ToString::to_string).collect();
    match parts.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches() {
        let zone_a = Constraint::parse("node.label.zone==a").unwrap();
        assert_eq!(zone_a.to_string(), "node.label.zone==a");
        assert!(zone_a.matches("w1", &labels(&[("zone", "a")])));
        assert!(!zone_a.matches("w1", &labels(&[("zone", "b")])));
        assert!(
            !zone_a.matches("w1", &labels(&[])),
            "a missing label never equals"
        );
        let not_b = Constraint::parse(" node.label.zone != b ").unwrap();
        assert!(not_b.matches("w1", &labels(&[])), "a missing label differs");
        assert!(!not_b.matches("w1", &labels(&[("zone", "b")])));
        let name = Constraint::parse("node.name==w2").unwrap();
        assert!(name.matches("w2", &labels(&[])));
        assert!(!Constraint::parse("node.name!=w2")
            .unwrap()
            .matches("w2", &labels(&[])));
        let empty = Constraint::parse("node.label.gpu==").unwrap();
        assert!(empty.matches("w", &labels(&[("gpu", "")])));
    }

    #[test]
    fn bad_constraints_name_the_forms_and_the_index() {
        for bad in [
            "zone==a",
            "node.label.==a",
            "node.labels.zone=a",
            "node.name=a",
            "node.cpu==4",
        ] {
            let e = Constraint::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        let e = parse_all(&["node.name==a".into(), "nope".into()]).unwrap_err();
        assert_eq!(e.field, "spec.constraints[1]");
        assert!(e.message.contains("node.label.KEY==VALUE"), "{e}");
        let many: Vec<String> = (0..17).map(|i| format!("node.name!=n{i}")).collect();
        assert_eq!(parse_all(&many).unwrap_err().field, "spec.constraints");
    }

    #[test]
    fn describes_lists() {
        let cs = parse_all(&[
            "node.label.zone==a".into(),
            "node.name!=w1".into(),
            "node.label.disk==ssd".into(),
        ])
        .unwrap();
        assert_eq!(
            describe(&cs),
            "node.label.zone==a, node.name!=w1 and node.label.disk==ssd"
        );
    }
}
