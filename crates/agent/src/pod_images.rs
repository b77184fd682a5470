//! A pod's images: `imagePullPolicy`, the pod's `imagePullSecrets`, the pull back-off and
//! the pod events, between the pod sync loop and the [`Puller`].
//!
//! The sync loop asks [`PodImages::ensure`] just before it creates a container. As the
//! kubelet does: `Never` never pulls; `IfNotPresent` pulls only a missing image; `Always`
//! pulls (at least the manifest) at every container start. A failed pull is `ErrImagePull`,
//! then `ImagePullBackOff` until the back-off (10 s doubling to 300 s, per pod and image)
//! has passed; events `Pulling`, `Pulled`, `Failed` and `BackOff` are worded as the kubelet
//! words them. Back-off state is in memory only: an agent restart pulls again at once,
//! as a kubelet restart does.
//!
//! Credentials: the pod's `imagePullSecrets` (read from the API in the pod's own tenant
//! and namespace; `kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg`), then the
//! node's credentials file; never logged, never written into an event.
//!
//! An image on the node is not a licence to run it (Kubernetes' KEP-2535, always on here):
//! the store remembers which credentials pulled each image (`pulled-by.json`, salted
//! fingerprints, never the secrets). An image pulled with a pod's private credentials is
//! used without a pull only by pods holding one of those credentials; any other pod, even
//! with `IfNotPresent`, asks the registry again (only the manifest moves), and with `Never`
//! is refused. Images pulled anonymously or with the node's own credentials, and images
//! imported by the node's administrator, are for every pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use client::{Client, Resource, Scope, Tenant};
use serde_json::{Value, json};

use sha2::{Digest as _, Sha256};

use crate::os::write_atomic;
use crate::pull::{Credential, Keyring, Puller, RegistryConfig, seconds_since};
use crate::reference::{Digest, Reference};

/// The record of a pull anyone may reuse (anonymous, or the node's own credentials).
const PUBLIC: &str = "public";

#[derive(Debug, thiserror::Error)]
pub enum PullRecordError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// Which credentials pulled which manifest, on disk beside the image store.
pub struct PullRecords {
    path: PathBuf,
    /// Fingerprints are salted per node, so the file says nothing about the secrets even
    /// to someone who can read it and guess passwords.
    salt: Vec<u8>,
    lock: Mutex<()>,
}

impl PullRecords {
    pub fn open(dir: &std::path::Path) -> Result<PullRecords, PullRecordError> {
        let io = |what, path: &std::path::Path| {
            let path = path.to_owned();
            move |source| PullRecordError::Io { what, path, source }
        };
        let salt_path = dir.join("pull-salt");
        let salt = match std::fs::read(&salt_path) {
            Ok(s) if s.len() >= 32 => s,
            _ => {
                let mut salt = vec![0u8; 32];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut salt))
                    .map_err(io("reading", std::path::Path::new("/dev/urandom")))?;
                write_atomic(&salt_path, &salt).map_err(io("writing", &salt_path))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&salt_path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io("securing", &salt_path))?;
                salt
            }
        };
        Ok(PullRecords { path: dir.join("pulled-by.json"), salt, lock: Mutex::new(()) })
    }

    pub fn fingerprint(&self, registry: &str, c: &Credential) -> String {
        let mut h = Sha256::new();
        for part in [&self.salt[..], registry.as_bytes(), c.username.as_bytes(), c.password.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        Digest::from_sha256(&h.finalize()).hex().to_string()
    }

    fn read(&self) -> BTreeMap<String, BTreeSet<String>> {
        std::fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// May a pod holding `fingerprints` use `manifest` without asking the registry?
    pub fn allows(&self, manifest: &Digest, fingerprints: &[String]) -> bool {
        match self.read().get(manifest.as_str()) {
            // Never pulled: imported by the node's administrator.
            None => true,
            Some(who) => who.contains(PUBLIC) || fingerprints.iter().any(|f| who.contains(f)),
        }
    }

    pub fn record(&self, manifest: &Digest, who: &str) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = self.read();
        if all.entry(manifest.to_string()).or_default().insert(who.to_string()) {
            let bytes = serde_json::to_vec_pretty(&all).unwrap_or_default();
            if let Err(e) = write_atomic(&self.path, &bytes) {
                tracing::warn!(error = %e, "recording who pulled an image");
            }
        }
    }
}

