//! The pod sync loop: the pods bound to this node (field selector `spec.nodeName=<node>`,
//! every tenant) are converged onto the runtime, level-triggered, on the controllers
//! crate's runtime.
//!
//! One reconcile looks at one pod key and the runtime's state on disk, never at what
//! happened before: it removes sandboxes of other incarnations (another UID), makes the
//! sandbox and the containers that are missing, restarts exited ones as the restart policy
//! and the back-off allow, and writes the status it derives from the runtime through the
//! status subresource (only when it changed). A pod being deleted is stopped with its
//! grace period, its sandbox removed, then its object deleted with grace 0. Sandboxes no
//! pod claims (the agent was down while their pod went) are swept.
//!
//! Restart counts survive the agent: each attempt's log is `<logs>/<ns>_<name>_<uid>/
//! <container>/<attempt>.log`, as the kubelet lays them out, and the runtime keeps the path.
//! Runtime calls block (grace periods), so they run on blocking threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use client::{Client, DeleteParams, Resource, Scope, Tenant};
use controllers::{Action, ApiSource, Cache, Controller, ObjectKey, Reconciler, Watcher};
use serde_json::{Value, json};

use crate::images::ImageStore;
use crate::net::PodNetwork;
use crate::node::seconds_time;
use crate::pod_images::PodImages;
use crate::runtime::vm::{self, VmSpec};
use crate::runtime::{
    ContainerSpec, ContainerState, ContainerStatus, ImageRootfs, NetworkMode, Resources, Runtime, RuntimeError,
    SandboxSpec,
};

/// How often a live pod's containers are looked at (exits are not events).
pub const POLL: Duration = Duration::from_secs(1);
/// A pod's grace period when none is given (Kubernetes' default).
const DEFAULT_GRACE: i64 = 30;
/// Grace for containers of pods that vanished from the API.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("API: {0}")]
    Api(#[from] client::Error),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    #[error("a blocking task failed: {0}")]
    Join(String),
}

pub fn pods() -> Resource {
    Resource::new("", "v1", "pods", true)
}

/// Restart back-off: `base` doubling per restart up to `max` (Kubernetes: 10 s to 300 s).
#[derive(Clone, Copy, Debug)]
pub struct RestartBackoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff { base: Duration::from_secs(10), max: Duration::from_secs(300) }
    }
}

impl RestartBackoff {
    pub fn delay(&self, restarts: u32) -> Duration {
        self.base.saturating_mul(1u32 << restarts.min(16)).min(self.max)
    }
}

/// What the sync loop needs; shared by the reconciler, the sweep and the shutdown.
pub struct Node {
    pub name: String,
    pub host_ip: String,
    pub runtime: Arc<dyn Runtime>,
    /// `crun`: the scheme of `containerID`s.
    pub runtime_name: String,
    pub images: Arc<ImageStore>,
    pub network: Arc<dyn PodNetwork>,
    pub logs_dir: PathBuf,
    pub backoff: RestartBackoff,
    /// Registry pulls (policy, secrets, back-off, events); without it only images already
    /// in the store run.
    pub pulls: Option<Arc<PodImages>>,
    /// The VM runtime itself (also inside `runtime`), for what only VMs do: Actions'
    /// Reboot, Snapshot and Restore, and the snapshots in a VM pod's status.
    pub machines: Option<Arc<vm::VmRuntime>>,
    /// UIDs of pods an Action is working on: their sync passes wait (`crate::actions`).
    pub acting: std::sync::Mutex<std::collections::HashSet<String>>,
}

