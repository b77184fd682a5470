//! Field ownership (`metadata.managedFields`) and server-side apply, as Kubernetes' API
//! server does them (structured-merge-diff's rules, over JSON values).
//!
//! Every write records who changed which fields: an update by manager M takes the fields it
//! changed away from every other manager and gives them to M's `Update` entry. An apply by
//! M merges M's configuration into the object, owns exactly the configuration's fields in
//! M's `Apply` entry, removes the fields M applied before and no longer applies (unless
//! someone else owns them), and refuses (409) to change a field another manager owns unless
//! forced; applying a value equal to the current one co-owns the field without conflict.
//!
//! Lists follow the kind's [`ListType`]: associative lists (items keyed by their key
//! fields), sets of scalars, or atomic values. The work is one walk over the object (and the
//! old one, for updates), so it costs O(object size) per write.

pub mod fieldset;
pub mod options;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use api::json::At;
use api::meta::{Status, StatusCause, StatusDetails};
use serde_json::{Map, Value};

pub use fieldset::FieldSet;

use crate::registry::RegistryError;

/// How a list field's items are told apart, for ownership and merging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// The list is one value: replaced whole, owned whole.
    Atomic,
    /// A set of scalars; each item is owned on its own.
    Set,
    /// Objects identified by these key fields; each item and each of its fields is owned
    /// on its own.
    Map(Vec<String>),
}

/// The list types of the built-in kinds, from the strategic merge patch's table of merge
/// keys (`path`: the field names from the object's root, list positions left out).
pub fn builtin_list_type(path: &[&str]) -> ListType {
    use crate::patch::ListStrategy;
    let Some((field, parents)) = path.split_last() else { return ListType::Atomic };
    match crate::patch::list_strategy(parents.last().copied(), field) {
        Some(ListStrategy::ByKey(key)) => ListType::Map(vec![key.to_string()]),
        Some(ListStrategy::Set) => ListType::Set,
        None => ListType::Atomic,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The configuration cannot be applied (malformed lists, managedFields set, ...).
    #[error("{0}")]
    Invalid(String),
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A field the applier would change that another manager owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The manager as Kubernetes prints it: `"kubectl"` or `"m" using v1 at <time>`.
    pub manager: String,
    /// The field as Kubernetes prints it: `.data.k`.
    pub field: String,
}

fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [one] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {}: {}", one.manager, one.field);
    }
    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(&c.manager).or_default().push(&c.field);
    }
    let mut lines = Vec::new();
    for (manager, fields) in by_manager {
        lines.push(format!("conflicts with {manager}:"));
        lines.extend(fields.iter().map(|f| format!("- {f}")));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

impl ApplyError {
    pub fn to_status(&self) -> Status {
        match self {
            ApplyError::Invalid(m) => Status::bad_request(m.clone()),
            ApplyError::Conflicts(conflicts) => {
                let mut status = Status::failure(409, "Conflict", conflict_message(conflicts));
                status.details = Some(StatusDetails {
                    causes: conflicts
                        .iter()
                        .map(|c| StatusCause {
                            reason: "FieldManagerConflict".into(),
                            message: format!("conflict with {}", c.manager),
                            field: c.field.clone(),
                        })
                        .collect(),
                    ..StatusDetails::default()
                });
                status
            }
            ApplyError::Registry(e) => e.to_status(),
        }
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    /// Empty for the main resource.
    pub subresource: String,
    pub set: FieldSet,
}

impl Entry {
    /// How conflict messages name the entry's manager.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
            if let Some(t) = &self.time {
                s.push_str(&format!(" at {t}"));
            }
        }
        s
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), self.set.to_fields_v1());
        m.insert("manager".into(), Value::String(self.manager.clone()));
        m.insert("operation".into(), Value::String(self.operation.clone()));
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), Value::String(self.subresource.clone()));
        }
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::String(t.clone()));
        }
        Value::Object(m)
    }

    /// [`Entry::to_json`] serialised, written straight out (the same bytes: keys in order).
    fn write_json(&self, out: &mut Vec<u8>) {
        use fieldset::write_json_string as string;
        out.extend_from_slice(b"{\"apiVersion\":");
        string(out, &self.api_version);
        out.extend_from_slice(b",\"fieldsType\":\"FieldsV1\",\"fieldsV1\":");
        self.set.write_fields_v1(out);
        out.extend_from_slice(b",\"manager\":");
        string(out, &self.manager);
        out.extend_from_slice(b",\"operation\":");
        string(out, &self.operation);
        if !self.subresource.is_empty() {
            out.extend_from_slice(b",\"subresource\":");
            string(out, &self.subresource);
        }
        if let Some(t) = &self.time {
            out.extend_from_slice(b",\"time\":");
            string(out, t);
        }
        out.push(b'}');
    }

    fn from_json(v: &Value) -> Result<Entry, String> {
        let m = v.as_object().ok_or("a managedFields entry must be an object")?;
        let text = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let fields_type = text("fieldsType");
        if !fields_type.is_empty() && fields_type != "FieldsV1" {
            return Err(format!("unsupported fieldsType {fields_type:?}"));
        }
        let operation = text("operation");
        if !matches!(operation.as_str(), "" | "Apply" | "Update") {
            return Err(format!("unsupported operation {operation:?}"));
        }
        let set = match m.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::default(),
            Some(f) => FieldSet::from_fields_v1(f)?,
        };
        Ok(Entry {
            manager: text("manager"),
            operation,
            api_version: text("apiVersion"),
            time: m.get("time").and_then(Value::as_str).map(str::to_string),
            subresource: text("subresource"),
            set,
        })
    }
}

