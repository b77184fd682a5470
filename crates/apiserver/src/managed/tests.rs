//! The ownership engine on small objects: what each write records, what apply merges,
//! removes and refuses.

use serde_json::{Value, json};

use super::*;

fn writer<'a>(manager: &'a str, list_type: &'a (dyn Fn(&[&str]) -> ListType + Sync)) -> Writer<'a> {
    Writer {
        manager,
        api_version: "v1",
        subresource: None,
        status_subresource: false,
        list_type,
        now: "2026-11-23T00:00:00Z",
    }
}

fn lists(path: &[&str]) -> ListType {
    builtin_list_type(path)
}

/// The managed fields as (manager, operation, fieldsV1) triples.
fn owners(obj: &Value) -> Vec<(String, String, Value)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (e["manager"].as_str().unwrap().into(), e["operation"].as_str().unwrap().into(), e["fieldsV1"].clone())
        })
        .collect()
}

fn cm(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}, "data": data})
}

fn created_by(manager: &str, obj: Value) -> Value {
    let mut obj = obj;
    writer(manager, &lists).record_update(None, &mut obj);
    obj
}

#[test]
fn a_create_owns_every_field_it_sets_but_server_metadata() {
    let mut obj = cm(json!({"a": "1"}));
    obj["metadata"]["labels"] = json!({"app": "web"});
    obj["metadata"]["uid"] = json!("u");
    let obj = created_by("kubectl-create", obj);
    assert_eq!(
        owners(&obj),
        vec![(
            "kubectl-create".into(),
            "Update".into(),
            json!({"f:data": {".": {}, "f:a": {}}, "f:metadata": {"f:labels": {".": {}, "f:app": {}}}})
        )]
    );
    let entry = &obj["metadata"]["managedFields"][0];
    assert_eq!(entry["fieldsType"], "FieldsV1");
    assert_eq!(entry["apiVersion"], "v1");
    assert_eq!(entry["time"], "2026-11-23T00:00:00Z");
    assert!(entry.get("subresource").is_none());
}

#[test]
fn an_update_takes_the_fields_it_changes_from_other_managers() {
    let old = created_by("a", cm(json!({"x": "1", "y": "2"})));
    let mut new = old.clone();
    new["data"]["x"] = json!("changed");
    new["data"]["z"] = json!("3");
    writer("b", &lists).record_update(Some(&old), &mut new);
    assert_eq!(
        owners(&new),
        vec![
            ("a".into(), "Update".into(), json!({"f:data": {".": {}, "f:y": {}}})),
            ("b".into(), "Update".into(), json!({"f:data": {"f:x": {}, "f:z": {}}})),
        ]
    );
    // Removing the last field a manager owns removes its entry.
    let mut newer = new.clone();
    newer["data"] = json!({"x": "changed", "z": "3"});
    newer["metadata"]["labels"] = json!({"l": "v"});
    writer("b", &lists).record_update(Some(&new), &mut newer);
    assert_eq!(owners(&newer)[0].0, "a", "a still owns the data map itself");
    assert_eq!(
        owners(&newer)[1].2,
        json!({"f:data": {"f:x": {}, "f:z": {}}, "f:metadata": {"f:labels": {".": {}, "f:l": {}}}})
    );
}

#[test]
fn an_unchanged_update_keeps_the_record_as_it_was() {
    let old = created_by("a", cm(json!({"x": "1"})));
    let mut new = old.clone();
    new["metadata"].as_object_mut().unwrap().remove("managedFields");
    Writer { now: "2030-01-01T00:00:00Z", ..writer("b", &lists) }.record_update(Some(&old), &mut new);
    assert_eq!(new, old);
}

