//! What `polisctl bench` prints: per measure, Polis's median, its floor's median, and the
//! per-round ratio Polis ÷ floor (min, median, max), with the goal; as a table or as JSON.

use serde_json::json;

/// One row: Polis's samples, and its floor's if it has one (paired by round).
#[derive(Clone, Debug)]
pub struct Measure {
    /// What is measured, and in what unit.
    pub name: String,
    /// Polis's samples, one per round.
    pub polis: Vec<f64>,
    /// The floor's samples, paired with Polis's by round; empty if there is none.
    pub floor: Vec<f64>,
    /// The goal, in words.
    pub goal: String,
}

impl Measure {
    /// A measure with a floor, sample `i` of each from the same round.
    pub fn paired(name: &str, polis: Vec<f64>, floor: Vec<f64>, goal: &str) -> Self {
        Measure {
            name: name.to_owned(),
            polis,
            floor,
            goal: goal.to_owned(),
        }
    }

    /// A measure with no floor.
    pub fn alone(name: &str, polis: Vec<f64>, goal: &str) -> Self {
        Self::paired(name, polis, Vec::new(), goal)
    }

    /// Per-round ratios Polis ÷ floor, sorted.
    pub fn ratios(&self) -> Vec<f64> {
        let mut ratios: Vec<f64> = self
            .polis
            .iter()
            .zip(&self.floor)
            .filter(|(_, f)| **f > 0.0)
            .map(|(p, f)| p / f)
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios
    }
}

/// The suite's result.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every row, in the order measured.
    pub measures: Vec<Measure>,
}

impl Report {
    /// A table for people.
    pub fn table(&self) -> String {
        // One layout for the header and the rows.
        let row = |name: &str, polis: &str, floor: &str, ratio: &str, goal: &str| {
            format!("{name:<48} {polis:>9} {floor:>9} {ratio:>20}  {goal}\n")
        };
        let mut out = row("measure", "Polis", "floor", "ratio min/med/max", "goal");
        for m in &self.measures {
            let floor = median(&m.floor).map_or("-".to_owned(), |f| format!("{f:.3}"));
            let ratios = m.ratios();
            let ratio = match (ratios.first(), median(&ratios), ratios.last()) {
                (Some(lo), Some(mid), Some(hi)) => format!("{lo:.2}/{mid:.2}/{hi:.2}"),
                _ => "-".to_owned(),
            };
            let polis = median(&m.polis).map_or("-".to_owned(), |p| format!("{p:.3}"));
            out.push_str(&row(&m.name, &polis, &floor, &ratio, &m.goal));
        }
        out
    }

    /// JSON for tools: every sample, the medians and the ratios.
    pub fn json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .measures
            .iter()
            .map(|m| {
                json!({
                    "measure": m.name,
                    "polis": m.polis,
                    "floor": m.floor,
                    "polis_median": median(&m.polis),
                    "floor_median": median(&m.floor),
                    "ratios": m.ratios(),
                    "goal": m.goal,
                })
            })
            .collect();
        json!({ "measures": rows })
    }
}

/// The median of `samples` (the upper one of an even count), if any.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

/// The 99th percentile of `samples` (nearest rank), if any.
pub fn p99(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (sorted.len() * 99).div_ceil(100);
    sorted.get(rank.checked_sub(1)?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_rounds_and_the_table_shows_their_spread() {
        let m = Measure::paired("P1 (s)", vec![2.0, 1.0, 3.0], vec![1.0, 1.0, 2.0], "≤ 1.05");
        assert_eq!(m.ratios(), vec![1.0, 1.5, 2.0]);
        let table = Report {
            measures: vec![m, Measure::alone("P6 (MiB)", vec![19.0], "-")],
        }
        .table();
        assert!(table.contains("1.00/1.50/2.00"), "{table}");
        assert!(table.contains("2.000"), "{table}");
        let p6 = table.lines().find(|l| l.starts_with("P6")).unwrap();
        assert!(p6.contains("19.000") && p6.contains(" - "), "{p6}");
    }

    #[test]
    fn median_and_p99_of_nothing_are_none() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(p99(&[]), None);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p99(&hundred), Some(99.0));
        assert_eq!(p99(&[5.0, 1.0]), Some(5.0));
    }
}