pub struct PodSync {
    client: Client,
    node: Arc<Node>,
    pods: Cache,
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn scope_of(key: &ObjectKey) -> Scope {
    Scope { tenant: Tenant::Named(key.tenant.clone()), namespace: key.namespace.clone() }
}

fn deleting(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

/// What one pass over a pod decided.
struct Outcome {
    status: Value,
    /// (reason, message) of Warning events to post.
    events: Vec<(String, String)>,
    requeue: Option<Duration>,
}

#[async_trait]
impl Reconciler for PodSync {
    type Key = ObjectKey;
    type Error = PodError;

    fn name(&self) -> &'static str {
        "pods"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, PodError> {
        let node = self.node.clone();
        let Some(pod) = self.pods.get(key) else {
            let key = key.clone();
            blocking(move || node.remove_pods_of(&key, None, ORPHAN_GRACE)).await?;
            return Ok(Action::Done);
        };
        let uid = text(&pod, "/metadata/uid").to_string();
        if deleting(&pod) {
            let grace = pod
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
                .unwrap_or(DEFAULT_GRACE)
                .max(0) as u64;
            let k = key.clone();
            blocking(move || node.remove_pods_of(&k, None, Duration::from_secs(grace))).await?;
            let params =
                DeleteParams { grace_period_seconds: Some(0), precondition_uid: Some(uid), ..DeleteParams::default() };
            match self.client.delete(&pods(), &scope_of(key), &key.name, &params).await {
                Ok(_) => tracing::info!(pod = %key, "stopped and deleted"),
                // Gone already, or a new pod of the same name (its own reconcile handles it).
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::Done);
        }
        let phase = text(&pod, "/status/phase");
        if phase == "Succeeded" || phase == "Failed" {
            // Terminal: never run again. Its containers stay (logs) until the pod goes, its
            // address is released now; other incarnations are cleaned up.
            let k = key.clone();
            blocking(move || {
                node.remove_pods_of(&k, Some(&uid), ORPHAN_GRACE)?;
                Ok(node.network.teardown(&uid)?)
            })
            .await?;
            return Ok(Action::Done);
        }
        let p = pod.clone();
        let began = std::time::Instant::now();
        let outcome = blocking(move || node.sync(&p)).await?;
        let sync_ms = began.elapsed().as_millis() as u64;
        for (reason, message) in &outcome.events {
            self.post_event(&pod, reason, message).await;
        }
        if pod.get("status") != Some(&outcome.status) {
            let mut updated = (*pod).clone();
            updated["status"] = outcome.status;
            let phase = text(&updated, "/status/phase").to_string();
            let began = std::time::Instant::now();
            match self.client.replace_subresource(&pods(), &scope_of(key), &key.name, "status", &updated).await {
                Ok(_) => {
                    let write_ms = began.elapsed().as_millis() as u64;
                    tracing::info!(pod = %key, phase, sync_ms, write_ms, "status written");
                }
                // The pod went meanwhile: its deletion event brings us back.
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(outcome.requeue.map_or(Action::Done, Action::RequeueAfter))
    }
}

impl PodSync {
    async fn post_event(&self, pod: &Value, reason: &str, message: &str) {
        crate::pod_images::post_event(&self.client, &self.node.name, pod, "Warning", reason, message).await;
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, PodError> + Send + 'static) -> Result<T, PodError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| PodError::Join(e.to_string()))?
}

/// A container attempt's number, from its log file's name (`3.log`).
pub(crate) fn attempt(c: &ContainerStatus) -> u32 {
    c.log_path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Kubernetes quantities as the runtime wants them: CPU in millicores.
pub fn cpu_millis(q: &str) -> Option<u64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    q.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| (v * 1000.0).round() as u64)
}

/// Memory in bytes (`128Mi`, `1G`, `1e3`, plain bytes).
pub fn memory_bytes(q: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    for (s, mult) in SUFFIXES {
        if let Some(n) = q.strip_suffix(s) {
            return n.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| (v * mult as f64) as u64);
        }
    }
    q.parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| v as u64)
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
}

/// The VM runtime's spec from `spec.virtualMachine` and its image's files (the topmost
/// layer that has a kernel wins). vCPUs and memory come from the VM's resources (limits,
/// else requests, else the API's defaults).
fn vm_spec(v: &Value, image: &ImageRootfs) -> Result<VmSpec, String> {
    let layer = image
        .layers
        .iter()
        .rev()
        .find(|l| [vm::KERNEL, vm::DISK, vm::DISK_QCOW2].iter().any(|f| l.join(f).is_file()))
        .ok_or_else(|| {
            format!("image {:?} is not a VM image: it has no {} and no disk", image.reference, vm::KERNEL)
        })?;
    let file = |rel: &str| Some(layer.join(rel)).filter(|p| p.is_file());
    let res = |what: &str| {
        v.pointer(&format!("/resources/limits/{what}"))
            .or_else(|| v.pointer(&format!("/resources/requests/{what}")))
            .and_then(Value::as_str)
    };
    let cpu = res("cpu").or(Some(api::vm::DEFAULT_CPU)).and_then(cpu_millis).unwrap_or(1000);
    let memory = res("memory").or(Some(api::vm::DEFAULT_MEMORY)).and_then(memory_bytes).unwrap_or(128 << 20);
    Ok(VmSpec {
        kernel: file(vm::KERNEL),
        initrd: file(vm::INITRD),
        disk: file(vm::DISK).or_else(|| file(vm::DISK_QCOW2)),
        cmdline: text(v, "/kernelCommandLine").to_string(),
        user_data: v.get("userData").and_then(Value::as_str).map(str::to_string),
        credentials: Default::default(),
        vcpus: cpu.div_ceil(1000).max(1) as u32,
        memory_mib: (memory >> 20).max(16),
    })
}

/// How a container of the pod stands, for the phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Never ran (image missing, not yet created).
    NotStarted,
    Running,
    /// Exited and will run again (back-off).
    Restarting,
    /// Exited for good, with this exit code.
    Done(i32),
}

impl Node {
    fn sandboxes_of(&self, key: &ObjectKey) -> Result<Vec<String>, RuntimeError> {
        Ok(self
            .runtime
            .list_sandboxes()?
            .into_iter()
            .filter(|s| {
                s.spec.tenant == key.tenant
                    && Some(&s.spec.namespace) == key.namespace.as_ref()
                    && s.spec.name == key.name
            })
            .map(|s| s.spec.id)
            .collect())
    }

