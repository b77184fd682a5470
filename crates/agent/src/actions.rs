//! The node's side of the `atoll.io/v1` Action kind: the Actions bound to this node (field
//! selector `spec.nodeName=<node>`, every tenant; the API server sets it from the pod) are
//! each run once, and their outcome written to their `status`.
//!
//! At most once, across agent restarts: an Action is claimed by writing `phase: Running`
//! (with `startTime`) over the version the agent saw, so a conflicting write loses and
//! nothing runs twice within one agent; a `Running` Action that this agent process did not
//! start was left by an agent that stopped while it ran, and is marked `Failed`, never run
//! again (the operation may or may not have happened: say so rather than guess). An
//! outcome whose status write failed is kept and written on the next look, never by running
//! the operation again.
//!
//! Operations: Reboot, Snapshot and Restore go to the VM runtime
//! ([`crate::runtime::vm::actions`]); Restart stops every container (VM included) of the pod
//! and starts its next attempt at once, whatever the restart policy and back-off say, so
//! restart counts go up. While an Action works on a pod, the pod's sync pass leaves it alone
//! ([`Node::acting`]), so the sync loop neither restarts a container the Action is
//! replacing nor reports the pod ended in between. Each outcome is an event on the pod.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use client::{Client, Resource, Scope, Tenant};
use controllers::{ApiSource, Cache, Controller, ObjectKey, Reconciler, Watcher};
use serde_json::{Value, json};

use crate::node::seconds_time;
use crate::pods::{Node, PodError};
use crate::runtime::ContainerState;

pub fn actions() -> Resource {
    Resource::new("atoll.io", "v1", "actions", true)
}

/// How long a container a Restart replaces may take to stop when its pod names no grace.
const DEFAULT_GRACE: u64 = 30;

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// What an operation did (the status message and the pod event), or why it failed.
struct Done {
    reason: &'static str,
    message: String,
}

/// What one look at an Action calls for.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Nothing,
    /// Running, but not claimed by this process: its agent stopped mid-way.
    FailLeftOver,
    Run,
}

/// `ours`: this agent process claimed the Action (it is in flight, or our own write has not
/// come back through the watch yet).
fn step(phase: &str, ours: bool) -> Step {
    match phase {
        "Succeeded" | "Failed" => Step::Nothing,
        _ if ours => Step::Nothing,
        "Running" => Step::FailLeftOver,
        _ => Step::Run,
    }
}

pub struct ActionSync {
    client: Client,
    node: Arc<Node>,
    actions: Cache,
    pods: Cache,
    /// UIDs of the Actions this agent process claimed.
    started: Mutex<HashSet<String>>,
    /// Outcomes (phase, message) not yet written, by Action UID: a failed status write is
    /// retried with the outcome, never by running the operation again.
    unreported: Mutex<HashMap<String, (&'static str, String)>>,
}

#[async_trait]
impl Reconciler for ActionSync {
    type Key = ObjectKey;
    type Error = PodError;

