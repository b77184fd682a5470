//! Kubernetes' protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl 1.32 and later send for typed commands such as `create namespace` or `run`,
//! decoded into the JSON objects the registry stores.
//!
//! A body is `k8s\0` followed by a `runtime.Unknown` envelope (type meta, then the
//! object's own encoding). The object is decoded with the wire layout in `schema.rs`
//! (generated from the Kubernetes API's field numbers); a field the layout does not know
//! is an error, never silently dropped. Empty strings and zero timestamps are left out,
//! as Kubernetes' JSON leaves them out.

#[rustfmt::skip]
mod schema;
mod extensions;

use base64::Engine;
use serde_json::{Map, Value, json};

pub mod shape;

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
pub(crate) enum Card {
    One,
    Many,
    Map,
}

#[derive(Clone, Copy)]
pub(crate) enum Ty {
    Str,
    Bytes,
    I32,
    I64,
    Bool,
    Time,
    Quantity,
    IntOrString,
    RawJson,
    Msg(&'static str),
}

pub(crate) struct Field {
    pub num: u32,
    pub name: &'static str,
    pub card: Card,
    pub ty: Ty,
}

/// Go structs embedded with `json:",inline"`: their fields appear in the parent's JSON.
fn inline(message: &str, field: &str) -> bool {
    matches!(field, "localObjectReference" | "volumeSource" | "ephemeralContainerCommon")
        || (field == "handler" && message.ends_with(".Probe"))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()? as usize;
        let (head, rest) = self.buf.split_at_checked(n).ok_or("truncated field")?;
        self.buf = rest;
        Ok(head)
    }
    fn fixed64(&mut self) -> Result<u64, String> {
        let (head, rest) = self.buf.split_at_checked(8).ok_or("truncated fixed64")?;
        self.buf = rest;
        Ok(u64::from_le_bytes(head.try_into().map_err(|_| "bad fixed64")?))
    }
    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.fixed64().map(drop),
            2 => self.bytes().map(drop),
            5 => {
                let (_, rest) = self.buf.split_at_checked(4).ok_or("truncated fixed32")?;
                self.buf = rest;
                Ok(())
            }
            w => Err(format!("unsupported wire type {w}")),
        }
    }
    /// The next field as (number, wire type).
    fn tag(&mut self) -> Result<Option<(u32, u64)>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        Ok(Some(((key >> 3) as u32, key & 7)))
    }
}

/// A message's fields: the generated layout's plus Atoll's additions (`extensions.rs`).
#[derive(Clone, Copy)]
pub(crate) struct Fields {
    base: &'static [Field],
    added: &'static [Field],
}

impl Fields {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &'static Field> + use<> {
        self.base.iter().chain(self.added.iter())
    }
}

fn schema_of(name: &str) -> Result<Fields, String> {
    let added = extensions::ADDED_FIELDS.iter().find(|(n, _)| *n == name).map_or(&[][..], |(_, f)| *f);
    if let Ok(i) = schema::MESSAGES.binary_search_by(|(n, _)| n.cmp(&name)) {
        return Ok(Fields { base: schema::MESSAGES[i].1, added });
    }
    extensions::MESSAGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| Fields { base: f, added: &[] })
        .ok_or_else(|| format!("no protobuf layout for {name}"))
}

/// Reads the small well-known messages into their JSON forms.
fn special(ty: Ty, buf: &[u8]) -> Result<Value, String> {
    let mut fields: Vec<(u32, u64, &[u8])> = Vec::new();
    let mut r = Reader { buf };
    while let Some((num, wire)) = r.tag()? {
        match wire {
            0 => fields.push((num, r.varint()?, &[])),
            2 => fields.push((num, 0, r.bytes()?)),
            w => r.skip(w)?,
        }
    }
    let int = |n: u32| fields.iter().find(|f| f.0 == n).map_or(0, |f| f.1);
    let text = |n: u32| fields.iter().find(|f| f.0 == n).map(|f| String::from_utf8_lossy(f.2).into_owned());
    Ok(match ty {
        Ty::Time => {
            let secs = int(1) as i64;
            if secs == 0 { Value::Null } else { json!(crate::registry::object::rfc3339(secs)) }
        }
        Ty::Quantity => json!(text(1).unwrap_or_default()),
        Ty::IntOrString => {
            if int(1) == 1 {
                json!(text(3).unwrap_or_default())
            } else {
                json!(int(2) as u32 as i32)
            }
        }
        Ty::RawJson => {
            let raw = fields.iter().find(|f| f.0 == 1).map(|f| f.2).unwrap_or(&[]);
            if raw.is_empty() { Value::Null } else { serde_json::from_slice(raw).map_err(|e| e.to_string())? }
        }
        _ => Value::Null,
    })
}

