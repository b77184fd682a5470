//! Structural schemas (the `openAPIV3Schema` of a CustomResourceDefinition version):
//! compiled once when the definition is loaded, then used on every write of a custom
//! resource to default, prune and validate it, and to tell server-side apply how each list
//! merges.
//!
//! A structural schema says the type of every field it names; `anyOf`, `allOf`, `oneOf` and
//! `not` only add value checks. Fields a schema does not name are pruned (dropped, and
//! reported for `fieldValidation`), except under `x-kubernetes-preserve-unknown-fields`.

use std::collections::BTreeMap;

use api::meta::{FieldError, FieldErrorKind};
use serde_json::Value;

pub use crate::managed::ListType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl Type {
    fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "object" => Type::Object,
            "array" => Type::Array,
            "string" => Type::String,
            "integer" => Type::Integer,
            "number" => Type::Number,
            "boolean" => Type::Boolean,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Type::Object => "object",
            Type::Array => "array",
            Type::String => "string",
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Boolean => "boolean",
        }
    }

    fn admits(self, v: &Value) -> bool {
        match self {
            Type::Object => v.is_object(),
            Type::Array => v.is_array(),
            Type::String => v.is_string(),
            Type::Integer => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
            Type::Number => v.is_number(),
            Type::Boolean => v.is_boolean(),
        }
    }
}

#[derive(Debug, Default)]
enum Additional {
    /// Not given: only the named properties.
    #[default]
    Unset,
    /// `additionalProperties: true` (any value, as with preserve-unknown-fields for its values).
    Any,
    Schema(Box<Node>),
}

/// One compiled schema node.
#[derive(Debug, Default)]
pub struct Node {
    ty: Option<Type>,
    nullable: bool,
    format: Option<String>,
    enumeration: Option<Vec<Value>>,
    maximum: Option<f64>,
    exclusive_maximum: bool,
    minimum: Option<f64>,
    exclusive_minimum: bool,
    multiple_of: Option<f64>,
    max_length: Option<usize>,
    min_length: Option<usize>,
    pattern: Option<(String, regex_lite::Regex)>,
    max_items: Option<usize>,
    min_items: Option<usize>,
    unique_items: bool,
    max_properties: Option<usize>,
    min_properties: Option<usize>,
    required: Vec<String>,
    properties: BTreeMap<String, Node>,
    additional: Additional,
    items: Option<Box<Node>>,
    all_of: Vec<Node>,
    any_of: Vec<Node>,
    one_of: Vec<Node>,
    not: Option<Box<Node>>,
    default: Option<Value>,
    preserve_unknown: bool,
    int_or_string: bool,
    embedded: bool,
    list_type: Option<ListType>,
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_string() } else { format!("{path}.{field}") }
}

