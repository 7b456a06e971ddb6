//! What a soak reports: every fault with its recovery time, per-kind percentiles, the workload's
//! counts, and the violation if there was one; as a table for people and JSON for tools.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

/// One injected fault and how long the cluster took to satisfy every invariant again.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The fault's kind ([`super::Fault::kind`]).
    pub kind: &'static str,
    /// The fault, in words.
    pub fault: String,
    /// From the end of the injection to "all invariants hold".
    pub recovery: Duration,
}

/// The workload's counts.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// Owner calls that succeeded.
    pub calls_ok: u64,
    /// Owner calls that failed (a Curator down during a fault: expected, not a violation).
    pub calls_failed: u64,
    /// Register tickets rotated.
    pub tickets_rotated: u64,
    /// Events the workload's Watch received.
    pub watch_events: u64,
    /// Times a fault broke the Watch and it connected again.
    pub watch_reconnects: u64,
    /// Watch events that did not say the watched node is UP (wrong answers).
    pub watch_wrong: u64,
    /// Nodes registered, approved and UP during the soak.
    pub registered: u64,
    /// Of those, made consensus members.
    pub promoted: u64,
    /// Nodes decommissioned and retired during the soak.
    pub decommissioned: u64,
    /// Nodes booted again after a fault ended them.
    pub reboots: u64,
}

/// A soak's report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed the schedule came from.
    pub seed: u64,
    /// Every fault, in order.
    pub outcomes: Vec<Outcome>,
    /// The first invariant that did not hold in time, with the fault after which it did not.
    pub violation: Option<String>,
    /// The workload's counts.
    pub workload: Workload,
    /// The soak's wall time.
    pub duration: Duration,
}

/// Recovery times of one kind: count, p50, p99, max (milliseconds).
fn summary(times: &mut [u128]) -> (usize, u128, u128, u128) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    (times.len(), at(0.50), at(0.99), times[times.len() - 1])
}

impl Report {
    /// The number of invariant violations (a soak stops at the first).
    pub fn violations(&self) -> usize {
        usize::from(self.violation.is_some())
    }

    fn by_kind(&self) -> BTreeMap<&'static str, (usize, u128, u128, u128)> {
        let mut times: BTreeMap<&'static str, Vec<u128>> = BTreeMap::new();
        for outcome in &self.outcomes {
            times
                .entry(outcome.kind)
                .or_default()
                .push(outcome.recovery.as_millis());
        }
        times
            .into_iter()
            .map(|(kind, mut t)| (kind, summary(&mut t)))
            .collect()
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "seed {}: {} faults in {:.0} s, {} violations\n\n{:<22} {:>6} {:>10} {:>10} {:>10}\n",
            self.seed,
            self.outcomes.len(),
            self.duration.as_secs_f64(),
            self.violations(),
            "fault kind",
            "count",
            "p50 (s)",
            "p99 (s)",
            "max (s)"
        );
        let secs = |ms: u128| ms as f64 / 1000.0;
        for (kind, (count, p50, p99, max)) in self.by_kind() {
            out.push_str(&format!(
                "{kind:<22} {count:>6} {:>10.2} {:>10.2} {:>10.2}\n",
                secs(p50),
                secs(p99),
                secs(max)
            ));
        }
        let w = &self.workload;
        out.push_str(&format!(
            "\nworkload: {} owner calls answered, {} failed during faults; {} tickets rotated; \
             {} Watch events ({} wrong), {} reconnections; \
             {} nodes registered ({} made consensus members), {} decommissioned; {} reboots\n",
            w.calls_ok,
            w.calls_failed,
            w.tickets_rotated,
            w.watch_events,
            w.watch_wrong,
            w.watch_reconnects,
            w.registered,
            w.promoted,
            w.decommissioned,
            w.reboots
        ));
        if let Some(violation) = &self.violation {
            out.push_str(&format!("\nVIOLATION: {violation}\n"));
        }
        out
    }

    /// The report as JSON: `violations` at the top level, beside the faults and recovery times.
    pub fn json(&self) -> serde_json::Value {
        let kinds: serde_json::Map<String, serde_json::Value> = self
            .by_kind()
            .into_iter()
            .map(|(kind, (count, p50, p99, max))| {
                let value = json!({"count": count, "p50_ms": p50, "p99_ms": p99, "max_ms": max});
                (kind.to_owned(), value)
            })
            .collect();
        let w = &self.workload;
        json!({
            "seed": self.seed,
            "faults": self.outcomes.len(),
            "violations": self.violations(),
            "violation": self.violation,
            "duration_s": self.duration.as_secs_f64(),
            "recovery_by_kind": kinds,
            "workload": {
                "calls_ok": w.calls_ok,
                "calls_failed": w.calls_failed,
                "tickets_rotated": w.tickets_rotated,
                "watch_events": w.watch_events,
                "watch_reconnects": w.watch_reconnects,
                "watch_wrong": w.watch_wrong,
                "registered": w.registered,
                "promoted": w.promoted,
                "decommissioned": w.decommissioned,
                "reboots": w.reboots,
            },
            "schedule": self.outcomes.iter().map(|o| json!({
                "fault": o.fault,
                "recovery_ms": o.recovery.as_millis(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut times: Vec<u128> = (1..=100).collect();
        assert_eq!(summary(&mut times), (100, 50, 99, 100));
        assert_eq!(summary(&mut [7]), (1, 7, 7, 7));
    }

    #[test]
    fn the_json_report_counts_violations_at_the_top() {
        let mut report = Report {
            seed: 3,
            ..Report::default()
        };
        report.outcomes.push(Outcome {
            kind: "power cut",
            fault: "power cut of every node".into(),
            recovery: Duration::from_millis(1500),
        });
        assert_eq!(report.json()["violations"], 0);
        assert_eq!(
            report.json()["recovery_by_kind"]["power cut"]["max_ms"],
            1500
        );
        report.violation = Some("the record of x is gone".into());
        assert_eq!(report.json()["violations"], 1);
        assert!(report
            .table()
            .contains("VIOLATION: the record of x is gone"));
    }
}
