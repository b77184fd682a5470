//! Decoding a list answer item by item (see [`crate::Client::list_keeping`]).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::shape::Keep;

/// A list's `metadata` and its items, each passed through `keep` as it is decoded.
pub(crate) struct ListSeed<'a> {
    pub keep: &'a Keep,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = (Value, Vec<Value>);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = (Value, Vec<Value>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut meta, mut items) = (Value::Null, Vec::new());
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "metadata" => meta = map.next_value()?,
                "items" => items = map.next_value_seed(Items { keep: self.keep })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((meta, items))
    }
}

/// The `items` array (or `null`, which Kubernetes sends for an empty list of some kinds).
struct Items<'a> {
    keep: &'a Keep,
}

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = Vec<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of objects or null")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self.keep)? {
            items.push(item);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn all() -> Keep {
        Keep::shape(crate::Shape::all())
    }

    fn decode(text: &str, keep: &Keep) -> Result<(Value, Vec<Value>), serde_json::Error> {
        let mut d = serde_json::Deserializer::from_str(text);
        let out = ListSeed { keep }.deserialize(&mut d)?;
        d.end()?;
        Ok(out)
    }

    #[test]
    fn items_pass_through_keep_one_by_one_and_the_rest_is_skipped() {
        let text = r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"9","continue":"c"},
            "items":[{"metadata":{"name":"a"},"spec":{"x":1}},{"metadata":{"name":"b"},"spec":{"x":2}}]}"#;
        let (meta, items) = decode(text, &Keep::shape(crate::Shape::without(&["spec"]))).unwrap();
        assert_eq!(meta, json!({"resourceVersion": "9", "continue": "c"}));
        assert_eq!(items, [json!({"metadata": {"name": "a"}}), json!({"metadata": {"name": "b"}})]);
    }

    #[test]
    fn null_or_missing_items_are_an_empty_list_and_bad_input_is_an_error() {
        assert_eq!(decode(r#"{"metadata":{},"items":null}"#, &all()).unwrap().1, Vec::<Value>::new());
        assert_eq!(decode(r#"{"metadata":{}}"#, &all()).unwrap().1, Vec::<Value>::new());
        assert!(decode(r#"{"items":{}}"#, &all()).is_err());
        assert!(decode(r#"[1]"#, &all()).is_err());
        assert!(decode(r#"{"items":[]} trailing"#, &all()).is_err());
    }
}