fn usize_of(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

impl Node {
    /// Compiles a schema, reporting every way it is not a structural schema Atoll serves.
    /// `structural` is false inside `allOf`/`anyOf`/`oneOf`/`not`, where types are optional.
    pub fn compile(schema: &Value, path: &str, structural: bool, errors: &mut Vec<FieldError>) -> Node {
        let mut node = Node::default();
        let Some(map) = schema.as_object() else {
            errors.push(FieldError::invalid(path, schema, "must be a schema object"));
            return node;
        };
        let flag = |key: &str| map.get(key).and_then(Value::as_bool).unwrap_or(false);
        node.nullable = flag("nullable");
        node.preserve_unknown = flag("x-kubernetes-preserve-unknown-fields");
        node.int_or_string = flag("x-kubernetes-int-or-string");
        node.embedded = flag("x-kubernetes-embedded-resource");
        node.exclusive_maximum = flag("exclusiveMaximum");
        node.exclusive_minimum = flag("exclusiveMinimum");
        node.unique_items = flag("uniqueItems");
        match map.get("type") {
            None => {
                if structural && !node.int_or_string && !node.preserve_unknown {
                    errors.push(FieldError::required(
                        join(path, "type"),
                        "must not be empty for specified object fields",
                    ));
                }
            }
            Some(Value::String(t)) => match Type::parse(t) {
                Some(t) => node.ty = Some(t),
                None => errors.push(FieldError {
                    field: join(path, "type"),
                    kind: FieldErrorKind::NotSupported(
                        t.clone(),
                        ["array", "boolean", "integer", "number", "object", "string"].map(String::from).to_vec(),
                    ),
                    detail: String::new(),
                }),
            },
            Some(other) => errors.push(FieldError::invalid(join(path, "type"), other, "must be a string")),
        }
        if node.int_or_string && node.ty.is_some() {
            errors.push(FieldError::forbidden(join(path, "type"), "must be empty with x-kubernetes-int-or-string"));
        }
        for forbidden in ["$ref", "definitions", "dependencies", "patternProperties", "additionalItems", "id"] {
            if map.contains_key(forbidden) {
                errors.push(FieldError::forbidden(join(path, forbidden), "is not supported in a structural schema"));
            }
        }
        node.format = map.get("format").and_then(Value::as_str).map(str::to_string);
        if let Some(e) = map.get("enum") {
            match e.as_array() {
                Some(values) => node.enumeration = Some(values.clone()),
                None => errors.push(FieldError::invalid(join(path, "enum"), e, "must be a list")),
            }
        }
        node.maximum = map.get("maximum").and_then(Value::as_f64);
        node.minimum = map.get("minimum").and_then(Value::as_f64);
        node.multiple_of = map.get("multipleOf").and_then(Value::as_f64).filter(|m| *m > 0.0);
        node.max_length = map.get("maxLength").and_then(usize_of);
        node.min_length = map.get("minLength").and_then(usize_of);
        node.max_items = map.get("maxItems").and_then(usize_of);
        node.min_items = map.get("minItems").and_then(usize_of);
        node.max_properties = map.get("maxProperties").and_then(usize_of);
        node.min_properties = map.get("minProperties").and_then(usize_of);
        if let Some(p) = map.get("pattern") {
            match p.as_str().map(|s| (s, regex_lite::Regex::new(s))) {
                Some((s, Ok(re))) => node.pattern = Some((s.to_string(), re)),
                Some((s, Err(e))) => {
                    errors.push(FieldError::invalid(join(path, "pattern"), s, format!("not a valid pattern: {e}")))
                }
                None => errors.push(FieldError::invalid(join(path, "pattern"), p, "must be a string")),
            }
        }
        if let Some(r) = map.get("required") {
            match r.as_array() {
                Some(list) => node.required = list.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                None => errors.push(FieldError::invalid(join(path, "required"), r, "must be a list of names")),
            }
        }
        if let Some(props) = map.get("properties") {
            let Some(props) = props.as_object() else {
                errors.push(FieldError::invalid(join(path, "properties"), props, "must be an object"));
                return node;
            };
            if structural && node.ty.is_some_and(|t| t != Type::Object) {
                errors.push(FieldError::forbidden(join(path, "properties"), "only allowed for type object"));
            }
            for (k, v) in props {
                let at = format!("{}[{k}]", join(path, "properties"));
                node.properties.insert(k.clone(), Node::compile(v, &at, structural, errors));
            }
        }
        match map.get("additionalProperties") {
            None => {}
            Some(Value::Bool(true)) => node.additional = Additional::Any,
            Some(Value::Bool(false)) => {}
            Some(schema) => {
                if !node.properties.is_empty() {
                    errors.push(FieldError::forbidden(
                        join(path, "additionalProperties"),
                        "additionalProperties and properties are mutually exclusive",
                    ));
                }
                let at = join(path, "additionalProperties");
                node.additional = Additional::Schema(Box::new(Node::compile(schema, &at, structural, errors)));
            }
        }
        match map.get("items") {
            None => {
                if structural && node.ty == Some(Type::Array) {
                    errors.push(FieldError::required(join(path, "items"), "must be specified for type array"));
                }
            }
            Some(items) => node.items = Some(Box::new(Node::compile(items, &join(path, "items"), structural, errors))),
        }
        for (key, list) in [("allOf", &mut node.all_of), ("anyOf", &mut node.any_of), ("oneOf", &mut node.one_of)] {
            if let Some(v) = map.get(key) {
                let Some(schemas) = v.as_array() else {
                    errors.push(FieldError::invalid(join(path, key), v, "must be a list of schemas"));
                    continue;
                };
                for (i, s) in schemas.iter().enumerate() {
                    list.push(Node::compile(s, &format!("{}[{i}]", join(path, key)), false, errors));
                }
            }
        }
        if let Some(n) = map.get("not") {
            node.not = Some(Box::new(Node::compile(n, &join(path, "not"), false, errors)));
        }
        if let Some(d) = map.get("default") {
            if !structural {
                errors.push(FieldError::forbidden(
                    join(path, "default"),
                    "not allowed inside allOf, anyOf, oneOf or not",
                ));
            }
            node.default = Some(d.clone());
        }
        node.list_type = match map.get("x-kubernetes-list-type").and_then(Value::as_str) {
            None | Some("atomic") => map.contains_key("x-kubernetes-list-type").then_some(ListType::Atomic),
            Some("set") => Some(ListType::Set),
            Some("map") => {
                let keys: Vec<String> = map
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                if keys.is_empty() {
                    errors.push(FieldError::required(
                        join(path, "x-kubernetes-list-map-keys"),
                        "must not be empty if x-kubernetes-list-type is map",
                    ));
                }
                Some(ListType::Map(keys))
            }
            Some(other) => {
                errors.push(FieldError {
                    field: join(path, "x-kubernetes-list-type"),
                    kind: FieldErrorKind::NotSupported(
                        other.to_string(),
                        ["atomic", "map", "set"].map(String::from).to_vec(),
                    ),
                    detail: String::new(),
                });
                None
            }
        };
        if node.list_type.is_some() && node.ty != Some(Type::Array) && structural {
            errors.push(FieldError::forbidden(join(path, "x-kubernetes-list-type"), "only allowed for type array"));
        }
        if node.embedded && node.ty != Some(Type::Object) {
            errors.push(FieldError::forbidden(
                join(path, "x-kubernetes-embedded-resource"),
                "only allowed for type object",
            ));
        }
        // A default must itself be valid (defaults are not validated at write time twice).
        if let Some(d) = node.default.clone() {
            let mut problems = Vec::new();
            node.validate(&d, &join(path, "default"), &mut problems);
            errors.extend(problems);
        }
        node
    }

    /// Adds defaults where fields are absent (not where they are null), top-down.
    pub fn apply_defaults(&self, obj: &mut Value) {
        match obj {
            Value::Object(map) => {
                for (k, prop) in &self.properties {
                    if !map.contains_key(k)
                        && let Some(d) = &prop.default
                    {
                        map.insert(k.clone(), d.clone());
                    }
                    if let Some(v) = map.get_mut(k) {
                        prop.apply_defaults(v);
                    }
                }
                if let Additional::Schema(s) = &self.additional {
                    for v in map.values_mut() {
                        s.apply_defaults(v);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(s) = &self.items {
                    for v in items {
                        s.apply_defaults(v);
                    }
                }
            }
            _ => {}
        }
    }

    /// Drops fields the schema does not name, recording their paths in `unknown`.
    pub fn prune(&self, obj: &mut Value, path: &str, unknown: &mut Vec<String>) {
        match obj {
            Value::Object(map) => {
                let keys: Vec<String> = map.keys().cloned().collect();
                for k in keys {
                    let at = join(path, &k);
                    if let Some(prop) = self.properties.get(&k) {
                        if let Some(v) = map.get_mut(&k) {
                            prop.prune(v, &at, unknown);
                        }
                        continue;
                    }
                    match &self.additional {
                        Additional::Schema(s) => {
                            if let Some(v) = map.get_mut(&k) {
                                s.prune(v, &at, unknown);
                            }
                        }
                        Additional::Any => {}
                        Additional::Unset => {
                            let kept = self.preserve_unknown
                                || (self.embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
                            if !kept {
                                map.remove(&k);
                                unknown.push(at);
                            }
                        }
                    }
                }
            }
            Value::Array(items) => {
                if let Some(s) = &self.items {
                    for (i, v) in items.iter_mut().enumerate() {
                        s.prune(v, &format!("{path}[{i}]"), unknown);
                    }
                }
            }
            _ => {}
        }
    }

    /// Every way `v` fails this schema, as field errors under `path`.
    pub fn validate(&self, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
        if v.is_null() {
            if !self.nullable && self.ty.is_some() {
                errors.push(FieldError {
                    field: path.to_string(),
                    kind: FieldErrorKind::TypeInvalid("null".into()),
                    detail: format!("must be {}", self.ty.map_or("", Type::name)),
                });
            }
            return;
        }
        if self.int_or_string && !(v.is_string() || Type::Integer.admits(v)) {
            errors.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::TypeInvalid(v.to_string()),
                detail: "must be an integer or a string".into(),
            });
            return;
        }
        if let Some(t) = self.ty
            && !t.admits(v)
        {
            errors.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::TypeInvalid(short(v)),
                detail: format!("must be of type {}", t.name()),
            });
            return;
        }
        if let Some(allowed) = &self.enumeration
            && !allowed.contains(v)
        {
            errors.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::NotSupported(
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    allowed.iter().map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string)).collect(),
                ),
                detail: String::new(),
            });
        }
        match v {
            Value::Number(n) => self.check_number(n.as_f64().unwrap_or(0.0), v, path, errors),
            Value::String(s) => self.check_string(s, path, errors),
            Value::Array(items) => self.check_array(items, path, errors),
            Value::Object(map) => self.check_object(map, path, errors),
            _ => {}
        }
        for s in &self.all_of {
            s.validate(v, path, errors);
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|s| s.accepts(v, path)) {
            errors.push(FieldError::invalid(path, short(v), "must validate at least one schema (anyOf)"));
        }
        if !self.one_of.is_empty() && self.one_of.iter().filter(|s| s.accepts(v, path)).count() != 1 {
            errors.push(FieldError::invalid(path, short(v), "must validate one and only one schema (oneOf)"));
        }
        if let Some(n) = &self.not
            && n.accepts(v, path)
        {
            errors.push(FieldError::invalid(path, short(v), "must not validate the schema (not)"));
        }
    }

    fn accepts(&self, v: &Value, path: &str) -> bool {
        let mut e = Vec::new();
        self.validate(v, path, &mut e);
        e.is_empty()
    }

    fn check_number(&self, n: f64, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
        if let Some(max) = self.maximum {
            if self.exclusive_maximum && n >= max {
                errors.push(FieldError::invalid(path, v, format!("should be less than {max}")));
            } else if n > max {
                errors.push(FieldError::invalid(path, v, format!("should be less than or equal to {max}")));
            }
        }
        if let Some(min) = self.minimum {
            if self.exclusive_minimum && n <= min {
                errors.push(FieldError::invalid(path, v, format!("should be greater than {min}")));
            } else if n < min {
                errors.push(FieldError::invalid(path, v, format!("should be greater than or equal to {min}")));
            }
        }
        if let Some(m) = self.multiple_of
            && (n / m).fract() != 0.0
        {
            errors.push(FieldError::invalid(path, v, format!("should be a multiple of {m}")));
        }
        if self.format.as_deref() == Some("int32") && !(i32::MIN as f64..=i32::MAX as f64).contains(&n) {
            errors.push(FieldError::invalid(path, v, "must fit in a 32-bit integer"));
        }
    }

    fn check_string(&self, s: &str, path: &str, errors: &mut Vec<FieldError>) {
        let chars = s.chars().count();
        if let Some(max) = self.max_length
            && chars > max
        {
            errors.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::TooLong(max),
                detail: String::new(),
            });
        }
        if let Some(min) = self.min_length
            && chars < min
        {
            errors.push(FieldError::invalid(path, s, format!("should be at least {min} chars long")));
        }
        if let Some((source, re)) = &self.pattern
            && !re.is_match(s)
        {
            errors.push(FieldError::invalid(path, s, format!("should match '{source}'")));
        }
        let bad_format = match self.format.as_deref() {
            Some("date-time") => !is_date_time(s),
            Some("date") => !(s.len() == 10 && is_date(s)),
            Some("uuid") => !is_uuid(s),
            Some("byte") => !crate::kinds::is_base64(s),
            _ => false,
        };
        if bad_format {
            errors.push(FieldError::invalid(
                path,
                s,
                format!("must be in {} format", self.format.as_deref().unwrap_or("")),
            ));
        }
    }

    fn check_array(&self, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
        if let Some(max) = self.max_items
            && items.len() > max
        {
            errors.push(FieldError::invalid(path, items.len(), format!("must have at most {max} items")));
        }
        if let Some(min) = self.min_items
            && items.len() < min
        {
            errors.push(FieldError::invalid(path, items.len(), format!("should have at least {min} items")));
        }
        let set = self.unique_items || self.list_type == Some(ListType::Set);
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            if let Some(s) = &self.items {
                s.validate(item, &at, errors);
            }
            if set && items[..i].contains(item) {
                errors.push(FieldError {
                    field: at.clone(),
                    kind: FieldErrorKind::Duplicate(short(item)),
                    detail: String::new(),
                });
            }
            if let Some(ListType::Map(keys)) = &self.list_type {
                let key_of =
                    |v: &Value| keys.iter().map(|k| v.get(k).cloned().unwrap_or(Value::Null)).collect::<Vec<_>>();
                let mine = key_of(item);
                for k in keys {
                    if item.get(k).is_none()
                        && self.items.as_ref().is_none_or(|s| s.properties.get(k).is_none_or(|p| p.default.is_none()))
                    {
                        errors.push(FieldError::required(format!("{at}.{k}"), "a list map key is required"));
                    }
                }
                if items[..i].iter().any(|o| key_of(o) == mine) {
                    let shown: Vec<String> = keys.iter().zip(&mine).map(|(k, v)| format!("{k}={v}")).collect();
                    errors.push(FieldError {
                        field: at,
                        kind: FieldErrorKind::Duplicate(shown.join(",")),
                        detail: String::new(),
                    });
                }
            }
        }
    }

    fn check_object(&self, map: &serde_json::Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
        for r in &self.required {
            if !map.contains_key(r) {
                errors.push(FieldError::required(join(path, r), ""));
            }
        }
        if let Some(max) = self.max_properties
            && map.len() > max
        {
            errors.push(FieldError::invalid(path, map.len(), format!("must have at most {max} properties")));
        }
        if let Some(min) = self.min_properties
            && map.len() < min
        {
            errors.push(FieldError::invalid(path, map.len(), format!("should have at least {min} properties")));
        }
        if self.embedded {
            for k in ["apiVersion", "kind"] {
                if map.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                    errors.push(FieldError::required(join(path, k), "must not be empty for an embedded resource"));
                }
            }
        }
        for (k, v) in map {
            let at = join(path, k);
            if let Some(prop) = self.properties.get(k) {
                prop.validate(v, &at, errors);
            } else if let Additional::Schema(s) = &self.additional {
                s.validate(v, &at, errors);
            }
        }
    }

    /// The list type of the list at `path` (field names; list items are passed through
    /// without a segment), `Atomic` where the schema says nothing.
    pub fn list_type(&self, path: &[&str]) -> ListType {
        let mut node = self;
        for seg in path {
            let next = if node.ty == Some(Type::Array) {
                node.items.as_deref().and_then(|items| items.child(seg))
            } else {
                node.child(seg)
            };
            match next {
                Some(n) => node = n,
                None => return ListType::Atomic,
            }
        }
        if node.ty == Some(Type::Array) { node.list_type.clone().unwrap_or(ListType::Atomic) } else { ListType::Atomic }
    }

    fn child(&self, field: &str) -> Option<&Node> {
        self.properties.get(field).or(match &self.additional {
            Additional::Schema(s) => Some(s),
            _ => None,
        })
    }

    /// The names of the top-level properties, or `None` if unknown fields are kept.
    pub fn property_names(&self) -> Option<Vec<String>> {
        (!self.preserve_unknown && matches!(self.additional, Additional::Unset))
            .then(|| self.properties.keys().cloned().collect())
    }
}

