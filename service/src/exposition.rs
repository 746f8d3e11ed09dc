//! Serving a `prometheus_client` registry in either exposition format.
//!
//! prometheus-client writes OpenMetrics only. Prometheus reads both, but
//! `promtool check metrics` and many other tools read the classic text format
//! 0.0.4, which names counters' HELP/TYPE after the `_total` sample and has no
//! `info` type. [`render`] serves OpenMetrics to clients that ask for it and the
//! classic format to everyone else.

use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Content type of OpenMetrics 1.0.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encodes `registry` for a request with this `Accept` header; returns the content type and body.
pub fn render(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    let mut openmetrics = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut openmetrics, registry);
    if accept.is_some_and(|accept| accept.contains("application/openmetrics-text")) {
        (OPENMETRICS, openmetrics)
    } else {
        (TEXT, openmetrics_to_text(&openmetrics))
    }
}

/// Encodes one gauge family from `(labels, value)` pairs, for collectors that
/// derive their series from state at scrape time (series of things that are
/// gone simply vanish).
pub fn encode_gauges<N: EncodeGaugeValue + std::fmt::Debug + Send + Sync + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (Vec<(&'static str, String)>, N)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Rewrites prometheus-client's OpenMetrics output as text format 0.0.4.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "gaugehistogram" | "stateset" => (family.to_owned(), "untyped"),
                other => (family.to_owned(), other),
            };
            if let Some((help_family, help_text)) = help.take()
                && help_family == family
            {
                text.push_str(&format!("# HELP {name} {help_text}\n"));
            }
            text.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::info::Info;

    #[test]
    fn counters_and_info_become_classic_text() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        counter.inc();
        registry.register("ocs_things", "Things seen", counter);
        registry.register("ocs_level", "A level", Gauge::<i64>::default());
        registry.register("ocs_build", "Build", Info::new(vec![("version", "1.0")]));
        let (content_type, body) = render(&registry, Some("text/plain"));
        assert_eq!(content_type, TEXT);
        assert_eq!(
            body,
            "# HELP ocs_things_total Things seen.\n# TYPE ocs_things_total counter\nocs_things_total 1\n\
             # HELP ocs_level A level.\n# TYPE ocs_level gauge\nocs_level 0\n\
             # HELP ocs_build_info Build.\n# TYPE ocs_build_info gauge\nocs_build_info{version=\"1.0\"} 1\n"
        );
        let (content_type, body) = render(
            &registry,
            Some("application/openmetrics-text; version=1.0.0"),
        );
        assert_eq!(content_type, OPENMETRICS);
        assert!(body.ends_with("# EOF\n"));
    }
}
