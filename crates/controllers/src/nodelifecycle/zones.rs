//! How fast unhealthy nodes get the NoExecute taint that evicts their pods, per zone, as
//! Kubernetes' node lifecycle controller decides it (`--node-eviction-rate`,
//! `--secondary-node-eviction-rate`, `--unhealthy-zone-threshold`,
//! `--large-cluster-size-threshold`).
//!
//! The NoSchedule taint goes on an unhealthy node at once; the NoExecute one waits in a
//! first-come queue per zone and is granted by a token bucket (burst 1) whose rate follows
//! the zone's state:
//! - **Normal**: the eviction rate (0.1 nodes/s by default: one node every 10 s);
//! - **PartialDisruption** (more than 2 nodes and at least the threshold, 55%, not Ready):
//!   the secondary rate (0.01/s) in a zone of more than the large-cluster size (50 nodes),
//!   none in a smaller one;
//! - **FullDisruption** (no node Ready): the eviction rate, unless every zone is fully
//!   disrupted: then nothing is tainted and the NoExecute taints already there are taken
//!   off, since a control plane that hears from no node at all is more likely cut off itself.
//!
//! So a few nodes lapsing under load lose their pods no faster than one node per 10 s, and
//! only after their taint has stood for the pods' `tolerationSeconds` (300 s by default): a
//! node that reports again before its turn is dequeued and keeps its pods.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Kubernetes' `--node-eviction-rate` default (nodes per second).
pub const DEFAULT_EVICTION_RATE: f64 = 0.1;
/// Kubernetes' `--secondary-node-eviction-rate` default.
pub const DEFAULT_SECONDARY_EVICTION_RATE: f64 = 0.01;
/// Kubernetes' `--unhealthy-zone-threshold` default.
pub const DEFAULT_UNHEALTHY_ZONE_THRESHOLD: f64 = 0.55;
/// Kubernetes' `--large-cluster-size-threshold` default.
pub const DEFAULT_LARGE_CLUSTER_SIZE: usize = 50;
/// How long a node waits before asking again while its zone grants nothing.
pub const IDLE_RECHECK: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    pub eviction: f64,
    pub secondary: f64,
    pub unhealthy_threshold: f64,
    pub large_cluster: usize,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            eviction: DEFAULT_EVICTION_RATE,
            secondary: DEFAULT_SECONDARY_EVICTION_RATE,
            unhealthy_threshold: DEFAULT_UNHEALTHY_ZONE_THRESHOLD,
            large_cluster: DEFAULT_LARGE_CLUSTER_SIZE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// A zone's state from its Ready and not-Ready node counts (Kubernetes' `ComputeZoneState`).
pub fn zone_state(ready: usize, not_ready: usize, threshold: f64) -> ZoneState {
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / (ready + not_ready) as f64 >= threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// What a node that should carry a NoExecute taint may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Taint it now.
    Now,
    /// Not yet: ask again after this long.
    Wait(Duration),
    /// Every zone is fully disrupted: no NoExecute taint at all (and off with those there).
    Stopped,
}

struct Zone {
    ready: usize,
    not_ready: usize,
    /// Tokens of the bucket (at most 1) as of `refilled`, at the rate in force then.
    tokens: f64,
    rate: f64,
    refilled: Instant,
    queue: VecDeque<String>,
}

/// The zones of the cluster: each node's zone and readiness, and each zone's taint queue.
#[derive(Default)]
pub struct Zones {
    rates: Rates,
    nodes: HashMap<String, (String, bool)>,
    zones: HashMap<String, Zone>,
}

impl Zones {
    pub fn new(rates: Rates) -> Zones {
        Zones { rates, ..Zones::default() }
    }

