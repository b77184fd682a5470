//! Decoding only part of an object: a [`Shape`] names the fields to build, and everything
//! else is skipped by the decoder without being built (no `Value` trees made and freed).
//! A reader that keeps a few fields of each of 150,000 pods (a controller's informer) then
//! pays for scanning the JSON, not for building the whole tree and pruning it.

use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Which fields of a JSON object to build. Applies to an object, and to each element of an
/// array; scalars are kept as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Whether fields not named in `fields` are kept whole.
    pub rest: bool,
    /// Named fields: `None` drops the field, `Some(shape)` keeps it in that shape.
    pub fields: Vec<(&'static str, Option<Shape>)>,
}

impl Shape {
    /// Everything.
    pub fn all() -> Shape {
        Shape { rest: true, fields: Vec::new() }
    }

    /// Only the named fields, whole.
    pub fn only(names: &[&'static str]) -> Shape {
        Shape { rest: false, fields: names.iter().map(|n| (*n, Some(Shape::all()))).collect() }
    }

    /// Everything but the named fields.
    pub fn without(names: &[&'static str]) -> Shape {
        Shape { rest: true, fields: names.iter().map(|n| (*n, None)).collect() }
    }

    /// The same shape with `name` kept in `shape` (replacing what it said of `name`).
    pub fn with(mut self, name: &'static str, shape: Shape) -> Shape {
        self.fields.retain(|(n, _)| *n != name);
        self.fields.push((name, Some(shape)));
        self
    }

    /// What this shape makes of an already decoded value (the same as decoding its JSON with
    /// the shape).
    pub fn apply(&self, v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .filter_map(|(k, v)| match self.field(&k) {
                        Some(Some(sub)) => Some((k, sub.apply(v))),
                        Some(None) => None,
                        None => self.rest.then_some((k, v)),
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(|i| self.apply(i)).collect()),
            scalar => scalar,
        }
    }

    /// Whether anything at `path` (field names from the top) is kept.
    pub fn keeps(&self, path: &[&str]) -> bool {
        let Some((first, rest)) = path.split_first() else { return true };
        match self.field(first) {
            Some(None) => false,
            Some(Some(sub)) => sub.keeps(rest),
            None => self.rest,
        }
    }

    /// What the shape says of field `name`: `None` if it does not name it.
    fn field(&self, name: &str) -> Option<Option<&Shape>> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, s)| s.as_ref())
    }

    fn is_all(&self) -> bool {
        self.rest && self.fields.is_empty()
    }
}

/// What a reader keeps of each object: a [`Shape`] applied while decoding, then an optional
/// function for what a shape cannot say (e.g. only the `Ready` condition).
#[derive(Clone)]
pub struct Keep {
    pub shape: Shape,
    pub finish: Option<Arc<dyn Fn(Value) -> Value + Send + Sync>>,
}

impl Keep {
    pub fn shape(shape: Shape) -> Keep {
        Keep { shape, finish: None }
    }

    pub fn then(mut self, finish: impl Fn(Value) -> Value + Send + Sync + 'static) -> Keep {
        self.finish = Some(Arc::new(finish));
        self
    }

    /// What this keeps of an already decoded value.
    pub fn apply(&self, v: Value) -> Value {
        let v = self.shape.apply(v);
        match &self.finish {
            Some(f) => f(v),
            None => v,
        }
    }

    /// Decodes `json` with the shape, then finishes it.
    pub fn decode_slice(&self, json: &[u8]) -> Result<Value, serde_json::Error> {
        let mut d = serde_json::Deserializer::from_slice(json);
        let v = self.decode(&mut d)?;
        d.end()?;
        Ok(v)
    }

    /// Decodes one value with the shape, then finishes it.
    pub(crate) fn decode<'de, D: Deserializer<'de>>(&self, d: D) -> Result<Value, D::Error> {
        let v = self.shape.deserialize(d)?;
        Ok(match &self.finish {
            Some(f) => f(v),
            None => v,
        })
    }
}

impl fmt::Debug for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keep").field("shape", &self.shape).field("finish", &self.finish.is_some()).finish()
    }
}

impl<'de> DeserializeSeed<'de> for &Keep {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.decode(d)
    }
}

impl<'de> DeserializeSeed<'de> for &Shape {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.is_all() {
            return serde::Deserialize::deserialize(d);
        }
        d.deserialize_any(Shaped(self))
    }
}

struct Shaped<'a>(&'a Shape);