    fn name(&self) -> &'static str {
        "actions"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<controllers::Action, PodError> {
        use controllers::Action as Next;
        let Some(action) = self.actions.get(key) else { return Ok(Next::Done) };
        let uid = text(&action, "/metadata/uid").to_string();
        let ours = self.started.lock().unwrap_or_else(|e| e.into_inner()).contains(&uid);
        let unreported = self.unreported.lock().unwrap_or_else(|e| e.into_inner()).get(&uid).cloned();
        if let Some((phase, message)) = unreported {
            self.finish(key, &action, phase, &message).await?;
            self.unreported.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
            return Ok(Next::Done);
        }
        match step(text(&action, "/status/phase"), ours) {
            Step::Nothing => return Ok(Next::Done),
            Step::FailLeftOver => {
                let message = "the node agent stopped while this action ran; it is not run again";
                self.finish(key, &action, "Failed", message).await?;
                return Ok(Next::Done);
            }
            Step::Run => {}
        }
        // The pods of this node must be known before "no such pod" means anything.
        self.pods.wait_ready().await;
        let mut claimed = (*action).clone();
        let now = seconds_time(SystemTime::now());
        claimed["status"] = json!({"phase": "Running", "startTime": now});
        self.started.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.clone());
        let claimed =
            match self.client.replace_subresource(&actions(), &scope_of(key), &key.name, "status", &claimed).await {
                Ok(c) => c,
                Err(e) => {
                    // Not claimed: a newer version (or none) decides.
                    self.started.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
                    return if e.is_not_found() || e.is_conflict() { Ok(Next::Done) } else { Err(e.into()) };
                }
            };
        let (phase, done) = match self.run(&claimed).await {
            Ok(done) => ("Succeeded", done),
            Err(done) => ("Failed", done),
        };
        tracing::info!(action = %key, phase, message = %done.message, "action finished");
        let pod_key = self.pod_key(&claimed);
        if let Some(pod) = self.pods.get(&pod_key) {
            let type_ = if phase == "Succeeded" { "Normal" } else { "Warning" };
            crate::pod_images::post_event(&self.client, &self.node.name, &pod, type_, done.reason, &done.message).await;
        }
        self.unreported.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.clone(), (phase, done.message.clone()));
        self.finish(key, &claimed, phase, &done.message).await?;
        self.unreported.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
        Ok(Next::Done)
    }
}

fn scope_of(key: &ObjectKey) -> Scope {
    Scope { tenant: Tenant::Named(key.tenant.clone()), namespace: key.namespace.clone() }
}

impl ActionSync {
    fn pod_key(&self, action: &Value) -> ObjectKey {
        ObjectKey::new(
            text(action, "/metadata/tenant"),
            Some(text(action, "/metadata/namespace")),
            text(action, "/spec/podName"),
        )
    }

