//! `muster db copy`: a stopped server's SQLite store moved into PostgreSQL, then a server on the
//! copy (with the data directory's files) answers as the old one did.

use crate::support::{KEY, SSH_FINGERPRINT, Server, cli, muster, ssh_account};
use muster_store::testing::TestDatabase;
use serde_json::{Value, json};
use std::path::Path;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn copy(from: &str, to: &str, extra: &[&str]) -> std::process::Output {
    muster()
        .args([&["db", "copy", "--from", from, "--to", to], extra].concat())
        .output()
        .expect("muster runs")
}

/// Creates a runbook with a sensitive variable and runs it; the task's id.
fn run_runbook(server: &Server, name: &str) -> String {
    let out = cli(server, &["runbook", "run", name]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    stderr
        .split_whitespace()
        .find(|w| w.starts_with("ServerTasks-"))
        .unwrap_or_else(|| panic!("the CLI names the task: {stderr}"))
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn total(server: &Server, path: &str) -> u64 {
    server.ok(path)["TotalResults"].as_u64().unwrap()
}

/// The test: a store with 10,000 tasks and their logs, copied and verified through the API
/// of a server started on the copy.
#[test]
fn db_copy_moves_a_stopped_store_with_10000_tasks_and_their_logs_to_postgres() {
    let old = tempfile::tempdir().unwrap();
    let server = Server::start_in(old.path(), &[]).expect("the SQLite server starts");
    let other = server
        .post("/api/spaces", &json!({"Name": "Other"}))
        .assert_status(201)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    // In a pool of its own, so the scripts below run on the built-in worker.
    let pool = server
        .post("/api/Spaces-1/workerpools", &json!({"Name": "Remote"}))
        .assert_status(201)["Id"]
        .clone();
    let account = ssh_account(&server, "Spaces-1", "login");
    server
        .post(
            "/api/Spaces-1/workers",
            &json!({"Name": "ssh-1", "WorkerPoolIds": [pool], "Endpoint": {
                "CommunicationStyle": "Ssh", "Host": "127.0.0.1", "Port": 2222,
                "Fingerprint": SSH_FINGERPRINT, "AccountId": account}}),
        )
        .assert_status(201);
    let runbook = old.path().join("runbook.json");
    std::fs::write(
        &runbook,
        json!({
            "name": "Moved",
            "variables": {"Secret": {"value": "s3cr3t-moved-value", "sensitive": true}},
            "steps": [{"name": "Say", "script": "echo \"secret is #{Secret}\"", "on": "builtin"}],
        })
        .to_string(),
    )
    .unwrap();
    let out = cli(
        &server,
        &["runbook", "create", "--file", runbook.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run = run_runbook(&server, "Moved");
    server.wait_task(&run);
    let (_, ops_key) = server.new_user("ops");
    let script = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "for i in $(seq 1 50); do echo \"line $i ünï\"; done", "Syntax": "Bash"}),
    );
    let script = script["Id"].as_str().unwrap().to_string();
    server.wait_task(&script);
    let script_log = server.get(&format!("/api/tasks/{script}/raw")).text;
    assert!(script_log.contains("line 50 ünï"), "{script_log}");
    let masked = server.get(&format!("/api/tasks/{run}/raw")).text;
    assert!(masked.contains("secret is ********"), "{masked}");
    let thumbprint =
        server.ok("/api/configuration/certificates/certificate-global")["Thumbprint"].clone();
    let tasks_before = total(&server, "/api/tasks?take=1");
    let events_before = total(&server, "/api/events?take=1");
    server.stop();

    // Volume: 10,000 finished tasks with 5 log lines each, straight into the store.
    let started = std::time::Instant::now();
    let (first_bulk, last_bulk) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = muster_store::Store::open_sqlite(&old.path().join("muster.db"))
            .await
            .unwrap();
        let ids = muster_store::testing::add_finished_tasks(&store, &other, 10_000, 5)
            .await
            .unwrap();
        store.close().await;
        ids
    });
    eprintln!("10,000 tasks stored in {:?}", started.elapsed());

    let database = TestDatabase::create();
    let started = std::time::Instant::now();
    let from = format!("sqlite:{}", old.path().display());
    let out = copy(&from, database.url(), &[]);
    let stdout = text(&out.stdout);
    eprintln!("copied in {:?}:\n{stdout}", started.elapsed());
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let table = stdout
        .split_once("\ntable ")
        .unwrap_or_else(|| panic!("no table of counts in {stdout}"))
        .1;
    let row = |what: &str| {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("no {what} row in {stdout}"))
            .split_whitespace()
            .rev()
            .take(2)
            .map(|n| n.parse::<u64>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(row("tasks"), vec![tasks_before + 10_000; 2], "{stdout}");
    assert!(row("log lines")[0] >= 50_000 + 50, "{stdout}");
    assert!(stdout.contains("every count matches"), "{stdout}");
    assert!(stdout.contains("secrets.key"), "{stdout}");

    // Into a database that now holds a store: refused, unless --force.
    let again = copy(&from, database.url(), &[]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = text(&again.stderr);
    assert!(stderr.contains("already holds a Muster store"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // --force replaces it, and the counts match again.
    let forced = copy(&from, database.url(), &["--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    assert!(text(&forced.stdout).contains("every count matches"));

    // The new node: a data directory of its own with the files the output names.
    let new = tempfile::tempdir().unwrap();
    std::fs::copy(
        old.path().join("secrets.key"),
        new.path().join("secrets.key"),
    )
    .unwrap();
    let certificate = old.path().join("server-certificate");
    std::fs::create_dir(new.path().join("server-certificate")).unwrap();
    for entry in std::fs::read_dir(&certificate).unwrap() {
        let name = entry.unwrap().file_name();
        std::fs::copy(
            certificate.join(&name),
            new.path().join("server-certificate").join(&name),
        )
        .unwrap();
    }
    let server = Server::start_in(new.path(), &["--database", database.url()])
        .expect("a server starts on the copy");
    assert!(!new.path().join("muster.db").exists());
    assert_eq!(
        server.ok("/api/configuration/certificates/certificate-global")["Thumbprint"],
        thumbprint,
        "the agents' trust goes on"
    );
    assert_eq!(total(&server, "/api/tasks?take=1"), tasks_before + 10_000);
    assert_eq!(
        total(&server, &format!("/api/{other}/tasks?take=1")),
        10_000
    );
    assert!(total(&server, "/api/events?take=1") >= events_before);
    assert_eq!(
        server.get(&format!("/api/tasks/{script}/raw")).text,
        script_log,
        "a task's whole log, byte for byte"
    );
    let bulk_log = server.get(&format!("/api/tasks/{last_bulk}/raw")).text;
    assert!(
        bulk_log.contains(&format!("{last_bulk} line 5")),
        "{bulk_log}"
    );
    assert!(server.ok(&format!("/api/tasks/{first_bulk}"))["State"].eq("Success"));
    let workers = server.ok("/api/Spaces-1/workers/all");
    assert!(
        workers
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["Name"] == "ssh-1"),
        "{workers}"
    );
    // The API keys still sign in: the administrator's and the user's.
    assert_eq!(server.get("/api/users/me").status, 200, "{KEY}");
    let me = server.as_user(&ops_key, "GET", "/api/users/me", None);
    assert_eq!(me.body["Username"], "ops", "{}", me.text);
    // The sensitive variable is still usable: a new run decrypts it and masks it.
    let rerun = run_runbook(&server, "Moved");
    let (done, _) = server.wait_task(&rerun);
    assert_eq!(done["State"], "Success");
    let log = server.get(&format!("/api/tasks/{rerun}/raw")).text;
    assert!(log.contains("secret is ********"), "{log}");
    assert!(!log.contains("s3cr3t"), "{log}");
    // New ids go on after the copied ones.
    let num = |id: &str| id.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    assert!(num(&rerun) > num(&last_bulk), "{rerun} after {last_bulk}");
    let space = server
        .post("/api/spaces", &json!({"Name": "Third"}))
        .assert_status(201)["Id"]
        .clone();
    assert!(num(space.as_str().unwrap()) > num(&other), "{space}");
    // A target a server is using is refused, even with --force.
    let busy = copy(&from, database.url(), &["--force"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        text(&busy.stderr).contains("Muster server nodes use this database"),
        "{}",
        text(&busy.stderr)
    );
    server.stop();
}

/// A running server's store is refused, in one line; so are URLs that name no such store.
#[test]
fn db_copy_refuses_a_running_servers_store_and_bad_urls() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]).expect("the server starts");
    let from = format!("sqlite:{}", dir.path().display());
    let refused = |out: std::process::Output, says: &str| {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{says} not in {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    };
    refused(
        copy(&from, "postgres://u:p@127.0.0.1:1/none", &[]),
        "in use by a running Muster server",
    );
    refused(
        copy(&from, "mysql://u:pw@host/db", &[]),
        "--to must be postgres://",
    );
    refused(
        copy("/var/lib/muster", "postgres://u:p@127.0.0.1/db", &[]),
        "--from must be sqlite:PATH",
    );
    let missing = Path::new("/nonexistent/muster.db");
    refused(
        copy(
            &format!("sqlite:{}", missing.display()),
            "postgres://u:p@127.0.0.1/db",
            &[],
        ),
        "no SQLite store at",
    );
    let _: Value = server.ok("/api/spaces/all");
    server.stop();
    // Stopped, the source is taken; a target that cannot be reached is named, its password not.
    refused(
        copy(
            &from,
            "postgres://nouser:pw-not-shown@127.0.0.1:5432/nodb",
            &[],
        ),
        "--to: cannot connect to postgres://nouser:***@127.0.0.1:5432/nodb",
    );
    let bad_port = copy(
        &from,
        "postgres://u:pw-not-shown@127.0.0.1:notaport/db",
        &[],
    );
    assert!(!text(&bad_port.stderr).contains("pw-not-shown"));
    refused(bad_port, "--to: cannot connect to");
}
