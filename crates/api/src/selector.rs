//! Label and field selectors, with Kubernetes' syntax and meaning.
//!
//! Labels: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a` (exists), `!a`
//! (does not exist), `a>1`, `a<1`, joined by commas (all must hold). `!=` and `notin`
//! also match objects without the label.
//!
//! Fields: `f=v`, `f==v`, `f!=v`, joined by commas; `\` escapes `\`, `,`, `=` and `!` in
//! values. Which fields exist is up to each kind; [`FieldSelector::fields`] lists them.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} selector {input:?}: {reason}")]
pub struct SelectorError {
    kind: &'static str,
    input: String,
    reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelRequirement {
    pub key: String,
    pub op: LabelOp,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<LabelRequirement>,
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// A label key: `[prefix/]name` with a DNS-subdomain prefix.
pub fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name_part(name),
        None => is_name_part(key),
    }
}

/// A label value: empty, or up to 63 alphanumerics, '-', '_', '.' starting and ending
/// alphanumeric.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_name_part(value)
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<LabelRequirement, String> {
    let part = part.trim();
    if part.is_empty() {
        return Err("empty requirement".into());
    }
    let key_ok = |k: &str| {
        if is_label_key(k) { Ok(k.to_string()) } else { Err(format!("invalid label key {k:?}")) }
    };
    let value_ok = |v: &str| {
        if is_label_value(v) { Ok(v.to_string()) } else { Err(format!("invalid label value {v:?}")) }
    };
    if let Some(key) = part.strip_prefix('!') {
        return Ok(LabelRequirement { key: key_ok(key.trim())?, op: LabelOp::DoesNotExist });
    }
    for (token, negate) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = part.split_once(token) {
            let values = vec![value_ok(v.trim())?];
            let op = if negate { LabelOp::NotIn(values) } else { LabelOp::In(values) };
            return Ok(LabelRequirement { key: key_ok(k.trim())?, op });
        }
    }
    for (token, greater) in [(">", true), ("<", false)] {
        if let Some((k, v)) = part.split_once(token) {
            let n: i64 = v.trim().parse().map_err(|_| format!("{v:?} is not an integer"))?;
            let op = if greater { LabelOp::Gt(n) } else { LabelOp::Lt(n) };
            return Ok(LabelRequirement { key: key_ok(k.trim())?, op });
        }
    }
    // `key in (a,b)` / `key notin (a,b)` / `key`
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or("");
    let rest = words.next().map(str::trim).unwrap_or("");
    if rest.is_empty() {
        if key.contains('(') {
            return Err(format!("missing operator before '(' in {part:?}"));
        }
        return Ok(LabelRequirement { key: key_ok(key)?, op: LabelOp::Exists });
    }
    let (is_in, set) = if let Some(set) = rest.strip_prefix("notin") {
        (false, set)
    } else if let Some(set) = rest.strip_prefix("in") {
        (true, set)
    } else {
        return Err(format!("unknown operator in {part:?}"));
    };
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set of values in {part:?}"))?;
    let values = inner.split(',').map(|v| value_ok(v.trim())).collect::<Result<Vec<_>, _>>()?;
    if is_in && values.iter().all(String::is_empty) && inner.trim().is_empty() {
        return Err(format!("empty set of values in {part:?}"));
    }
    let op = if is_in { LabelOp::In(values) } else { LabelOp::NotIn(values) };
    Ok(LabelRequirement { key: key_ok(key)?, op })
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<LabelSelector, SelectorError> {
        let err = |reason: String| SelectorError { kind: "label", input: input.to_string(), reason };
        if input.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let requirements =
            split_top_level(input).map_err(err)?.into_iter().map(parse_requirement).collect::<Result<_, _>>();
        Ok(LabelSelector { requirements: requirements.map_err(err)? })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                LabelOp::In(set) => value.is_some_and(|v| set.contains(v)),
                LabelOp::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
                LabelOp::Gt(n) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
                LabelOp::Lt(n) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
            }
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &r.op {
                LabelOp::In(v) if v.len() == 1 => write!(f, "{}={}", r.key, v[0])?,
                LabelOp::NotIn(v) if v.len() == 1 => write!(f, "{}!={}", r.key, v[0])?,
                LabelOp::In(v) => write!(f, "{} in ({})", r.key, v.join(","))?,
                LabelOp::NotIn(v) => write!(f, "{} notin ({})", r.key, v.join(","))?,
                LabelOp::Exists => f.write_str(&r.key)?,
                LabelOp::DoesNotExist => write!(f, "!{}", r.key)?,
                LabelOp::Gt(n) => write!(f, "{}>{n}", r.key)?,
                LabelOp::Lt(n) => write!(f, "{}<{n}", r.key)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    /// `!=` rather than `=`.
    pub negated: bool,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    pub fn parse(input: &str) -> Result<FieldSelector, SelectorError> {
        let err = |reason: String| SelectorError { kind: "field", input: input.to_string(), reason };
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(FieldSelector::default());
        }
        // Split on unescaped commas, then each part on its first unescaped operator.
        let mut parts = vec![String::new()];
        let mut raw_parts = vec![String::new()];
        let mut chars = input.chars();
        while let Some(c) = chars.next() {
            let (part, raw) = (parts.last_mut(), raw_parts.last_mut());
            let (Some(part), Some(raw)) = (part, raw) else { break };
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('\\' | ',' | '=' | '!')) => {
                        // Keep escapes as a marker so operators inside values are not split.
                        part.push('\u{0}');
                        part.push(e);
                        raw.push(e);
                    }
                    _ => return Err(err("invalid escape sequence".into())),
                },
                ',' => {
                    parts.push(String::new());
                    raw_parts.push(String::new());
                }
                c => {
                    part.push(c);
                    raw.push(c);
                }
            }
        }
        for part in parts {
            let (field, op, value) = ["!=", "==", "="]
                .iter()
                .find_map(|op| find_unescaped(&part, op).map(|i| (&part[..i], *op, &part[i + op.len()..])))
                .ok_or_else(|| err(format!("{:?} has no operator", unescape(&part))))?;
            let field = unescape(field).trim().to_string();
            if field.is_empty() {
                return Err(err("empty field name".into()));
            }
            requirements.push(FieldRequirement { field, value: unescape(value), negated: op == "!=" });
        }
        Ok(FieldSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The fields this selector names, so a kind can refuse fields it does not support.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.requirements.iter().map(|r| r.field.as_str())
    }

    /// Whether an object matches; `get` gives a field's value (`None`: absent, which only
    /// a `!=` requirement matches).
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| match get(&r.field) {
            Some(v) => (v == r.value) != r.negated,
            None => r.negated,
        })
    }

    /// The value required by `field=value`, if the selector has such a requirement
    /// (e.g. `metadata.name`, which narrows a list to one key).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.requirements.iter().find(|r| r.field == field && !r.negated).map(|r| r.value.as_str())
    }
}