    /// Writes the final phase, retrying over newer versions of the Action.
    async fn finish(&self, key: &ObjectKey, action: &Value, phase: &str, message: &str) -> Result<(), PodError> {
        let mut current = action.clone();
        for _ in 0..5 {
            let mut status = current.get("status").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
            status["phase"] = json!(phase);
            status["message"] = json!(message);
            status["completionTime"] = json!(seconds_time(SystemTime::now()));
            current["status"] = status;
            match self.client.replace_subresource(&actions(), &scope_of(key), &key.name, "status", &current).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if e.is_conflict() => {
                    current = self.client.get(&actions(), &scope_of(key), &key.name).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Runs the Action's operation on its pod.
    async fn run(&self, action: &Value) -> Result<Done, Done> {
        let failed = |message: String| Done { reason: "ActionFailed", message };
        let pod_name = text(action, "/spec/podName").to_string();
        let Some(pod) = self.pods.get(&self.pod_key(action)) else {
            return Err(failed(format!("pod {pod_name} is not on node {}", self.node.name)));
        };
        let uid = text(&pod, "/metadata/uid").to_string();
        let operation = text(action, "/spec/operation").to_string();
        let snapshot = text(action, "/spec/snapshotName").to_string();
        let is_vm = pod.pointer("/spec/virtualMachine").is_some_and(Value::is_object);
        if matches!(operation.as_str(), "Reboot" | "Snapshot" | "Restore") && !is_vm {
            let hint = if operation == "Reboot" { "; restart its containers with Restart" } else { "" };
            return Err(failed(format!("{operation} applies to VM pods only: pod {pod_name} runs containers{hint}")));
        }
        if !self.node.acting.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.clone()) {
            return Err(failed(format!("another action is working on pod {pod_name}")));
        }
        let node = self.node.clone();
        let (p, u) = (pod.clone(), uid.clone());
        let began = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || -> Result<Done, String> {
            let machines = || node.machines.clone().ok_or_else(|| "this node runs no VMs".to_string());
            match operation.as_str() {
                "Reboot" => {
                    machines()?.reboot(&u).map_err(|e| e.to_string())?;
                    Ok(Done { reason: "Rebooted", message: format!("the virtual machine of pod {pod_name} was reset") })
                }
                "Snapshot" => {
                    let s = machines()?.snapshot(&u, &snapshot).map_err(|e| e.to_string())?;
                    let mib = s.vm_state_bytes as f64 / (1 << 20) as f64;
                    let message =
                        format!("snapshot {snapshot} of pod {pod_name} taken ({mib:.1} MiB of machine state)");
                    Ok(Done { reason: "SnapshotTaken", message })
                }
                "Restore" => {
                    machines()?.restore(&u, &snapshot).map_err(|e| e.to_string())?;
                    Ok(Done { reason: "SnapshotRestored", message: format!("pod {pod_name} restored to {snapshot}") })
                }
                "Restart" => {
                    let n = restart(&node, &p)?;
                    Ok(Done { reason: "Restarted", message: format!("{n} container(s) of pod {pod_name} restarted") })
                }
                other => Err(format!("unknown operation {other:?}")),
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("the action's task failed: {e}")));
        self.node.acting.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
        let took = began.elapsed();
        match outcome {
            Ok(mut done) => {
                done.message.push_str(&format!(" in {:.3}s", took.as_secs_f64()));
                Ok(done)
            }
            Err(message) => Err(failed(message)),
        }
    }
}

/// Stops each container of the pod (with the pod's grace) and starts its next attempt at
/// once. Returns how many were restarted.
fn restart(node: &Node, pod: &Value) -> Result<usize, String> {
    let uid = text(pod, "/metadata/uid");
    let grace = Duration::from_secs(
        pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_u64).unwrap_or(DEFAULT_GRACE),
    );
    let containers = match pod.pointer("/spec/virtualMachine").filter(|v| v.is_object()) {
        Some(vm) => vec![vm.clone()],
        None => pod.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default(),
    };
    let all = node.runtime.list_containers(Some(uid)).map_err(|e| e.to_string())?;
    let mut restarted = 0;
    for c in &containers {
        let name = text(c, "/name");
        let latest = all.iter().filter(|s| s.name == name).max_by_key(|s| (crate::pods::attempt(s), s.created_at));
        let Some(latest) = latest else { continue };
        if matches!(latest.state, ContainerState::Running | ContainerState::Created) {
            node.runtime.stop_container(&latest.id, grace).map_err(|e| e.to_string())?;
        }
        let spec = node
            .container_spec(pod, c, crate::pods::attempt(latest) + 1)
            .map_err(|(reason, message)| format!("{reason}: {message}"))?;
        let id = node.runtime.create_container(uid, &spec).map_err(|e| e.to_string())?;
        node.runtime.start_container(&id).map_err(|e| e.to_string())?;
        restarted += 1;
    }
    if restarted == 0 {
        return Err("the pod has no containers yet".into());
    }
    Ok(restarted)
}

/// The controller over this node's Actions (every tenant); `pods` is the pod sync loop's
/// cache of this node's pods.
pub fn controller(client: Client, node: Arc<Node>, pods: Cache) -> Controller<ActionSync> {
    let source =
        ApiSource::new(client.clone(), actions(), Scope::all_tenants()).fields(&format!("spec.nodeName={}", node.name));
    let cache = Cache::default();
    let reconciler = ActionSync {
        client,
        node,
        actions: cache.clone(),
        pods,
        started: Mutex::new(HashSet::new()),
        unreported: Mutex::new(HashMap::new()),
    };
    Controller::new(reconciler)
        .workers(2)
        .watches(Watcher::new(source, "actions on this node"), cache, |a| ObjectKey::of(a).into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_runs_at_most_once_across_agent_restarts() {
        let cases = [
            // A new Action runs; once claimed here, a stale copy of it does not run again.
            ("", false, Step::Run),
            ("Pending", false, Step::Run),
            ("Pending", true, Step::Nothing),
            ("Running", true, Step::Nothing),
            // Running when this process never claimed it: a previous agent stopped mid-way.
            ("Running", false, Step::FailLeftOver),
            ("Succeeded", false, Step::Nothing),
            ("Failed", true, Step::Nothing),
        ];
        for (phase, ours, want) in cases {
            assert_eq!(step(phase, ours), want, "{phase:?} ours={ours}");
        }
    }
}
