//! Load generators and simulators for EdgeDesk benchmarks (see
//! docs/BENCHMARKS.md): `edge-loadgen` and `fleet-sim`, and what they share.

/// Resident and peak resident memory of process `pid` in KiB (Linux /proc).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The cumulative buckets of Prometheus histogram `name` in a `/metrics`
/// text: `(upper bound, count)` in the order given, `+Inf` as infinity.
pub fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (labels, count) = rest.split_once("} ")?;
            let le = labels.split(',').find_map(|l| l.strip_prefix("le=\""))?;
            let le = le.trim_end_matches('"');
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// The value of the unlabelled sample `name` (a counter, or a histogram's
/// `_count`) in a `/metrics` text.
pub fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Quantile `q` of what a histogram counted between two scrapes (`before`
/// may be empty), interpolated linearly within the bucket it falls in, as
/// Prometheus's `histogram_quantile` does. None when nothing was counted;
/// a quantile in the `+Inf` bucket is reported as the last finite bound.
pub fn quantile_between(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let counted: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, m)| *m);
            (le, n - earlier)
        })
        .collect();
    let total = counted.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, cum) in &counted {
        if cum >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = if cum > below {
                (rank - below) / (cum - below)
            } else {
                0.0
            };
            return Some(lower + (le - lower) * within);
        }
        (lower, below) = (le, cum);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# TYPE x_seconds histogram\n\
        x_seconds_sum 1.0\n\
        x_seconds_count 10\n\
        x_seconds_bucket{le=\"0.001\"} 2\n\
        x_seconds_bucket{le=\"0.002\"} 6\n\
        x_seconds_bucket{le=\"0.004\"} 10\n\
        x_seconds_bucket{le=\"+Inf\"} 10\n\
        y_seconds_bucket{le=\"0.001\"} 99\n";

    #[test]
    fn a_sample_is_read_by_its_exact_name() {
        assert_eq!(sample_value(SCRAPE, "x_seconds_count"), Some(10.0));
        assert_eq!(sample_value(SCRAPE, "x_seconds_sum"), Some(1.0));
        assert_eq!(sample_value(SCRAPE, "x_seconds"), None);
        assert_eq!(sample_value(SCRAPE, "z_total"), None);
    }

    #[test]
    fn buckets_are_read_for_the_named_histogram_only() {
        let b = histogram_buckets(SCRAPE, "x_seconds");
        assert_eq!(b.len(), 4);
        assert_eq!(b[1], (0.002, 6.0));
        assert!(b[3].0.is_infinite());
    }

    #[test]
    fn the_median_is_interpolated_within_its_bucket() {
        let b = histogram_buckets(SCRAPE, "x_seconds");
        // rank 5 of 10 falls in (0.001, 0.002], 3 of its 4 counts in.
        let p50 = quantile_between(&[], &b, 0.5).unwrap();
        assert!((p50 - 0.00175).abs() < 1e-9, "{p50}");
    }

    #[test]
    fn only_what_was_counted_between_the_scrapes_counts() {
        let after = histogram_buckets(SCRAPE, "x_seconds");
        // Before: the first 2 observations (both under 1 ms) were warm-up.
        let before = vec![
            (0.001, 2.0),
            (0.002, 2.0),
            (0.004, 2.0),
            (f64::INFINITY, 2.0),
        ];
        let p50 = quantile_between(&before, &after, 0.5).unwrap();
        // 8 counted: 4 in (1, 2] ms, 4 in (2, 4] ms; rank 4 ends the first.
        assert!((p50 - 0.002).abs() < 1e-9, "{p50}");
        assert_eq!(quantile_between(&after, &after, 0.5), None);
    }

    #[test]
    fn a_quantile_beyond_the_last_bound_is_that_bound() {
        let after = vec![(0.001, 1.0), (f64::INFINITY, 4.0)];
        assert_eq!(quantile_between(&[], &after, 0.99), Some(0.001));
    }
}