/// A value shortened for an error message.
fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Object(_) => "object".into(),
        Value::Array(_) => "array".into(),
        other => other.to_string(),
    };
    if s.len() > 64 { format!("{}...", &s[..s.floor_char_boundary(64)]) } else { s }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

/// RFC 3339 date-time: `2006-01-02T15:04:05[.frac](Z|±hh:mm)`.
fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || !is_date(s) || !matches!(b[10], b'T' | b't' | b' ') {
        return false;
    }
    let t = &b[11..];
    let clock = t.len() >= 8
        && t[..2].iter().all(u8::is_ascii_digit)
        && t[2] == b':'
        && t[3..5].iter().all(u8::is_ascii_digit)
        && t[5] == b':'
        && t[6..8].iter().all(u8::is_ascii_digit);
    if !clock {
        return false;
    }
    let mut rest = &t[8..];
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[1 + digits..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == b'-' } else { c.is_ascii_hexdigit() })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn compile(schema: Value) -> Node {
        let mut errors = Vec::new();
        let node = Node::compile(&schema, "schema.openAPIV3Schema", true, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        node
    }

    fn errors_of(node: &Node, v: Value) -> Vec<String> {
        let mut errors = Vec::new();
        node.validate(&v, "", &mut errors);
        errors.iter().map(|e| e.to_string()).collect()
    }

    fn widget() -> Node {
        compile(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
                        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                        "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                  "x-kubernetes-list-map-keys": ["port"],
                                  "items": {"type": "object", "properties": {"port": {"type": "integer"},
                                            "proto": {"type": "string"}}}},
                        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "port": {"x-kubernetes-int-or-string": true},
                        "when": {"type": "string", "format": "date-time"},
                    },
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            },
        }))
    }

    #[test]
    fn validation_reports_every_error() {
        let n = widget();
        assert!(errors_of(&n, json!({"spec": {"size": 2}})).is_empty());
        let errs = errors_of(
            &n,
            json!({"spec": {"size": 11, "color": "green", "name": "ABCDEFG", "ports": [{"port": 1}, {"port": 1}],
                            "tags": ["a", "a"], "labels": {"x": 1}, "port": true, "when": "yesterday"},
                   "status": {"ready": "yes"}}),
        );
        expect_test::expect![[r#"
            [
                "spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\"",
                "spec.labels.x: Invalid value: \"1\": must be of type string",
                "spec.name: Too long: may not be more than 5 bytes",
                "spec.name: Invalid value: \"ABCDEFG\": should match '^[a-z]+$'",
                "spec.port: Invalid value: \"true\": must be an integer or a string",
                "spec.ports[1]: Duplicate value: \"port=1\"",
                "spec.size: Invalid value: \"11\": should be less than or equal to 10",
                "spec.tags[1]: Duplicate value: \"a\"",
                "spec.when: Invalid value: \"yesterday\": must be in date-time format",
                "status.ready: Invalid value: \"yes\": must be of type boolean",
            ]
        "#]]
        .assert_debug_eq(&errs);
        assert_eq!(errors_of(&n, json!({"spec": {}})), ["spec.size: Required value"]);
    }

    #[test]
    fn defaults_then_pruning() {
        let n = widget();
        let mut obj = json!({"spec": {"size": 2, "extra": 1, "free": {"anything": {"goes": 1}},
                                      "ports": [{"port": 80, "bogus": true}]}, "other": 1});
        n.apply_defaults(&mut obj);
        let mut unknown = Vec::new();
        n.prune(&mut obj, "", &mut unknown);
        assert_eq!(unknown, ["other", "spec.extra", "spec.ports[0].bogus"]);
        assert_eq!(
            obj,
            json!({"spec": {"size": 2, "color": "red", "free": {"anything": {"goes": 1}}, "ports": [{"port": 80}]}})
        );
    }

    #[test]
    fn list_types_follow_the_schema() {
        let n = widget();
        assert_eq!(n.list_type(&["spec", "ports"]), ListType::Map(vec!["port".into()]));
        assert_eq!(n.list_type(&["spec", "tags"]), ListType::Set);
        assert_eq!(n.list_type(&["spec", "missing"]), ListType::Atomic);
    }

    #[test]
    fn non_structural_schemas_are_refused() {
        let mut errors = Vec::new();
        Node::compile(
            &json!({"type": "object", "properties": {"a": {"properties": {}}, "b": {"type": "array"},
                    "c": {"type": "strange"}, "d": {"type": "string", "pattern": "("},
                    "e": {"type": "integer", "default": "x"}}}),
            "s",
            true,
            &mut errors,
        );
        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        expect_test::expect![[r#"
            [
                "s.properties[a].type: Required value: must not be empty for specified object fields",
                "s.properties[b].items: Required value: must be specified for type array",
                "s.properties[c].type: Unsupported value: \"strange\": supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\"",
                "s.properties[d].pattern: Invalid value: \"(\": not a valid pattern: found open group without closing ')'",
                "s.properties[e].default: Invalid value: \"x\": must be of type integer",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }
}
