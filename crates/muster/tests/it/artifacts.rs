//! Artifacts: files a script announces (`new_octopusartifact`) that the server collects from the
//! built-in worker and from polling and listening agents once the script ends, stores under its data
//! directory and serves under `/api/{space}/artifacts`, streamed both ways.

use crate::support::{KEY, Server, cli, client, eventually};
use serde_json::{Value, json};
use std::io::Read;
use std::time::Duration;

fn id(value: &Value) -> String {
    value["Id"].as_str().unwrap().to_string()
}

/// A task's log lines as text.
fn messages(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["MessageText"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The artifacts of a task, newest first.
pub(crate) fn artifacts_of(server: &Server, space: &str, task: &str) -> Vec<Value> {
    server.ok(&format!("/api/{space}/artifacts?regarding={task}&take=100"))["Items"]
        .as_array()
        .unwrap()
        .clone()
}

/// The bytes of an artifact, with its response headers.
pub(crate) fn content(
    server: &Server,
    space: &str,
    artifact: &str,
) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let mut response = server
        .request("GET", &format!("/api/{space}/artifacts/{artifact}/content"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let headers = response.headers().clone();
    let mut bytes = Vec::new();
    response.read_to_end(&mut bytes).unwrap();
    (headers, bytes)
}

/// Runs a script to its end and returns (task, log lines).
pub(crate) fn run(server: &Server, space: &str, arguments: Value) -> (Value, Vec<String>) {
    let task = server.run_script(space, arguments);
    let (task, lines) = server.wait_task(&id(&task));
    (task, messages(&lines))
}

pub(crate) fn has_line(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

#[test]
fn the_builtin_worker_returns_artifacts_that_are_listed_read_and_deleted() {
    let server = Server::start();
    let script = "mkdir -p out\nprintf 'hello artifact' > out/report.txt\nprintf 'second' > two.bin\n\
        new_octopusartifact out/report.txt\nnew_octopusartifact \"$PWD/two.bin\" 'Nice \"name\" ü.bin'\n\
        new_octopusartifact missing.txt\nnew_octopusartifact ../../muster.db\necho done";
    let (task, lines) = run(
        &server,
        "Spaces-1",
        json!({"ScriptBody": script, "TargetType": "OctopusServer"}),
    );
    assert_eq!(task["State"], "Success", "{lines:#?}");
    assert_eq!(task["HasWarningsOrErrors"], true, "files were left behind");
    assert!(
        !has_line(&lines, "##octopus[createArtifact"),
        "the service messages are not shown: {lines:#?}"
    );
    assert!(
        has_line(&lines, "Artifact missing.txt (")
            && has_line(&lines, "not collected: no such file"),
        "{lines:#?}"
    );
    assert!(
        has_line(&lines, "Artifact muster.db (")
            && has_line(&lines, "outside the script's working directory"),
        "{lines:#?}"
    );
    let task_id = id(&task);
    let listed = artifacts_of(&server, "Spaces-1", &task_id);
    assert_eq!(listed.len(), 2, "nothing else was stored: {listed:#?}");
    // Newest first.
    let (named, report) = (&listed[0], &listed[1]);
    assert_eq!(
        report["Filename"], "report.txt",
        "the name defaults to the file's"
    );
    assert_eq!(named["Filename"], "Nice \"name\" ü.bin");
    assert_eq!(report["ServerTaskId"], task_id.as_str());
    assert_eq!(report["SpaceId"], "Spaces-1");
    assert_eq!(report["Length"], 14);
    assert!(report["Created"].is_string());
    assert_eq!(report["Source"], "Built-in worker");
    assert_eq!(
        report["Links"]["Content"],
        format!("/api/Spaces-1/artifacts/{}/content", id(report))
    );
    assert_eq!(
        server.ok(&format!("/api/Spaces-1/artifacts/{}", id(report)))["Filename"],
        "report.txt"
    );

    // The bytes, with their headers.
    let (headers, bytes) = content(&server, "Spaces-1", &id(report));
    assert_eq!(bytes, b"hello artifact");
    assert_eq!(headers["content-length"], "14");
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"report.txt\""
    );
    let (headers, bytes) = content(&server, "Spaces-1", &id(named));
    assert_eq!(bytes, b"second");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"Nice _name_ _.bin\"; filename*=UTF-8''Nice%20%22name%22%20%C3%BC.bin"),
        "{disposition}"
    );

    // Paging: one at a time, newest first, with a link to the next page.
    let first = server.ok(&format!(
        "/api/Spaces-1/artifacts?regarding={task_id}&take=1"
    ));
    assert_eq!(first["TotalResults"], 2);
    assert_eq!(first["Items"][0]["Id"], named["Id"]);
    assert!(first["Links"]["Page.Next"].is_string());
    let second = server.ok(&format!(
        "/api/Spaces-1/artifacts?regarding={task_id}&skip=1&take=1"
    ));
    assert_eq!(second["Items"][0]["Id"], report["Id"]);
    let all = server.ok("/api/Spaces-1/artifacts");
    assert_eq!(all["TotalResults"], 2);
    server
        .get("/api/Spaces-1/artifacts/Artifacts-999")
        .assert_error(404);
    server
        .get("/api/Spaces-1/artifacts/nonsense")
        .assert_error(404);

    // The CLI lists them and downloads one, named after it.
    let listed = cli(&server, &["task", "artifacts", &task_id]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{text}");
    assert!(
        text.contains("report.txt") && text.contains(&id(named)),
        "{text}"
    );
    let downloads = tempfile::tempdir().unwrap();
    let fetched = crate::support::muster()
        .args(["artifact", "download", &id(report)])
        .current_dir(downloads.path())
        .env("MUSTER_SERVER", &server.url)
        .env("MUSTER_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert_eq!(
        std::fs::read(downloads.path().join("report.txt")).unwrap(),
        b"hello artifact"
    );
    let elsewhere = downloads.path().join("copy.bin");
    let fetched = cli(
        &server,
        &[
            "artifact",
            "download",
            id(named).trim_start_matches("Artifacts-"),
            "-o",
            elsewhere.to_str().unwrap(),
        ],
    );
    assert!(fetched.status.success());
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"second");

    // Another space does not see them; a user without ArtifactView is refused; no key is 401.
    let other = server
        .post("/api/spaces", &json!({"Name": "Other"}))
        .assert_status(201)
        .clone();
    server
        .get(&format!("/api/{}/artifacts/{}", id(&other), id(report)))
        .assert_error(404);
    server
        .get(&format!(
            "/api/{}/artifacts/{}/content",
            id(&other),
            id(report)
        ))
        .assert_error(404);
    let role = server
        .post(
            "/api/userroles",
            &json!({"Name": "Task watchers", "GrantedSpacePermissions": ["TaskView"]}),
        )
        .assert_status(201)
        .clone();
    let (watcher, watcher_key) = server.new_user("watcher");
    server.grant(&watcher, role["Name"].as_str().unwrap(), "Spaces-1");
    let path = format!("/api/Spaces-1/artifacts/{}/content", id(report));
    server
        .as_user(&watcher_key, "GET", &path, None)
        .assert_error(403);
    server
        .as_user(&watcher_key, "GET", "/api/Spaces-1/artifacts", None)
        .assert_error(403);
    let (stranger, stranger_key) = server.new_user("stranger");
    server.grant(&stranger, "Space viewer", &id(&other));
    server
        .as_user(&stranger_key, "GET", &path, None)
        .assert_error(404);
    let anonymous = client()
        .get(format!("{}{path}", server.url))
        .send()
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let (viewer, viewer_key) = server.new_user("viewer");
    server.grant(&viewer, "Space viewer", "Spaces-1");
    server
        .as_user(&viewer_key, "GET", &path, None)
        .assert_status(200);
    server
        .as_user(
            &viewer_key,
            "DELETE",
            &format!("/api/Spaces-1/artifacts/{}", id(report)),
            None,
        )
        .assert_error(403);

    // Deleting one removes its record and its file.
    let files = server.dir.join("artifacts/Spaces-1").join(&task_id);
    assert!(files.join(id(report)).exists());
    server
        .delete(&format!("/api/Spaces-1/artifacts/{}", id(report)))
        .assert_status(200);
    server
        .get(&format!("/api/Spaces-1/artifacts/{}", id(report)))
        .assert_error(404);
    assert!(!files.join(id(report)).exists());
    assert_eq!(artifacts_of(&server, "Spaces-1", &task_id).len(), 1);

    // Python's helper, and a space's deletion takes its artifacts' files with it.
    let other_id = id(&other);
    let (task, lines) = run(
        &server,
        &other_id,
        json!({"ScriptBody": "open('p.txt', 'w').write('from python')\nnew_octopusartifact('p.txt')\nnew_octopusartifact('p.txt', name='renamed.txt')", "Syntax": "Python", "TargetType": "OctopusServer"}),
    );
    assert_eq!(task["State"], "Success", "{lines:#?}");
    assert_eq!(task["HasWarningsOrErrors"], false, "{lines:#?}");
    let listed = artifacts_of(&server, &other_id, &id(&task));
    let names: Vec<&str> = listed
        .iter()
        .map(|a| a["Filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["renamed.txt", "p.txt"]);
    assert_eq!(
        content(&server, &other_id, &id(&listed[1])).1,
        b"from python"
    );
    let space_files = server.dir.join("artifacts").join(&other_id);
    assert!(space_files.exists());
    let mut stopped = server.ok(&format!("/api/spaces/{other_id}"));
    stopped["TaskQueueStopped"] = json!(true);
    server
        .put(&format!("/api/spaces/{other_id}"), &stopped)
        .assert_status(200);
    server
        .delete(&format!("/api/spaces/{other_id}"))
        .assert_status(200);
    assert!(!space_files.exists(), "the space's artifact files are gone");
}

#[test]
fn limits_leave_files_behind_with_a_warning_and_the_task_succeeds() {
    let server = Server::start_with(&[
        "--artifact-max-bytes",
        "1000",
        "--artifact-task-max-bytes",
        "2500",
    ]);
    let script = "head -c 2000 /dev/zero > big\nfor n in 1 2 3; do head -c 900 /dev/zero > small$n; done\n\
        new_octopusartifact big\nnew_octopusartifact small1\nnew_octopusartifact small2\nnew_octopusartifact small3";
    let (task, lines) = run(
        &server,
        "Spaces-1",
        json!({"ScriptBody": script, "TargetType": "OctopusServer"}),
    );
    assert_eq!(task["State"], "Success", "{lines:#?}");
    assert!(
        has_line(&lines, "Artifact big (") && has_line(&lines, "(--artifact-max-bytes)"),
        "{lines:#?}"
    );
    assert!(
        has_line(&lines, "Artifact small3 (") && has_line(&lines, "(--artifact-task-max-bytes)"),
        "{lines:#?}"
    );
    let names: Vec<String> = artifacts_of(&server, "Spaces-1", &id(&task))
        .iter()
        .map(|a| a["Filename"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["small2", "small1"]);
}

#[test]
fn polling_and_listening_agents_return_artifacts_and_a_runbook_steps_belong_to_its_run() {
    let server = Server::start();
    let _poller = server.polling_agent("poller");
    let _listener = server.listening_agent("listener");
    let poller = server.wait_health("poller", "Healthy");
    let listener = server.wait_health("listener", "Healthy");
    for worker in [&poller, &listener] {
        let name = worker["Name"].as_str().unwrap();
        let script = format!(
            "printf 'from {name}' > mine.txt\nln -s /etc/hostname escape\nnew_octopusartifact mine.txt\n\
             new_octopusartifact escape\nnew_octopusartifact ../../agent.json\nnew_octopusartifact gone.txt"
        );
        let (task, lines) = run(
            &server,
            "Spaces-1",
            json!({"ScriptBody": script, "TargetType": "Workers", "MachineIds": [worker["Id"]]}),
        );
        assert_eq!(task["State"], "Success", "{lines:#?}");
        assert!(
            has_line(&lines, "Artifact escape (") && has_line(&lines, "Artifact agent.json ("),
            "{lines:#?}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("outside the script's working directory"))
                .count(),
            2,
            "{lines:#?}"
        );
        assert!(has_line(&lines, "Artifact gone.txt ("), "{lines:#?}");
        let listed = artifacts_of(&server, "Spaces-1", &id(&task));
        assert_eq!(listed.len(), 1, "{listed:#?}");
        assert_eq!(listed[0]["Source"], name);
        assert_eq!(
            content(&server, "Spaces-1", &id(&listed[0])).1,
            format!("from {name}").as_bytes()
        );
    }

    // A runbook's steps: their artifacts are the run's task's, with sensitive values masked.
    let yaml = server.dir.join("collects.yaml");
    std::fs::write(
        &yaml,
        r##"
name: Collects
variables:
  Secret: { value: "hushhush", sensitive: true }
steps:
  - name: Make
    script: |
      printf step > s.txt
      new_octopusartifact s.txt "report-#{Secret}.txt"
"##,
    )
    .unwrap();
    let created = cli(
        &server,
        &["runbook", "create", "--file", yaml.to_str().unwrap()],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let runbooks = server.ok("/api/Spaces-1/runbooks/all");
    let runbook = runbooks.as_array().unwrap()[0].clone();
    let run = server
        .post(
            "/api/Spaces-1/runbookRuns",
            &json!({"RunbookId": runbook["Id"]}),
        )
        .assert_status(201)
        .clone();
    let task_id = run["TaskId"].as_str().unwrap().to_string();
    let (task, lines) = server.wait_task(&task_id);
    let lines = messages(&lines);
    assert_eq!(task["State"], "Success", "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("hushhush")), "{lines:#?}");
    let listed = artifacts_of(&server, "Spaces-1", &task_id);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["Filename"], "report-********.txt");
    assert_eq!(content(&server, "Spaces-1", &id(&listed[0])).1, b"step");
}

/// A process's resident memory in KiB, from /proc (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The bytes `seq 1 10000000 | head -c LENGTH` prints.
fn sequence(length: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(length + 16);
    let mut n: u64 = 1;
    while bytes.len() < length {
        bytes.extend_from_slice(format!("{n}\n").as_bytes());
        n += 1;
    }
    bytes.truncate(length);
    bytes
}

/// Runs a script that returns a 50 MB artifact while sampling the server's RSS; returns the
/// artifact's bytes and the largest growth over the RSS before, in KiB.
pub(crate) fn fifty_megabytes(server: &Server, target: Value) -> (Vec<u8>, u64) {
    const LENGTH: usize = 50 * 1024 * 1024;
    let script =
        format!("seq 1 10000000 | head -c {LENGTH} > big.txt\nnew_octopusartifact big.txt");
    let mut arguments = target;
    arguments["ScriptBody"] = json!(script);
    let baseline = server.rss_kib();
    let pid = server.pid();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        let (task, lines) = run(server, "Spaces-1", arguments);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(task["State"], "Success", "{lines:#?}");
        let listed = artifacts_of(server, "Spaces-1", &id(&task));
        assert_eq!(listed.len(), 1, "{lines:#?}");
        assert_eq!(listed[0]["Length"], LENGTH);
        let peak = sampler.join().unwrap();
        (content(server, "Spaces-1", &id(&listed[0])).1, peak)
    });
    let (bytes, peak) = peak;
    assert_eq!(bytes.len(), LENGTH);
    assert!(bytes == sequence(LENGTH), "the bytes match the file's");
    (bytes, peak.saturating_sub(baseline))
}

#[test]
fn fifty_megabytes_stream_from_an_agent_and_the_builtin_worker_without_the_server_holding_them() {
    let server = Server::start();
    // Warm the server up (its pools, a first task) so the baseline is its working size.
    let (task, _) = run(
        &server,
        "Spaces-1",
        json!({"ScriptBody": "echo warm", "TargetType": "OctopusServer"}),
    );
    assert_eq!(task["State"], "Success");
    let (_, builtin_growth) = fifty_megabytes(&server, json!({"TargetType": "OctopusServer"}));
    let _poller = server.polling_agent("big");
    let worker = server.wait_health("big", "Healthy");
    let (_, agent_growth) = fifty_megabytes(
        &server,
        json!({"TargetType": "Workers", "MachineIds": [worker["Id"]]}),
    );
    eprintln!(
        "server RSS growth while collecting 50 MiB: built-in worker {builtin_growth} KiB, polling agent {agent_growth} KiB"
    );
    for (from, growth) in [("built-in worker", builtin_growth), ("agent", agent_growth)] {
        assert!(
            growth < 40 * 1024,
            "the server grew by {growth} KiB while it collected 50 MiB from the {from}"
        );
    }
}

#[test]
fn a_restarted_server_collects_what_a_resumed_script_announced_before_it_died() {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(temp.path(), &[]).unwrap();
    let comms = format!("127.0.0.1:{}", server.comms_port);
    let _agent = server.polling_agent("keeper");
    let worker = server.wait_health("keeper", "Healthy");
    let script = "printf early > early.txt\nnew_octopusartifact early.txt\necho announced\nsleep 6\n\
        printf late > late.txt\nnew_octopusartifact late.txt\necho finished";
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": script, "TargetType": "Workers", "MachineIds": [worker["Id"]]}),
    );
    let task_id = id(&task);
    eventually("the first announcement to be stored", || {
        let raw = server
            .request("GET", &format!("/api/tasks/{task_id}/raw"))
            .send()
            .ok()?
            .text()
            .ok()?;
        raw.contains("announced").then_some(())
    });
    server.kill();

    let server = Server::start_in(temp.path(), &["--comms-listen", &comms]).unwrap();
    let (task, lines) = server.wait_task(&task_id);
    let lines = messages(&lines);
    assert_eq!(task["State"], "Success", "{lines:#?}");
    assert_eq!(
        lines.iter().filter(|l| l.as_str() == "announced").count(),
        1,
        "nothing is logged twice: {lines:#?}"
    );
    let names: Vec<String> = artifacts_of(&server, "Spaces-1", &task_id)
        .iter()
        .map(|a| a["Filename"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["late.txt", "early.txt"], "{lines:#?}");
}
