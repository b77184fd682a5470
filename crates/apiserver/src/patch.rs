//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and Kubernetes'
//! strategic merge patch for the built-in kinds.

use api::json::At;
use serde_json::Value;

/// Applies a merge patch: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("path segment {t:?} not found"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("{t:?} is not an array index"))?;
                a.get_mut(i).ok_or_else(|| format!("index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into {t:?}")),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let tokens = split_pointer(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i =
                if last == "-" { a.len() } else { last.parse().map_err(|_| format!("{last:?} is not an index"))? };
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, value);
        }
        _ => return Err(format!("cannot add at {path:?}")),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let tokens = split_pointer(path)?;
    let (last, parents) = tokens.split_last().ok_or("cannot remove the whole document")?;
    match parent_mut(doc, parents)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| format!("path {path:?} not found")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("{last:?} is not an index"))?;
            if i >= a.len() {
                return Err(format!("index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("cannot remove at {path:?}")),
    }
}

fn get(doc: &Value, path: &str) -> Result<Value, String> {
    doc.at(path).cloned().ok_or_else(|| format!("path {path:?} not found"))
}

/// Applies a JSON patch (a list of operations), all or nothing.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, String> {
    let ops = patch.as_array().ok_or("a JSON patch must be a list of operations")?;
    let mut out = doc.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).ok_or("operation without \"op\"")?;
        let path = op.get("path").and_then(Value::as_str).ok_or("operation without \"path\"")?;
        let value = || op.get("value").cloned().ok_or_else(|| format!("{name} without \"value\""));
        let from = || op.get("from").and_then(Value::as_str).ok_or_else(|| format!("{name} without \"from\""));
        match name {
            "add" => add(&mut out, path, value()?)?,
            "remove" => {
                remove(&mut out, path)?;
            }
            "replace" => {
                remove(&mut out, path)?;
                add(&mut out, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut out, from()?)?;
                add(&mut out, path, v)?;
            }
            "copy" => {
                let v = get(&out, from()?)?;
                add(&mut out, path, v)?;
            }
            "test" => {
                if get(&out, path)? != value()? {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    Ok(out)
}

/// How a list field merges in a strategic merge patch.
pub(crate) enum ListStrategy {
    /// Elements are objects matched by this key.
    ByKey(&'static str),
    /// A list of scalars merged as a set (e.g. `finalizers`).
    Set,
}

/// The patch strategy of a list field of the built-in kinds, by its name and its parent's
/// (the field names from the object's root, list positions left out). Lists not named here
/// are replaced. Server-side apply reads the same table (`managed::builtin_list_type`).
pub(crate) fn list_strategy(parent: Option<&str>, field: &str) -> Option<ListStrategy> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => ListStrategy::ByKey("name"),
        "ports" if matches!(parent, Some("containers" | "initContainers" | "ephemeralContainers")) => {
            ListStrategy::ByKey("containerPort")
        }
        "ports" if parent == Some("spec") => ListStrategy::ByKey("port"),
        "volumeMounts" => ListStrategy::ByKey("mountPath"),
        "volumeDevices" => ListStrategy::ByKey("devicePath"),
        "hostAliases" => ListStrategy::ByKey("ip"),
        "topologySpreadConstraints" => ListStrategy::ByKey("topologyKey"),
        "conditions" | "addresses" => ListStrategy::ByKey("type"),
        "ownerReferences" => ListStrategy::ByKey("uid"),
        "finalizers" => ListStrategy::Set,
        _ => return None,
    })
}

fn is_directive(key: &str) -> bool {
    key.starts_with('$')
}

/// A patch value with its directives removed, as it is stored when nothing merges into it.
fn without_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !is_directive(k) && !v.is_null())
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get("$patch").and_then(Value::as_str) != Some("delete"))
                .filter(|e| !(e.as_object().is_some_and(|m| m.len() == 1) && e.get("$patch").is_some()))
                .map(without_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Applies a strategic merge patch to `target`.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    smp_value(target, patch, &mut Vec::new())
}