/// Reads `metadata.managedFields`.
pub fn decode(v: Option<&Value>) -> Result<Vec<Entry>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(Entry::from_json).collect(),
        Some(_) => Err("managedFields must be a list".into()),
    }
}

/// At most this many `Update` entries are kept; older ones are merged (Kubernetes' cap, so
/// that many different writers cannot grow an object without bound).
const MAX_UPDATE_ENTRIES: usize = 10;

/// The manager the oldest updates are merged into.
const ANCIENT_CHANGES: &str = "ancient-changes";

/// Merges the oldest `Update` entries into one `ancient-changes` entry until at most
/// [`MAX_UPDATE_ENTRIES`] remain.
fn cap_updates(entries: &mut Vec<Entry>) {
    let mut updates: Vec<usize> =
        (0..entries.len()).filter(|&i| entries[i].operation == "Update" && !entries[i].set.is_empty()).collect();
    if updates.len() <= MAX_UPDATE_ENTRIES {
        return;
    }
    // Oldest first; RFC 3339 times in UTC sort as strings, and no time is oldest.
    updates.sort_by(|&a, &b| entries[a].time.cmp(&entries[b].time));
    let merged: Vec<usize> = updates[..updates.len() - MAX_UPDATE_ENTRIES + 1].to_vec();
    let mut bucket = Entry {
        manager: ANCIENT_CHANGES.into(),
        operation: "Update".into(),
        api_version: String::new(),
        time: None,
        subresource: String::new(),
        set: FieldSet::default(),
    };
    for &i in &merged {
        // The newest merged entry gives the bucket its version and time.
        bucket.api_version = entries[i].api_version.clone();
        bucket.time = entries[i].time.clone();
        bucket.set.union_with(&entries[i].set);
    }
    let mut i = 0;
    entries.retain(|_| {
        let keep = !merged.contains(&i);
        i += 1;
        keep
    });
    entries.push(bucket);
}

/// Writes the entries with a non-empty set into `obj`'s `metadata.managedFields`.
fn store_entries(obj: &mut Value, entries: &mut Vec<Entry>) {
    cap_updates(entries);
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let list: Vec<Value> = entries.iter().filter(|e| !e.set.is_empty()).map(Entry::to_json).collect();
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Whether removing `set`'s members from the `fieldsV1` tree `fields` would change it: a
/// member of `set` is a member there (a leaf, or a node marked `"."`).
fn touches(fields: &Map<String, Value>, set: &FieldSet) -> bool {
    set.children().any(|(pe, theirs)| match fields.get(pe.as_str()).and_then(Value::as_object) {
        None => false,
        Some(mine) => (theirs.is_member() && (mine.is_empty() || mine.contains_key("."))) || touches(mine, theirs),
    })
}

/// Fields nobody owns: the server's metadata and the object's type.
fn stripped() -> &'static FieldSet {
    static STRIPPED: OnceLock<FieldSet> = OnceLock::new();
    STRIPPED.get_or_init(|| {
        let mut s = FieldSet::default();
        s.insert(&["f:apiVersion".into()]);
        s.insert(&["f:kind".into()]);
        s.insert(&["f:metadata".into()]);
        for f in [
            "name",
            "namespace",
            "tenant",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            s.insert(&["f:metadata".into(), format!("f:{f}")]);
        }
        s
    })
}

/// What changed between two versions of an object.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Diff {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }

    fn strip(&mut self) {
        for s in [&mut self.added, &mut self.modified, &mut self.removed] {
            s.subtract(stripped());
        }
    }
}

/// What [`Writer::record_update_raw`] made of a record kept as stored JSON.
#[derive(Debug, PartialEq)]
pub enum Recorded {
    /// The record as it was: nothing changed.
    Unchanged,
    /// The new record's JSON (a list).
    Json(Vec<u8>),
    /// No entry is left: the object has no record.
    Gone,
    /// Written into the new object's `metadata.managedFields` (a record only the full
    /// decoding folds: a malformed entry, more updaters than are kept).
    InObject,
}

/// An entry of a stored record as [`Writer::fold`] reads it.
trait Item {
    /// Its header; `None` for one only the full decoding handles (a malformed header).
    fn head(&self) -> Option<Head<'_>>;
    /// Whether removing `diff`'s modified or removed fields would change its set.
    fn reached(&self, diff: &Diff) -> bool;
    fn entry(&self) -> Result<Entry, String>;
}

