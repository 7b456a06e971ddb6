//! Columns that line up under their headers, for every table `polisctl` prints.

/// `rows` under `header` in columns as wide as their widest cell: the first two left-aligned
/// (names), the rest right-aligned (numbers).
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
    let mut out = String::new();
    for row in [header].into_iter().chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| match i < 2 {
                true => format!("{cell:<w$}"),
                false => format!("{cell:>w$}"),
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
        let header = ["ACTOR", "STATE", "GEN"].map(str::to_owned);
        let rows = [
            ["/".to_owned(), "healthy".to_owned(), "1".to_owned()],
            [
                "  consensus".to_owned(),
                "restarting".to_owned(),
                "12".to_owned(),
            ],
        ];
        assert_eq!(
            table(&header, &rows),
            "ACTOR        STATE       GEN\n\
             /            healthy       1\n\
             \x20 consensus  restarting   12\n"
        );
    }
}