impl<'de> Visitor<'de> for Shaped<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self.0)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.0.field(&key) {
                Some(Some(sub)) => {
                    let v = map.next_value_seed(sub)?;
                    out.insert(key, v);
                }
                Some(None) => {
                    map.next_value::<IgnoredAny>()?;
                }
                None if self.0.rest => {
                    let v = map.next_value::<Value>()?;
                    out.insert(key, v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shaped(shape: &Shape, text: &str) -> Value {
        let mut d = serde_json::Deserializer::from_str(text);
        let v = shape.deserialize(&mut d).unwrap();
        d.end().unwrap();
        v
    }

    #[test]
    fn a_shape_says_what_it_keeps_at_a_path() {
        let s = Shape::all().with("metadata", Shape::without(&["managedFields"])).with("spec", Shape::only(&["a"]));
        assert!(!s.keeps(&["metadata", "managedFields"]));
        assert!(s.keeps(&["metadata", "labels"]) && s.keeps(&["metadata"]) && s.keeps(&["status", "x"]));
        assert!(s.keeps(&["spec", "a", "deep"]) && !s.keeps(&["spec", "b"]));
        assert!(Shape::all().keeps(&["metadata", "managedFields"]));
        assert!(!Shape::only(&["kind"]).keeps(&["metadata"]));
    }

    #[test]
    fn decoding_with_a_shape_builds_only_its_fields_and_equals_applying_it() {
        let text = r#"{"apiVersion":"v1","kind":"Pod",
            "metadata":{"name":"p","labels":{"a":"b"},"managedFields":[{"manager":"m","fieldsV1":{"f:x":{}}}]},
            "spec":{"nodeName":"n","containers":[{"name":"c","image":"i"}],"tolerations":[{"key":"k"}]},
            "status":{"phase":"Running","podIP":"1.2.3.4","x":1.5,"y":-3,"z":null,"ok":true,
                      "containerStatuses":[{"name":"c","restartCount":2,"state":{"running":{}}}]}}"#;
        let shape = Shape::all()
            .with("metadata", Shape::without(&["managedFields"]))
            .with("spec", Shape::only(&["nodeName", "tolerations"]))
            .with(
                "status",
                Shape::only(&["phase", "x", "y", "z", "ok"])
                    .with("containerStatuses", Shape::only(&["name", "restartCount"])),
            );
        let expected = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {"nodeName": "n", "tolerations": [{"key": "k"}]},
            "status": {"phase": "Running", "x": 1.5, "y": -3, "z": null, "ok": true,
                       "containerStatuses": [{"name": "c", "restartCount": 2}]}});
        assert_eq!(shaped(&shape, text), expected);
        let whole: Value = serde_json::from_str(text).unwrap();
        assert_eq!(shape.apply(whole.clone()), expected);
        assert_eq!(shaped(&Shape::all(), text), whole);
        // A shape meets a scalar or an array where it expected an object: kept as it is,
        // elements shaped.
        assert_eq!(shaped(&Shape::only(&["a"]), r#""s""#), json!("s"));
        assert_eq!(shaped(&Shape::only(&["a"]), r#"[{"a":1,"b":2},3]"#), json!([{"a": 1}, 3]));
    }

    #[test]
    fn watch_events_shape_their_object_whichever_field_comes_first() {
        let keep = Keep::shape(Shape::only(&["metadata"]));
        let first = br#"{"type":"MODIFIED","object":{"metadata":{"name":"a"},"spec":{"x":1}}}"#;
        let last = br#"{"object":{"metadata":{"name":"a"},"spec":{"x":1}},"type":"MODIFIED"}"#;
        for line in [&first[..], &last[..]] {
            match crate::parse_event(line, Some(&keep)).unwrap() {
                crate::WatchEvent::Modified(o) => assert_eq!(o, json!({"metadata": {"name": "a"}})),
                other => panic!("{other:?}"),
            }
        }
        // Errors and bookmarks are not shaped.
        let error = br#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"m"}}"#;
        match crate::parse_event(error, Some(&keep)).unwrap() {
            crate::WatchEvent::Error(status) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
            other => panic!("{other:?}"),
        }
        let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"7"}}}"#;
        assert!(matches!(crate::parse_event(bookmark, Some(&keep)).unwrap(),
            crate::WatchEvent::Bookmark { resource_version } if resource_version == "7"));
        assert!(crate::parse_event(br#"{"type":"ADDED","object":{"a":1}"#, Some(&keep)).is_err());
    }

    #[test]
    fn keep_finishes_after_the_shape() {
        let keep = Keep::shape(Shape::only(&["a", "b"])).then(|mut v| {
            v["b"] = json!("finished");
            v
        });
        let mut d = serde_json::Deserializer::from_str(r#"{"a":1,"b":2,"c":3}"#);
        assert_eq!(keep.decode(&mut d).unwrap(), json!({"a": 1, "b": "finished"}));
        assert_eq!(keep.apply(json!({"a": 1, "c": 3})), json!({"a": 1, "b": "finished"}));
    }
}
