//! `/openapi/v2` in the protobuf encoding kubectl 1.27 and 1.28 ask for (the gnostic
//! `openapi.v2.Document` message). It carries the paths and operations with their
//! `x-kubernetes-group-version-kind` and query parameters, which is what those kubectl
//! versions read to learn that the server validates fields itself, and the schema
//! definitions (converted from the v3 documents' components) that their `explain` and
//! client-side apply walk.

use std::collections::BTreeMap;

use api::json::At;
use serde_json::Value;

use crate::registry::{Registry, ResourceInfo};

/// The media type of the protobuf document.
pub const MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// A minimal protobuf writer: enough for strings, booleans and nested messages.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) -> &mut Self {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
        self
    }
    fn boolean(&mut self, field: u32, b: bool) -> &mut Self {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
        self
    }
    fn message(&mut self, field: u32, m: Pb) -> &mut Self {
        self.bytes(field, &m.0);
        self
    }
}

fn msg(build: impl FnOnce(&mut Pb)) -> Pb {
    let mut pb = Pb::default();
    build(&mut pb);
    pb
}

/// `NamedAny` with a YAML value (how vendor extensions are carried).
fn extension(name: &str, yaml: &str) -> Pb {
    msg(|p| {
        p.string(1, name).message(
            2,
            msg(|a| {
                a.string(2, yaml);
            }),
        );
    })
}

fn query_parameter(name: &str) -> Pb {
    // ParametersItem.parameter → Parameter.non_body_parameter →
    // NonBodyParameter.query_parameter_sub_schema
    let qp = msg(|q| {
        q.string(2, "query").string(4, name).string(6, "string").boolean(20, true);
    });
    let non_body = msg(|n| {
        n.message(3, qp);
    });
    let parameter = msg(|p| {
        p.message(2, non_body);
    });
    msg(|i| {
        i.message(1, parameter);
    })
}

fn operation(info: &ResourceInfo, action: &str, id: &str) -> Pb {
    let mut params = vec!["pretty"];
    if matches!(action, "post" | "put" | "patch" | "delete" | "deletecollection") {
        params.push("dryRun");
    }
    if matches!(action, "post" | "put" | "patch") {
        params.extend(["fieldManager", "fieldValidation"]);
    }
    let gvk = format!("group: {:?}\nkind: {}\nversion: {}\n", info.group, info.kind, info.version);
    msg(|op| {
        op.string(5, id);
        for p in params {
            op.message(8, query_parameter(p));
        }
        let ok = msg(|r| {
            r.string(1, "200").message(
                2,
                msg(|v| {
                    v.message(
                        1,
                        msg(|resp| {
                            resp.string(1, "OK");
                        }),
                    );
                }),
            );
        });
        op.message(
            9,
            msg(|rs| {
                rs.message(1, ok);
            }),
        );
        op.message(13, extension("x-kubernetes-action", &format!("{action}\n")));
        op.message(13, extension("x-kubernetes-group-version-kind", &gvk));
    })
}

