//! The shipped policies and their Rego tests, and how policy directories are loaded.

use baton_validation::Error;
use baton_validation::policy::{PolicySet, run_policy_tests};
use std::path::{Path, PathBuf};

fn policy_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies"))
}

/// Runs every `test_*` rule of every `*_test.rego` in `policies/`; fails naming each failure.
#[test]
fn rego_tests_pass() {
    let results = run_policy_tests(&policy_dir()).unwrap_or_else(|e| panic!("{e}"));
    let test_files: Vec<_> = std::fs::read_dir(policy_dir())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.ends_with("_test.rego"))
        .collect();
    assert!(!test_files.is_empty(), "policies/ has no *_test.rego");
    for file in &test_files {
        assert!(
            results.iter().any(|r| &r.file == file),
            "{file} has no test_* rule the runner found"
        );
    }
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.failure
                .as_ref()
                .map(|f| format!("{}: {}: {f}", r.file, r.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "failing Rego tests:\n{}",
        failures.join("\n")
    );
    assert!(
        results.len() >= 10,
        "only {} Rego tests found",
        results.len()
    );
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn a_failing_rego_test_is_reported_by_name() {
    let dir = dir_with(&[
        (
            "p.rego",
            "package baton.p\n\ndeny contains \"no\" if input.x == 1\n",
        ),
        (
            "p_test.rego",
            "package baton.p_test\n\nimport data.baton.p\n\n\
             test_passes if { \"no\" in p.deny with input as {\"x\": 1} }\n\n\
             test_fails if { \"no\" in p.deny with input as {\"x\": 2} }\n",
        ),
    ]);
    let results = run_policy_tests(dir.path()).unwrap();
    let by_name = |n: &str| {
        results
            .iter()
            .find(|r| r.name == n)
            .unwrap_or_else(|| panic!("{n} not run"))
    };
    assert_eq!(by_name("test_passes").failure, None);
    assert!(by_name("test_fails").failure.is_some());
    assert_eq!(results.len(), 2);
}

#[test]
fn test_files_are_not_live_policies() {
    let set = PolicySet::load(&policy_dir()).unwrap();
    assert!(
        set.files().iter().all(|f| !f.ends_with("_test.rego")),
        "{:?}",
        set.files()
    );
    assert!(set.files().contains(&"production_safety.rego".to_string()));
    assert_eq!(set.version().len(), 64);
}

#[test]
fn builtin_policies_are_the_repository_policies_with_the_same_version() {
    let builtin = PolicySet::builtin().unwrap_or_else(|e| panic!("{e}"));
    let loaded = PolicySet::load(&policy_dir()).unwrap();
    assert_eq!(builtin.files(), loaded.files());
    assert_eq!(builtin.version(), loaded.version());
    assert!(
        builtin
            .files()
            .contains(&"production_safety.rego".to_string())
    );
    assert!(
        baton_validation::policy::BUILTIN
            .iter()
            .all(|(name, _)| !name.ends_with("_test.rego"))
    );
    // The order pairs are given in does not matter.
    let reversed: Vec<_> = baton_validation::policy::BUILTIN
        .iter()
        .rev()
        .copied()
        .collect();
    let same = PolicySet::from_sources(Path::new("elsewhere"), reversed).unwrap();
    assert_eq!(same.version(), builtin.version());
}

#[test]
fn duplicate_source_names_are_refused() {
    let p = ("p.rego", "package baton.p\n");
    let err = PolicySet::from_sources(Path::new("here"), [p, p]).unwrap_err();
    assert!(
        err.to_string().contains("two policies are named p.rego"),
        "{err}"
    );
}

#[test]
fn syntax_error_names_the_file_and_position() {
    let dir = dir_with(&[
        (
            "good.rego",
            "package baton.good\n\ndeny contains \"x\" if false\n",
        ),
        (
            "broken.rego",
            "package baton.broken\n\ndeny contains msg if {\n  msg := \n",
        ),
    ]);
    let err = PolicySet::load(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Policy { .. }), "{text}");
    assert!(text.contains("broken.rego"), "{text}");
    assert!(text.contains("fix the file"), "{text}");
    assert!(text.contains("broken.rego:4:"), "no line/column in: {text}");
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn empty_directory_is_refused() {
    let dir = dir_with(&[("only_test.rego", "package baton.x_test\n")]);
    let err = PolicySet::load(dir.path()).unwrap_err();
    assert!(matches!(err, Error::PolicyDir { .. }), "{err}");
    assert!(
        err.to_string().contains("refuses to run without policies"),
        "{err}"
    );
    let missing = PolicySet::load(Path::new("/nonexistent/policies")).unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/policies"),
        "{missing}"
    );
}

#[test]
fn package_outside_baton_is_refused() {
    let dir = dir_with(&[(
        "other.rego",
        "package other\n\ndeny contains \"x\" if true\n",
    )]);
    let err = PolicySet::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("package baton.<name>"), "{err}");
    assert!(err.to_string().contains("other.rego"), "{err}");
}

#[test]
fn every_baton_package_is_collected_and_the_version_follows_the_contents() {
    let a = (
        "a.rego",
        "package baton.a\n\ndeny contains \"a says no\" if input.spec.environment == \"x\"\n",
    );
    let b = (
        "b.rego",
        "package baton.b\n\nrequire_approval contains \"b asks\" if true\n",
    );
    let dir = dir_with(&[a, b]);
    let set = PolicySet::load(dir.path()).unwrap();
    let out = set.evaluate(&serde_json::json!({"spec": {"environment": "x"}}));
    assert_eq!(out.deny, ["a says no"]);
    assert_eq!(out.require_approval, ["b asks"]);
    assert_eq!(set.files(), ["a.rego", "b.rego"]);

    let same = PolicySet::load(dir_with(&[a, b]).path()).unwrap();
    assert_eq!(same.version(), set.version());
    let changed = PolicySet::load(dir_with(&[a, ("b.rego", "package baton.b\n")]).path()).unwrap();
    assert_ne!(changed.version(), set.version());
}

#[test]
fn a_policy_that_fails_at_runtime_denies() {
    // Division by a string is an evaluation error in strict mode only; use an explicit
    // conflict instead: two values for one complete rule.
    let dir = dir_with(&[(
        "c.rego",
        "package baton.c\n\nlevel := 1 if input.a\nlevel := 2 if input.b\n\n\
         deny contains \"level 2\" if level == 2\n",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    assert!(
        set.evaluate(&serde_json::json!({"a": true}))
            .deny
            .is_empty()
    );
    let out = set.evaluate(&serde_json::json!({"a": true, "b": true}));
    assert_eq!(out.deny.len(), 1, "{out:?}");
    assert!(out.deny[0].contains("failed to evaluate"), "{out:?}");
}
