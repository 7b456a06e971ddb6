//! The two text formats `/metrics` speaks. prometheus-client writes OpenMetrics, where a
//! counter's family is named without `_total` and its samples with it; the classic Prometheus
//! format (0.0.4, what `promtool check metrics` and `curl` readers expect) names both with
//! `_total` and has no `# UNIT` or `# EOF`. A scraper that asks for OpenMetrics gets it as
//! written; everyone else gets the classic format, as Go's client library does.

use std::collections::HashSet;

/// A text format of the metrics endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// The classic Prometheus text format, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Exposition {
    /// The format an HTTP `Accept` header asks for: OpenMetrics only when it is named.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => {
                Exposition::OpenMetrics
            }
            _ => Exposition::Prometheus,
        }
    }

    /// The response's content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// `openmetrics` (prometheus-client's text, which uses only counters, gauges and
    /// histograms here) in this format.
    pub(crate) fn render(self, openmetrics: String) -> String {
        match self {
            Exposition::OpenMetrics => openmetrics,
            Exposition::Prometheus => classic(&openmetrics),
        }
    }
}

/// OpenMetrics text as classic Prometheus text: counter families renamed to their samples'
/// `_total` name, `# UNIT` and `# EOF` dropped; samples and histograms are the same in both.
fn classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        match descriptor(line) {
            Some((kind, name, rest)) if counters.contains(name) => {
                out.push_str(&format!("# {kind} {name}_total {rest}"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A `# HELP` or `# TYPE` line's kind, family name and the rest.
fn descriptor(line: &str) -> Option<(&str, &str, &str)> {
    let rest = line.strip_prefix("# ")?;
    let (kind, rest) = rest.split_once(' ')?;
    if kind != "HELP" && kind != "TYPE" {
        return None;
    }
    let (name, rest) = rest.split_once(' ')?;
    Some((kind, name, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "\
# HELP polis_x_handled Messages handled.
# TYPE polis_x_handled counter
polis_x_handled_total{path=\"/a\"} 5
# HELP polis_x_wait_seconds Time waiting.
# TYPE polis_x_wait_seconds histogram
# UNIT polis_x_wait_seconds seconds
polis_x_wait_seconds_sum 0.5
polis_x_wait_seconds_count 1
polis_x_wait_seconds_bucket{le=\"+Inf\"} 1
# HELP polis_x_depth Messages waiting.
# TYPE polis_x_depth gauge
polis_x_depth 2
# EOF
";

    #[test]
    fn classic_names_counter_families_by_their_samples() {
        let text = Exposition::Prometheus.render(OPENMETRICS.to_owned());
        assert_eq!(
            text,
            "\
# HELP polis_x_handled_total Messages handled.
# TYPE polis_x_handled_total counter
polis_x_handled_total{path=\"/a\"} 5
# HELP polis_x_wait_seconds Time waiting.
# TYPE polis_x_wait_seconds histogram
polis_x_wait_seconds_sum 0.5
polis_x_wait_seconds_count 1
polis_x_wait_seconds_bucket{le=\"+Inf\"} 1
# HELP polis_x_depth Messages waiting.
# TYPE polis_x_depth gauge
polis_x_depth 2
"
        );
    }

    #[test]
    fn openmetrics_is_served_only_to_who_asks_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.3";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
        assert_eq!(Exposition::negotiate(Some("*/*")), Exposition::Prometheus);
        assert_eq!(Exposition::negotiate(None), Exposition::Prometheus);
        let text = Exposition::OpenMetrics.render(OPENMETRICS.to_owned());
        assert_eq!(text, OPENMETRICS);
    }
}
