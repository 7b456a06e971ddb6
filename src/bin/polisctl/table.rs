//! Columns that line up under their headers, for every table `polisctl` prints.

/// `rows` under `header` in columns as wide as their widest cell: columns of numbers
/// right-aligned, every other column (names, addresses, lists) left-aligned.
pub fn table<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| {
            rows.iter()
                .chain([header])
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric: Vec<bool> = (0..N)
        .map(|i| !rows.is_empty() && rows.iter().all(|r| r[i].parse::<f64>().is_ok()))
        .collect();
    let mut out = String::new();
    for row in [header].into_iter().chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| match numeric[i] {
                false => format!("{cell:<w$}"),
                true => format!("{cell:>w$}"),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let header = ["ACTOR", "STATE", "GEN", "ADDRESS"].map(str::to_owned);
        let row = |cells: [&str; 4]| cells.map(str::to_owned);
        let rows = [
            row(["/", "healthy", "1", "198.18.0.10"]),
            row(["  consensus", "restarting", "12", "198.18.0.2"]),
        ];
        assert_eq!(
            table(&header, &rows),
            "ACTOR        STATE       GEN  ADDRESS\n\
             /            healthy       1  198.18.0.10\n\
             \x20 consensus  restarting   12  198.18.0.2\n"
        );
    }
}