fn find_unescaped(s: &str, op: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    (0..s.len()).find(|&i| s[i..].starts_with(op) && (i == 0 || bytes[i - 1] != 0))
}

fn unescape(s: &str) -> String {
    s.replace('\u{0}', "")
}

/// Whether a structured label selector (`metav1.LabelSelector` as JSON: `matchLabels`,
/// `matchExpressions`) selects an object with `labels` (a JSON object of strings, or
/// null). An empty selector selects everything, as in Kubernetes; an unknown operator or
/// a selector that is not an object selects nothing. Workload controllers and the
/// validation of their selectors share it.
pub fn label_selector_selects(selector: &serde_json::Value, labels: Option<&serde_json::Value>) -> bool {
    label_selector_selects_with(selector, |k| labels.and_then(|l| l.get(k)).and_then(serde_json::Value::as_str))
}

/// [`label_selector_selects`] over labels held in any form: `get` gives a label's value.
pub fn label_selector_selects_with<'a>(selector: &serde_json::Value, get: impl Fn(&str) -> Option<&'a str>) -> bool {
    use serde_json::Value;
    if !selector.is_object() {
        return false;
    }
    if let Some(m) = selector.get("matchLabels").and_then(Value::as_object)
        && m.iter().any(|(k, v)| get(k) != v.as_str())
    {
        return false;
    }
    selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten().all(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> =
            e.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let have = get(key);
        match e.get("operator").and_then(Value::as_str) {
            Some("In") => have.is_some_and(|h| values.contains(&h)),
            Some("NotIn") => have.is_none_or(|h| !values.contains(&h)),
            Some("Exists") => have.is_some(),
            Some("DoesNotExist") => have.is_none(),
            _ => false,
        }
    })
}

