//! The overview's last 15 minutes: samples of this process's counters (read from the same
//! Prometheus text `/metrics` serves), rates between samples, latency quantiles from the
//! histogram's buckets, and small inline SVG charts (no script, no external library).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use parking_lot::Mutex;

use crate::telemetry::metrics::{
    DELIVERIES_TOTAL, DUPLICATES_TOTAL, REQUESTS_TOTAL, REQUEST_DURATION_SECONDS,
};

/// How far back the overview looks.
pub(crate) const SPAN_MS: i64 = 15 * 60 * 1000;
/// Samples kept at most (one per second would be 900 in the span).
const MAX_SAMPLES: usize = 1024;

/// One reading of the counters: series (name with labels) → value.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub at_ms: i64,
    pub series: BTreeMap<String, f64>,
}

/// The samples of the last 15 minutes.
#[derive(Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<Sample>>,
}

/// The labels of a series key `name{a="x",b="y"}`.
pub(crate) fn labels(key: &str) -> BTreeMap<&str, &str> {
    let Some(inner) = key.split_once('{').and_then(|(_, r)| r.strip_suffix('}')) else {
        return BTreeMap::new();
    };
    inner
        .split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k.trim(), v.trim_end_matches('"')))
        })
        .collect()
}

fn wanted(name: &str) -> bool {
    name == REQUESTS_TOTAL
        || name == DELIVERIES_TOTAL
        || name == DUPLICATES_TOTAL
        || name == format!("{REQUEST_DURATION_SECONDS}_bucket")
}

impl History {
    /// Reads the counters out of Prometheus text at `now_ms`. Samples stay at least a second
    /// apart: a newer reading inside the second replaces the last one.
    pub(crate) fn sample(&self, text: &str, now_ms: i64) {
        let mut samples = self.samples.lock();
        if samples.len() > 1 && samples.back().is_some_and(|s| now_ms - s.at_ms < 1000) {
            samples.pop_back();
        }
        let mut series = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = key.split('{').next().unwrap_or(key);
            if !wanted(name) {
                continue;
            }
            if let Ok(v) = value.parse::<f64>() {
                series.insert(key.to_string(), v);
            }
        }
        samples.push_back(Sample {
            at_ms: now_ms,
            series,
        });
        while samples.len() > MAX_SAMPLES
            || samples
                .front()
                .is_some_and(|s| now_ms - s.at_ms > SPAN_MS + 60_000)
        {
            samples.pop_front();
        }
    }

    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.samples.lock().iter().cloned().collect()
    }
}

/// The sum of the series of `name` whose labels pass `keep`.
pub(crate) fn total(s: &Sample, name: &str, keep: impl Fn(&BTreeMap<&str, &str>) -> bool) -> f64 {
    s.series
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && keep(&labels(k)))
        .map(|(_, v)| v)
        .sum()
}

/// Per second between the first and last sample (0 with fewer than two).
pub(crate) fn rate(
    samples: &[Sample],
    name: &str,
    keep: impl Fn(&BTreeMap<&str, &str>) -> bool + Copy,
) -> f64 {
    match (samples.first(), samples.last()) {
        (Some(a), Some(b)) if b.at_ms > a.at_ms => {
            (total(b, name, keep) - total(a, name, keep)).max(0.0) * 1000.0
                / (b.at_ms - a.at_ms) as f64
        }
        _ => 0.0,
    }
}

/// The per-second rate between consecutive samples, as (time, rate) points.
pub(crate) fn series(
    samples: &[Sample],
    name: &str,
    keep: impl Fn(&BTreeMap<&str, &str>) -> bool + Copy,
) -> Vec<(i64, f64)> {
    samples
        .windows(2)
        .filter(|w| w[1].at_ms > w[0].at_ms)
        .map(|w| {
            let d = (total(&w[1], name, keep) - total(&w[0], name, keep)).max(0.0);
            (w[1].at_ms, d * 1000.0 / (w[1].at_ms - w[0].at_ms) as f64)
        })
        .collect()
}

