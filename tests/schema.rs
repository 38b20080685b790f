//! The JSON guard prints follows the versioned schemas in schema/. Validated here: the live
//! output of `guard policy check --json`, the reports and status captured from real runs in the
//! VM tier (tests/fixtures/json), and, when GUARD_JSON_DIR is set (tests/vm/run.sh sets it),
//! every JSON file the current VM run wrote.
use assert_cmd::Command;
use std::path::Path;

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/schema/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&v).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn check(doc: &serde_json::Value, what: &str) {
    let kind = match doc["schema"].as_str() {
        Some("guard.report/1") => "report",
        Some("guard.status/1") => "status",
        Some("guard.policy/1") => "policy",
        Some("guard.diff/1") => "diff",
        other => panic!("{what}: unknown schema {other:?}"),
    };
    let v = schema(kind);
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not follow {kind}.schema.json: {errors:#?}"
    );
}

fn check_dir(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let doc: serde_json::Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
        check(&doc, &p.display().to_string());
        n += 1;
    }
    n
}

#[test]
fn policy_check_json_follows_its_schema() {
    for name in ["apt", "deploy", "postgresql"] {
        let out = Command::cargo_bin("guard")
            .unwrap()
            .args(["policy", "check", name, "--json"])
            .output()
            .unwrap();
        if !out.status.success() {
            // a hook program missing on this machine (pg_isready…) is a refusal, not a schema matter
            continue;
        }
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        check(&doc, &format!("guard policy check {name} --json"));
    }
}

#[test]
fn reports_and_status_captured_from_real_runs_follow_their_schemas() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/json");
    assert!(
        check_dir(&dir) >= 3,
        "fixtures missing in {}",
        dir.display()
    );
}

#[test]
fn the_json_of_the_current_vm_run_follows_its_schemas() {
    let Some(dir) = std::env::var_os("GUARD_JSON_DIR") else {
        return; // set by tests/vm/run.sh after the VM tier
    };
    let n = check_dir(Path::new(&dir));
    assert!(n > 0, "the VM run wrote no JSON");
    eprintln!("validated {n} JSON documents from the VM run");
}

#[test]
fn a_schema_violation_is_caught() {
    // the test must be able to fail: an unknown action is rejected
    let doc = serde_json::json!({"schema": "guard.report/1", "run": "x"});
    assert!(schema("report").validate(&doc).is_err());
}
