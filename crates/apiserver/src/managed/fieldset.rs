//! Sets of field paths, as `metadata.managedFields` records them (`FieldsV1`).
//!
//! A path is a sequence of elements, each in its `FieldsV1` spelling: `f:name` (a field of a
//! map), `k:{"name":"c"}` (an item of an associative list, by its key fields), `v:"x"` (an
//! item of a set) and `i:0` (a position, only in sets a client sends). The set is a tree
//! keyed by those strings; a node is a member when the path ending there is in the set.
//! `FieldsV1` writes a member leaf as `{}` and a member with children with a `".": {}`
//! entry.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    /// Whether the path ending at this node is in the set (unused at the root).
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Whether the path ending at this node is in the set.
    pub(crate) fn is_member(&self) -> bool {
        self.member
    }

    /// The nodes below this one, by path element.
    pub(crate) fn children(&self) -> impl Iterator<Item = (&String, &FieldSet)> {
        self.children.iter()
    }

    /// A set holding only the node's own path (for building subtrees).
    pub(crate) fn member() -> FieldSet {
        FieldSet { member: true, children: BTreeMap::new() }
    }

    pub(crate) fn set_member(&mut self, member: bool) {
        self.member = member;
    }

    /// Adds `child` under the element `pe` of this node.
    pub(crate) fn put(&mut self, pe: String, child: FieldSet) {
        match self.children.get_mut(&pe) {
            Some(mine) => {
                mine.member |= child.member;
                mine.union_with(&child);
            }
            None => {
                self.children.insert(pe, child);
            }
        }
    }

    /// Adds `node` (a subtree with its own membership) at `path`.
    pub(crate) fn graft(&mut self, path: &[String], node: FieldSet) {
        let Some((last, parents)) = path.split_last() else {
            if self.is_empty() {
                *self = node;
            } else {
                self.union_with(&node);
            }
            return;
        };
        let mut cur = self;
        for pe in parents {
            cur = cur.children.entry(pe.clone()).or_default();
        }
        if node.member || !node.children.is_empty() {
            cur.put(last.clone(), node);
        }
    }

    /// Adds `path` (not the empty path).
    pub fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for pe in path {
            node = node.children.entry(pe.clone()).or_default();
        }
        node.member = true;
    }

    pub fn contains(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| n.member)
    }

    fn node(&self, path: &[String]) -> Option<&FieldSet> {
        let mut node = self;
        for pe in path {
            node = node.children.get(pe)?;
        }
        Some(node)
    }

    /// Whether `path` or any path below it is in the set.
    pub fn covers(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| n.member || !n.children.is_empty())
    }

    pub fn union_with(&mut self, other: &FieldSet) {
        for (pe, theirs) in &other.children {
            let mine = self.children.entry(pe.clone()).or_default();
            mine.member |= theirs.member;
            mine.union_with(theirs);
        }
    }

    /// Removes every member of `other`; nodes left without members go.
    pub fn subtract(&mut self, other: &FieldSet) {
        for (pe, theirs) in &other.children {
            if let Some(mine) = self.children.get_mut(pe) {
                if theirs.member {
                    mine.member = false;
                }
                mine.subtract(theirs);
                if !mine.member && mine.children.is_empty() {
                    self.children.remove(pe);
                }
            }
        }
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet::default();
        for (pe, mine) in &self.children {
            if let Some(theirs) = other.children.get(pe) {
                let mut child = mine.intersection(theirs);
                child.member = mine.member && theirs.member;
                if child.member || !child.children.is_empty() {
                    out.children.insert(pe.clone(), child);
                }
            }
        }
        out
    }

    /// Every member path, parents before their children.
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        for (pe, child) in &self.children {
            prefix.push(pe.clone());
            if child.member {
                out.push(prefix.clone());
            }
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The set as `fieldsV1`.
    pub fn to_fields_v1(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        for (pe, child) in &self.children {
            map.insert(pe.clone(), child.to_fields_v1());
        }
        Value::Object(map)
    }

    /// The set as `fieldsV1` JSON, written straight out: byte for byte what serialising
    /// [`FieldSet::to_fields_v1`] writes (keys in order, `.` first, as every path element
    /// starts with a letter), without building it.
    pub fn write_fields_v1(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        if self.member && !self.children.is_empty() {
            out.extend_from_slice(b"\".\":{}");
            first = false;
        }
        for (pe, child) in &self.children {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            write_json_string(out, pe);
            out.push(b':');
            child.write_fields_v1(out);
        }
        out.push(b'}');
    }

    /// Reads `fieldsV1`; every key must be a path element.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        let mut set = FieldSet::default();
        set.read(v)?;
        Ok(set)
    }

    fn read(&mut self, v: &Value) -> Result<(), String> {
        let map = v.as_object().ok_or("fieldsV1 nodes must be objects")?;
        for (k, child) in map {
            if k == "." {
                self.member = true;
                continue;
            }
            check_element(k)?;
            let mut node = FieldSet::default();
            node.read(child)?;
            // A leaf is a member by being there.
            if node.children.is_empty() {
                node.member = true;
            }
            self.children.insert(k.clone(), node);
        }
        Ok(())
    }
}

