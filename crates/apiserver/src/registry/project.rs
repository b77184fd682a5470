//! Partial decoding: the few fields of a stored object a selector looks at, read from its
//! JSON without building the rest. A watch with a selector must know whether the previous
//! version of each changed object matched; decoding that version whole (a pod is ~30 KB of
//! `Value` for ~4 KB of JSON) only to read one field was one full decode per change.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The fields to keep, as a tree of field names; a node that is `whole` keeps its value as
/// it is, the others keep only their children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paths {
    whole: bool,
    children: BTreeMap<String, Paths>,
}

impl Paths {
    /// Keeps the value at `path` (field names from the root) whole.
    pub fn insert(&mut self, path: &[&str]) {
        let mut node = self;
        for name in path {
            node = node.children.entry((*name).to_string()).or_default();
        }
        node.whole = true;
    }

    /// `json` with only the kept fields: maps on the way to a kept field keep only what
    /// leads to one; anything else on the way (a list, a string) reads as null, which no
    /// field lookup through it can tell from the real value (none finds a field there).
    pub fn decode(&self, json: &[u8]) -> serde_json::Result<Value> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let v = Seed(self).deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }
}

struct Seed<'a>(&'a Paths);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.whole {
            return serde::Deserialize::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.0.children.get(&key) {
                Some(child) => {
                    let v = map.next_value_seed(Seed(child))?;
                    out.insert(key, v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_selected_fields() {
        let obj = json!({
            "metadata": {"name": "p", "labels": {"app": "x", "t": "y"}, "managedFields": [{"a": {"b": 1}}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}], "x": {"y": "z"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready"}]},
        });
        let bytes = serde_json::to_vec(&obj).unwrap();
        let mut paths = Paths::default();
        paths.insert(&["metadata", "labels"]);
        paths.insert(&["spec", "nodeName"]);
        paths.insert(&["spec", "x", "y"]);
        paths.insert(&["status", "phase", "deeper"]);
        paths.insert(&["absent", "field"]);
        assert_eq!(
            paths.decode(&bytes).unwrap(),
            json!({
                "metadata": {"labels": {"app": "x", "t": "y"}},
                "spec": {"nodeName": "n1", "x": {"y": "z"}},
                "status": {"phase": null},
            })
        );
        // Every field lookup the selectors make reads the same from the part as from the whole.
        let part = paths.decode(&bytes).unwrap();
        for f in ["spec.nodeName", "spec.x.y", "status.phase.deeper", "absent.field", "spec.nodeName.more"] {
            assert_eq!(crate::registry::object::field(&part, f), crate::registry::object::field(&obj, f), "{f}");
        }
        assert!(Paths::default().decode(b"{\"a\": [1, 2]} x").is_err());
        assert!(Paths::default().decode(b"{\"a\": ").is_err());
    }
}