    /// Records what the controller now knows of `node`: its zone and whether it is Ready.
    /// A node that is Ready again leaves its zone's queue.
    pub fn observe(&mut self, node: &str, zone: &str, ready: bool, now: Instant) {
        if let Some((old_zone, old_ready)) = self.nodes.get(node) {
            if old_zone == zone && *old_ready == ready {
                return;
            }
            let (old_zone, old_ready) = (old_zone.clone(), *old_ready);
            self.forget_in(node, &old_zone, old_ready);
        }
        let z = self.zones.entry(zone.to_string()).or_insert_with(|| Zone {
            ready: 0,
            not_ready: 0,
            tokens: 1.0,
            rate: self.rates.eviction,
            refilled: now,
            queue: VecDeque::new(),
        });
        if ready {
            z.ready += 1;
        } else {
            z.not_ready += 1;
        }
        self.nodes.insert(node.to_string(), (zone.to_string(), ready));
    }

    /// A node that is gone.
    pub fn remove(&mut self, node: &str) {
        if let Some((zone, ready)) = self.nodes.remove(node) {
            self.forget_in(node, &zone, ready);
        }
    }

    fn forget_in(&mut self, node: &str, zone: &str, ready: bool) {
        let Some(z) = self.zones.get_mut(zone) else { return };
        if ready {
            z.ready -= 1;
        } else {
            z.not_ready -= 1;
        }
        z.queue.retain(|n| n != node);
        if z.ready + z.not_ready == 0 {
            self.zones.remove(zone);
        }
    }

    pub fn state(&self, zone: &str) -> Option<ZoneState> {
        self.zones.get(zone).map(|z| zone_state(z.ready, z.not_ready, self.rates.unhealthy_threshold))
    }

    /// Every zone is fully disrupted: no NoExecute taints at all.
    pub fn stopped(&self) -> bool {
        self.all_fully_disrupted()
    }

    fn all_fully_disrupted(&self) -> bool {
        !self.zones.is_empty()
            && self.zones.values().all(|z| zone_state(z.ready, z.not_ready, 1.0) == ZoneState::FullDisruption)
    }

    /// The rate at which `zone` may taint now (nodes per second).
    fn rate(&self, zone: &Zone) -> f64 {
        match zone_state(zone.ready, zone.not_ready, self.rates.unhealthy_threshold) {
            ZoneState::Normal | ZoneState::FullDisruption => self.rates.eviction,
            ZoneState::PartialDisruption if zone.ready + zone.not_ready > self.rates.large_cluster => {
                self.rates.secondary
            }
            ZoneState::PartialDisruption => 0.0,
        }
    }

