//! Server-side apply through the registry: read the object, let `managed` merge the
//! configuration in, write the result if nothing changed in between (else start over), or
//! create the object when it does not exist.

use api::json::At;
use serde_json::Value;

use super::{Registry, RegistryError, Scope, WriteOptions, object};
use crate::managed::ApplyError;

/// How many times an apply starts over when the object changes under it.
const ATTEMPTS: usize = 8;

impl Registry {
    /// Applies `config` as `opts.field_manager` (required) to the object `name`. Returns the
    /// stored object and whether it was created.
    pub async fn apply(
        &self,
        scope: &Scope,
        name: &str,
        mut config: Value,
        subresource: Option<&str>,
        force: bool,
        opts: &WriteOptions,
    ) -> Result<(Value, bool), ApplyError> {
        let manager = opts
            .field_manager
            .clone()
            .ok_or_else(|| ApplyError::Invalid("fieldManager is required for apply patch".into()))?;
        self.check_type(&mut config)?;
        match config.at("/metadata/name") {
            None | Some(Value::Null) => {
                object::as_object(&mut config)?
                    .entry("metadata")
                    .or_insert_with(|| Value::Object(Default::default()))
                    .as_object_mut()
                    .ok_or_else(|| RegistryError::BadRequest("metadata must be an object".into()))?
                    .insert("name".into(), Value::String(name.into()));
            }
            Some(Value::String(n)) if n == name => {}
            Some(other) => {
                return Err(RegistryError::BadRequest(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    other.as_str().unwrap_or_default()
                ))
                .into());
            }
        }
        if let (true, Some(ns), Some(Value::String(given))) =
            (self.info().namespaced, scope.namespace.as_deref(), config.at("/metadata/namespace"))
            && given != ns
        {
            return Err(RegistryError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            )
            .into());
        }
        // A resource version in the configuration is a precondition, as in any patch.
        let pinned = config.at("/metadata/resourceVersion").is_some_and(|v| !v.is_null());
        let api_version = self.info().api_version();
        let list_type = |p: &[&str]| self.strategy.list_type(p);
        let write = WriteOptions { applied: true, ..opts.clone() };
        for _ in 0..ATTEMPTS {
            let now = object::now_rfc3339();
            let writer = self.writer(&manager, subresource, &api_version, &now, &list_type);
            match self.get(scope, name).await {
                Ok(live) => {
                    let mut merged = writer.apply(Some(&live), &config, force)?;
                    // Written only over the version it was computed from.
                    if !pinned {
                        merged["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
                    }
                    match self.update_with(scope, name, merged, subresource, &write).await {
                        Ok(obj) => return Ok((obj, false)),
                        Err(RegistryError::Conflict { .. }) if !pinned => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(RegistryError::NotFound { .. }) if subresource.is_none() => {
                    let obj = writer.apply(None, &config, force)?;
                    match self.create_with(scope, obj, &write).await {
                        Ok(obj) => return Ok((obj, true)),
                        Err(RegistryError::AlreadyExists { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Conflict {
            resource: self.info().resource.clone(),
            group: self.info().group.clone(),
            name: name.into(),
            why: "the object keeps changing".into(),
        }
        .into())
    }
}
