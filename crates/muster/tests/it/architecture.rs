//! The crate boundaries of ARCHITECTURE.md, checked against `cargo metadata`.

use serde_json::Value;
use std::collections::BTreeMap;

fn dependencies() -> BTreeMap<String, Vec<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

#[test]
fn crate_dependencies_follow_the_architecture() {
    let all = dependencies();
    let ours = |name: &str| -> Vec<String> {
        all[name]
            .iter()
            .filter(|d| d.starts_with("muster"))
            .cloned()
            .collect()
    };
    assert!(
        ours("muster-core").is_empty(),
        "core depends on no other Muster crate"
    );
    assert_eq!(
        ours("muster-store"),
        vec!["muster-core"],
        "store knows only core"
    );
    assert!(
        ours("muster-exec").is_empty(),
        "exec is shared by the built-in worker and agents, and knows nothing else"
    );
    assert!(
        ours("muster-proto").iter().all(|d| d == "muster-core"),
        "proto knows only core"
    );
    assert!(ours("muster-cli").is_empty(), "the CLI speaks REST only");
    assert_eq!(
        ours("muster-bench"),
        vec!["muster-proto"],
        "the benchmarks drive the binaries; they link only the agent link, for the swarm"
    );
    assert!(
        all["muster-scheduler"].is_empty(),
        "the scheduler's rules are pure: no IO, no async, no other crate ({:?})",
        all["muster-scheduler"]
    );
    assert!(!ours("muster-server").contains(&"muster-cli".to_string()));
    for (name, deps) in &all {
        if deps.contains(&"sqlx".to_string()) {
            assert_eq!(name, "muster-store", "only the store knows SQL");
        }
        if deps.contains(&"axum".to_string()) {
            assert_eq!(name, "muster-server", "only the server knows REST routes");
        }
        if name == "muster-agent" {
            assert!(
                !deps
                    .iter()
                    .any(|d| d == "muster-store" || d == "muster-server"),
                "the agent never links the store or the server"
            );
        }
    }
    let core_io: Vec<&String> = all["muster-core"]
        .iter()
        .filter(|d| ["tokio", "sqlx", "reqwest"].contains(&d.as_str()))
        .collect();
    assert!(
        core_io.is_empty(),
        "core has no IO and no async: {core_io:?}"
    );
}
