//! CK-1: the README's table of checks is the checker's own list (ids, severities, titles and
//! references), so what users read is what runs.
#![allow(clippy::expect_used, reason = "tests")]

#[test]
fn ck1_the_readme_lists_every_check_as_it_is() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let rows: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `") && l.split('|').count() == 6)
        .collect();
    let catalogue = gatehouse_check::catalogue();
    let mut missing = Vec::new();
    for (id, severity, title, reference) in &catalogue {
        let row = format!("| `{id}` | {} | {title} | {reference} |", severity.as_str());
        if !rows.contains(&row.as_str()) {
            missing.push(row);
        }
    }
    assert!(
        missing.is_empty(),
        "README rows to add or fix:\n{}",
        missing.join("\n")
    );
    let listed = rows
        .iter()
        .filter(|r| {
            let id = r.split('`').nth(1).unwrap_or_default();
            id.chars()
                .all(|c| c.is_ascii_uppercase() || c == '-' || c.is_ascii_digit())
        })
        .count();
    assert_eq!(
        listed,
        catalogue.len(),
        "the README lists checks that do not exist"
    );
}