/// A v3 (JSON) schema as a v2 `Schema` message: references, types, formats, descriptions,
/// required fields, properties, items, additional properties, `allOf`, and the
/// `x-kubernetes-*` extensions.
fn schema(v: &Value) -> Pb {
    msg(|p| {
        let Some(map) = v.as_object() else { return };
        if let Some(r) = map.get("$ref").and_then(Value::as_str) {
            p.string(1, &r.replace("#/components/schemas/", "#/definitions/"));
        }
        for (field, key) in [(2, "format"), (4, "description")] {
            if let Some(text) = map.get(key).and_then(Value::as_str) {
                p.string(field, text);
            }
        }
        for r in map.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            p.string(19, r);
        }
        match map.get("additionalProperties") {
            Some(Value::Bool(b)) => {
                p.message(
                    21,
                    msg(|a| {
                        a.key(2, 0);
                        a.varint(u64::from(*b));
                    }),
                );
            }
            Some(inner @ Value::Object(_)) => {
                p.message(
                    21,
                    msg(|a| {
                        a.message(1, schema(inner));
                    }),
                );
            }
            _ => {}
        }
        if let Some(t) = map.get("type").and_then(Value::as_str) {
            p.message(
                22,
                msg(|ty| {
                    ty.string(1, t);
                }),
            );
        }
        if let Some(items) = map.get("items") {
            p.message(
                23,
                msg(|i| {
                    i.message(1, schema(items));
                }),
            );
        }
        for inner in map.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            p.message(24, schema(inner));
        }
        if let Some(props) = map.get("properties").and_then(Value::as_object) {
            p.message(
                25,
                msg(|ps| {
                    for (name, inner) in props {
                        ps.message(
                            1,
                            msg(|n| {
                                n.string(1, name).message(2, schema(inner));
                            }),
                        );
                    }
                }),
            );
        }
        for (name, value) in map.iter().filter(|(k, _)| k.starts_with("x-kubernetes-")) {
            // JSON is YAML, which is how extensions are carried.
            p.message(31, extension(name, &value.to_string()));
        }
    })
}

/// The encoded document for all registered kinds.
pub fn document(registries: &[&Registry]) -> Vec<u8> {
    let kinds: Vec<&ResourceInfo> = registries.iter().map(|r| r.info()).collect();
    let mut definitions: BTreeMap<String, Value> = BTreeMap::new();
    let mut gvs: Vec<(&str, &str)> = kinds.iter().map(|i| (i.group.as_str(), i.version.as_str())).collect();
    gvs.sort();
    gvs.dedup();
    for (g, v) in gvs {
        let doc = crate::openapi::group_version_doc(registries, g, v);
        if let Some(Value::Object(schemas)) = doc.at("/components/schemas") {
            definitions.extend(schemas.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let mut paths = Pb::default();
    for info in kinds {
        let base = if info.group.is_empty() {
            format!("/api/{}", info.version)
        } else {
            format!("/apis/{}/{}", info.group, info.version)
        };
        let collection = if info.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", info.resource)
        } else {
            format!("{base}/{}", info.resource)
        };
        let id = |verb: &str| format!("{verb}{}{}", info.group.replace('.', ""), info.kind);
        // PathItem fields: get 2, put 3, post 4, delete 5, patch 8.
        let collection_item = msg(|pi| {
            pi.message(2, operation(info, "list", &id("list")))
                .message(4, operation(info, "post", &id("create")))
                .message(5, operation(info, "deletecollection", &id("deletecollection")));
        });
        let item = msg(|pi| {
            pi.message(2, operation(info, "get", &id("read")))
                .message(3, operation(info, "put", &id("replace")))
                .message(5, operation(info, "delete", &id("delete")))
                .message(8, operation(info, "patch", &id("patch")));
        });
        paths.message(
            2,
            msg(|n| {
                n.string(1, &collection).message(2, collection_item);
            }),
        );
        paths.message(
            2,
            msg(|n| {
                n.string(1, &format!("{collection}/{{name}}")).message(2, item);
            }),
        );
    }
    let mut doc = Pb::default();
    doc.string(1, "2.0").message(
        2,
        msg(|i| {
            i.string(1, "Atoll").string(2, &format!("v1.33.0-atoll.{}", env!("CARGO_PKG_VERSION")));
        }),
    );
    doc.message(8, paths);
    doc.message(
        9,
        msg(|d| {
            for (name, v) in &definitions {
                d.message(
                    1,
                    msg(|n| {
                        n.string(1, name).message(2, schema(v));
                    }),
                );
            }
        }),
    );
    doc.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_encode_as_protobuf_does() {
        let mut p = Pb::default();
        p.varint(300);
        assert_eq!(p.0, vec![0xac, 0x02]);
        let mut p = Pb::default();
        p.string(1, "2.0");
        assert_eq!(p.0, vec![0x0a, 3, b'2', b'.', b'0']);
        let mut p = Pb::default();
        p.boolean(20, true);
        assert_eq!(p.0, vec![0xa0, 0x01, 1]);
    }
}
