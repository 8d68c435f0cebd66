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
    assert!(
        ours("muster-kube").is_empty(),
        "the Kubernetes seam knows no other Muster crate"
    );
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
            assert!(
                name == "muster-server" || name == "muster-kube-standin",
                "only the server knows REST routes (and the tests' stand-in, Kubernetes' own): {name}"
            );
        }
        if deps.contains(&"kube".to_string()) {
            assert_eq!(name, "muster-kube", "only muster-kube speaks to Kubernetes");
        }
        assert!(
            !deps.contains(&"muster-kube-standin".to_string()),
            "{name} links the tests' stand-in API server, which ships in nothing"
        );
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

/// The server's runtime modules form one direction (ARCHITECTURE.md, "Layers"): a module names
/// only modules of its own layer or below. What a lower layer must tell a higher one (a link
/// opened, a worker changed) goes up as an event (`Comms::events`, `App::signals`), not as a call.
#[test]
fn server_modules_are_layered() {
    // Bottom first. `state` is the wiring that holds every part, and `lib` the entry point: both
    // may name anything.
    const LAYERS: &[&[&str]] = &[
        &[
            "logs",
            "http",
            "links",
            "key_failures",
            "artifacts",
            "config",
            "audit",
        ],
        &["kinds", "comms"],
        &["runbook", "health"],
        &["dispatch", "nodes", "dynamic"],
        &["api", "access", "auth", "openapi", "bootstrap"],
    ];
    let layer_of = |module: &str| LAYERS.iter().position(|layer| layer.contains(&module));
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(own) = layer_of(&module) else {
            assert!(
                ["state", "lib"].contains(&module.as_str()),
                "{} is in no layer: add it to LAYERS and to ARCHITECTURE.md",
                relative.display()
            );
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for named in crate_paths(&text) {
            if let Some(theirs) = layer_of(&named)
                && theirs > own
            {
                violations.push(format!("{} names crate::{named}", relative.display()));
            }
        }
    }
    assert!(
        checked > 20,
        "the walk found the server's modules ({checked})"
    );
    assert!(
        violations.is_empty(),
        "lower layers call higher ones:\n{}",
        violations.join("\n")
    );
}

/// The first segment of every `crate::…` path in a source file, `use crate::{a, b::c}` included.
fn crate_paths(text: &str) -> Vec<String> {
    let mut named = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        named.push(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            named.push(ident(rest));
        }
    }
    named
}
