//! The API call latency SLIs as Kubernetes defines them, read from the API server's own
//! request histograms (`GET /metrics`, `apiserver_request_duration_seconds`): every
//! caller's calls (controllers, scheduler, nodes, clients), timed by the server, per verb
//! and resource. The benches take two readings and report what happened between them.

use std::collections::BTreeMap;

/// Cumulative histograms by call (`"POST pods"`, `"PUT pods/status"`,
/// `"PATCH deployments.apps"`): each bucket's upper bound in seconds and how many calls took
/// at most that; the last bound is infinite.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histograms(pub BTreeMap<String, Vec<(f64, u64)>>);

/// The verbs of mutating calls, as the server labels them.
pub const MUTATING: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

impl Histograms {
    /// The request histograms in a `/metrics` answer, the series of one call (its versions
    /// and scopes) added together. Lines of other metrics are skipped.
    pub fn parse(text: &str) -> Result<Histograms, String> {
        let mut calls: BTreeMap<String, BTreeMap<u64, (f64, u64)>> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_duration_seconds_bucket{") else { continue };
            let (labels, value) = rest.rsplit_once("} ").ok_or_else(|| format!("malformed line {line:?}"))?;
            let labels = parse_labels(labels).ok_or_else(|| format!("malformed labels in {line:?}"))?;
            let get = |k: &str| labels.iter().find(|(n, _)| n == k).map_or("", |(_, v)| v.as_str());
            let le = match get("le") {
                "+Inf" => f64::INFINITY,
                le => le.parse::<f64>().map_err(|_| format!("bad bucket bound in {line:?}"))?,
            };
            let count: u64 = value.trim().parse().map_err(|_| format!("bad count in {line:?}"))?;
            let mut call = format!("{} {}", get("verb"), get("resource"));
            if !get("group").is_empty() {
                call = format!("{call}.{}", get("group"));
            }
            if !get("subresource").is_empty() {
                call = format!("{call}/{}", get("subresource"));
            }
            // Keyed by the bound's bits: the bounds are the same numbers in every series.
            let bucket = calls.entry(call).or_default().entry(le.to_bits()).or_insert((le, 0));
            bucket.1 += count;
        }
        let mut out = BTreeMap::new();
        for (call, buckets) in calls {
            let mut list: Vec<(f64, u64)> = buckets.into_values().collect();
            list.sort_by(|a, b| a.0.total_cmp(&b.0));
            out.insert(call, list);
        }
        Ok(Histograms(out))
    }

    /// What was added since `earlier` (a reading of the same server before this one).
    pub fn since(&self, earlier: &Histograms) -> Histograms {
        let mut out = BTreeMap::new();
        for (call, buckets) in &self.0 {
            let before = earlier.0.get(call);
            let diff: Vec<(f64, u64)> = buckets
                .iter()
                .map(|(le, n)| {
                    let was =
                        before.and_then(|b| b.iter().find(|(l, _)| l.to_bits() == le.to_bits())).map_or(0, |(_, n)| *n);
                    (*le, n.saturating_sub(was))
                })
                .collect();
            if diff.last().is_some_and(|(_, n)| *n > 0) {
                out.insert(call.clone(), diff);
            }
        }
        Histograms(out)
    }
}

/// The `q` quantile of a cumulative histogram, in seconds, interpolated linearly within
/// the bucket it falls in (as Prometheus' `histogram_quantile`; from 0 in the first bucket);
/// in the infinite bucket, the last finite bound. `None` for an empty histogram.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, n) in buckets {
        if n as f64 >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = n.saturating_sub(below) as f64;
            let part = if within > 0.0 { (rank - below as f64) / within } else { 1.0 };
            return Some(lower + (le - lower) * part);
        }
        (lower, below) = (le, n);
    }
    Some(lower)
}

/// `name="value",...` with the text format's escapes (`\\`, `\"`, `\n`) undone.
fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut name = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            name.push(c);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        out.push((name.trim().to_string(), value));
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE apiserver_request_total counter
apiserver_request_total{code="201",group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1"} 10
apiserver_request_duration_seconds_bucket{group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1",le="0.01"} 4
apiserver_request_duration_seconds_bucket{group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1",le="0.1"} 9
apiserver_request_duration_seconds_bucket{group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1",le="+Inf"} 10
apiserver_request_duration_seconds_sum{group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1"} 1.5
apiserver_request_duration_seconds_bucket{group="",resource="pods",scope="cluster",subresource="",verb="POST",version="v1",le="0.01"} 1
apiserver_request_duration_seconds_bucket{group="",resource="pods",scope="cluster",subresource="",verb="POST",version="v1",le="0.1"} 1
apiserver_request_duration_seconds_bucket{group="",resource="pods",scope="cluster",subresource="",verb="POST",version="v1",le="+Inf"} 1
apiserver_request_duration_seconds_bucket{group="apps",resource="we\"ird",scope="resource",subresource="status",verb="PUT",version="v1",le="0.01"} 0
apiserver_request_duration_seconds_bucket{group="apps",resource="we\"ird",scope="resource",subresource="status",verb="PUT",version="v1",le="0.1"} 2
apiserver_request_duration_seconds_bucket{group="apps",resource="we\"ird",scope="resource",subresource="status",verb="PUT",version="v1",le="+Inf"} 2
"#;

    #[test]
    fn series_of_one_call_add_up_and_labels_unescape() {
        let h = Histograms::parse(TEXT).unwrap();
        assert_eq!(h.0["POST pods"], vec![(0.01, 5), (0.1, 10), (f64::INFINITY, 11)]);
        assert_eq!(h.0["PUT we\"ird.apps/status"], vec![(0.01, 0), (0.1, 2), (f64::INFINITY, 2)]);
        assert_eq!(h.0.len(), 2);
        assert!(Histograms::parse("apiserver_request_duration_seconds_bucket{le=\"x\"} 1").is_err());
        assert!(Histograms::parse("apiserver_request_duration_seconds_bucket{le=\"0.1} 1").is_err());
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let b = [(0.01, 5), (0.1, 10), (f64::INFINITY, 11)];
        // Rank 5.5 of 11: the second bucket holds ranks 5..10, so 0.5/5 of the way in.
        assert!((quantile(&b, 0.5).unwrap() - (0.01 + 0.09 * 0.1)).abs() < 1e-12);
        // Rank 2.2: in the first bucket, from 0.
        assert!((quantile(&b, 0.2).unwrap() - 0.01 * 2.2 / 5.0).abs() < 1e-12);
        // Rank 10.89: beyond every finite bound.
        assert_eq!(quantile(&b, 0.99), Some(0.1));
        assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 0)], 0.99), None);
    }

    #[test]
    fn a_later_reading_less_an_earlier_is_what_happened_between() {
        let earlier = Histograms::parse(TEXT).unwrap();
        let mut later = earlier.clone();
        later.0.get_mut("POST pods").unwrap().iter_mut().for_each(|b| b.1 += 3);
        later.0.insert("DELETE pods".into(), vec![(0.01, 1), (f64::INFINITY, 1)]);
        let between = later.since(&earlier);
        assert_eq!(between.0["POST pods"], vec![(0.01, 3), (0.1, 3), (f64::INFINITY, 3)]);
        assert_eq!(between.0["DELETE pods"], vec![(0.01, 1), (f64::INFINITY, 1)]);
        assert!(!between.0.contains_key("PUT we\"ird.apps/status"), "a call not made between is left out");
    }
}