fn smp_value(target: &mut Value, patch: &Value, path: &mut Vec<String>) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = without_directives(patch);
            return Ok(());
        }
        Some("delete") => return Err("$patch: delete is only allowed on list elements and fields".into()),
        Some(other) => return Err(format!("unknown $patch directive {other:?}")),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(t) = target else { return Ok(()) };
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = t.get_mut(field) {
                list.retain(|e| !remove.contains(e));
            }
            continue;
        }
        if is_directive(k) {
            continue; // $setElementOrder/…, $retainKeys: ordering and unions, applied below
        }
        if v.is_null() || v.get("$patch").and_then(Value::as_str) == Some("delete") {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        let result = match (t.get_mut(k), v) {
            (Some(existing @ Value::Object(_)), Value::Object(_)) => smp_value(existing, v, path),
            (Some(Value::Array(existing)), Value::Array(items)) => {
                let strategy = list_strategy(path.iter().rev().nth(1).map(String::as_str), k);
                merge_list(existing, items, strategy, path)
            }
            _ => {
                t.insert(k.clone(), without_directives(v));
                Ok(())
            }
        };
        path.pop();
        result?;
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(
    target: &mut Vec<Value>,
    patch: &[Value],
    strategy: Option<ListStrategy>,
    path: &mut Vec<String>,
) -> Result<(), String> {
    let replace = patch.iter().any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"));
    match strategy {
        _ if replace => {
            *target = without_directives(&Value::Array(patch.to_vec())).as_array().cloned().unwrap_or_default()
        }
        None => *target = patch.iter().map(without_directives).collect(),
        Some(ListStrategy::Set) => {
            for item in patch {
                if !target.contains(item) {
                    target.push(item.clone());
                }
            }
        }
        Some(ListStrategy::ByKey(key)) => {
            for item in patch {
                let Some(id) = item.get(key) else {
                    return Err(format!("list element without its merge key {key:?}"));
                };
                let found = target.iter().position(|e| e.get(key) == Some(id));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = found {
                        target.remove(i);
                    }
                    continue;
                }
                match found {
                    Some(i) => smp_value(&mut target[i], item, path)?,
                    None => target.push(without_directives(item)),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1, 2]});
        merge_patch(&mut doc, &json!({"a": [3]}));
        assert_eq!(doc, json!({"a": [3]}));
    }

    #[test]
    fn json_patch_operations() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2, 3]});
        let patch = json!([
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
            {"op": "remove", "path": "/list/0"},
            {"op": "replace", "path": "/metadata/labels/a", "value": "x"},
            {"op": "add", "path": "/list/-", "value": 9},
            {"op": "copy", "from": "/list/0", "path": "/first"},
            {"op": "test", "path": "/first", "value": 2}
        ]);
        let out = json_patch(&doc, &patch).unwrap();
        assert_eq!(out, json!({"metadata": {"labels": {"a": "x", "b/c": "2"}}, "list": [2, 3, 9], "first": 2}));
        assert!(json_patch(&doc, &json!([{"op": "test", "path": "/list/0", "value": 5}])).is_err());
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn strategic_merge_by_key_set_and_directives() {
        let mut pod = json!({
            "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"containers": [
                {"name": "app", "image": "v1", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
                {"name": "side", "image": "s1"}
            ], "tolerations": [{"key": "k"}]}
        });
        let patch = json!({
            "metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y"]},
            "spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
                "containers": [
                    {"name": "app", "image": "v2", "env": [{"name": "B", "value": "2"}]},
                    {"name": "side", "$patch": "delete"},
                    {"name": "new", "image": "n1"}
                ],
                "tolerations": [{"key": "other"}]
            }
        });
        strategic_merge(&mut pod, &patch).unwrap();
        assert_eq!(
            pod,
            json!({
                "metadata": {"labels": {"a": "1", "c": "3"}, "finalizers": ["x", "y"]},
                "spec": {"containers": [
                    {"name": "app", "image": "v2", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "ports": [{"containerPort": 80}]},
                    {"name": "new", "image": "n1"}
                ], "tolerations": [{"key": "other"}]}
            })
        );
        let mut cm = json!({"data": {"a": "1", "b": "2"}, "metadata": {"finalizers": ["x", "y"]}});
        strategic_merge(&mut cm, &json!({"data": {"$patch": "replace", "z": "9"}, "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}})).unwrap();
        assert_eq!(cm, json!({"data": {"z": "9"}, "metadata": {"finalizers": ["y"]}}));
        let mut list = json!({"spec": {"containers": [{"name": "a"}]}});
        strategic_merge(&mut list, &json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "b"}]}})).unwrap();
        assert_eq!(list, json!({"spec": {"containers": [{"name": "b"}]}}));
        assert!(strategic_merge(&mut list, &json!({"spec": {"containers": [{"image": "no-name"}]}})).is_err());
    }
}
