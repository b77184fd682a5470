//! Helpers over objects as JSON values: metadata access, identifiers, timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

use api::json::At;
use api::meta::ObjectMeta;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::RegistryError;

/// The object's `metadata`, parsed.
pub fn meta(obj: &Value) -> Result<ObjectMeta, RegistryError> {
    match obj.get("metadata") {
        None | Some(Value::Null) => Ok(ObjectMeta::default()),
        // Read in place: a copy of the metadata (its managedFields most of it) per call was a
        // measurable part of every write, which reads the metadata several times.
        Some(m) => ObjectMeta::deserialize(m).map_err(|e| RegistryError::BadRequest(format!("invalid metadata: {e}"))),
    }
}

/// The object's `metadata`, parsed but for `managedFields` (left `None`), which is only
/// checked to be what [`meta`] accepts: for the many reads of a write that never look at
/// it, as copying it out was a large part of each.
pub fn meta_light(obj: &Value) -> Result<ObjectMeta, RegistryError> {
    let Some(Value::Object(m)) = obj.get("metadata") else { return meta(obj) };
    match m.get("managedFields") {
        Some(Value::Null | Value::Array(_)) => {}
        // Nothing to skip, or something `meta` refuses (said in its words).
        _ => return meta(obj),
    }
    let fields = m.iter().filter(|(k, _)| *k != "managedFields").map(|(k, v)| (k.as_str(), v));
    ObjectMeta::deserialize(serde::de::value::MapDeserializer::new(fields))
        .map_err(|e: serde_json::Error| RegistryError::BadRequest(format!("invalid metadata: {e}")))
}

/// Replaces the object's `metadata`.
pub fn set_meta(obj: &mut Value, meta: &ObjectMeta) -> Result<(), RegistryError> {
    let value = serde_json::to_value(meta).map_err(|e| RegistryError::Internal(e.to_string()))?;
    as_object(obj)?.insert("metadata".into(), value);
    Ok(())
}

pub fn as_object(obj: &mut Value) -> Result<&mut Map<String, Value>, RegistryError> {
    obj.as_object_mut().ok_or_else(|| RegistryError::BadRequest("the request body is not a JSON object".into()))
}

/// The value at a dotted path (`spec.nodeName`), rendered as a field selector compares it.
pub fn field(obj: &Value, path: &str) -> Option<String> {
    let mut cur = obj;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// A random version-4 UUID.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Five characters for `generateName`, from Kubernetes' alphabet (no vowels, no
/// look-alikes).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Now as RFC 3339 in UTC with second precision, as Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs as i64)
}

pub use api::time::rfc3339;

/// The strings of the list at `pointer` in `obj` (non-strings skipped; nothing if absent).
pub fn strings_at(obj: &Value, pointer: &str) -> Vec<String> {
    obj.at(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_version_4() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, new_uid());
    }

    #[test]
    fn light_metadata_is_metadata_without_managed_fields() {
        let mf = serde_json::json!([{"manager": "m", "fieldsV1": {"f:spec": {}}}]);
        for obj in [
            serde_json::json!({"metadata": {"name": "n", "labels": {"a": "b"}, "managedFields": mf, "generation": 2}}),
            serde_json::json!({"metadata": {"name": "n", "managedFields": null}}),
            serde_json::json!({"metadata": {"name": "n"}}),
            serde_json::json!({"kind": "X"}),
        ] {
            let mut full = meta(&obj).unwrap();
            full.managed_fields = None;
            assert_eq!(meta_light(&obj).unwrap(), full, "{obj}");
        }
        // Refused as `meta` refuses them, with the same words.
        for bad in [
            serde_json::json!({"metadata": {"name": 5, "managedFields": []}}),
            serde_json::json!({"metadata": {"name": "n", "managedFields": {}}}),
            serde_json::json!({"metadata": {"labels": {"a": 1}, "managedFields": [1]}}),
        ] {
            let light = meta_light(&bad).unwrap_err().to_string();
            assert!(light.starts_with("invalid metadata: "), "{light}");
            assert!(meta(&bad).is_err());
        }
    }

    #[test]
    fn fields_by_path() {
        let pod = serde_json::json!({"spec": {"nodeName": "n1", "x": 3}, "status": {"phase": "Running"}});
        assert_eq!(field(&pod, "spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(field(&pod, "spec.x").as_deref(), Some("3"));
        assert_eq!(field(&pod, "status.missing"), None);
    }
}
