//! The API server's request metrics, served at `GET /metrics` in Prometheus' text format.
//!
//! As Kubernetes' API server: `apiserver_request_total` counts requests by verb, group,
//! version, resource, subresource, scope and HTTP code, and
//! `apiserver_request_duration_seconds` is a histogram of their latency by the same labels
//! but the code; the API call latency SLIs (mutating calls, single-object reads, lists) are
//! read from it. A request's duration runs from the server taking it (before authentication)
//! to its answer's head being ready; for a watch that is when the stream starts.
//!
//! The numbers add every tenant's requests together, so only the system tenant's users may
//! read them (`http.rs`): no label names a tenant, but counts would still tell one tenant
//! how busy the others are. The number of series is bounded: past [`MAX_SERIES`], requests
//! of a series not yet seen count under `resource="other"` (request paths are the caller's
//! to choose, and tenants define their own kinds).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use api::request::{RequestInfo, ResourceRequest, Verb};

/// The histogram's upper bounds in seconds: Kubernetes' buckets for request latency with
/// three more below 25 ms (most requests here take less), so a p99 can be read finely.
pub const BUCKETS: [f64; 38] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0,
    2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0,
];

/// At most this many label sets are kept apart.
pub const MAX_SERIES: usize = 4096;

/// What a request is counted under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    pub verb: &'static str,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: &'static str,
}

/// The subresources the server serves, by name: any other is counted as `other`.
const SUBRESOURCES: [&str; 9] =
    ["status", "scale", "binding", "log", "exec", "attach", "portforward", "finalize", "token"];

impl Labels {
    /// The labels of a parsed request; `None` for a request that is no object's (discovery,
    /// OpenAPI, health), which is not counted. `apply`: a server-side apply patch.
    /// `builtin_version`: the version a built-in kind (group, resource) is served at. Only
    /// built-in kinds at their version and the server's subresources are named; the rest
    /// (custom kinds, which a tenant names, and paths that name nothing) count as `other`,
    /// so no caller chooses a label or adds series.
    pub fn of(
        info: &RequestInfo,
        apply: bool,
        builtin_version: impl Fn(&str, &str) -> Option<String>,
    ) -> Option<Labels> {
        let RequestInfo::Resource(r) = info else { return None };
        let known = builtin_version(&r.group, &r.resource).is_some_and(|v| v == r.version);
        let (group, version, resource) = if known {
            (r.group.clone(), r.version.clone(), r.resource.clone())
        } else {
            (String::new(), String::new(), "other".to_string())
        };
        let subresource = match r.subresource.as_deref() {
            None => String::new(),
            Some(s) if SUBRESOURCES.contains(&s) => s.to_string(),
            Some(_) => "other".to_string(),
        };
        Some(Labels {
            verb: verb_label(r, apply),
            group,
            version,
            resource,
            subresource,
            scope: if r.name.is_some() {
                "resource"
            } else if r.namespace.is_some() {
                "namespace"
            } else {
                "cluster"
            },
        })
    }
}

/// Kubernetes' verb label: the HTTP method, but LIST and WATCH for collection reads, APPLY
/// for a server-side apply and CONNECT for streams (exec, attach, port-forward), which the
/// SLIs leave out.
fn verb_label(r: &ResourceRequest, apply: bool) -> &'static str {
    if matches!(r.subresource.as_deref(), Some("exec" | "attach" | "portforward")) {
        return "CONNECT";
    }
    match r.verb {
        Verb::Get => "GET",
        Verb::List => "LIST",
        Verb::Watch => "WATCH",
        Verb::Create => "POST",
        Verb::Update => "PUT",
        Verb::Patch if apply => "APPLY",
        Verb::Patch => "PATCH",
        Verb::Delete => "DELETE",
        Verb::DeleteCollection => "DELETECOLLECTION",
    }
}

struct Series {
    codes: BTreeMap<u16, u64>,
    /// Per bucket (not cumulative); the last counts those beyond every bound.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Default for Series {
    fn default() -> Self {
        Series { codes: BTreeMap::new(), buckets: [0; BUCKETS.len() + 1], sum: 0.0, count: 0 }
    }
}