#[test]
fn clients_may_replace_or_clear_managed_fields() {
    let old = created_by("a", cm(json!({"x": "1"})));
    let mut new = old.clone();
    new["metadata"]["managedFields"] = json!([{
        "manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:data": {"f:x": {}}}
    }]);
    writer("migrator", &lists).record_update(Some(&old), &mut new);
    assert_eq!(owners(&new), vec![("kubectl".into(), "Apply".into(), json!({"f:data": {"f:x": {}}}))]);
    // `[{}]` clears; `[]` is taken as a client that does not know about managed fields.
    let mut cleared = old.clone();
    cleared["metadata"]["managedFields"] = json!([{}]);
    writer("m", &lists).record_update(Some(&old), &mut cleared);
    assert!(cleared["metadata"].get("managedFields").is_none(), "{cleared}");
    let mut kept = old.clone();
    kept["metadata"]["managedFields"] = json!([]);
    writer("m", &lists).record_update(Some(&old), &mut kept);
    assert_eq!(kept, old);
    // Malformed ones are ignored.
    let mut bad = old.clone();
    bad["metadata"]["managedFields"] = json!([{"manager": "x", "fieldsType": "FieldsV2", "fieldsV1": {}}]);
    writer("m", &lists).record_update(Some(&old), &mut bad);
    assert_eq!(bad, old);
}

#[test]
fn status_writes_are_recorded_with_their_subresource() {
    let old = created_by("a", json!({"metadata": {"name": "p"}, "spec": {"x": 1}}));
    let mut new = old.clone();
    new["status"] = json!({"phase": "Running"});
    Writer { subresource: Some("status"), ..writer("kubelet", &lists) }.record_update(Some(&old), &mut new);
    let e = &new["metadata"]["managedFields"][1];
    assert_eq!(e["subresource"], "status");
    assert_eq!(e["fieldsV1"], json!({"f:status": {".": {}, "f:phase": {}}}));
}

#[test]
fn apply_creates_and_owns_exactly_the_configuration() {
    let config = cm(json!({"a": "1"}));
    let obj = writer("kubectl", &lists).apply(None, &config, false).unwrap();
    assert_eq!(obj["data"], json!({"a": "1"}));
    assert_eq!(owners(&obj), vec![("kubectl".into(), "Apply".into(), json!({"f:data": {"f:a": {}}}))]);
    // The same configuration again changes nothing, not even the time.
    let again = Writer { now: "2030-01-01T00:00:00Z", ..writer("kubectl", &lists) }.apply(Some(&obj), &config, false);
    assert_eq!(again.unwrap(), obj);
}

#[test]
fn apply_removes_what_it_no_longer_applies_unless_someone_else_owns_it() {
    let w = writer("kubectl", &lists);
    let obj = w.apply(None, &cm(json!({"a": "1", "b": "2", "c": "3"})), false).unwrap();
    // Another manager also sets c (to the same value): it co-owns it.
    let other = writer("other", &lists).apply(Some(&obj), &cm(json!({"c": "3"})), false).unwrap();
    let next = w.apply(Some(&other), &cm(json!({"a": "1"})), false).unwrap();
    assert_eq!(next["data"], json!({"a": "1", "c": "3"}), "b is gone, c stays with its other owner");
    assert_eq!(
        owners(&next),
        vec![
            ("kubectl".into(), "Apply".into(), json!({"f:data": {"f:a": {}}})),
            ("other".into(), "Apply".into(), json!({"f:data": {"f:c": {}}})),
        ]
    );
}

#[test]
fn apply_conflicts_with_other_owners_and_force_takes_over() {
    let created = created_by("kubectl-client-side-apply", cm(json!({"k": "v", "same": "s"})));
    let w = writer("kubectl", &lists);
    let err = w.apply(Some(&created), &cm(json!({"k": "new", "same": "s"})), false).unwrap_err();
    let ApplyError::Conflicts(conflicts) = &err else { panic!("{err:?}") };
    assert_eq!(
        conflicts,
        &vec![Conflict {
            manager: "\"kubectl-client-side-apply\" using v1 at 2026-11-23T00:00:00Z".into(),
            field: ".data.k".into()
        }]
    );
    let status = err.to_status();
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1 at 2026-11-23T00:00:00Z: .data.k"
    );
    let cause = &status.details.as_ref().unwrap().causes[0];
    assert_eq!((cause.reason.as_str(), cause.field.as_str()), ("FieldManagerConflict", ".data.k"));
    // Forced: k changes hands, `same` is shared.
    let forced = w.apply(Some(&created), &cm(json!({"k": "new", "same": "s"})), true).unwrap();
    assert_eq!(forced["data"]["k"], "new");
    assert_eq!(
        owners(&forced),
        vec![
            ("kubectl-client-side-apply".into(), "Update".into(), json!({"f:data": {".": {}, "f:same": {}}})),
            ("kubectl".into(), "Apply".into(), json!({"f:data": {"f:k": {}, "f:same": {}}})),
        ]
    );
}