/// Whether a structured label selector selects nothing-in-particular (no labels and no
/// expressions), which workloads may not have.
pub fn label_selector_is_empty(selector: &serde_json::Value) -> bool {
    use serde_json::Value;
    selector.get("matchLabels").and_then(Value::as_object).is_none_or(|m| m.is_empty())
        && selector.get("matchExpressions").and_then(Value::as_array).is_none_or(|m| m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selectors_parse_and_match() {
        let web = labels(&[("app", "web"), ("tier", "front"), ("example.com/team", "a"), ("replicas", "3")]);
        let db = labels(&[("app", "db")]);
        // (selector, matches web, matches db)
        let table: &[(&str, bool, bool)] = &[
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app = web", true, false),
            ("app!=web", false, true),
            ("tier!=back", true, true),
            ("app in (web,db)", true, true),
            ("app in (web, cache)", true, false),
            ("app notin (web)", false, true),
            ("tier notin (front)", false, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("app=web,tier=front", true, false),
            ("app in (web,db),!tier", false, true),
            ("example.com/team=a", true, false),
            ("replicas>2", true, false),
            ("replicas<3", false, false),
            ("app=", false, false),
        ];
        for (sel, w, d) in table {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!((s.matches(&web), s.matches(&db)), (*w, *d), "{sel}");
        }
    }

    #[test]
    fn bad_label_selectors_are_refused_with_a_reason() {
        for bad in [
            "app=web=x",
            "app in web",
            "app in (web",
            "app)",
            "app foo (x)",
            "-app=x",
            "app=-x",
            "a/b/c=x",
            "x>y",
            "app=web,,tier",
            &format!("app={}", "v".repeat(64)),
        ] {
            let err = LabelSelector::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn label_selectors_print_back() {
        let s = LabelSelector::parse("app in (a,b), tier!=x,!gone,has,n>1").unwrap();
        assert_eq!(s.to_string(), "app in (a,b),tier!=x,!gone,has,n>1");
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn field_selectors_parse_and_match() {
        let pod = |f: &str| match f {
            "metadata.name" => Some("p1".to_string()),
            "spec.nodeName" => Some("".to_string()),
            "status.phase" => Some("Running".to_string()),
            _ => None,
        };
        let table: &[(&str, bool)] = &[
            ("", true),
            ("metadata.name=p1", true),
            ("metadata.name==p1", true),
            ("metadata.name!=p1", false),
            ("spec.nodeName=", true),
            ("spec.nodeName!=", false),
            ("status.phase=Running,metadata.name=p1", true),
            ("status.phase=Running,metadata.name=p2", false),
            ("missing=x", false),
            ("missing!=x", true),
        ];
        for (sel, want) in table {
            let s = FieldSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(pod), *want, "{sel}");
        }
        let s = FieldSelector::parse("metadata.name=p1,status.phase!=Failed").unwrap();
        assert_eq!(s.exact("metadata.name"), Some("p1"));
        assert_eq!(s.exact("status.phase"), None);
        assert_eq!(s.fields().collect::<Vec<_>>(), vec!["metadata.name", "status.phase"]);
    }

    #[test]
    fn field_selector_escapes() {
        let s = FieldSelector::parse(r"a=x\,y\=z\\,b!=q").unwrap();
        assert_eq!(s.requirements[0].value, r"x,y=z\");
        assert_eq!(s.requirements[1], FieldRequirement { field: "b".into(), value: "q".into(), negated: true });
        let s = FieldSelector::parse(r"a=b\!=c").unwrap();
        assert_eq!((s.requirements[0].field.as_str(), s.requirements[0].value.as_str()), ("a", "b!=c"));
        for bad in ["novalue", "=x", r"a=\q", "a=b,"] {
            assert!(FieldSelector::parse(bad).is_err(), "{bad}");
        }
    }
}