const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Back-off entries of pods long gone are forgotten after this.
const FORGET: Duration = Duration::from_secs(3600);

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Kubernetes' default pull policy for an image (the API server stores it on create; this
/// covers pods written before it did).
pub fn default_pull_policy(image: &str) -> &'static str {
    match Reference::parse(image) {
        Ok(r) if r.digest.is_none() && r.tag.as_deref().is_none_or(|t| t == "latest") => "Always",
        _ => "IfNotPresent",
    }
}

struct Failure {
    failures: u32,
    until: Instant,
    message: String,
    /// The back-off events of this failure have been posted.
    reported: bool,
}

/// Why a container cannot be created yet: its waiting reason and message. Its events are
/// posted already.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

pub struct PodImages {
    puller: Arc<Puller>,
    client: Client,
    node_name: String,
    config: RegistryConfig,
    records: PullRecords,
    /// (pod UID, image) → the last failure.
    failures: Mutex<HashMap<(String, String), Failure>>,
}

impl PodImages {
    pub fn new(
        puller: Arc<Puller>,
        client: Client,
        node_name: &str,
        config: RegistryConfig,
    ) -> Result<PodImages, PullRecordError> {
        let records = PullRecords::open(puller.store().root())?;
        Ok(PodImages {
            puller,
            client,
            node_name: node_name.into(),
            config,
            records,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Makes `container`'s image present as its pull policy asks. Runs on a blocking
    /// thread of the agent's runtime (the pod sync's), waiting for the pull there.
    pub fn ensure(&self, pod: &Value, container: &Value) -> Result<(), Waiting> {
        let image = text(container, "/image");
        let policy = match text(container, "/imagePullPolicy") {
            "" => default_pull_policy(image),
            p => p,
        };
        let reference = match Reference::parse(image) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("Failed to apply default image tag {image:?}: {e}");
                self.event(pod, "Warning", "InspectFailed", &message);
                return Err(Waiting { reason: "InvalidImageName".into(), message });
            }
        };
        let Ok(present) = self.puller.store().resolve(image) else {
            if policy == "Never" {
                // The sync's `ErrImageNeverPull`.
                return Ok(());
            }
            return self.pull(pod, image, &reference);
        };
        if policy == "Always" {
            return self.pull(pod, image, &reference);
        }
        let (credentials, _) = self.credentials(pod, &reference, false);
        let fingerprints: Vec<String> =
            credentials.iter().map(|c| self.records.fingerprint(&reference.registry, c)).collect();
        if self.records.allows(&present.manifest_digest, &fingerprints) {
            let message = format!("Container image {image:?} already present on machine");
            self.event_in_background(pod, "Normal", "Pulled", message);
            return Ok(());
        }
        if policy == "Never" {
            let message = format!(
                "Container image {image:?} is on the node, pulled with credentials this pod does not have, \
                 and the pull policy is Never"
            );
            // The sync posts the event, as for a missing image.
            return Err(Waiting { reason: "ErrImageNeverPull".into(), message });
        }
        // The registry decides whether this pod's credentials reach the image.
        self.pull(pod, image, &reference)
    }

    fn pull(&self, pod: &Value, image: &str, reference: &Reference) -> Result<(), Waiting> {
        let key = (text(pod, "/metadata/uid").to_string(), image.to_string());
        let now = Instant::now();
        {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            failures.retain(|_, f| now.duration_since(f.until) < FORGET || f.until > now);
            if let Some(f) = failures.get_mut(&key)
                && now < f.until
            {
                if !f.reported {
                    f.reported = true;
                    self.event(pod, "Normal", "BackOff", &format!("Back-off pulling image {image:?}"));
                    self.event(pod, "Warning", "Failed", "Error: ImagePullBackOff");
                }
                return Err(Waiting {
                    reason: "ImagePullBackOff".into(),
                    message: format!("Back-off pulling image {image:?}: ErrImagePull: {}", f.message),
                });
            }
        }
        self.event(pod, "Normal", "Pulling", &format!("Pulling image {image:?}"));
        let start = Instant::now();
        let (credentials, own) = self.credentials(pod, reference, true);
        let handle = tokio::runtime::Handle::current();
        match handle.block_on(self.puller.pull(reference, &credentials)) {
            Ok(pulled) => {
                self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                let who = match pulled.credential {
                    Some(i) if i < own => self.records.fingerprint(&reference.registry, &credentials[i]),
                    _ => PUBLIC.to_string(),
                };
                self.records.record(&pulled.image.manifest_digest, &who);
                let took = seconds_since(start);
                self.event(
                    pod,
                    "Normal",
                    "Pulled",
                    &format!(
                        "Successfully pulled image {image:?} in {took} ({took} including waiting). Image size: {} bytes.",
                        pulled.image.size()
                    ),
                );
                tracing::info!(image, took, "pulled");
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(image, error = %message, "pull failed");
                let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                let n = failures.get(&key).map_or(0, |f| f.failures);
                let delay = BACKOFF_BASE.saturating_mul(1u32 << n.min(16)).min(BACKOFF_MAX);
                failures.insert(
                    key,
                    Failure {
                        failures: n + 1,
                        until: Instant::now() + delay,
                        message: message.clone(),
                        reported: false,
                    },
                );
                drop(failures);
                self.event(pod, "Warning", "Failed", &format!("Failed to pull image {image:?}: {message}"));
                self.event(pod, "Warning", "Failed", "Error: ErrImagePull");
                Err(Waiting { reason: "ErrImagePull".into(), message })
            }
        }
    }

    /// The pod's pull secrets' credentials for `reference`, then the node's. A secret that
    /// cannot be read is skipped (with an event), as the kubelet does: the pull may still
    /// work anonymously.
    /// Returns them and how many of them are the pod's own (they come first).
    fn credentials(&self, pod: &Value, reference: &Reference, report: bool) -> (Vec<Credential>, usize) {
        let names: Vec<&str> = pod
            .pointer("/spec/imagePullSecrets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|s| text(s, "/name"))
            .filter(|n| !n.is_empty())
            .collect();
        let scope = Scope {
            tenant: Tenant::Named(text(pod, "/metadata/tenant").to_string()),
            namespace: Some(text(pod, "/metadata/namespace").to_string()),
        };
        let secrets = Resource::new("", "v1", "secrets", true);
        let handle = tokio::runtime::Handle::current();
        let mut keyring = Keyring::default();
        let mut missing = Vec::new();
        for name in names {
            let secret = match handle.block_on(self.client.get(&secrets, &scope, name)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(secret = name, error = %e, "reading an image pull secret");
                    missing.push(name);
                    continue;
                }
            };
            let key = match text(&secret, "/type") {
                "kubernetes.io/dockerconfigjson" => ".dockerconfigjson",
                "kubernetes.io/dockercfg" => ".dockercfg",
                _ => {
                    missing.push(name);
                    continue;
                }
            };
            let decoded = base64::engine::general_purpose::STANDARD.decode(text(&secret, &format!("/data/{key}")));
            match decoded
                .map_err(|e| e.to_string())
                .and_then(|b| keyring.add_docker_config(&b).map_err(|e| e.to_string()))
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(secret = name, error = %e, "an image pull secret is malformed");
                    missing.push(name);
                }
            }
        }
        if report && !missing.is_empty() {
            let message = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                missing.join(", ")
            );
            self.event(pod, "Warning", "FailedToRetrieveImagePullSecret", &message);
        }
        let mut out = keyring.lookup(reference);
        let own = out.len();
        for c in self.config.node_credentials(reference) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        (out, own)
    }

    /// The node's API client (its own identity).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn event(&self, pod: &Value, type_: &str, reason: &str, message: &str) {
        let handle = tokio::runtime::Handle::current();
        handle.block_on(post_event(&self.client, &self.node_name, pod, type_, reason, message));
    }

    /// As [`PodImages::event`], without waiting for the API server: for the event of every
    /// container start (`Pulled`, image present), which held each start for an API write's
    /// round trip, many milliseconds while a burst of pods keeps the API server busy. It may
    /// be stored after an event the same pass posts later (its timestamp is still the
    /// earlier one, which is what `kubectl describe` orders by).
    fn event_in_background(&self, pod: &Value, type_: &'static str, reason: &'static str, message: String) {
        let (client, node, pod) = (self.client.clone(), self.node_name.clone(), pod.clone());
        tokio::runtime::Handle::current().spawn(async move {
            post_event(&client, &node, &pod, type_, reason, &message).await;
        });
    }
}