/// `s` as a JSON string, as serde_json writes it.
pub(crate) fn write_json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn check_element(pe: &str) -> Result<(), String> {
    let bad = || format!("invalid path element {pe:?}");
    let (kind, rest) = pe.split_once(':').ok_or_else(bad)?;
    match kind {
        "f" => Ok(()),
        "k" => match serde_json::from_str::<Value>(rest) {
            Ok(Value::Object(m)) if !m.is_empty() => Ok(()),
            _ => Err(bad()),
        },
        "v" => serde_json::from_str::<Value>(rest).map(|_| ()).map_err(|_| bad()),
        "i" => rest.parse::<usize>().map(|_| ()).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// A path as Kubernetes prints it in conflicts: `.spec.containers[name="c"].image`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        let (kind, rest) = pe.split_once(':').unwrap_or(("f", pe));
        match kind {
            "f" => {
                out.push('.');
                out.push_str(rest);
            }
            "k" => {
                let fields = match serde_json::from_str::<Value>(rest) {
                    Ok(Value::Object(m)) => m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                    _ => rest.to_string(),
                };
                out.push_str(&format!("[{fields}]"));
            }
            "v" => out.push_str(&format!("[={rest}]")),
            _ => out.push_str(&format!("[{rest}]")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(elements: &[&str]) -> Vec<String> {
        elements.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fields_v1_round_trips_with_dot_for_members_with_children() {
        let v = json!({
            "f:data": {".": {}, "f:a": {}, "f:b": {}},
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}
        });
        let set = FieldSet::from_fields_v1(&v).unwrap();
        assert!(set.contains(&p(&["f:data"])));
        assert!(!set.contains(&p(&["f:metadata", "f:labels"])));
        assert!(set.contains(&p(&["f:metadata", "f:labels", "f:app"])));
        assert!(set.contains(&p(&["f:spec", "f:containers", "k:{\"name\":\"c\"}"])));
        assert_eq!(set.to_fields_v1(), v);
        assert_eq!(set.paths().len(), 7);
    }

    #[test]
    fn malformed_fields_v1_is_refused() {
        assert!(FieldSet::from_fields_v1(&json!({"data": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"k:[1]": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"f:a": 1})).is_err());
        assert!(FieldSet::from_fields_v1(&json!([])).is_err());
    }

    #[test]
    fn union_subtract_and_intersection() {
        let mut a = FieldSet::default();
        a.insert(&p(&["f:data", "f:a"]));
        a.insert(&p(&["f:data", "f:b"]));
        let mut b = FieldSet::default();
        b.insert(&p(&["f:data", "f:b"]));
        b.insert(&p(&["f:data", "f:c"]));
        let i = a.intersection(&b);
        assert_eq!(i.paths(), vec![p(&["f:data", "f:b"])]);
        let mut u = a.clone();
        u.union_with(&b);
        assert_eq!(u.paths().len(), 3);
        a.subtract(&b);
        assert_eq!(a.paths(), vec![p(&["f:data", "f:a"])]);
        a.subtract(&a.clone());
        assert!(a.is_empty(), "emptied nodes are pruned: {a:?}");
        assert!(u.covers(&p(&["f:data"])) && !u.contains(&p(&["f:data"])));
    }

    #[test]
    fn paths_display_as_kubernetes_prints_them() {
        assert_eq!(display(&p(&["f:data", "f:k"])), ".data.k");
        assert_eq!(
            display(&p(&["f:spec", "f:containers", "k:{\"name\":\"c\"}", "f:image"])),
            ".spec.containers[name=\"c\"].image"
        );
        assert_eq!(display(&p(&["f:metadata", "f:finalizers", "v:\"x\""])), ".metadata.finalizers[=\"x\"]");
    }
}