/// An entry's header.
struct Head<'a> {
    manager: Cow<'a, str>,
    operation: Cow<'a, str>,
    api_version: Cow<'a, str>,
    subresource: Cow<'a, str>,
    /// Its `fieldsV1` is a non-empty map.
    owns: bool,
}

/// An entry of a fold's result: one of the stored entries as it was (by position), or one
/// written anew.
enum Slot {
    Kept(usize),
    Made(Entry),
}

impl Item for Value {
    fn head(&self) -> Option<Head<'_>> {
        let m = self.as_object()?;
        let text = |k: &str| Cow::Borrowed(m.get(k).and_then(Value::as_str).unwrap_or(""));
        if !matches!(text("fieldsType").as_ref(), "" | "FieldsV1")
            || !matches!(text("operation").as_ref(), "" | "Apply" | "Update")
        {
            return None;
        }
        let owns = match m.get("fieldsV1") {
            None | Some(Value::Null) => false,
            Some(Value::Object(f)) => !f.is_empty(),
            Some(_) => return None,
        };
        Some(Head {
            manager: text("manager"),
            operation: text("operation"),
            api_version: text("apiVersion"),
            subresource: text("subresource"),
            owns,
        })
    }

    fn reached(&self, diff: &Diff) -> bool {
        self.get("fieldsV1")
            .and_then(Value::as_object)
            .is_some_and(|f| touches(f, &diff.modified) || touches(f, &diff.removed))
    }

    fn entry(&self) -> Result<Entry, String> {
        Entry::from_json(self)
    }
}

/// An entry as stored JSON.
struct RawItem<'a> {
    json: &'a [u8],
}

/// The header fields of a stored entry, read without building its field set.
#[derive(serde::Deserialize)]
struct RawHead<'a> {
    #[serde(borrow, default)]
    manager: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    operation: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "apiVersion")]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subresource: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "fieldsType")]
    fields_type: Option<Cow<'a, str>>,
}

impl<'a> RawItem<'a> {
    fn new(json: &'a [u8]) -> RawItem<'a> {
        RawItem { json }
    }

    /// Its `fieldsV1` as JSON: `Some(None)` when it has none; `None` when it cannot be told
    /// without decoding.
    fn fields(&self) -> Option<Option<&'a [u8]>> {
        let found = crate::registry::cache::scan::member(self.json, b"fieldsV1")?;
        Some(found.map(|m| &self.json[m.value]))
    }
}

impl Item for RawItem<'_> {
    fn head(&self) -> Option<Head<'_>> {
        // A field of another type than a string is left to the full decoding, as is a
        // duplicated one (the decoded form keeps the last).
        let h: RawHead = serde_json::from_slice(self.json).ok()?;
        if !matches!(h.fields_type.as_deref(), None | Some("" | "FieldsV1"))
            || !matches!(h.operation.as_deref(), None | Some("" | "Apply" | "Update"))
        {
            return None;
        }
        let owns = match self.fields()? {
            None => false,
            Some(f) if f.starts_with(b"null") => false,
            Some(f) if f.starts_with(b"{") => f[1..].iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}'),
            Some(_) => return None,
        };
        Some(Head {
            manager: h.manager.unwrap_or_default(),
            operation: h.operation.unwrap_or_default(),
            api_version: h.api_version.unwrap_or_default(),
            subresource: h.subresource.unwrap_or_default(),
            owns,
        })
    }

    fn reached(&self, diff: &Diff) -> bool {
        let f = match self.fields() {
            // Not told apart without decoding: decoded.
            None => return true,
            Some(Some(f)) if f.starts_with(b"{") => f,
            Some(_) => return false,
        };
        // A set that has none of the changed top-level fields as a key is not reached; the
        // record is JSON the server wrote, so a key is spelled as is unless it holds a
        // character JSON escapes.
        let mut tops = diff.modified.children().chain(diff.removed.children()).map(|(pe, _)| pe);
        let maybe = tops.any(|pe| {
            pe.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
                || memchr::memmem::find(f, format!("\"{pe}\"").as_bytes()).is_some()
        });
        if !maybe {
            return false;
        }
        match serde_json::from_slice::<Value>(f) {
            Ok(Value::Object(m)) => touches(&m, &diff.modified) || touches(&m, &diff.removed),
            _ => true,
        }
    }

    fn entry(&self) -> Result<Entry, String> {
        let v: Value = serde_json::from_slice(self.json).map_err(|e| e.to_string())?;
        Entry::from_json(&v)
    }
}

/// One write's view of ownership: who writes, through which subresource, and the kind's
/// list types.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// `Some("status")` for the status subresource.
    pub subresource: Option<&'a str>,
    /// The kind has a status subresource, so writes to the main resource never own status.
    pub status_subresource: bool,
    pub list_type: &'a (dyn Fn(&[&str]) -> ListType + Sync),
    /// The time recorded in changed entries (RFC 3339).
    pub now: &'a str,
}

/// `metadata.managedFields` is bookkeeping, not a field anyone owns (`names`: the field
/// names down to the map holding `key`).
fn skipped(names: &[&str], key: &str) -> bool {
    key == "managedFields" && names == ["metadata"]
}