fn scalar(ty: Ty, r: &mut Reader<'_>, wire: u64) -> Result<Value, String> {
    Ok(match (ty, wire) {
        (Ty::Str, 2) => json!(String::from_utf8(r.bytes()?.to_vec()).map_err(|_| "a string is not UTF-8")?),
        (Ty::Bytes, 2) => json!(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
        (Ty::I32, 0) => json!(r.varint()? as u32 as i32),
        (Ty::I64, 0) => json!(r.varint()? as i64),
        (Ty::Bool, 0) => json!(r.varint()? != 0),
        (Ty::Msg(name), 2) => decode_message(name, r.bytes()?)?,
        (ty @ (Ty::Time | Ty::Quantity | Ty::IntOrString | Ty::RawJson), 2) => special(ty, r.bytes()?)?,
        (_, w) => return Err(format!("unexpected wire type {w}")),
    })
}

fn is_empty(v: &Value) -> bool {
    matches!(v, Value::Null) || v.as_str() == Some("")
}

fn decode_message(name: &str, buf: &[u8]) -> Result<Value, String> {
    let fields = schema_of(name)?;
    let mut out = Map::new();
    let mut r = Reader { buf };
    while let Some((num, wire)) = r.tag()? {
        let field = fields
            .iter()
            .find(|f| f.num == num)
            .ok_or_else(|| format!("field {num} of {name} is not known to this server"))?;
        match field.card {
            Card::One => {
                let v = scalar(field.ty, &mut r, wire)?;
                if inline(name, field.name) {
                    if let Value::Object(m) = v {
                        out.extend(m);
                    }
                } else if !is_empty(&v) {
                    out.insert(field.name.into(), v);
                }
            }
            Card::Many => {
                let list = out.entry(field.name).or_insert_with(|| json!([]));
                let items = list.as_array_mut().ok_or("a repeated field appeared twice")?;
                let packed = wire == 2 && matches!(field.ty, Ty::I32 | Ty::I64 | Ty::Bool);
                if packed {
                    let mut inner = Reader { buf: r.bytes()? };
                    while !inner.buf.is_empty() {
                        items.push(scalar(field.ty, &mut inner, 0)?);
                    }
                } else {
                    items.push(scalar(field.ty, &mut r, wire)?);
                }
            }
            Card::Map => {
                let mut entry = Reader { buf: r.bytes()? };
                let (mut key, mut value) = (String::new(), Value::Null);
                while let Some((n, w)) = entry.tag()? {
                    match n {
                        1 => key = scalar(Ty::Str, &mut entry, w)?.as_str().unwrap_or("").to_string(),
                        2 => value = scalar(field.ty, &mut entry, w)?,
                        _ => entry.skip(w)?,
                    }
                }
                if value.is_null() {
                    value = match field.ty {
                        Ty::Str | Ty::Bytes | Ty::Quantity => json!(""),
                        _ => Value::Null,
                    };
                }
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                if let Some(m) = map.as_object_mut() {
                    m.insert(key, value);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// The protobuf package of an API group: `core` for the core group, else the group's
/// first label (`rbac` for `rbac.authorization.k8s.io`, `apps` for `apps`).
pub fn package_of(group: &str) -> &str {
    match group {
        "" => "core",
        g => g.split('.').next().unwrap_or(g),
    }
}

/// Decodes a protobuf request body into the object's JSON form.
pub fn decode_request(body: &[u8]) -> Result<Value, String> {
    let rest = body.strip_prefix(MAGIC).ok_or("the body does not start with the Kubernetes protobuf prefix")?;
    let mut r = Reader { buf: rest };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((num, wire)) = r.tag()? {
        match (num, wire) {
            (1, 2) => {
                let mut tm = Reader { buf: r.bytes()? };
                while let Some((n, w)) = tm.tag()? {
                    match (n, w) {
                        (1, 2) => api_version = String::from_utf8_lossy(tm.bytes()?).into_owned(),
                        (2, 2) => kind = String::from_utf8_lossy(tm.bytes()?).into_owned(),
                        (_, w) => tm.skip(w)?,
                    }
                }
            }
            (2, 2) => raw = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version.as_str()));
    let name = format!("k8s.io.api.{}.{version}.{kind}", package_of(group));
    let mut obj = decode_message(&name, raw)?;
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u32, body: &[u8]) -> Vec<u8> {
        let mut out = vec![(num << 3 | 2) as u8, body.len() as u8];
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn schema_is_sorted_for_binary_search() {
        assert!(schema::MESSAGES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn a_namespace_and_a_configmap_decode() {
        // Namespace{metadata{name: "demo", generateName: ""}}
        let meta = [field(1, b"demo"), field(2, b"")].concat();
        let ns = field(1, &meta);
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &ns)].concat();
        assert_eq!(
            decode_request(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
        );

        // ConfigMap{metadata{name: "c"}, data{"a": "b"}}
        let entry = [field(1, b"a"), field(2, b"b")].concat();
        let cm = [field(1, &field(1, b"c")), field(2, &entry)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &cm)].concat();
        assert_eq!(
            decode_request(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn unknown_fields_and_garbage_are_errors() {
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &field(15, b"x"))].concat();
        assert!(decode_request(&body).unwrap_err().contains("not known"));
        assert!(decode_request(b"k8s\0\xff\xff").is_err());
        assert!(decode_request(b"{}").is_err());
        let type_meta = [field(1, b"v1"), field(2, b"Nope")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, b"")].concat();
        assert!(decode_request(&body).unwrap_err().contains("no protobuf layout"));
    }
}
