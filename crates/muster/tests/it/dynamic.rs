//! Dynamic worker pools end to end (issue 16): the `process` provider's real `muster-agent`
//! processes, and the `command` provider's Bash scripts, against the real server.

use crate::support::{Server, agent, eventually_within, marked};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

const MARK: &str = "MUSTER_DYNAMIC_INSTANCE";

/// Kills the instances a test's provider left (a failed destroy), however the test ends.
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        crate::support::kill_marked("MUSTER_TEST_INSTANCE", &self.0);
    }
}

fn agent_path() -> String {
    // Built by the harness's first call.
    drop(agent());
    Path::new(env!("CARGO_BIN_EXE_muster"))
        .with_file_name("muster-agent")
        .to_string_lossy()
        .into_owned()
}

/// A configuration file in `dir` with a `process` type `local` and `extra` types.
fn config(dir: &Path, max_workers: u32, extra: &str) -> String {
    let path = dir.join("muster.yaml");
    std::fs::write(
        &path,
        format!(
            "WorkerTypes:\n  - Id: local\n    Provider: process\n    MaxWorkers: {max_workers}\n    MaxUseCount: 1\n    IdleTimeout: 3s\n    ProvisionTimeout: 60s\n    Settings: {{AgentPath: {}}}\n{extra}",
            agent_path()
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn dynamic_pool(server: &Server, name: &str, worker_type: &str) -> String {
    server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": name, "WorkerPoolType": "DynamicWorkerPool", "WorkerType": worker_type}),
        )
        .assert_status(201)["Id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn pool_workers(server: &Server, pool: &str) -> Vec<Value> {
    server.ok(&format!(
        "/api/Spaces-1/workerpools/{pool}/workers?take=1000"
    ))["Items"]
        .as_array()
        .unwrap()
        .clone()
}

fn task(server: &Server, id: &str) -> Value {
    server.ok(&format!("/api/tasks/{id}"))
}

#[test]
fn a_process_pool_scales_up_for_a_burst_one_fresh_worker_per_task_and_back_to_zero() {
    let temp = tempfile::tempdir().unwrap();
    let config = config(temp.path(), 4, "");
    let server = Server::start_with(&["--config", &config]);
    let created = crate::support::cli(
        &server,
        &[
            "pool",
            "create",
            "Burst",
            "--dynamic",
            "--worker-type",
            "local",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let pool = server
        .ok("/api/Spaces-1/workerpools/all")
        .as_array()
        .unwrap()[1]["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let tasks: Vec<String> = (0..10)
        .map(|i| {
            server.run_script(
                "Spaces-1",
                json!({"ScriptBody": format!("echo task {i} starts; sleep 1; echo task {i} ends"), "TargetType": "WorkerPools", "WorkerPoolIds": [pool]}),
            )["Id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // While the burst runs: never more than MaxWorkers, and the waiting tasks say why.
    let mut most = 0;
    let mut reasons = HashSet::new();
    let mut states = HashSet::new();
    let done = |server: &Server| {
        tasks
            .iter()
            .all(|id| task(server, id)["IsCompleted"] == json!(true))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !done(&server) {
        assert!(
            std::time::Instant::now() < deadline,
            "the burst did not finish"
        );
        let workers = pool_workers(&server, &pool);
        most = most.max(workers.len());
        for worker in &workers {
            states.insert(
                worker["Dynamic"]["State"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        for id in &tasks {
            if let Some(reason) = task(&server, id)["QueueReason"].as_str() {
                reasons.insert(reason.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(most <= 4, "{most} workers at once, above MaxWorkers 4");
    assert!(most >= 2, "the burst was run by {most} worker(s)");
    assert!(
        states.contains("Busy"),
        "the worker list shows the states: {states:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("a worker of type local") || r.contains("workers of type local")),
        "no queue reason named the worker type: {reasons:?}"
    );

    // Every task ran once, each on a worker of its own (MaxUseCount 1).
    let mut names = HashSet::new();
    for id in &tasks {
        let (done, lines) = server.wait_task(id);
        assert_eq!(done["State"], "Success", "{done}");
        let text: Vec<&str> = lines
            .iter()
            .filter_map(|l| l["MessageText"].as_str())
            .collect();
        assert_eq!(
            text.iter().filter(|t| t.contains("ends")).count(),
            1,
            "{text:?}"
        );
        let name = done["WorkerName"].as_str().unwrap().to_string();
        assert!(name.starts_with("local-"), "{name}");
        assert!(names.insert(name.clone()), "{name} ran two tasks");
    }

    // Idle past the IdleTimeout (3 s), and used up: the pool scales to zero, no process remains.
    let dynamic_dir = server.dir.join("dynamic").to_string_lossy().into_owned();
    eventually_within("the pool to scale to zero", Duration::from_secs(60), || {
        (pool_workers(&server, &pool).is_empty() && marked(MARK, &dynamic_dir).is_empty())
            .then_some(())
    });
    // The provisioning log tells the story: ten made, ten destroyed.
    let events = server.ok(&format!("/api/Spaces-1/events?regarding={pool}&take=100"));
    let messages: Vec<&str> = events["Items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["Message"].as_str())
        .collect();
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.contains("provisioned by the process provider"))
            .count(),
        10,
        "{messages:#?}"
    );
    assert_eq!(
        messages.iter().filter(|m| m.contains("destroyed")).count(),
        10,
        "{messages:#?}"
    );
    // Usage counts the workers only while they existed: made for the burst and gone after it,
    // they were busy most of their lives (the blog's dedicated workers idled 99% of the day).
    let usage = server.ok("/api/Spaces-1/workers/usage?hours=1");
    assert_eq!(usage["Summary"]["Agents"], 10, "{usage}");
    let utilization = usage["Summary"]["Utilization"].as_f64().unwrap();
    assert!(utilization > 0.25, "{usage}");
    for agent in usage["Agents"].as_array().unwrap() {
        assert!(agent["ExistedSeconds"].as_f64().unwrap() < 60.0, "{agent}");
        // Destroyed, it is still named (from the provisioning log).
        assert!(
            agent["Name"]
                .as_str()
                .is_some_and(|n| n.starts_with("local-")),
            "{agent}"
        );
    }
    let shown = crate::support::cli(&server, &["pool", "show", "Burst"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{shown:?}");
    assert!(text.contains("dynamic (local)"), "{text}");
    assert!(text.contains("Recent provisioning log:"), "{text}");
    assert!(
        text.contains("destroyed: it ran MaxUseCount tasks"),
        "{text}"
    );
}

#[test]
fn a_server_killed_mid_burst_leaves_no_orphan_loses_no_task_and_runs_none_twice() {
    let temp = tempfile::tempdir().unwrap();
    let config = config(temp.path(), 2, "");
    let runs = temp.path().join("runs");
    let comms = crate::support::free_port().to_string();
    let comms_listen = format!("127.0.0.1:{comms}");
    let data = temp.path().join("data");
    let args = ["--config", &config, "--comms-listen", &comms_listen];
    let server = Server::start_in(&data, &args).unwrap();
    let pool = dynamic_pool(&server, "Burst", "local");
    let tasks: Vec<String> = (0..6)
        .map(|i| {
            server.run_script(
                "Spaces-1",
                json!({"ScriptBody": format!("echo {i} >> {}; sleep 3; echo done {i}", runs.display()), "TargetType": "WorkerPools", "WorkerPoolIds": [pool]}),
            )["Id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    eventually_within("two tasks running", Duration::from_secs(60), || {
        (tasks
            .iter()
            .filter(|id| task(&server, id)["State"] == "Executing")
            .count()
            == 2)
            .then_some(())
    });
    server.kill();
    let server = Server::start_in(&data, &args).unwrap();
    for id in &tasks {
        let (done, lines) = server.wait_task(id);
        assert_eq!(done["State"], "Success", "{done} {lines:?}");
    }
    let ran = std::fs::read_to_string(&runs).unwrap();
    let mut ran: Vec<&str> = ran.lines().collect();
    ran.sort();
    assert_eq!(ran, ["0", "1", "2", "3", "4", "5"], "each task runs once");
    let dynamic_dir = data.join("dynamic").to_string_lossy().into_owned();
    eventually_within("the pool to scale to zero", Duration::from_secs(60), || {
        (pool_workers(&server, &pool).is_empty() && marked(MARK, &dynamic_dir).is_empty())
            .then_some(())
    });
}

/// The `command` provider's scripts: `create` starts a local agent with the identity it is given
/// (marked so that the test can find it), `destroy` stops it, `list` names the running ones. Each
/// call is written to `calls`.
fn command_scripts(dir: &Path) -> (String, String, String) {
    let root = dir.join("instances");
    std::fs::create_dir_all(&root).unwrap();
    let calls = dir.join("calls");
    let create = dir.join("create.sh");
    std::fs::write(
        &create,
        format!(
            "#!/bin/bash\nset -e\nid=\"$MUSTER_WORKER_NAME\"\nmkdir -p {root}/$id\necho \"create $id\" >> {calls}\necho \"starting an agent for $id\"\nMUSTER_TEST_INSTANCE={root}/$id setsid {agent} --home {root}/$id/home run > {root}/$id/log 2>&1 < /dev/null &\necho $! > {root}/$id/pid\necho \"{{\\\"InstanceId\\\": \\\"$id\\\"}}\"\n",
            root = root.display(),
            calls = calls.display(),
            agent = agent_path(),
        ),
    )
    .unwrap();
    let destroy = dir.join("destroy.sh");
    std::fs::write(
        &destroy,
        format!(
            "#!/bin/bash\necho \"destroy $MUSTER_INSTANCE_ID\" >> {calls}\nif [ -f {root}/$MUSTER_INSTANCE_ID/pid ]; then kill $(cat {root}/$MUSTER_INSTANCE_ID/pid) 2>/dev/null || true; fi\nrm -rf {root}/$MUSTER_INSTANCE_ID\n",
            root = root.display(),
            calls = calls.display(),
        ),
    )
    .unwrap();
    let list = dir.join("list.sh");
    std::fs::write(&list, format!("#!/bin/bash\nls {}\n", root.display())).unwrap();
    (
        format!("bash {}", create.display()),
        format!("bash {}", destroy.display()),
        format!("bash {}", list.display()),
    )
}

#[test]
fn the_command_provider_runs_the_users_scripts_and_says_why_a_worker_does_not_come() {
    let temp = tempfile::tempdir().unwrap();
    let (create, destroy, list) = command_scripts(temp.path());
    let root = temp.path().join("instances");
    let _leftovers = Leftovers(root.to_string_lossy().into_owned());
    // An instance left by an earlier life that no worker names: the first reconciliation
    // destroys it.
    std::fs::create_dir_all(root.join("orphan-1")).unwrap();
    let failing_destroy = temp.path().join("failing-destroy.sh");
    std::fs::write(
        &failing_destroy,
        "#!/bin/bash\necho \"the cloud said no\" >&2\nexit 7\n",
    )
    .unwrap();
    let extra = format!(
        "  - Id: scripted\n    Provider: command\n    MaxWorkers: 2\n    IdleTimeout: 2s\n    Settings: {{Create: {create}, Destroy: {destroy}, List: {list}}}\n\
         \x20 - Id: no-quota\n    Provider: command\n    MaxWorkers: 1\n    Settings: {{Create: \"sh -c 'echo checking quota; echo \\\"$MUSTER_AGENT_KEY\\\"; echo quota exceeded >&2; exit 1'\", Destroy: \"true\"}}\n\
         \x20 - Id: stuck\n    Provider: command\n    MaxWorkers: 1\n    ProvisionTimeout: 2s\n    MaxLifetime: 1h\n    Settings: {{Create: \"sleep 60\", Destroy: \"true\"}}\n\
         \x20 - Id: warm\n    Provider: process\n    MaxWorkers: 2\n    MinIdle: 1\n    MaxUseCount: unlimited\n    Settings: {{AgentPath: {agent}}}\n\
         \x20 - Id: sticky\n    Provider: command\n    MaxWorkers: 1\n    Settings: {{Create: {create}, Destroy: bash {failing}}}\n",
        failing = failing_destroy.display(),
        agent = agent_path(),
    );
    let config = config(temp.path(), 1, &extra);
    let server = Server::start_with(&["--config", &config]);
    let scripted = dynamic_pool(&server, "Scripted", "scripted");
    let no_quota = dynamic_pool(&server, "NoQuota", "no-quota");
    let stuck = dynamic_pool(&server, "Stuck", "stuck");
    let sticky = dynamic_pool(&server, "Sticky", "sticky");
    let warm = dynamic_pool(&server, "Warm", "warm");
    let calls = temp.path().join("calls");
    let called = || std::fs::read_to_string(&calls).unwrap_or_default();
    eventually_within("the orphan destroyed", Duration::from_secs(30), || {
        called().contains("destroy orphan-1").then_some(())
    });

    let run = |pool: &str| {
        server.run_script(
            "Spaces-1",
            json!({"ScriptBody": "echo made to order", "TargetType": "WorkerPools", "WorkerPoolIds": [pool]}),
        )["Id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // A create that works: the task runs on the instance, which is destroyed once idle.
    let ok = run(&scripted);
    let (done, lines) = server.wait_task(&ok);
    assert_eq!(done["State"], "Success", "{done}");
    assert!(lines.iter().any(|l| l["MessageText"] == "made to order"));
    let name = done["WorkerName"].as_str().unwrap().to_string();
    assert!(called().contains(&format!("create {name}")));
    eventually_within(
        "the scripted worker destroyed",
        Duration::from_secs(30),
        || {
            (called().contains(&format!("destroy {name}"))
                && pool_workers(&server, &scripted).is_empty())
            .then_some(())
        },
    );

    // A create that fails, and one that hangs past the ProvisionTimeout: the waiting task says
    // why, with the command's words.
    let refused = run(&no_quota);
    eventually_within(
        "the failure in the queue reason",
        Duration::from_secs(30),
        || {
            let reason = task(&server, &refused)["QueueReason"].as_str()?.to_string();
            reason
                .contains("attempts failed: the create command exited with 1: quota exceeded")
                .then_some(())
        },
    );
    let hung = run(&stuck);
    eventually_within(
        "the timeout in the queue reason",
        Duration::from_secs(30),
        || {
            let reason = task(&server, &hung)["QueueReason"].as_str()?.to_string();
            reason.contains("did not finish within 2 s").then_some(())
        },
    );
    let events = server.ok(&format!("/api/Spaces-1/events?regarding={no_quota}"));
    let logged = events["Items"][0]["Message"].as_str().unwrap_or_default();
    assert!(
        logged.contains("checking quota"),
        "the command's output is in the log: {logged}"
    );
    // A failed create may have made something: destroy is asked for the worker's name.
    assert!(
        logged.contains("The destroy command was run for instance"),
        "{logged}"
    );
    // The key it printed is not: its lines are masked.
    assert!(
        logged.contains("-----BEGIN PRIVATE KEY-----\n********\n"),
        "{logged}"
    );

    // A destroy that fails is tried again, then reported, and the worker is kept Destroying.
    let used = run(&sticky);
    let (done, _) = server.wait_task(&used);
    assert_eq!(done["State"], "Success", "{done}");
    let sticky_name = done["WorkerName"].as_str().unwrap().to_string();
    eventually_within(
        "the failed destroy reported",
        Duration::from_secs(60),
        || {
            let events = server.ok(&format!(
                "/api/Spaces-1/events?regarding={sticky}&eventCategories=DynamicWorkerFailed"
            ));
            let message = events["Items"][0]["Message"].as_str()?.to_string();
            (message.contains("failed 3 times") && message.contains("the cloud said no"))
                .then_some(())
        },
    );
    let kept = pool_workers(&server, &sticky);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["Name"], sticky_name);
    assert_eq!(kept[0]["Dynamic"]["State"], "Destroying");

    // A dynamic worker is its pool's: it cannot be deleted or shared by hand.
    let id = kept[0]["Id"].as_str().unwrap();
    server
        .delete(&format!("/api/Spaces-1/workers/{id}"))
        .assert_error(400);

    // MinIdle keeps one warm worker with no task; disabled, it is drained and destroyed, and
    // another takes its place.
    let first = eventually_within("a warm worker", Duration::from_secs(30), || {
        let workers = pool_workers(&server, &warm);
        (workers.len() == 1 && workers[0]["Dynamic"]["State"] == "Ready")
            .then(|| workers[0]["Name"].as_str().unwrap().to_string())
    });
    let disabled = crate::support::cli(&server, &["worker", "disable", &first]);
    let said = String::from_utf8_lossy(&disabled.stdout);
    assert!(
        said.contains("its pool drains it and destroys it once idle"),
        "{disabled:?}"
    );
    eventually_within(
        "the disabled worker replaced",
        Duration::from_secs(30),
        || {
            let workers = pool_workers(&server, &warm);
            (workers.len() == 1 && workers[0]["Name"] != first.as_str()).then_some(())
        },
    );
}