#[test]
fn several_conflicts_are_listed_by_manager() {
    let obj = created_by("a", cm(json!({"x": "1", "y": "1"})));
    let mut obj2 = obj.clone();
    obj2["data"]["z"] = json!("1");
    writer("b", &lists).record_update(Some(&obj), &mut obj2);
    let err = writer("c", &lists).apply(Some(&obj2), &cm(json!({"x": "2", "y": "2", "z": "2"})), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 3 conflicts: conflicts with \"a\" using v1 at 2026-11-23T00:00:00Z:\n- .data.x\n- .data.y\n\
         conflicts with \"b\" using v1 at 2026-11-23T00:00:00Z:\n- .data.z"
    );
}

fn pod(containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": containers}})
}

#[test]
fn associative_lists_merge_and_are_owned_item_by_item() {
    let a = writer("a", &lists);
    let b = writer("b", &lists);
    let obj = a.apply(None, &pod(json!([{"name": "app", "image": "v1"}])), false).unwrap();
    let obj = b.apply(Some(&obj), &pod(json!([{"name": "side", "image": "s1"}])), false).unwrap();
    assert_eq!(obj["spec"]["containers"], json!([{"name": "app", "image": "v1"}, {"name": "side", "image": "s1"}]));
    assert_eq!(
        owners(&obj)[0].2,
        json!({"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
    );
    let err =
        b.apply(Some(&obj), &pod(json!([{"name": "side", "image": "s1"}, {"name": "app", "image": "v2"}])), false);
    let Err(ApplyError::Conflicts(c)) = err else { panic!("{err:?}") };
    assert_eq!(c[0].field, ".spec.containers[name=\"app\"].image");
    // a stops applying its container: the item goes.
    let obj =
        a.apply(Some(&obj), &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}), false).unwrap();
    assert_eq!(obj["spec"]["containers"], json!([{"name": "side", "image": "s1"}]));
    let missing_key = a.apply(Some(&obj), &pod(json!([{"image": "x"}])), false).unwrap_err();
    assert!(missing_key.to_string().contains("omits key field \"name\""), "{missing_key}");
    let duplicate = a.apply(Some(&obj), &pod(json!([{"name": "x"}, {"name": "x"}])), false).unwrap_err();
    assert!(duplicate.to_string().contains("duplicate entries"), "{duplicate}");
}

#[test]
fn sets_merge_and_atomic_lists_conflict() {
    let cfg = |finalizers: Value, args: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "finalizers": finalizers},
               "spec": {"containers": [{"name": "c", "args": args}]}})
    };
    let obj = writer("a", &lists).apply(None, &cfg(json!(["x"]), json!(["1"])), false).unwrap();
    let obj = writer("b", &lists).apply(Some(&obj), &json!({"metadata": {"finalizers": ["y"]}}), false).unwrap();
    assert_eq!(obj["metadata"]["finalizers"], json!(["x", "y"]));
    assert_eq!(owners(&obj)[1].2, json!({"f:metadata": {"f:finalizers": {"v:\"y\"": {}}}}));
    let err = writer("b", &lists)
        .apply(Some(&obj), &json!({"spec": {"containers": [{"name": "c", "args": ["2"]}]}}), false)
        .unwrap_err();
    let ApplyError::Conflicts(c) = err else { panic!() };
    assert_eq!(c[0].field, ".spec.containers[name=\"c\"].args");
}

#[test]
fn apply_refuses_managed_fields_in_the_configuration() {
    let mut config = cm(json!({}));
    config["metadata"]["managedFields"] = json!([]);
    assert!(matches!(writer("a", &lists).apply(None, &config, false), Err(ApplyError::Invalid(_))));
}