pub struct Metrics {
    series: Mutex<HashMap<Labels, Series>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics { series: Mutex::new(HashMap::new()) }
    }

    /// Counts one request answered `code` after `took`.
    pub fn observe(&self, mut labels: Labels, code: u16, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS.len());
        let mut series = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !series.contains_key(&labels) && series.len() >= MAX_SERIES {
            labels.group.clear();
            labels.version.clear();
            labels.subresource.clear();
            labels.resource = "other".into();
        }
        let s = series.entry(labels).or_default();
        *s.codes.entry(code).or_default() += 1;
        s.buckets[bucket] += 1;
        s.sum += seconds;
        s.count += 1;
    }

    /// Every series in Prometheus' text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut sorted: Vec<(&Labels, &Series)> = series.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = String::new();
        out.push_str(
            "# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, version, \
             resource, subresource, scope and HTTP response code.\n# TYPE apiserver_request_total counter\n",
        );
        for (labels, s) in &sorted {
            for (code, n) in &s.codes {
                let _ = writeln!(out, "apiserver_request_total{{code=\"{code}\",{}}} {n}", render_labels(labels));
            }
        }
        out.push_str(
            "# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, \
             group, version, resource, subresource and scope.\n# TYPE apiserver_request_duration_seconds histogram\n",
        );
        for (labels, s) in &sorted {
            let l = render_labels(labels);
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(s.buckets) {
                cumulative += n;
                let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{{l},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}", s.count);
            let _ = writeln!(out, "apiserver_request_duration_seconds_sum{{{l}}} {}", s.sum);
            let _ = writeln!(out, "apiserver_request_duration_seconds_count{{{l}}} {}", s.count);
        }
        out
    }
}

fn render_labels(l: &Labels) -> String {
    format!(
        "group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"",
        escape(&l.group),
        escape(&l.resource),
        l.scope,
        escape(&l.subresource),
        l.verb,
        escape(&l.version)
    )
}

/// A label value as the text format writes it: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(verb: &'static str, resource: &str) -> Labels {
        Labels {
            verb,
            group: String::new(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: String::new(),
            scope: "namespace",
        }
    }

    #[test]
    fn requests_are_counted_by_code_and_bucketed_by_latency() {
        let m = Metrics::new();
        m.observe(labels("POST", "pods"), 201, Duration::from_micros(800));
        m.observe(labels("POST", "pods"), 201, Duration::from_millis(30));
        m.observe(labels("POST", "pods"), 409, Duration::from_secs(70));
        let text = m.render();
        let pods = "group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"POST\",version=\"v1\"";
        for line in [
            format!("apiserver_request_total{{code=\"201\",{pods}}} 2"),
            format!("apiserver_request_total{{code=\"409\",{pods}}} 1"),
            format!("apiserver_request_duration_seconds_bucket{{{pods},le=\"0.001\"}} 1"),
            format!("apiserver_request_duration_seconds_bucket{{{pods},le=\"0.025\"}} 1"),
            format!("apiserver_request_duration_seconds_bucket{{{pods},le=\"0.05\"}} 2"),
            format!("apiserver_request_duration_seconds_bucket{{{pods},le=\"60\"}} 2"),
            format!("apiserver_request_duration_seconds_bucket{{{pods},le=\"+Inf\"}} 3"),
            format!("apiserver_request_duration_seconds_count{{{pods}}} 3"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn only_built_in_kinds_and_served_subresources_are_named() {
        let parse = |method: &str, path: &str| api::request::parse(method, path, None).unwrap();
        let builtin = |g: &str, r: &str| (g.is_empty() && r == "pods").then(|| "v1".to_string());
        let of = |method: &str, path: &str| Labels::of(&parse(method, path), false, builtin).unwrap();
        let pods = of("POST", "/api/v1/namespaces/n/pods");
        assert_eq!((pods.verb, pods.resource.as_str(), pods.version.as_str()), ("POST", "pods", "v1"));
        assert_eq!(of("POST", "/api/v1/namespaces/n/pods/p/binding").subresource, "binding");
        assert_eq!(of("POST", "/api/v1/namespaces/n/pods/p/exec").verb, "CONNECT");
        assert_eq!(of("GET", "/api/v1/namespaces/n/pods/p/log").verb, "GET");
        for path in ["/apis/widgets.acme.example/v1/namespaces/n/widgets", "/api/v9/namespaces/n/pods"] {
            let other = of("GET", path);
            assert_eq!((other.group.as_str(), other.version.as_str(), other.resource.as_str()), ("", "", "other"));
        }
        assert_eq!(of("GET", "/api/v1/namespaces/n/pods/p/junk").subresource, "other");
        assert!(Labels::of(&parse("GET", "/version"), false, builtin).is_none());
    }

    #[test]
    fn label_values_are_escaped_and_series_are_bounded() {
        let m = Metrics::new();
        m.observe(labels("GET", "we\"ird\\\nname"), 404, Duration::ZERO);
        assert!(m.render().contains("resource=\"we\\\"ird\\\\\\nname\""), "{}", m.render());
        for i in 0..MAX_SERIES + 10 {
            m.observe(labels("GET", &format!("r{i}")), 404, Duration::ZERO);
        }
        let text = m.render();
        assert_eq!(text.lines().filter(|l| l.starts_with("apiserver_request_total")).count(), MAX_SERIES + 1);
        assert!(
            text.lines().any(|l| l.starts_with("apiserver_request_total{code=\"404\",group=\"\",resource=\"other\"")
                && l.ends_with(" 11")),
            "the requests past the bound count as other"
        );
    }
}
