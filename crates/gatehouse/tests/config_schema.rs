//! Issue 18, part 5 (CF-1): `gatehouse config schema` prints a JSON Schema (draft 2020-12)
//! generated from the types `serve` reads; a real validator (Ajv, from npm) accepts every
//! example configuration with it and refuses an unknown key and a wrong type, as `config check`
//! does.
mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn cf1_the_schema_validates_every_example_and_refuses_what_check_refuses() {
    let out = gatehouse()
        .args(["config", "schema"])
        .output()
        .expect("schema");
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown keys are errors"
    );
    let dir = std::env::temp_dir().join(format!("gatehouse-schema-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let schema_file = dir.join("schema.json");
    std::fs::write(&schema_file, &out.stdout).expect("write");

    let mut examples = Vec::new();
    yaml_files(&repo_root().join("examples"), &mut examples);
    assert!(examples.len() >= 4, "{examples:?}");
    let mut docs = Vec::new();
    for (i, f) in examples.iter().enumerate() {
        let v: Value = yaml_serde::from_str(&std::fs::read_to_string(f).expect("read"))
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let p = dir.join(format!("example-{i}.json"));
        std::fs::write(&p, v.to_string()).expect("write");
        docs.push(p);
    }
    // Two that `config check` refuses: an unknown key, a port that is not a number.
    let bad_key = dir.join("bad-key.json");
    std::fs::write(
        &bad_key,
        r#"{"listen": "127.0.0.1:1", "guard": {}, "lisen": 1}"#,
    )
    .expect("w");
    let bad_type = dir.join("bad-type.json");
    std::fs::write(
        &bad_type,
        r#"{"listen": "127.0.0.1:1", "guard": {"strict_typ": "yes"}}"#,
    )
    .expect("w");
    let run = |files: &[PathBuf]| {
        std::process::Command::new("node")
            .current_dir(repo_root().join("interop"))
            .arg("validate-schema.mjs")
            .arg(&schema_file)
            .args(files)
            .output()
            .expect("node")
    };
    let ok = run(&docs);
    assert!(
        ok.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    for bad in [&bad_key, &bad_type] {
        let r = run(std::slice::from_ref(bad));
        assert!(
            !r.status.success(),
            "{}",
            String::from_utf8_lossy(&r.stdout)
        );
        let check = gatehouse()
            .args(["config", "check"])
            .arg(bad)
            .output()
            .expect("check");
        assert!(!check.status.success(), "config check refuses it too");
    }
}