/// A path below some value (innermost element first) and what is wrong there.
type PathError = (Vec<String>, String);

fn located(prefix: &[String], (mut below, e): PathError) -> String {
    below.reverse();
    let path: Vec<String> = prefix.iter().cloned().chain(below).collect();
    format!("{}: {e}", fieldset::display(&path))
}

/// A list's items with their path elements; an error if an item has no key or two share
/// one.
/// The path element of the field `k` (`f:k`).
fn field_element(k: &str) -> String {
    let mut pe = String::with_capacity(k.len() + 2);
    pe.push_str("f:");
    pe.push_str(k);
    pe
}

fn keyed<'v>(items: &'v [Value], lt: &ListType) -> Result<Vec<(String, &'v Value)>, String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let pe = match lt {
            ListType::Atomic => return Err("an atomic list has no items of its own".into()),
            ListType::Set => format!("v:{item}"),
            ListType::Map(keys) => {
                let obj = item.as_object().ok_or("an item of an associative list must be an object")?;
                // `k:` and the key fields as a JSON object in key order, written straight out.
                let mut sorted: Vec<&String> = keys.iter().collect();
                sorted.sort();
                sorted.dedup();
                let mut pe = Vec::with_capacity(32);
                pe.extend_from_slice(b"k:{");
                for (i, k) in sorted.into_iter().enumerate() {
                    let v = obj.get(k).filter(|v| !v.is_null()).ok_or_else(|| {
                        format!("associative list with keys has an element that omits key field {k:?}")
                    })?;
                    if i > 0 {
                        pe.push(b',');
                    }
                    fieldset::write_json_string(&mut pe, k);
                    pe.push(b':');
                    serde_json::to_writer(&mut pe, v).map_err(|e| e.to_string())?;
                }
                pe.push(b'}');
                String::from_utf8(pe).map_err(|e| e.to_string())?
            }
        };
        // Lists are most often short: a scan costs less than a set of copies.
        let duplicate = match items.len() {
            0..=16 => out.iter().any(|(seen, _)| *seen == pe),
            _ => !seen.insert(pe.clone()),
        };
        if duplicate {
            return Err(format!("duplicate entries for key {}", &pe[2..]));
        }
        out.push((pe, item));
    }
    Ok(out)
}