    /// Whether `node` (observed not Ready) may get its NoExecute taint now: it queues in its
    /// zone, and the head of the queue takes the zone's token when there is one.
    pub fn grant(&mut self, node: &str, now: Instant) -> Grant {
        if self.all_fully_disrupted() {
            return Grant::Stopped;
        }
        let Some((zone, false)) = self.nodes.get(node).cloned() else { return Grant::Wait(IDLE_RECHECK) };
        let rate = match self.zones.get(&zone) {
            Some(z) => self.rate(z),
            None => return Grant::Wait(IDLE_RECHECK),
        };
        let Some(z) = self.zones.get_mut(&zone) else { return Grant::Wait(IDLE_RECHECK) };
        // The bucket fills at the rate that was in force; a new rate starts a full bucket,
        // as Kubernetes swaps in a new limiter when a zone changes state.
        if rate != z.rate {
            z.rate = rate;
            z.tokens = 1.0;
        } else {
            z.tokens = (z.tokens + now.saturating_duration_since(z.refilled).as_secs_f64() * rate).min(1.0);
        }
        z.refilled = now;
        if !z.queue.iter().any(|n| n == node) {
            z.queue.push_back(node.to_string());
        }
        if rate <= 0.0 {
            return Grant::Wait(IDLE_RECHECK);
        }
        let position = z.queue.iter().position(|n| n == node).unwrap_or(0);
        if position == 0 && z.tokens >= 1.0 - 1e-9 {
            z.tokens = (z.tokens - 1.0).max(0.0);
            z.queue.pop_front();
            return Grant::Now;
        }
        // Ask again when this node's token should be there (the ones ahead take theirs first).
        let wait = ((1.0 - z.tokens) + position as f64) / rate;
        Grant::Wait(Duration::from_secs_f64(wait.clamp(0.1, IDLE_RECHECK.as_secs_f64())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_states_follow_kubernetes() {
        assert_eq!(zone_state(10, 0, 0.55), ZoneState::Normal);
        assert_eq!(zone_state(0, 3, 0.55), ZoneState::FullDisruption);
        assert_eq!(zone_state(0, 1, 0.55), ZoneState::FullDisruption);
        // Two not ready are never a partial disruption, whatever the share.
        assert_eq!(zone_state(1, 2, 0.55), ZoneState::Normal);
        assert_eq!(zone_state(2, 3, 0.55), ZoneState::PartialDisruption);
        assert_eq!(zone_state(100, 54, 0.55), ZoneState::Normal);
        assert_eq!(zone_state(45, 55, 0.55), ZoneState::PartialDisruption);
    }

    /// The scale run's case: 5,000 nodes in one zone, 150 of them lapse at once. Kubernetes
    /// taints one every 10 s; Atoll tainted all 150 at once.
    #[test]
    fn a_few_lapsed_nodes_are_tainted_one_per_ten_seconds_in_turn() {
        let mut zones = Zones::new(Rates::default());
        let t0 = Instant::now();
        for i in 0..5000 {
            zones.observe(&format!("n{i}"), "", i >= 150, t0);
        }
        assert_eq!(zones.state(""), Some(ZoneState::Normal));
        let mut granted = Vec::new();
        for step in 0..=605u64 {
            let now = t0 + Duration::from_millis(step * 100);
            for i in 0..150 {
                if !granted.contains(&i) && zones.grant(&format!("n{i}"), now) == Grant::Now {
                    granted.push(i);
                }
            }
        }
        // 60 s: the first at once, then one per 10 s, in the order they queued.
        assert_eq!(granted, [0, 1, 2, 3, 4, 5, 6]);
        // One recovers before its turn: it leaves the queue and the next one goes.
        let later = t0 + Duration::from_secs(70);
        zones.observe("n7", "", true, later);
        assert_eq!(zones.grant("n8", later), Grant::Now);
    }

    #[test]
    fn a_partially_disrupted_zone_slows_down_or_stops() {
        // A large zone, 60% down: the secondary rate, one node per 100 s.
        let mut zones = Zones::new(Rates::default());
        let t0 = Instant::now();
        for i in 0..100 {
            zones.observe(&format!("n{i}"), "a", i >= 60, t0);
        }
        assert_eq!(zones.state("a"), Some(ZoneState::PartialDisruption));
        assert_eq!(zones.grant("n0", t0), Grant::Now);
        assert!(matches!(zones.grant("n1", t0 + Duration::from_secs(50)), Grant::Wait(_)));
        assert_eq!(zones.grant("n1", t0 + Duration::from_secs(100)), Grant::Now);
        // A small zone (under 50 nodes), 60% down: nothing at all.
        let mut zones = Zones::new(Rates::default());
        for i in 0..10 {
            zones.observe(&format!("m{i}"), "b", i >= 6, t0);
        }
        zones.observe("other", "c", true, t0);
        for s in 0..100 {
            assert!(matches!(zones.grant("m0", t0 + Duration::from_secs(s)), Grant::Wait(_)));
        }
    }

    #[test]
    fn when_every_zone_is_down_nothing_is_tainted() {
        let mut zones = Zones::new(Rates::default());
        let t0 = Instant::now();
        for i in 0..3 {
            zones.observe(&format!("n{i}"), "", false, t0);
        }
        assert_eq!(zones.grant("n0", t0), Grant::Stopped);
        // One zone down and another up: the down zone is tainted at the normal rate.
        zones.observe("m0", "other", true, t0);
        assert_eq!(zones.state(""), Some(ZoneState::FullDisruption));
        assert_eq!(zones.grant("n0", t0), Grant::Now);
        assert!(matches!(zones.grant("n1", t0), Grant::Wait(_)));
        assert_eq!(zones.grant("n1", t0 + Duration::from_secs(10)), Grant::Now);
        // The healthy zone's node goes away: every zone is down again.
        zones.remove("m0");
        assert_eq!(zones.grant("n2", t0 + Duration::from_secs(20)), Grant::Stopped);
    }
}
