//! The report as a table for people, JSON for scripts and SARIF 2.1.0 for code-scanning UIs.
//! Nothing here can print a token: findings never hold one.
use crate::{Report, Severity, Status};
use serde_json::json;

/// A grouped table: each finding with its status, severity, id and detail; failures with the
/// reference and a fix hint.
pub fn render_human(r: &Report) -> String {
    let mut out = format!("gatehouse check {}\n", r.target);
    let mut group = "";
    for c in &r.checks {
        if c.group != group {
            group = c.group;
            out.push_str(&format!("\n{group}\n"));
        }
        let status = match c.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        out.push_str(&format!(
            "  {status}  {:<8} {:<19} {}\n",
            c.severity.as_str(),
            c.id,
            c.title
        ));
        if !c.detail.is_empty() {
            out.push_str(&format!("        {:<28}{}\n", "", c.detail));
        }
        if c.status == Status::Fail {
            out.push_str(&format!("        {:<28}fix: {}\n", "", c.hint));
            out.push_str(&format!("        {:<28}see: {}\n", "", c.reference));
        }
    }
    let count = |s: Status| r.checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "\ngrade {}: {} passed, {} failed, {} skipped\n",
        r.grade,
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip)
    ));
    out
}

pub fn render_json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|_| "{}".into())
}

/// SARIF 2.1.0: one rule per check, one result per failed check.
pub fn render_sarif(r: &Report) -> String {
    let rules: Vec<_> = r
        .checks
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "name": c.id,
                "shortDescription": {"text": c.title},
                "help": {"text": format!("{} ({})", c.hint, c.reference)},
                "properties": {"severity": c.severity.as_str()},
            })
        })
        .collect();
    let results: Vec<_> = r
        .checks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.status == Status::Fail)
        .map(|(i, c)| {
            json!({
                "ruleId": c.id,
                "ruleIndex": i,
                "level": match c.severity {
                    Severity::Critical | Severity::High => "error",
                    Severity::Medium => "warning",
                    Severity::Low | Severity::Info => "note",
                },
                "message": {"text": format!("{}: {}", c.title, c.detail)},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": r.target}}}],
            })
        })
        .collect();
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "gatehouse-check",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/gatehouse",
                "rules": rules,
            }},
            "results": results,
            "properties": {"grade": r.grade},
        }],
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
}