#[test]
fn apply_on_the_main_resource_leaves_status_alone() {
    let w = Writer { status_subresource: true, ..writer("a", &lists) };
    let cfg = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}, "status": {"phase": "X"}});
    let obj = w.apply(None, &cfg, false).unwrap();
    assert!(obj.get("status").is_none());
    assert_eq!(owners(&obj)[0].2, json!({"f:spec": {"f:x": {}}}));
    let s = Writer { subresource: Some("status"), ..writer("kubelet", &lists) };
    let obj = s.apply(Some(&obj), &cfg, false).unwrap();
    assert_eq!(obj["status"]["phase"], "X");
    assert_eq!(owners(&obj)[1].2, json!({"f:status": {"f:phase": {}}}));
}

#[test]
fn builtin_list_types_come_from_the_merge_key_table() {
    assert_eq!(builtin_list_type(&["spec", "containers"]), ListType::Map(vec!["name".into()]));
    assert_eq!(builtin_list_type(&["spec", "containers", "ports"]), ListType::Map(vec!["containerPort".into()]));
    assert_eq!(builtin_list_type(&["metadata", "finalizers"]), ListType::Set);
    assert_eq!(builtin_list_type(&["spec", "containers", "args"]), ListType::Atomic);
    assert_eq!(builtin_list_type(&[]), ListType::Atomic);
}

#[test]
fn a_map_owned_whole_stays_while_the_configuration_sets_part_of_it() {
    // What kubectl's client-side apply migration leaves: the Apply entry owns `data` itself.
    let mut live = cm(json!({"k": "1", "gone": "x"}));
    live["metadata"]["managedFields"] = json!([{
        "manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:data": {".": {}, "f:k": {}, "f:gone": {}}}
    }]);
    let obj = writer("kubectl", &lists).apply(Some(&live), &cm(json!({"k": "1"})), false).unwrap();
    assert_eq!(obj["data"], json!({"k": "1"}));
    let obj = writer("kubectl", &lists).apply(Some(&live), &json!({"apiVersion": "v1", "kind": "ConfigMap"}), false);
    assert!(obj.unwrap().get("data").is_none(), "no longer applied at all: the map goes");
}

#[test]
fn the_oldest_of_many_updaters_are_merged_into_ancient_changes() {
    let mut obj = created_by("m00", cm(json!({"k00": "x"})));
    for i in 1..12 {
        let old = obj.clone();
        obj["data"][format!("k{i:02}")] = json!("x");
        let now = format!("2026-11-23T00:00:{i:02}Z");
        Writer { now: &now, ..writer(&format!("m{i:02}"), &lists) }.record_update(Some(&old), &mut obj);
    }
    let owners = owners(&obj);
    assert_eq!(owners.len(), 10, "{owners:?}");
    let ancient = owners.iter().find(|o| o.0 == "ancient-changes").expect("a bucket");
    // m00 (created the data map), m01 and m02 are the three oldest.
    assert_eq!(ancient.2, json!({"f:data": {".": {}, "f:k00": {}, "f:k01": {}, "f:k02": {}}}));
    assert!(owners.iter().any(|o| o.0 == "m11") && !owners.iter().any(|o| o.0 == "m02"));
}

/// What `old`'s record becomes when the write of `new` changes it as stored JSON (the
/// objects carrying none, as a status write reads them), and whether the fold did it (not
/// the full decoding). The same from compact and from spaced JSON.
fn recorded_as_json(w: &Writer, old: &Value, new: &Value) -> (Option<Value>, bool) {
    let record = old.at("/metadata/managedFields").expect("a record");
    let cut = |v: &Value| {
        let mut v = v.clone();
        v["metadata"].as_object_mut().unwrap().remove("managedFields");
        v
    };
    let mut results = [serde_json::to_vec(record).unwrap(), serde_json::to_vec_pretty(record).unwrap()].map(|json| {
        let (old_cut, mut new_cut) = (cut(old), cut(new));
        match w.record_update_raw(&old_cut, &mut new_cut, &json).unwrap() {
            Recorded::Unchanged => (Some(record.clone()), true),
            Recorded::Json(j) => (Some(serde_json::from_slice(&j).unwrap()), true),
            Recorded::Gone => (None, true),
            Recorded::InObject => (new_cut.at("/metadata/managedFields").cloned(), false),
        }
    });
    assert_eq!(results[0], results[1], "compact and spaced records");
    std::mem::take(&mut results[0])
}