    /// Stops and removes every sandbox of `key` except `keep`'s, and their networks.
    fn remove_pods_of(&self, key: &ObjectKey, keep: Option<&str>, grace: Duration) -> Result<(), PodError> {
        for id in self.sandboxes_of(key)? {
            if Some(id.as_str()) != keep {
                self.remove_sandbox(&id, grace)?;
            }
        }
        Ok(())
    }

    pub fn remove_sandbox(&self, id: &str, grace: Duration) -> Result<(), PodError> {
        match self.runtime.stop_sandbox(id, grace) {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // The network goes before the sandbox record: a failure in between leaves the
        // sandbox, so the next pass (or the sweep) finds it and finishes the job.
        self.network.teardown(id)?;
        self.runtime.remove_sandbox(id)?;
        tracing::info!(sandbox = id, "removed");
        Ok(())
    }

    /// One pass over a live pod: converge, then report.
    fn sync(&self, pod: &Value) -> Result<Outcome, PodError> {
        let key = ObjectKey::of(pod).unwrap_or_else(|| ObjectKey::new("", None, ""));
        let uid = text(pod, "/metadata/uid");
        if self.acting.lock().unwrap_or_else(|e| e.into_inner()).contains(uid) {
            // An Action is replacing or pausing its containers: report nothing in between.
            let status = pod.get("status").cloned().unwrap_or(Value::Null);
            return Ok(Outcome { status, events: Vec::new(), requeue: Some(POLL) });
        }
        // A VM pod's guest has no NIC yet (a tap on the pod network is later work), so it
        // gets no pod network either: no address is handed out that nothing answers on.
        let vm = pod.pointer("/spec/virtualMachine").filter(|v| v.is_object());
        // A VM-sandboxed container pod: its guest has no NIC either (yet).
        let sandboxed = pod.get("spec").is_some_and(api::vm::is_sandboxed);
        let attachment = match self.runtime.sandbox_status(uid) {
            Ok(_) if vm.is_some() || sandboxed => None,
            Ok(_) => self.network.attachment(uid),
            Err(RuntimeError::NotFound { .. }) => {
                // Other incarnations (another UID) go before this one's sandbox is made;
                // once it is, none can appear but by an agent restart, whose sweep removes
                // them. (Looking on every pass listed every sandbox on the node each time.)
                self.remove_pods_of(&key, Some(uid), ORPHAN_GRACE)?;
                let began = std::time::Instant::now();
                let attachment = if vm.is_some() || sandboxed {
                    crate::net::Attachment { mode: NetworkMode::Isolated, ip: None }
                } else {
                    self.network.setup(uid)?
                };
                let network_ms = began.elapsed().as_millis() as u64;
                let spec = SandboxSpec {
                    id: uid.to_string(),
                    name: key.name.clone(),
                    namespace: key.namespace.clone().unwrap_or_default(),
                    tenant: key.tenant.clone(),
                    hostname: pod
                        .pointer("/spec/hostname")
                        .and_then(Value::as_str)
                        .unwrap_or(&key.name)
                        .chars()
                        .take(63)
                        .collect(),
                    network: attachment.mode.clone(),
                    runtime_handler: match (vm.is_some(), sandboxed) {
                        (true, _) => vm::HANDLER.into(),
                        (false, true) => vm::sandbox::HANDLER.into(),
                        _ => String::new(),
                    },
                };
                self.runtime.run_sandbox(&spec)?;
                let total_ms = began.elapsed().as_millis() as u64;
                tracing::info!(pod = %key, sandbox = uid, network_ms, total_ms, "sandbox started");
                Some(attachment)
            }
            Err(e) => return Err(e.into()),
        };
        let policy = text(pod, "/spec/restartPolicy");
        let policy = if policy.is_empty() { "Always" } else { policy };
        let now = SystemTime::now();
        let old_statuses: Vec<Value> =
            pod.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut statuses = Vec::new();
        let mut standings = Vec::new();
        let mut events = Vec::new();
        let mut requeue: Option<Duration> = None;
        let mut soon = |d: Duration| requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
        // A VM pod's machine is its one container as far as status goes (kubectl's READY
        // 1/1, restarts, logs).
        let containers = match vm {
            Some(v) => vec![v.clone()],
            None => pod.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default(),
        };
        let all = self.runtime.list_containers(Some(uid))?;
        for c in &containers {
            let name = text(c, "/name");
            let image = text(c, "/image");
            let mut attempts: Vec<&ContainerStatus> = all.iter().filter(|s| s.name == name).collect();
            attempts.sort_by_key(|s| (attempt(s), s.created_at));
            // Older attempts than the previous one are of no use (`logs --previous` reads one).
            if attempts.len() > 2 {
                for old in attempts.drain(..attempts.len() - 2) {
                    self.runtime.remove_container(&old.id)?;
                }
            }
            let latest = attempts.last().copied();
            let previous = (attempts.len() == 2).then(|| attempts[0]);
            let old = old_statuses.iter().find(|s| text(s, "/name") == name);
            let old_waiting = old.map(|o| text(o, "/state/waiting/reason")).unwrap_or("");
            let mut waiting: Option<(String, String)> = None;
            let mut start_attempt: Option<u32> = None;
            match latest {
                None => start_attempt = Some(0),
                Some(s) if s.state == ContainerState::Created => {
                    // Created but never started (the agent stopped in between): start it.
                    self.runtime.start_container(&s.id)?;
                }
                Some(s) if s.state == ContainerState::Running => {
                    if s.ready == Some(false) {
                        // Booting: look again soon for the guest's ready marker.
                        soon(Duration::from_millis(250));
                    }
                }
                Some(s) => {
                    let code = s.exit_code.unwrap_or(-1);
                    let again = match policy {
                        "Never" => false,
                        "OnFailure" => code != 0,
                        _ => true,
                    };
                    if again {
                        let delay = self.backoff.delay(attempt(s));
                        let due = s.finished_at.unwrap_or(now) + delay;
                        match due.duration_since(now) {
                            Ok(left) if !left.is_zero() => {
                                waiting = Some((
                                    "CrashLoopBackOff".into(),
                                    format!("back-off {}s restarting failed container={name}", delay.as_secs()),
                                ));
                                soon(left);
                            }
                            _ => start_attempt = Some(attempt(s) + 1),
                        }
                    }
                }
            }
            let mut fresh: Option<ContainerStatus> = None;
            if let Some(n) = start_attempt {
                match self.container_spec(pod, c, n) {
                    Ok(spec) => {
                        let began = std::time::Instant::now();
                        let id = self.runtime.run_container(uid, &spec)?;
                        let total_ms = began.elapsed().as_millis() as u64;
                        tracing::info!(pod = %key, container = name, attempt = n, total_ms, "started");
                        fresh = Some(self.runtime.container_status(&id)?);
                        soon(POLL);
                    }
                    Err((reason, message)) => {
                        // The pull's own events are posted by `PodImages` as it goes.
                        let pull_reason = matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff");
                        if old_waiting != reason && !pull_reason {
                            events.push((reason.clone(), message.clone()));
                        }
                        waiting = Some((reason, message));
                        soon(POLL * 5);
                    }
                }
            }
            let (current, last) = match fresh {
                Some(f) => (Some(f), latest.cloned()),
                None => (latest.cloned(), previous.cloned()),
            };
            let restart_count = current.as_ref().map(attempt).unwrap_or(0);
            let scheme = match (vm.is_some(), sandboxed) {
                (true, _) => "qemu",
                (false, true) => vm::sandbox::HANDLER,
                _ => self.runtime_name.as_str(),
            };
            let container_id = |s: &ContainerStatus| format!("{scheme}://{}", s.id);
            let terminated = |s: &ContainerStatus| {
                json!({"terminated": {
                    "exitCode": s.exit_code.unwrap_or(-1),
                    "reason": s.reason.clone().unwrap_or_else(|| "Error".into()),
                    "startedAt": s.started_at.map(seconds_time),
                    "finishedAt": s.finished_at.map(seconds_time),
                    "containerID": container_id(s),
                }})
            };
            let (state, standing) = match (&waiting, &current) {
                (Some((reason, message)), cur) => (
                    json!({"waiting": {"reason": reason, "message": message}}),
                    if cur.is_some() { Standing::Restarting } else { Standing::NotStarted },
                ),
                (None, Some(s)) if matches!(s.state, ContainerState::Running | ContainerState::Created) => (
                    json!({"running": {"startedAt": seconds_time(s.started_at.unwrap_or(s.created_at))}}),
                    // A VM whose guest has not said it is up keeps the pod Pending.
                    if s.ready == Some(false) { Standing::NotStarted } else { Standing::Running },
                ),
                (None, Some(s)) => {
                    let code = s.exit_code.unwrap_or(-1);
                    let again = match policy {
                        "Never" => false,
                        "OnFailure" => code != 0,
                        _ => true,
                    };
                    (terminated(s), if again { Standing::Restarting } else { Standing::Done(code) })
                }
                (None, None) => (json!({"waiting": {"reason": "ContainerCreating"}}), Standing::NotStarted),
            };
            let running = standing == Standing::Running;
            let booting =
                current.as_ref().is_some_and(|c| c.state == ContainerState::Running && c.ready == Some(false));
            let mut status = json!({
                "name": name, "image": image, "imageID": "", "ready": running, "started": running || booting,
                "restartCount": restart_count, "state": state,
                "lastState": last.as_ref().filter(|_| current.is_some() && restart_count > 0).map(terminated)
                    .unwrap_or_else(|| json!({})),
            });
            if let Some(s) = &current {
                status["containerID"] = json!(container_id(s));
                if let Ok(img) = self.images.resolve(image) {
                    status["imageID"] = json!(img.image_ref());
                }
            }
            statuses.push(status);
            standings.push(standing);
        }
        let phase = if standings.contains(&Standing::NotStarted) {
            "Pending"
        } else if standings.iter().any(|s| matches!(s, Standing::Running | Standing::Restarting)) {
            "Running"
        } else if standings.iter().all(|s| *s == Standing::Done(0)) {
            "Succeeded"
        } else {
            "Failed"
        };
        if matches!(phase, "Pending" | "Running") {
            soon(POLL);
        }
        let ready = !standings.is_empty() && standings.iter().all(|s| *s == Standing::Running);
        let mut status = self.pod_status(pod, phase, ready, statuses, attachment.and_then(|a| a.ip), now);
        if let (Some(_), Some(machines)) = (vm, &self.machines) {
            let snapshots: Vec<Value> = machines
                .snapshots(uid)
                .into_iter()
                .map(|s| {
                    let at = std::time::UNIX_EPOCH + Duration::from_secs(s.created_unix);
                    json!({"name": s.name, "creationTime": seconds_time(at)})
                })
                .collect();
            if !snapshots.is_empty() {
                status["virtualMachine"] = json!({"snapshots": snapshots});
            }
        }
        Ok(Outcome { status, events, requeue })
    }

    fn pod_status(
        &self,
        pod: &Value,
        phase: &str,
        ready: bool,
        containers: Vec<Value>,
        ip: Option<String>,
        now: SystemTime,
    ) -> Value {
        let old = pod.get("status").cloned().unwrap_or(Value::Null);
        let condition = |type_: &str, value: bool| {
            let value = if value { "True" } else { "False" };
            let old = old
                .get("conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| text(c, "/type") == type_))
                .filter(|c| text(c, "/status") == value);
            // A condition's transition time changes only when its status does.
            let since = old.map(|c| c["lastTransitionTime"].clone()).unwrap_or_else(|| json!(seconds_time(now)));
            json!({"type": type_, "status": value, "lastProbeTime": null, "lastTransitionTime": since})
        };
        let start = old.get("startTime").cloned().filter(|t| !t.is_null()).unwrap_or_else(|| json!(seconds_time(now)));
        let mut status = json!({
            "phase": phase,
            "conditions": [
                condition("Initialized", true),
                condition("Ready", ready),
                condition("ContainersReady", ready),
                condition("PodScheduled", true),
            ],
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "startTime": start,
            "containerStatuses": containers,
            "qosClass": old.get("qosClass").cloned().unwrap_or_else(|| json!("BestEffort")),
        });
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        status
    }

    /// The runtime's spec for attempt `n` of container `c`, or the waiting reason and
    /// message when its image is not on the node.
    pub(crate) fn container_spec(&self, pod: &Value, c: &Value, n: u32) -> Result<ContainerSpec, (String, String)> {
        let image_name = text(c, "/image");
        let policy = text(c, "/imagePullPolicy");
        if let Some(pulls) = &self.pulls {
            pulls.ensure(pod, c).map_err(|w| (w.reason, w.message))?;
        }
        let resolved = self.images.resolve(image_name).and_then(|img| {
            let layers = self.images.layer_dirs(&img)?;
            Ok(ImageRootfs {
                reference: image_name.to_string(),
                layers,
                config: img.config.config.clone().unwrap_or_default(),
            })
        });
        let image = match resolved {
            Ok(i) => i,
            Err(e) if policy == "Never" => {
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image {image_name:?} is not present with pull policy of Never ({e})"),
                ));
            }
            Err(e) => {
                return Err((
                    "ImagePullBackOff".into(),
                    format!("Back-off pulling image {image_name:?}: not in the node's image store ({e})"),
                ));
            }
        };
        let env = c
            .get("env")
            .and_then(Value::as_array)
            .map(|vars| {
                vars.iter()
                    .filter(|v| v.get("value").is_some() || v.get("valueFrom").is_none())
                    .map(|v| (text(v, "/name").to_string(), text(v, "/value").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let res = |kind: &str, what: &str| c.pointer(&format!("/resources/{kind}/{what}")).and_then(Value::as_str);
        let resources = Resources {
            cpu_request_millis: res("requests", "cpu").or(res("limits", "cpu")).and_then(cpu_millis),
            cpu_limit_millis: res("limits", "cpu").and_then(cpu_millis),
            memory_limit_bytes: res("limits", "memory").and_then(memory_bytes),
        };
        let security = |field: &str| {
            c.pointer(&format!("/securityContext/{field}"))
                .or_else(|| pod.pointer(&format!("/spec/securityContext/{field}")))
                .and_then(Value::as_u64)
                .map(|v| v as u32)
        };
        let user = security("runAsUser").map(|u| (u, security("runAsGroup").unwrap_or(u)));
        let dir = format!(
            "{}_{}_{}",
            text(pod, "/metadata/namespace"),
            text(pod, "/metadata/name"),
            text(pod, "/metadata/uid")
        );
        let log_dir = self.logs_dir.join(text(pod, "/metadata/tenant")).join(dir).join(text(c, "/name"));
        let vm = match pod.pointer("/spec/virtualMachine").filter(|v| v.is_object()) {
            Some(v) => {
                let mut spec = vm_spec(v, &image).map_err(|m| ("InvalidImageName".to_string(), m))?;
                if v.get("sshAuthorizedKeys").is_some() || v.get("passwordSecretRef").is_some() {
                    // The API client the pulls read pull secrets with reads this Secret too.
                    let client = self.pulls.as_ref().map(|p| p.client()).ok_or_else(|| {
                        ("CreateContainerConfigError".to_string(), "this node reads no Secrets".to_string())
                    })?;
                    let handle = tokio::runtime::Handle::current();
                    spec.credentials = handle
                        .block_on(crate::vm_credentials::resolve(client, pod, v))
                        .map_err(|m| ("CreateContainerConfigError".to_string(), m))?;
                }
                Some(spec)
            }
            None => None,
        };
        Ok(ContainerSpec {
            name: text(c, "/name").to_string(),
            image,
            command: strings(c.get("command")),
            args: strings(c.get("args")),
            env,
            working_dir: c.get("workingDir").and_then(Value::as_str).filter(|d| !d.is_empty()).map(str::to_string),
            user,
            resources,
            log_path: Some(log_dir.join(format!("{n}.log"))),
            stdin: c.get("stdin").and_then(Value::as_bool).unwrap_or(false),
            stdin_once: c.get("stdinOnce").and_then(Value::as_bool).unwrap_or(false),
            tty: c.get("tty").and_then(Value::as_bool).unwrap_or(false),
            vm,
        })
    }

    /// Removes sandboxes whose pod is not among `live` (pod UIDs): their pods went while
    /// the agent was away. Network attachments without a sandbox go too (the agent died
    /// between the two), so a crash leaks no namespace, veth or address.
    pub fn sweep(&self, live: &[String], grace: Duration) -> Result<usize, PodError> {
        let mut removed = 0;
        let sandboxes = self.runtime.list_sandboxes()?;
        for s in &sandboxes {
            if !live.contains(&s.spec.id) {
                self.remove_sandbox(&s.spec.id, grace)?;
                removed += 1;
            }
        }
        for id in self.network.attached() {
            if !live.contains(&id) && !sandboxes.iter().any(|s| s.spec.id == id) {
                self.network.teardown(&id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Stops every pod's containers (the agent is going away and takes them along); the
    /// next start makes them again.
    /// Stops every sandbox at once, so the agent's own shutdown takes one grace period,
    /// not one per pod (a container that ignores SIGTERM, as a shell's PID 1 does, holds
    /// its full grace); every sandbox is tried, and the first error is reported.
    pub fn stop_all(&self, grace: Duration) -> Result<(), PodError> {
        let sandboxes = self.runtime.list_sandboxes()?;
        let results: Vec<Result<(), PodError>> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                sandboxes.iter().map(|s| scope.spawn(move || self.remove_sandbox(&s.spec.id, grace))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(PodError::Join("stopping a sandbox panicked".into()))))
                .collect()
        });
        results.into_iter().collect()
    }

    pub fn log_root(&self) -> &Path {
        &self.logs_dir
    }
}

/// Pods synced at once. A pod's start mostly waits (on crun, the shim's handshake, API
/// writes), so many more than the node's cores keep it busy; 4 made 100 pods queue for
/// many seconds behind one another.
const POD_WORKERS: usize = 16;

/// The controller over this node's pods (every tenant).
pub fn controller(client: Client, node: Arc<Node>, pods: Cache) -> Controller<PodSync> {
    let source = ApiSource::new(client.clone(), self::pods(), Scope::all_tenants())
        .fields(&format!("spec.nodeName={}", node.name));
    let reconciler = PodSync { client, node, pods: pods.clone() };
    Controller::new(reconciler)
        .workers(POD_WORKERS)
        .watches(Watcher::new(source, "pods on this node"), pods, |pod| ObjectKey::of(pod).into_iter().collect())
}

/// UIDs of the pods in the cache.
pub fn live_uids(pods: &Cache) -> Vec<String> {
    pods.list().iter().map(|p| text(p, "/metadata/uid").to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("x"), None);
        assert_eq!(memory_bytes("128Mi"), Some(128 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("1000"), Some(1000));
        assert_eq!(memory_bytes("-1"), None);
    }

    #[test]
    fn restart_backoff_doubles_to_its_cap() {
        let b = RestartBackoff::default();
        assert_eq!(b.delay(0), Duration::from_secs(10));
        assert_eq!(b.delay(1), Duration::from_secs(20));
        assert_eq!(b.delay(5), Duration::from_secs(300));
        assert_eq!(b.delay(40), Duration::from_secs(300));
    }
}
