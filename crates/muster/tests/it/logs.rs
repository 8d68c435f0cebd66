//! Long task logs: every read of a log costs what it answers, not the whole log, and a task's stored
//! log has a limit.

use crate::support::Server;
use serde_json::json;
use std::io::{BufRead, BufReader};

#[test]
fn reading_a_two_million_line_log_keeps_the_server_small() {
    let server = Server::start();
    let task = server.run_script("Spaces-1", json!({"ScriptBody": "seq 1 2000000"}));
    let id = task["Id"].as_str().unwrap().to_string();
    // Two million lines take a while to store in a debug build: poll, with a generous bound.
    let done = crate::support::eventually_within(
        "the two-million-line task ends",
        std::time::Duration::from_secs(600),
        || {
            let task = server.ok(&format!("/api/tasks/{id}"));
            (task["IsCompleted"] == true).then_some(task)
        },
    );
    assert_eq!(done["State"], "Success");

    // Warm up every path once, then measure.
    let tail = server.get(&format!("/api/tasks/{id}/details?tail=20"));
    let start = server.rss_kib();
    let mut before = start;
    for round in 0..4 {
        if round == 1 {
            // The first read grows the allocator's pools once; later reads must reuse them.
            before = server.rss_kib();
            assert!(
                before < start + 16 * 1024,
                "one details read raised the server from {start} KiB to {before} KiB"
            );
        }
        let details = server.get(&format!("/api/tasks/{id}/details"));
        assert_eq!(details.status, 200);
        let elements = details.body["ActivityLogs"][0]["Children"][0]["LogElements"]
            .as_array()
            .unwrap()
            .clone();
        assert!(elements.len() <= 10_001, "{} lines", elements.len());
        let note = elements[0]["MessageText"].as_str().unwrap();
        assert!(
            note.contains("earlier lines are not shown") && note.contains("/raw"),
            "{note}"
        );
        assert_eq!(
            elements.last().unwrap()["MessageText"],
            "2000000",
            "the window is the end of the log"
        );
        assert!(details.body["PhysicalLogSize"].as_i64().unwrap() > 10_000_000);
    }
    let after = server.rss_kib();
    eprintln!(
        "details: RSS {start} KiB, after one read {before} KiB, after three more {after} KiB"
    );
    assert!(
        after < before + 8 * 1024,
        "three more details reads raised the server from {before} KiB to {after} KiB"
    );

    // tail reads only the end.
    let elements = tail.body["ActivityLogs"][0]["Children"][0]["LogElements"]
        .as_array()
        .unwrap()
        .clone();
    let texts: Vec<&str> = elements
        .iter()
        .map(|e| e["MessageText"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 20, "tail=20 is the last 20 lines, no more");
    assert_eq!(texts[0], "1999981");
    assert_eq!(texts[19], "2000000");
    server
        .get(&format!("/api/tasks/{id}/details?tail=many"))
        .assert_error(400);

    // raw streams the whole log, every line once and in order, without holding it.
    let before = server.rss_kib();
    let response = crate::support::client()
        .get(format!("{}/api/tasks/{id}/raw", server.url))
        .header("X-Octopus-ApiKey", crate::support::KEY)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut expected = 1u64;
    for line in BufReader::new(response).lines() {
        let line = line.unwrap();
        let Some((_, message)) = line.split_once(" | ") else {
            continue;
        };
        if let Ok(n) = message.parse::<u64>() {
            assert_eq!(n, expected, "raw lost or repeated a line");
            expected += 1;
        }
    }
    assert_eq!(expected, 2_000_001);
    let after = server.rss_kib();
    eprintln!("raw: RSS {before} KiB before, {after} KiB after");
    assert!(
        after < before + 16 * 1024,
        "raw raised the server from {before} KiB to {after} KiB"
    );
}

#[test]
fn a_task_log_stops_at_its_limit_with_a_clear_line_and_the_script_runs_on() {
    let server = Server::start_with(&["--task-log-limit-mb", "1"]);
    // About 2 MiB of output, then a last word the limit drops, and a failure the task still tells.
    let script =
        "for i in $(seq 1 20000); do printf '%0100d\\n' $i; done; echo after-the-limit; exit 3";
    let task = server.run_script("Spaces-1", json!({"ScriptBody": script}));
    let id = task["Id"].as_str().unwrap().to_string();
    let (done, lines) = server.wait_task(&id);
    assert_eq!(done["State"], "Failed", "the script ran to its end");
    let texts: Vec<String> = lines
        .iter()
        .map(|l| l["MessageText"].as_str().unwrap().to_string())
        .collect();
    let notice = texts
        .iter()
        .position(|t| t.contains("reached its limit of 1 MiB"))
        .unwrap_or_else(|| panic!("no notice among {} lines", texts.len()));
    assert!(texts.len() < 11_000, "{} lines stored", texts.len());
    assert!(!texts.iter().any(|t| t == "after-the-limit"));
    assert!(
        texts[notice + 1..].iter().any(|t| t.contains('3')),
        "the task's own final message is kept: {:?}",
        &texts[notice..]
    );
}