/// The record folded in place (only the entries a change reaches decoded) is the record
/// that decoding every entry and writing it out again makes, whoever writes what.
#[test]
fn folding_the_record_in_place_agrees_with_decoding_every_entry() {
    let base = created_by(
        "a",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"l": "1"}},
               "data": {"x": "1", "y": "2"}, "status": {"phase": "P"}}),
    );
    let mut old = base.clone();
    old["data"]["z"] = json!("3");
    writer("b", &lists).record_update(Some(&base), &mut old);
    let status_writer =
        |manager| Writer { subresource: Some("status"), status_subresource: true, ..writer(manager, &lists) };
    type Change = fn(&mut Value);
    let changes: [(&str, Change); 8] = [
        ("changes a field a owns", |v| v["data"]["x"] = json!("changed")),
        ("adds a field", |v| v["data"]["w"] = json!("4")),
        ("removes the only field b owns", |v| {
            v["data"].as_object_mut().unwrap().remove("z");
        }),
        ("removes a's labels", |v| {
            v["metadata"].as_object_mut().unwrap().remove("labels");
        }),
        ("changes only the status", |v| v["status"]["phase"] = json!("Running")),
        ("changes nothing", |_| {}),
        ("sends no record and changes a field", |v| {
            v["metadata"].as_object_mut().unwrap().remove("managedFields");
            v["data"]["y"] = json!("changed");
        }),
        ("takes every field", |v| {
            v["data"] = json!({"q": "1"});
            v["metadata"].as_object_mut().unwrap().remove("labels");
            v.as_object_mut().unwrap().remove("status");
        }),
    ];
    let writers = [writer("a", &lists), writer("b", &lists), writer("c", &lists), status_writer("s")];
    for w in &writers {
        for (what, change) in &changes {
            let mut new = old.clone();
            change(&mut new);
            let mut folded = new.clone();
            w.record_update(Some(&old), &mut folded);
            let mut decoded = new.clone();
            let diff = w.diff(&old, &decoded);
            w.record_by_decoding(old.at("/metadata/managedFields"), None, diff, &mut decoded);
            assert_eq!(folded, decoded, "{} {what}", w.manager);
            assert!(folded["metadata"]["managedFields"].is_array(), "{} {what}: {folded}", w.manager);
            // Changed as stored JSON, the same record, folded (never decoded whole).
            let as_json = recorded_as_json(w, &old, &new);
            assert_eq!(as_json, (folded.at("/metadata/managedFields").cloned(), true), "{} {what}", w.manager);
            // And the fold itself did it (no fallback to the full decoding).
            let mut list = old["metadata"]["managedFields"].as_array().unwrap().clone();
            let mut diff = w.diff(&old, &new);
            if !diff.is_empty() {
                assert!(w.fold_in_place(&mut list, &mut diff), "{} {what}: folded in place", w.manager);
                assert_eq!(Some(&Value::Array(list)), folded.at("/metadata/managedFields"), "{} {what}", w.manager);
            }
        }
    }
    // An applier's entry gives up what an update takes, and an entry the fold cannot read
    // leaves it to the full decoding; so do more updaters than are kept.
    let mut applied = old.clone();
    applied["metadata"]["managedFields"].as_array_mut().unwrap().push(json!({
        "manager": "k", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:data": {"f:x": {}}}}));
    let mut malformed = old.clone();
    malformed["metadata"]["managedFields"].as_array_mut().unwrap().push(json!({"operation": "Delete"}));
    let mut crowded = old.clone();
    for i in 0..MAX_UPDATE_ENTRIES {
        crowded["metadata"]["managedFields"].as_array_mut().unwrap().push(json!({
            "manager": format!("m{i}"), "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
            "time": format!("2026-01-{:02}T00:00:00Z", i + 1), "fieldsV1": {"f:data": {format!("f:n{i}"): {}}}}));
    }
    for (what, start, in_place) in
        [("apply", &applied, true), ("malformed", &malformed, false), ("crowded", &crowded, false)]
    {
        let mut new = start.clone();
        new["data"]["x"] = json!("taken");
        let w = writer("c", &lists);
        let mut folded = new.clone();
        w.record_update(Some(start), &mut folded);
        let mut decoded = new.clone();
        w.record_by_decoding(start.at("/metadata/managedFields"), None, w.diff(start, &new), &mut decoded);
        assert_eq!(folded, decoded, "{what}");
        let mut list = start["metadata"]["managedFields"].as_array().unwrap().clone();
        assert_eq!(w.fold_in_place(&mut list, &mut w.diff(start, &new)), in_place, "{what}");
        let as_json = recorded_as_json(&w, start, &new);
        assert_eq!(as_json, (folded.at("/metadata/managedFields").cloned(), in_place), "{what}");
    }
    let owners_after = |start: &Value| {
        let mut new = start.clone();
        new["data"]["x"] = json!("taken");
        writer("c", &lists).record_update(Some(start), &mut new);
        owners(&new)
    };
    let after = owners_after(&applied);
    assert!(!after.iter().any(|(m, _, _)| m == "k"), "the applier owned only x: {after:?}");
    assert!(owners_after(&crowded).iter().any(|(m, _, _)| m == "ancient-changes"), "the oldest updaters merge");
    // The fold left the entries it did not reach as they were, byte for byte.
    let mut new = old.clone();
    new["data"]["w"] = json!("4");
    writer("c", &lists).record_update(Some(&old), &mut new);
    let entries = new["metadata"]["managedFields"].as_array().unwrap();
    assert_eq!(&entries[..2], &old["metadata"]["managedFields"].as_array().unwrap()[..]);
    assert_eq!(entries[2]["manager"], "c");
}

/// An entry written straight out as JSON is what serialising its decoded form writes,
/// escapes and all.
#[test]
fn entries_written_as_json_are_their_serialised_form() {
    let mut set = FieldSet::default();
    set.insert(&["f:spec".into(), "f:containers".into(), r#"k:{"name":"c\"q"}"#.into(), "f:image".into()]);
    set.insert(&["f:spec".into(), "f:containers".into(), r#"k:{"name":"c\"q"}"#.into()]);
    set.insert(&["f:metadata".into(), "f:labels".into(), "f:a\u{1}b\\é".into()]);
    set.insert(&["f:metadata".into()]);
    for (manager, subresource, time) in
        [("kubelet", "status", Some("2026-11-25T00:00:00Z")), ("a \"quoted\"\n one", "", None)]
    {
        let e = Entry {
            manager: manager.into(),
            operation: "Update".into(),
            api_version: "v1".into(),
            time: time.map(str::to_string),
            subresource: subresource.into(),
            set: set.clone(),
        };
        let mut written = Vec::new();
        e.write_json(&mut written);
        assert_eq!(String::from_utf8(written).unwrap(), serde_json::to_string(&e.to_json()).unwrap());
    }
}

/// A create's record made as JSON (the object carrying none) is the record made in the
/// object, including none at all for an object with no field anyone owns.
#[test]
fn a_create_recorded_as_json_is_the_record_made_in_the_object() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}]}],
                 "tolerations": [{"key": "k", "operator": "Exists"}]}});
    let bare = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "uid": "u"}});
    for obj in [cm(json!({"a": "1"})), pod, bare] {
        let w = writer("creator", &lists);
        let mut full = obj.clone();
        w.record_update(None, &mut full);
        let mut cut = obj.clone();
        let got = match w.record_update_raw(&json!({}), &mut cut, b"[]").unwrap() {
            Recorded::Json(j) => Some(serde_json::from_slice::<Value>(&j).unwrap()),
            Recorded::Unchanged | Recorded::Gone => None,
            Recorded::InObject => panic!("an empty record is always folded"),
        };
        assert_eq!(got.as_ref(), full.at("/metadata/managedFields"), "{obj}");
        full["metadata"].as_object_mut().unwrap().remove("managedFields");
        assert_eq!(cut, full, "the object itself is the same");
    }
}