/// The `q` quantile (seconds) of request latency between the first and last sample, from
/// the histogram's cumulative buckets; `None` without requests.
pub(crate) fn latency_quantile(samples: &[Sample], q: f64) -> Option<f64> {
    let (a, b) = (samples.first()?, samples.last()?);
    let bucket = format!("{REQUEST_DURATION_SECONDS}_bucket");
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (s, slot) in [(a, 0), (b, 1)] {
        for (k, v) in &s.series {
            if k.split('{').next() != Some(bucket.as_str()) {
                continue;
            }
            let le = labels(k).get("le").copied().unwrap_or("+Inf");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            // Cumulative per route: summing routes keeps it cumulative.
            if slot == 1 {
                e.1 += v;
            } else {
                e.1 -= v;
            }
        }
    }
    let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
    let count = buckets.last()?.1;
    if count <= 0.0 {
        return None;
    }
    let want = q * count;
    buckets
        .iter()
        .find(|(_, c)| *c >= want)
        .map(|(le, _)| if le.is_finite() { *le } else { f64::NAN })
}

/// A small line chart of `points` over the last 15 minutes ending at `now_ms`.
pub(crate) fn chart(title: &str, points: &[(i64, f64)], now_ms: i64) -> String {
    const W: f64 = 360.0;
    const H: f64 = 80.0;
    let max = points.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let xy = |(t, v): &(i64, f64)| {
        let x = W - (now_ms - t) as f64 / SPAN_MS as f64 * W;
        let y = H - v / top * H;
        format!("{:.1},{:.1}", x.clamp(0.0, W), y.clamp(0.0, H))
    };
    let path: Vec<String> = points
        .iter()
        .filter(|(t, _)| now_ms - t <= SPAN_MS)
        .map(xy)
        .collect();
    let mut out = format!(
        "<figure><figcaption>{} <span class=\"muted\">(last 15 min, max {max:.1}/s)</span></figcaption>\
         <svg role=\"img\" aria-label=\"{}\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">",
        super::esc(title),
        super::esc(title)
    );
    if !path.is_empty() {
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"#2a62c9\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    out.push_str("</svg></figure>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(ok: f64, bad: f64, fast: f64, slow: f64) -> String {
        format!(
            "# TYPE cognihook_requests_total counter\n\
             cognihook_requests_total{{route=\"r\",status=\"200\",code=\"\"}} {ok}\n\
             cognihook_requests_total{{route=\"r\",status=\"401\",code=\"invalid_signature\"}} {bad}\n\
             cognihook_request_duration_seconds_bucket{{route=\"r\",le=\"0.001\"}} {fast}\n\
             cognihook_request_duration_seconds_bucket{{route=\"r\",le=\"0.01\"}} {}\n\
             cognihook_request_duration_seconds_bucket{{route=\"r\",le=\"+Inf\"}} {}\n\
             cognihook_outbox_pending{{sink=\"s\"}} 4\n",
            fast + slow,
            fast + slow
        )
    }

    #[test]
    fn rates_and_quantiles_come_from_the_difference_of_two_samples() {
        let h = History::default();
        h.sample(&text(100.0, 5.0, 90.0, 10.0), 0);
        h.sample(&text(200.0, 10.0, 150.0, 15.0), 5_000);
        h.sample(&text(300.0, 15.0, 189.0, 21.0), 5_500); // under a second later: replaces it
        h.sample(&text(300.0, 15.0, 189.0, 21.0), 10_000);
        let s = h.samples();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].at_ms, 5_500);
        assert!(
            !s[0].series.keys().any(|k| k.contains("outbox")),
            "only what is charted"
        );
        let ok = rate(&s, REQUESTS_TOTAL, |l| l.get("status") == Some(&"200"));
        assert!((ok - 20.0).abs() < 1e-9, "{ok}");
        let errors = rate(&s, REQUESTS_TOTAL, |l| {
            l.get("code").is_some_and(|c| !c.is_empty())
        });
        assert!((errors - 1.0).abs() < 1e-9);
        // 110 requests in between: 99 under 1 ms, 11 under 10 ms.
        assert_eq!(latency_quantile(&s, 0.5), Some(0.001));
        assert_eq!(latency_quantile(&s, 0.99), Some(0.01));
        let points = series(&s, REQUESTS_TOTAL, |_| true);
        assert_eq!(points, [(5_500, 210.0 / 5.5), (10_000, 0.0)]);
        let svg = chart("requests/s", &points, 10_000);
        assert!(svg.contains("<polyline") && svg.contains("360.0,"), "{svg}");
    }

    #[test]
    fn old_samples_fall_out_of_the_window() {
        let h = History::default();
        h.sample(&text(1.0, 0.0, 1.0, 0.0), 0);
        h.sample(&text(2.0, 0.0, 1.0, 0.0), SPAN_MS + 120_000);
        assert_eq!(h.samples().len(), 1);
    }
}
