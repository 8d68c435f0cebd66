//! Artifacts from an SSH worker: streamed from the script's working directory on the worker (a
//! real OpenSSH sshd on 127.0.0.1), with the same path rules as every kind, and the directory
//! removed once they are collected.

use crate::artifacts::{artifacts_of, content, fifty_megabytes, has_line, run};
use crate::ssh_workers::{add_worker, fingerprint, key_host, wait_health};
use crate::sshd;
use crate::support::{Server, eventually};
use serde_json::json;

#[test]
fn an_ssh_worker_returns_artifacts_refuses_paths_outside_and_streams_50_megabytes() {
    let server = Server::start();
    let host = key_host(&server, "deploy key");
    let pin = fingerprint(&host.sshd.host_key_pub(), "sha256");
    add_worker(&server, "box", host.sshd.port, "deploy key", &pin);
    let worker = wait_health(&server, "box", "Healthy");
    let target = json!({"TargetType": "Workers", "MachineIds": [worker["Id"]]});

    let mut arguments = target.clone();
    arguments["ScriptBody"] = json!(
        "mkdir -p out\nprintf 'from ssh' > out/report.txt\nnew_octopusartifact out/report.txt\n\
         new_octopusartifact \"$PWD/out/report.txt\" 'again.txt'\n\
         ln -s /etc/hostname link.txt\nnew_octopusartifact link.txt\n\
         new_octopusartifact /etc/passwd\nnew_octopusartifact missing.txt\necho done"
    );
    let before = tickets(&sshd::work_root());
    let (task, lines) = run(&server, "Spaces-1", arguments);
    assert_eq!(task["State"], "Success", "{lines:#?}");
    assert_eq!(task["HasWarningsOrErrors"], true, "{task}");
    let task_id = task["Id"].as_str().unwrap().to_string();
    let listed = artifacts_of(&server, "Spaces-1", &task_id);
    let mut names: Vec<&str> = listed
        .iter()
        .map(|a| a["Filename"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["again.txt", "report.txt"], "{lines:#?}");
    assert_eq!(listed[0]["Source"], "box");
    for artifact in &listed {
        let (_, bytes) = content(&server, "Spaces-1", artifact["Id"].as_str().unwrap());
        assert_eq!(bytes, b"from ssh");
    }
    for refused in ["link.txt", "/etc/passwd", "missing.txt"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(refused) && l.contains("was not collected")),
            "a warning names {refused}: {lines:#?}"
        );
    }
    assert!(has_line(&lines, "done"));

    // The script's working directory on the worker is gone once its files are collected (other
    // tests' servers leave theirs under the same user, so only this one's new directory counts).
    let work = sshd::work_root();
    eventually("the script's directory is removed", || {
        let left: Vec<String> = tickets(&work)
            .into_iter()
            .filter(|n| n.ends_with(&format!("-{task_id}")) && !before.contains(n))
            .collect();
        left.is_empty().then_some(())
    });

    // The SSH machine counts in the usage report by its host key, with the task it ran.
    let usage = server.ok("/api/Spaces-1/workers/usage?hours=1");
    let machine = usage["Agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["Thumbprint"] == pin.as_str())
        .unwrap_or_else(|| panic!("the SSH machine is in the usage report: {usage}"));
    assert_eq!(machine["Name"], "box");
    assert!(machine["Tasks"].as_u64().unwrap() >= 1, "{machine}");

    let (_, growth) = fifty_megabytes(&server, target);
    eprintln!("server RSS growth while collecting 50 MiB over SSH: {growth} KiB");
    assert!(
        growth < 40 * 1024,
        "the server grew by {growth} KiB while it collected 50 MiB from an SSH worker"
    );
}

/// The script directories under `work`.
fn tickets(work: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(work)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}
