//! What benchmarks read from the processes they measure: CPU time and
//! resident set from `/proc`, a service's metric, percentiles.

use std::process::Command;

/// A process's CPU time (user + system) in seconds, from `/proc/<pid>/stat`;
/// 0 once it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The name in parentheses may hold spaces; the fields after it do not.
    let after_name = &stat[stat.rfind(')').map_or(0, |end| end + 2)..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|field| fields.get(*field)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A process's resident set (`VmRSS`) in KiB; 0 once it is gone.
pub fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// This process's resident set in KiB.
pub fn own_resident_kib() -> u64 {
    resident_kib(std::process::id())
}

/// The sum of the samples of `/metrics` on `port` whose series starts with
/// `series` (a name, or a name with labels); `None` while nothing listens.
pub async fn metric(port: u16, series: &str) -> Option<f64> {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let (_, body) = crate::http_get(([127, 0, 0, 1], port).into(), "/metrics").await;
    let values: Vec<f64> = body
        .lines()
        .filter(|line| {
            line.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                || (series.ends_with('}') && line.starts_with(series))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The `p` quantile (0..=1) of `sorted` samples; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The `q` quantile (0..=1) of histogram `name` (its full name, without
/// `_bucket`) on `port`'s `/metrics`, interpolated within the bucket as
/// Prometheus's `histogram_quantile` does; `None` when it has no samples.
pub async fn histogram_quantile(port: u16, name: &str, q: f64) -> Option<f64> {
    let (_, body) = crate::http_get(([127, 0, 0, 1], port).into(), "/metrics").await;
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = body
        .lines()
        .filter_map(|line| {
            let (bound, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect();
    quantile_of_buckets(&buckets, q)
}

/// `q` quantile of cumulative `(upper bound, count)` buckets, ascending.
fn quantile_of_buckets(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut below = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                // Beyond the last finite bound, which is all it can say.
                return Some(below.0);
            }
            let within = (rank - below.1) / (count - below.1).max(f64::MIN_POSITIVE);
            return Some(below.0 + (bound - below.0) * within);
        }
        below = (bound, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::quantile_of_buckets;

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let buckets = [(0.01, 50.0), (0.02, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile_of_buckets(&buckets, 0.5), Some(0.01));
        let p75 = quantile_of_buckets(&buckets, 0.75).unwrap();
        assert!((p75 - 0.015).abs() < 1e-12, "{p75}");
        assert_eq!(quantile_of_buckets(&[(f64::INFINITY, 0.0)], 0.5), None);
        let beyond = [(0.01, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile_of_buckets(&beyond, 0.99), Some(0.01));
    }
}