/// Posts a core Event about `pod` in its own tenant and namespace, as the kubelet's
/// recorder would (source component `atoll-agent`).
pub async fn post_event(client: &Client, node: &str, pod: &Value, type_: &str, reason: &str, message: &str) {
    let now = crate::node::seconds_time(std::time::SystemTime::now());
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{}.", text(pod, "/metadata/name"))},
        "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": text(pod, "/metadata/name"),
                           "namespace": text(pod, "/metadata/namespace"), "uid": text(pod, "/metadata/uid")},
        "reason": reason, "message": message, "type": type_, "count": 1,
        "source": {"component": "atoll-agent", "host": node},
        "firstTimestamp": now, "lastTimestamp": now,
        "eventTime": Value::Null, "reportingComponent": "atoll-agent", "reportingInstance": node,
    });
    let scope = Scope {
        tenant: Tenant::Named(text(pod, "/metadata/tenant").to_string()),
        namespace: Some(text(pod, "/metadata/namespace").to_string()),
    };
    if let Err(e) = client.create(&Resource::new("", "v1", "events", true), &scope, &event).await {
        tracing::warn!(pod = text(pod, "/metadata/name"), error = %e, "posting an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_follows_the_tag() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("127.0.0.1:5000/app"), "Always");
        assert_eq!(default_pull_policy(&format!("app@sha256:{}", "a".repeat(64))), "IfNotPresent");
    }

    #[test]
    fn an_image_pulled_with_private_credentials_is_only_for_their_holders() {
        let dir = tempfile::tempdir().unwrap();
        let records = PullRecords::open(dir.path()).unwrap();
        let (a, b) = (
            Credential { username: "a".into(), password: "secret-a".into() },
            Credential { username: "b".into(), password: "secret-b".into() },
        );
        let (fa, fb) = (records.fingerprint("reg.io", &a), records.fingerprint("reg.io", &b));
        assert_ne!(fa, records.fingerprint("other.io", &a), "fingerprints are per registry");
        let private = Digest::from_sha256(&[1; 32]);
        let public = Digest::from_sha256(&[2; 32]);
        let imported = Digest::from_sha256(&[3; 32]);
        records.record(&private, &fa);
        records.record(&public, PUBLIC);
        assert!(records.allows(&private, std::slice::from_ref(&fa)));
        assert!(!records.allows(&private, std::slice::from_ref(&fb)));
        assert!(!records.allows(&private, &[]));
        assert!(records.allows(&public, &[]) && records.allows(&imported, &[]));
        // The salt survives a reopen (the records stay meaningful), and no secret is on disk.
        let again = PullRecords::open(dir.path()).unwrap();
        assert_eq!(again.fingerprint("reg.io", &a), fa);
        let text = std::fs::read_to_string(dir.path().join("pulled-by.json")).unwrap();
        assert!(!text.contains("secret-a"), "{text}");
        assert!(again.allows(&private, &[fa]));
    }
}