impl Writer<'_> {
    /// The fields a value sets: its leaves, empty maps, atomic lists, and the items of
    /// granular lists with their fields, added to `out` below `prefix`. `strict`: a
    /// malformed granular list is an error (apply); otherwise it counts as atomic (updates
    /// must not fail on ownership), and non-empty maps count too (an update that creates a
    /// map owns it, as in Kubernetes).
    fn fields<'v>(
        &self,
        v: &'v Value,
        names: &mut Vec<&'v str>,
        prefix: &[String],
        out: &mut FieldSet,
        strict: bool,
    ) -> Result<(), String> {
        let mut node = self.subtree(v, names, strict).map_err(|e| located(prefix, e))?;
        if prefix.is_empty() {
            node.set_member(false);
        }
        out.graft(prefix, node);
        Ok(())
    }

    /// [`Writer::fields`] of a map's entries (the map itself not counted).
    fn map_fields<'v>(
        &self,
        m: &'v Map<String, Value>,
        names: &mut Vec<&'v str>,
        prefix: &[String],
        out: &mut FieldSet,
        strict: bool,
    ) -> Result<(), String> {
        let node = self.map_subtree(m, names, strict).map_err(|e| located(prefix, e))?;
        out.graft(prefix, node);
        Ok(())
    }

    /// The set of a value's fields, built bottom-up (each node allocated once); its own
    /// node is a member when the value counts as one field. An error carries the path
    /// below the value, innermost first.
    fn subtree<'v>(&self, v: &'v Value, names: &mut Vec<&'v str>, strict: bool) -> Result<FieldSet, PathError> {
        Ok(match v {
            Value::Object(m) if m.is_empty() => FieldSet::member(),
            Value::Object(m) => {
                let mut node = self.map_subtree(m, names, strict)?;
                node.set_member(!strict);
                node
            }
            Value::Array(items) => {
                let lt = (self.list_type)(names);
                let elements = match (&lt, items.is_empty()) {
                    (ListType::Atomic, _) | (_, true) => None,
                    _ => match keyed(items, &lt) {
                        Ok(e) => Some(e),
                        Err(e) if strict => return Err((Vec::new(), e)),
                        Err(_) => None,
                    },
                };
                match elements {
                    None => FieldSet::member(),
                    Some(elements) => {
                        let mut node = FieldSet::default();
                        for (pe, item) in elements {
                            let mut child = match (&lt, item) {
                                (ListType::Map(_), Value::Object(m)) => {
                                    self.map_subtree(m, names, strict).map_err(|(mut p, e)| {
                                        p.push(pe.clone());
                                        (p, e)
                                    })?
                                }
                                _ => FieldSet::default(),
                            };
                            child.set_member(true);
                            node.put(pe, child);
                        }
                        node
                    }
                }
            }
            _ => FieldSet::member(),
        })
    }

    fn map_subtree<'v>(
        &self,
        m: &'v Map<String, Value>,
        names: &mut Vec<&'v str>,
        strict: bool,
    ) -> Result<FieldSet, PathError> {
        let mut node = FieldSet::default();
        for (k, child) in m {
            if skipped(names, k) {
                continue;
            }
            names.push(k);
            let r = self.subtree(child, names, strict);
            names.pop();
            let pe = field_element(k);
            match r {
                Ok(c) => node.put(pe, c),
                Err((mut p, e)) => {
                    p.push(pe);
                    return Err((p, e));
                }
            }
        }
        Ok(node)
    }

    /// What changed from `old` to `new` (both whole objects).
    pub fn diff(&self, old: &Value, new: &Value) -> Diff {
        let mut d = Diff::default();
        self.diff_at(Some(old), Some(new), &mut Vec::new(), &mut Vec::new(), &mut d);
        d.strip();
        d
    }

    fn diff_at<'v>(
        &self,
        old: Option<&'v Value>,
        new: Option<&'v Value>,
        names: &mut Vec<&'v str>,
        prefix: &mut Vec<String>,
        d: &mut Diff,
    ) {
        match (old, new) {
            (None, None) => {}
            // A field that appears or disappears counts with everything below it.
            (None, Some(n)) => {
                if let Ok(mut node) = self.subtree(n, names, false) {
                    node.set_member(!prefix.is_empty());
                    d.added.graft(prefix, node);
                }
            }
            (Some(o), None) => {
                if let Ok(mut node) = self.subtree(o, names, false) {
                    node.set_member(!prefix.is_empty());
                    d.removed.graft(prefix, node);
                }
            }
            (Some(Value::Object(o)), Some(Value::Object(n))) => {
                for (k, ov) in o {
                    // An unchanged field has nothing to report below it; comparing is far cheaper
                    // than walking it (a status write leaves the spec and most metadata as is).
                    if skipped(names, k) || n.get(k) == Some(ov) {
                        continue;
                    }
                    prefix.push(field_element(k));
                    names.push(k);
                    self.diff_at(Some(ov), n.get(k), names, prefix, d);
                    names.pop();
                    prefix.pop();
                }
                for (k, nv) in n {
                    if o.contains_key(k) || skipped(names, k) {
                        continue;
                    }
                    prefix.push(field_element(k));
                    names.push(k);
                    self.diff_at(None, Some(nv), names, prefix, d);
                    names.pop();
                    prefix.pop();
                }
            }
            (Some(Value::Array(o)), Some(Value::Array(n))) if o != n => {
                let lt = (self.list_type)(names);
                let granular = match lt {
                    ListType::Atomic => None,
                    _ => keyed(o, &lt).ok().zip(keyed(n, &lt).ok()),
                };
                let Some((old_items, new_items)) = granular else {
                    d.modified.insert(prefix);
                    return;
                };
                let new_by_pe: BTreeMap<&str, &Value> = new_items.iter().map(|(pe, v)| (pe.as_str(), *v)).collect();
                let old_by_pe: BTreeMap<&str, &Value> = old_items.iter().map(|(pe, v)| (pe.as_str(), *v)).collect();
                for (pe, ov) in &old_items {
                    prefix.push(pe.clone());
                    self.diff_item(Some(ov), new_by_pe.get(pe.as_str()).copied(), &lt, names, prefix, d);
                    prefix.pop();
                }
                for (pe, nv) in &new_items {
                    if !old_by_pe.contains_key(pe.as_str()) {
                        prefix.push(pe.clone());
                        self.diff_item(None, Some(nv), &lt, names, prefix, d);
                        prefix.pop();
                    }
                }
            }
            (Some(o), Some(n)) => {
                if o != n {
                    d.modified.insert(prefix);
                    if o.is_object() || o.is_array() || n.is_object() || n.is_array() {
                        let _ = self.fields(o, names, prefix, &mut d.removed, false);
                        let _ = self.fields(n, names, prefix, &mut d.added, false);
                    }
                }
            }
        }
    }

    /// One item of a granular list (its path element already on `prefix`).
    fn diff_item<'v>(
        &self,
        old: Option<&'v Value>,
        new: Option<&'v Value>,
        lt: &ListType,
        names: &mut Vec<&'v str>,
        prefix: &mut Vec<String>,
        d: &mut Diff,
    ) {
        match (old, new, lt) {
            (Some(Value::Object(_)), Some(Value::Object(_)), ListType::Map(_)) => {
                self.diff_at(old, new, names, prefix, d)
            }
            (Some(_), Some(_), _) => {}
            (None, Some(n), _) => {
                d.added.insert(prefix);
                if let (ListType::Map(_), Value::Object(m)) = (lt, n) {
                    let _ = self.map_fields(m, names, prefix, &mut d.added, false);
                }
            }
            (Some(o), None, _) => {
                d.removed.insert(prefix);
                if let (ListType::Map(_), Value::Object(m)) = (lt, o) {
                    let _ = self.map_fields(m, names, prefix, &mut d.removed, false);
                }
            }
            (None, None, _) => {}
        }
    }

    fn is_own(&self, e: &Entry, operation: &str) -> bool {
        e.manager == self.manager
            && e.operation == operation
            && e.subresource == self.subresource.unwrap_or("")
            && (operation == "Apply" || e.api_version == self.api_version)
    }

    /// Records a create (`old` = `None`) or an update of `old` into `new`'s
    /// `metadata.managedFields`. Managed fields the client changed (a non-empty, valid
    /// list) replace the old ones as the starting point, as Kubernetes allows (kubectl's
    /// client-side to server-side apply migration relies on it); `[{}]` clears them.
    pub fn record_update(&self, old: Option<&Value>, new: &mut Value) {
        let old_mf = old.and_then(|o| o.at("/metadata/managedFields"));
        let new_mf = new.at("/metadata/managedFields");
        let unchanged_record = new_mf.is_some() && new_mf == old_mf;
        let client = match new_mf {
            Some(v) if !unchanged_record => decode(Some(v)).ok().filter(|e| !e.is_empty()),
            _ => None,
        };
        let empty = Value::Object(Map::new());
        let mut diff = self.diff(old.unwrap_or(&empty), new);
        if diff.is_empty() && client.is_none() {
            // Nothing changed: the old record stands, times and all.
            if !unchanged_record {
                let old_mf = old_mf.cloned();
                if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    match old_mf {
                        Some(v) => meta.insert("managedFields".into(), v),
                        None => meta.remove("managedFields"),
                    };
                }
            }
            return;
        }
        if client.is_none() {
            // The old record is the starting point: when `new` carries it already (a patch or
            // a status write), it is changed there, entry by entry.
            let mut list = match (unchanged_record, old_mf) {
                (true, _) => match new.get_mut("metadata").and_then(|m| m.get_mut("managedFields")) {
                    Some(Value::Array(items)) => std::mem::take(items),
                    _ => Vec::new(),
                },
                (false, Some(Value::Array(items))) => items.clone(),
                (false, _) => Vec::new(),
            };
            if self.fold_in_place(&mut list, &mut diff) {
                if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    if list.is_empty() {
                        meta.remove("managedFields");
                    } else {
                        meta.insert("managedFields".into(), Value::Array(list));
                    }
                }
                return;
            }
            if unchanged_record && let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("managedFields".into(), Value::Array(list));
            }
        }
        self.record_by_decoding(old_mf, client, diff, new);
    }

    /// [`Writer::record_update`] with every entry decoded into sets and written out again.
    fn record_by_decoding(&self, old_mf: Option<&Value>, client: Option<Vec<Entry>>, mut diff: Diff, new: &mut Value) {
        let mut entries = client.unwrap_or_else(|| decode(old_mf).unwrap_or_default());
        for e in entries.iter_mut().filter(|e| !self.is_own(e, "Update")) {
            e.set.subtract(&diff.modified);
            e.set.subtract(&diff.removed);
        }
        let own = match entries.iter().position(|e| self.is_own(e, "Update")) {
            Some(i) => i,
            None => {
                entries.push(self.entry("Update", FieldSet::default()));
                entries.len() - 1
            }
        };
        self.fold_own(&mut entries[own], &mut diff);
        store_entries(new, &mut entries);
    }

    /// The writer's own entry takes what the update changed and added, and lets go of what
    /// it removed.
    fn fold_own(&self, e: &mut Entry, diff: &mut Diff) {
        e.set.union_with(&diff.modified);
        if e.set.is_empty() {
            // A create, or a first write: no copy.
            e.set = std::mem::take(&mut diff.added);
        } else {
            e.set.union_with(&diff.added);
        }
        e.set.subtract(&diff.removed);
        if !diff.is_empty() {
            e.time = Some(self.now.to_string());
        }
    }

    /// Folds `diff` into the stored record `list` as [`Writer::record_by_decoding`] would (see
    /// [`Writer::fold`]). `false` (and `list` as it was) where only the full decoding knows.
    fn fold_in_place(&self, list: &mut Vec<Value>, diff: &mut Diff) -> bool {
        let Some(slots) = self.fold(list, diff) else { return false };
        let mut old: Vec<Option<Value>> = std::mem::take(list).into_iter().map(Some).collect();
        *list = slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Kept(i) => old[i].take().unwrap_or(Value::Null),
                Slot::Made(e) => e.to_json(),
            })
            .collect();
        true
    }

    /// [`Writer::record_update`] for an update whose objects carry no record: it was cut from
    /// the stored JSON (`record`: its value, a list), and the write never sets one (a status
    /// write, whose metadata is the stored object's). The record is changed as JSON: only the
    /// entries the change reaches are decoded (the writer's own; others only when they own a
    /// field it changed), the rest are copied as they were stored.
    pub fn record_update_raw(&self, old: &Value, new: &mut Value, record: &[u8]) -> Result<Recorded, String> {
        let mut diff = self.diff(old, new);
        if diff.is_empty() {
            return Ok(Recorded::Unchanged);
        }
        if let Some(spans) = crate::registry::cache::scan::items(record) {
            let items: Vec<RawItem> = spans.into_iter().map(|r| RawItem::new(&record[r])).collect();
            if let Some(slots) = self.fold(&items, &mut diff) {
                if slots.is_empty() {
                    return Ok(Recorded::Gone);
                }
                let mut out = Vec::with_capacity(record.len() + 256);
                out.push(b'[');
                for (n, slot) in slots.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    match slot {
                        Slot::Kept(i) => out.extend_from_slice(items[*i].json),
                        Slot::Made(e) => e.write_json(&mut out),
                    }
                }
                out.push(b']');
                return Ok(Recorded::Json(out));
            }
        }
        let list: Value =
            serde_json::from_slice(record).map_err(|e| format!("the stored managed fields are not JSON: {e}"))?;
        self.record_by_decoding(Some(&list), None, diff, new);
        Ok(Recorded::InObject)
    }

    /// Folds `diff` into the stored record `items` as [`Writer::record_by_decoding`] would, but
    /// decodes and writes out again only the entries the change reaches (the writer's own, and
    /// others that own a field it changed or removed); the rest stay as they are, most often
    /// every other entry (a status write leaves the creator's record of the spec alone). The
    /// same record for records the server wrote (every write stores its record in the form
    /// `Entry::to_json` gives); entries the change does not reach are kept as they are, not
    /// put into that form. `None` (and `diff` as it was) where only the full decoding knows
    /// the answer: a malformed entry's header, two entries of this writer, or more updaters
    /// than are kept.
    fn fold<I: Item>(&self, items: &[I], diff: &mut Diff) -> Option<Vec<Slot>> {
        let mut own = None;
        let mut updates = 0;
        let mut owns = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let head = item.head()?;
            let is_own = head.manager == self.manager
                && head.operation == "Update"
                && head.subresource == self.subresource.unwrap_or("")
                && head.api_version == self.api_version;
            if is_own {
                if own.is_some() {
                    return None;
                }
                own = Some(i);
            } else if head.operation == "Update" && head.owns {
                updates += 1;
            }
            owns.push(head.owns);
        }
        if updates + 1 > MAX_UPDATE_ENTRIES {
            return None;
        }
        let mut own_entry = match own {
            Some(i) => items[i].entry().ok()?,
            None => self.entry("Update", FieldSet::default()),
        };
        let mut out = Vec::with_capacity(items.len() + 1);
        let mut own_slot = None;
        for (i, item) in items.iter().enumerate() {
            if Some(i) == own {
                own_slot = Some(out.len());
                out.push(Slot::Kept(i));
                continue;
            }
            if !item.reached(diff) {
                // An entry that owns nothing is dropped, as writing it out again would.
                if owns[i] {
                    out.push(Slot::Kept(i));
                }
                continue;
            }
            let Ok(mut e) = item.entry() else {
                // Checked above; kept as it was rather than lost.
                out.push(Slot::Kept(i));
                continue;
            };
            e.set.subtract(&diff.modified);
            e.set.subtract(&diff.removed);
            if !e.set.is_empty() {
                out.push(Slot::Made(e));
            }
        }
        // The own entry last, as in the full path (it may take the diff's added set).
        self.fold_own(&mut own_entry, diff);
        let own_entry = (!own_entry.set.is_empty()).then_some(own_entry);
        match (own_slot, own_entry) {
            (Some(slot), Some(e)) => out[slot] = Slot::Made(e),
            (Some(slot), None) => {
                out.remove(slot);
            }
            (None, e) => out.extend(e.map(Slot::Made)),
        }
        Some(out)
    }

    fn entry(&self, operation: &str, set: FieldSet) -> Entry {
        Entry {
            manager: self.manager.to_string(),
            operation: operation.to_string(),
            api_version: self.api_version.to_string(),
            time: Some(self.now.to_string()),
            subresource: self.subresource.unwrap_or("").to_string(),
            set,
        }
    }

    /// Applies `config` to `live` (`None`: the object does not exist yet) and returns the
    /// object to store, managed fields included. `force` takes conflicting fields over.
    pub fn apply(&self, live: Option<&Value>, config: &Value, force: bool) -> Result<Value, ApplyError> {
        if !config.is_object() {
            return Err(ApplyError::Invalid("the apply configuration must be an object".into()));
        }
        if config.at("/metadata/managedFields").is_some_and(|v| !v.is_null()) {
            return Err(ApplyError::Invalid("metadata.managedFields must be nil".into()));
        }
        let mut config = without_nulls(config);
        // Only what the write can change counts: the status through the status
        // subresource, everything else through the main resource.
        if let Some(m) = config.as_object_mut() {
            match self.subresource {
                Some("status") => {
                    m.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
                    if let Some(Value::Object(meta)) = m.get_mut("metadata") {
                        meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace"));
                    }
                }
                _ if self.status_subresource => {
                    m.remove("status");
                }
                _ => {}
            }
        }
        let mut applied = FieldSet::default();
        self.fields(&config, &mut Vec::new(), &[], &mut applied, true).map_err(ApplyError::Invalid)?;
        applied.subtract(stripped());
        let mut entries = decode(live.and_then(|l| l.at("/metadata/managedFields"))).unwrap_or_default();
        let mut base = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
        if let Some(meta) = base.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        let mut merged = base.clone();
        self.merge(&mut merged, &config, &mut Vec::new()).map_err(ApplyError::Invalid)?;
        let own = entries.iter().position(|e| self.is_own(e, "Apply"));
        // Fields this manager applied before and applies no more go, unless someone else
        // owns them or something below them, or the configuration still sets something
        // below them (a map this manager came to own whole, e.g. through kubectl's
        // client-side apply migration, stays while the configuration sets some of it).
        if let Some(i) = own {
            let mut dropped = entries[i].set.clone();
            dropped.subtract(&applied);
            if !dropped.is_empty() {
                let mut others = FieldSet::default();
                for (j, e) in entries.iter().enumerate() {
                    if j != i {
                        others.union_with(&e.set);
                    }
                }
                for path in dropped.paths() {
                    if !others.covers(&path) && !applied.covers(&path) {
                        remove_path(&mut merged, &path);
                    }
                }
            }
        }
        let diff = self.diff(&base, &merged);
        let mut conflicts = Vec::new();
        for (j, e) in entries.iter().enumerate() {
            if Some(j) == own {
                continue;
            }
            for path in e.set.intersection(&diff.modified).paths() {
                conflicts.push(Conflict { manager: e.describe(), field: fieldset::display(&path) });
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(ApplyError::Conflicts(conflicts));
        }
        for (j, e) in entries.iter_mut().enumerate() {
            if Some(j) != own {
                e.set.subtract(&diff.modified);
                e.set.subtract(&diff.removed);
            }
        }
        match own {
            Some(i) => {
                let e = &mut entries[i];
                if e.set != applied || !diff.is_empty() || e.api_version != self.api_version {
                    e.time = Some(self.now.to_string());
                }
                e.set = applied;
                e.api_version = self.api_version.to_string();
            }
            None => entries.push(self.entry("Apply", applied)),
        }
        store_entries(&mut merged, &mut entries);
        Ok(merged)
    }

    /// Merges an apply configuration into an object: maps key by key, granular lists item
    /// by item, everything else replaced.
    fn merge<'v>(&self, target: &mut Value, config: &'v Value, names: &mut Vec<&'v str>) -> Result<(), String> {
        match (target, config) {
            (Value::Object(t), Value::Object(c)) => {
                for (k, v) in c {
                    names.push(k);
                    let r = match t.get_mut(k) {
                        Some(existing) => self.merge(existing, v, names),
                        None => {
                            t.insert(k.clone(), v.clone());
                            Ok(())
                        }
                    };
                    names.pop();
                    r?;
                }
            }
            (Value::Array(t), Value::Array(c)) => {
                let lt = (self.list_type)(names);
                if lt == ListType::Atomic {
                    *t = c.clone();
                    return Ok(());
                }
                let items = keyed(c, &lt)?;
                // Live items that do not match the list type are replaced by the configuration.
                let existing = match keyed(t, &lt) {
                    Ok(e) => e.into_iter().map(|(pe, _)| pe).collect::<Vec<_>>(),
                    Err(_) => {
                        *t = c.clone();
                        return Ok(());
                    }
                };
                let mut positions: BTreeMap<String, usize> =
                    existing.into_iter().enumerate().map(|(i, pe)| (pe, i)).collect();
                for (pe, item) in items {
                    match positions.get(&pe) {
                        Some(&i) => self.merge(&mut t[i], item, names)?,
                        None => {
                            positions.insert(pe, t.len());
                            t.push(item.clone());
                        }
                    }
                }
            }
            (t, c) => *t = c.clone(),
        }
        Ok(())
    }
}

/// The configuration without `null` map values (an apply sets no nulls).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Whether a list item is the one a path element names.
fn item_matches(item: &Value, pe: &str) -> bool {
    if let Some(key) = pe.strip_prefix("k:") {
        match serde_json::from_str::<Value>(key) {
            Ok(Value::Object(k)) => k.iter().all(|(f, v)| item.get(f) == Some(v)),
            _ => false,
        }
    } else if let Some(v) = pe.strip_prefix("v:") {
        serde_json::from_str::<Value>(v).is_ok_and(|v| *item == v)
    } else {
        false
    }
}

/// Removes the field or list item at `path`, if it is there.
fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = obj;
    for pe in parents {
        let next = match cur {
            Value::Object(m) => pe.strip_prefix("f:").and_then(|f| m.get_mut(f)),
            Value::Array(items) => match pe.strip_prefix("i:") {
                Some(i) => i.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                None => items.iter_mut().find(|item| item_matches(item, pe)),
            },
            _ => None,
        };
        let Some(next) = next else { return };
        cur = next;
    }
    match cur {
        Value::Object(m) => {
            if let Some(f) = last.strip_prefix("f:") {
                m.remove(f);
            }
        }
        Value::Array(items) => items.retain(|item| !item_matches(item, last)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
