//! The JSONPath subset that CustomResourceDefinitions' `additionalPrinterColumns` use:
//! fields (`.spec.size`, `['dotted.key']`), indices (`[0]`, `[-1]`), every element
//! (`[*]`), and equality filters (`[?(@.type=="Ready")]`), optionally wrapped in `{}`.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    /// Elements whose value at the sub-path equals the literal.
    Filter(Vec<String>, Value),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Path(Vec<Step>);

impl Path {
    pub fn parse(text: &str) -> Result<Path, String> {
        let t = text.trim();
        let t = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or(t);
        let t = t.strip_prefix('$').unwrap_or(t);
        if t.is_empty() {
            return Err("must not be empty".into());
        }
        let b = t.as_bytes();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'.' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < b.len() && b[end] != b'.' && b[end] != b'[' {
                        end += 1;
                    }
                    if end == start {
                        return Err(format!("empty field name at offset {start}"));
                    }
                    steps.push(Step::Field(t[start..end].to_string()));
                    i = end;
                }
                b'[' => {
                    let close = find_close(t, i)?;
                    let inner = t[i + 1..close].trim();
                    steps.push(parse_bracket(inner)?);
                    i = close + 1;
                }
                _ => return Err(format!("unexpected {:?} at offset {i}; paths start with '.'", b[i] as char)),
            }
        }
        Ok(Path(steps))
    }

    /// Every value the path selects, in document order.
    pub fn select<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![root];
        for step in &self.0 {
            let mut next = Vec::new();
            for v in current {
                match step {
                    Step::Field(f) => next.extend(v.get(f.as_str())),
                    Step::Index(i) => {
                        if let Some(a) = v.as_array() {
                            let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                            next.extend(usize::try_from(idx).ok().and_then(|i| a.get(i)));
                        }
                    }
                    Step::All => match v {
                        Value::Array(a) => next.extend(a.iter()),
                        Value::Object(m) => next.extend(m.values()),
                        _ => {}
                    },
                    Step::Filter(path, want) => {
                        for item in v.as_array().into_iter().flatten() {
                            let got = path.iter().try_fold(item, |cur, f| cur.get(f.as_str()));
                            if got == Some(want) {
                                next.push(item);
                            }
                        }
                    }
                }
            }
            current = next;
        }
        current
    }
}

fn find_close(t: &str, open: usize) -> Result<usize, String> {
    let mut quote = None;
    for (j, c) in t[open + 1..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, ']') => return Ok(open + 1 + j),
            _ => {}
        }
    }
    Err(format!("unclosed '[' at offset {open}"))
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
}

fn parse_bracket(inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::All);
    }
    if let Some(key) = unquote(inner) {
        return Ok(Step::Field(key.to_string()));
    }
    if let Ok(i) = inner.parse::<i64>() {
        return Ok(Step::Index(i));
    }
    let filter = inner
        .strip_prefix("?(")
        .and_then(|f| f.strip_suffix(')'))
        .ok_or_else(|| format!("unsupported expression [{inner}]"))?;
    let (lhs, rhs) = filter.split_once("==").ok_or_else(|| format!("only == filters are supported: [{inner}]"))?;
    let lhs = lhs.trim().strip_prefix("@.").ok_or_else(|| format!("a filter starts with @.: [{inner}]"))?;
    let rhs = rhs.trim();
    let want = match unquote(rhs) {
        Some(s) => Value::String(s.to_string()),
        None => serde_json::from_str(rhs).map_err(|_| format!("unsupported literal {rhs} in [{inner}]"))?,
    };
    Ok(Step::Filter(lhs.split('.').map(str::to_string).collect(), want))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn selects_fields_indices_and_filters() {
        let doc = json!({"spec": {"size": 3, "a.b": "dotted"},
                         "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}]}});
        let one = |p: &str| Path::parse(p).unwrap().select(&doc).into_iter().cloned().collect::<Vec<_>>();
        assert_eq!(one(".spec.size"), [json!(3)]);
        assert_eq!(one("{.spec['a.b']}"), [json!("dotted")]);
        assert_eq!(one(".status.conditions[-1].type"), [json!("Synced")]);
        assert_eq!(one(".status.conditions[*].type"), [json!("Ready"), json!("Synced")]);
        assert_eq!(one(".status.conditions[?(@.type==\"Ready\")].status"), [json!("True")]);
        assert!(one(".spec.missing").is_empty());
    }

    #[test]
    fn rejects_what_it_cannot_evaluate() {
        for bad in ["", "spec", ".spec[", ".spec[?(@.x>1)]", ".a..b"] {
            assert!(Path::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
