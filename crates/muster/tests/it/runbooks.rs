//! Runbooks end to end: the CLI's file, runs on the built-in worker and on real polling agents,
//! output variables, masking, leases, lending to child runs, deadlock detection, and bad input.

use crate::support::{Server, cli, eventually};
use serde_json::{Value, json};
use std::path::Path;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Creates a runbook from the CLI's short YAML form.
pub(crate) fn create(server: &Server, file_name: &str, yaml: &str) {
    let path = server.dir.join(file_name);
    std::fs::write(&path, yaml).unwrap();
    let out = cli(
        server,
        &["runbook", "create", "--file", path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Queues a run over the REST API and returns its task id.
pub(crate) fn start_run(server: &Server, runbook: &str) -> String {
    let runbooks = server.ok("/api/Spaces-1/runbooks/all");
    let id = runbooks
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Name"] == runbook)
        .unwrap_or_else(|| panic!("no runbook {runbook}"))["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = server
        .post("/api/Spaces-1/runbookRuns", &json!({"RunbookId": id}))
        .assert_status(201)
        .clone();
    run["TaskId"].as_str().unwrap().to_string()
}

fn run_of(server: &Server, task_id: &str) -> Value {
    let runs = server.ok("/api/Spaces-1/runbookRuns?take=1000");
    runs["Items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["TaskId"] == task_id)
        .cloned()
        .unwrap_or_else(|| panic!("no run of {task_id}"))
}

/// The child task a run started ("" before it has one): the task whose ParentTaskId it is.
fn child_of(server: &Server, task_id: &str) -> String {
    let tasks = server.ok("/api/tasks?take=1000");
    tasks["Items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["Arguments"]["ParentTaskId"] == task_id)
        .map(|t| t["Id"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn gate(dir: &Path, name: &str) -> String {
    format!(
        "while [ ! -f '{}' ]; do sleep 0.02; done",
        dir.join(name).display()
    )
}

#[test]
fn a_three_step_runbook_passes_output_variables_and_never_shows_a_secret() {
    let server = Server::start();
    create(
        &server,
        "three.yaml",
        r##"
name: Three steps
description: Sets, encodes, prints
variables:
  Greeting: hello
  DbPassword: { value: "pa55-w0rd-xyz", sensitive: true }
  Cert: { value: "first-secret-line\nsecond-secret-line", sensitive: true }
  Long: { value: "a-long-token-0123456789-0123456789-0123456789-0123456789-0123456789", sensitive: true }
steps:
  - name: Make
    script: |
      set_octopusvariable Color blue
      set_octopusvariable Token "tok-$((987000 + 654))" -sensitive
      echo "password is #{DbPassword}"
      echo "#{Cert}"
      echo "#{Long}" | base64
  - name: Encode
    syntax: python
    script: |
      import base64
      print("b64", base64.b64encode("#{DbPassword}".encode()).decode())
      print("again:", """#{Cert}""".splitlines()[1])
      set_octopusvariable("Shape", "round")
  - name: Print
    script: |
      echo "#{Greeting}, the color is #{Octopus.Action[Make].Output.Color} and #{Octopus.Action[Encode].Output.Shape}"
      echo "token #{Octopus.Action[Make].Output.Token}"
      echo "task #{Octopus.Task.Id} in #{Octopus.Space.Name}, runbook #{Octopus.Runbook.Name}, step #{Octopus.Action.Name} on #{Octopus.Worker.Name}"
  - name: Only on failure
    condition: failure
    script: echo never
"##,
    );
    let out = cli(&server, &["runbook", "run", "Three steps"]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("hello, the color is blue and round"),
        "{stdout}"
    );
    assert!(stdout.contains("token ********"), "{stdout}");
    assert!(stdout.contains("password is ********"), "{stdout}");
    assert!(stdout.contains("b64 ********"), "{stdout}");
    assert!(stdout.contains("again: ********"), "{stdout}");
    assert!(
        stdout.contains("in Default, runbook Three steps, step Print on Built-in worker"),
        "{stdout}"
    );
    assert!(!stdout.contains("never"));
    let task_id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("ServerTasks-"))
        .expect("the CLI names the task")
        .to_string();
    // No form of a secret is stored: not in the raw log, not in the details, not in the resources.
    let raw = server.get(&format!("/api/tasks/{task_id}/raw")).text;
    let details = server.ok(&format!("/api/tasks/{task_id}/details"));
    let runbook = server.ok("/api/Spaces-1/runbooks/all");
    let run = run_of(&server, &task_id);
    for secret in [
        "pa55-w0rd-xyz",
        "cGE1NS13MHJkLXh5eg==",
        "tok-987654",
        "first-secret-line",
        "second-secret-line",
        "a-long-token",
        // The two lines `base64` wraps the long token's encoding into.
        "YS1sb25nLXRva2VuLTAxMjM0NTY3ODktMDEyMzQ1Njc4OS0wMTIzNDU2Nzg5LTAxMjM0NTY3ODkt",
        "MDEyMzQ1Njc4OQo=",
    ] {
        assert!(!raw.contains(secret), "{secret} in the raw log:\n{raw}");
        assert!(!details.to_string().contains(secret), "{secret} in details");
        assert!(!runbook.to_string().contains(secret), "{secret} in runbook");
        assert!(!run.to_string().contains(secret), "{secret} in the run");
    }
    assert!(raw.contains("Output variable Octopus.Action[Make].Output.Color was set"));
    // One activity node per step, each with its own lines and outcome.
    let steps = details["ActivityLogs"][0]["Children"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["Name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "Step 1: Make",
            "Step 2: Encode",
            "Step 3: Print",
            "Step 4: Only on failure"
        ]
    );
    let statuses: Vec<&str> = steps
        .iter()
        .map(|s| s["Status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Success", "Success", "Success", "Skipped"]);
    assert!(steps[2]["LogElements"].as_array().unwrap().iter().any(|l| {
        l["MessageText"]
            .as_str()
            .unwrap()
            .contains("the color is blue")
    }));
    assert!(
        !steps[0]["LogElements"]
            .to_string()
            .contains("the color is blue")
    );
    // Sensitive values are never shown, in the runbook, its variable set, or `runbook show`.
    let id = runbook[0]["Id"].as_str().unwrap();
    let set = server.ok(&format!("/api/Spaces-1/variables/variableset-{id}"));
    let password = set["Variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["Name"] == "DbPassword")
        .unwrap()
        .clone();
    assert_eq!(password["Value"], Value::Null);
    assert_eq!(password["Type"], "Sensitive");
    let show = cli(&server, &["runbook", "show", "Three steps"]);
    assert!(text(&show.stdout).contains("(sensitive)"));
    assert!(text(&show.stdout).contains("script on the default pool"));
    // A PUT that sends a sensitive variable back without its value keeps the value.
    let mut variables = set["Variables"].clone();
    for v in variables.as_array_mut().unwrap() {
        if v["Name"] == "Greeting" {
            v["Value"] = json!("bonjour");
        }
    }
    server
        .put(
            &format!("/api/Spaces-1/variables/variableset-{id}"),
            &json!({ "Variables": variables }),
        )
        .assert_status(200);
    let again = cli(&server, &["runbook", "run", "Three steps"]);
    let stdout = text(&again.stdout);
    assert!(stdout.contains("bonjour, the color is blue"), "{stdout}");
    assert!(stdout.contains("password is ********"), "{stdout}");
    // A run's own value for a variable, and a failing step: the failure-only step runs, the run fails.
    create(
        &server,
        "fails.yaml",
        "name: Fails\nvariables:\n  Code: {value: 0, prompt: true}\nsteps:\n  - name: Exit\n    script: 'exit #{Code}'\n  - name: Cleanup\n    condition: failure\n    script: echo cleaning up\n",
    );
    let failed = cli(&server, &["runbook", "run", "Fails", "--var", "Code=3"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(text(&failed.stdout).contains("cleaning up"));
    assert!(text(&failed.stderr).contains("Step 'Exit' failed: The script exited with code 3"));
}

#[test]
fn runbook_bad_input_gets_clear_400s_and_permissions_hold() {
    let server = Server::start();
    let post = |body: Value| server.post("/api/Spaces-1/runbooks", &body);
    let script = |name: &str, body: &str| {
        json!({"Name": name, "Actions": [{"ActionType": "Octopus.Script",
            "Properties": {"Octopus.Action.Script.ScriptBody": body}}]})
    };
    post(json!({"Steps": []})).assert_error(400);
    let two = post(json!({"Name": "Two", "Steps": [script("A", "x"), script("a", "y")]}));
    assert!(two.text.contains("Two steps are named"), "{}", two.text);
    let actions = post(json!({"Name": "X", "Steps": [{"Name": "S", "Actions": [
        {"ActionType": "Octopus.Script"}, {"ActionType": "Octopus.Script"}]}]}));
    assert!(
        actions.assert_error(400).body["Errors"][0]
            .as_str()
            .unwrap()
            .contains("one action per step")
    );
    let kind = post(
        json!({"Name": "X", "Steps": [{"Name": "S", "Actions": [{"ActionType": "Octopus.Email"}]}]}),
    );
    assert!(kind.assert_error(400).text.contains("ActionType must be"));
    let pool = post(
        json!({"Name": "X", "Steps": [{"Name": "S", "Actions": [{"ActionType": "Octopus.Script",
        "WorkerPoolId": "No such pool", "Properties": {"Octopus.Action.Script.ScriptBody": "x"}}]}]}),
    );
    assert!(pool.assert_error(400).text.contains("is not a worker pool"));
    let child = post(
        json!({"Name": "X", "Steps": [{"Name": "S", "Actions": [{"ActionType": "Muster.RunRunbook",
        "Properties": {"Muster.Action.RunRunbook.RunbookId": "Ghost"}}]}]}),
    );
    assert!(child.assert_error(400).text.contains("no runbook 'Ghost'"));
    let parallel = post(
        json!({"Name": "X", "Steps": [{"Name": "S", "Actions": [{"ActionType": "Octopus.Script",
        "Properties": {"Octopus.Action.Script.ScriptBody": "x", "Octopus.Action.MaxParallelism": "many"}}]}]}),
    );
    assert!(parallel.assert_error(400).text.contains("MaxParallelism"));
    let variable = post(
        json!({"Name": "X", "Steps": [script("S", "x")], "Variables": [{"Name": "A", "Type": "Secret"}]}),
    );
    assert!(
        variable
            .assert_error(400)
            .text
            .contains("Type must be String or Sensitive")
    );
    server
        .post_raw("/api/Spaces-1/runbooks", "{not json", "application/json")
        .assert_error(400);
    let number = post(
        json!({"Name": "X", "Steps": [{"Name": "S", "Actions": [{"ActionType": "Octopus.Script",
        "Properties": {"Octopus.Action.Script.ScriptBody": 5}}]}]}),
    );
    assert!(number.assert_error(400).text.contains("must be a string"));
    let selfie = post(
        json!({"Name": "Selfie", "Steps": [{"Name": "S", "Actions": [{"ActionType": "Muster.RunRunbook",
        "Properties": {"Muster.Action.RunRunbook.RunbookId": "Selfie"}}]}]}),
    );
    assert!(
        selfie
            .assert_error(400)
            .text
            .contains("runs this runbook itself")
    );
    // A secret stays secret: turning it into a plain variable needs a new value.
    let secret = post(json!({"Name": "Secretive", "Steps": null,
        "Variables": [{"Name": "Pw", "Value": "hunter2-secret", "Type": "Sensitive"}]}))
    .assert_status(201)
    .clone();
    let secret_self = secret["Links"]["Self"].as_str().unwrap();
    let flip = server.put(
        secret_self,
        &json!({"Variables": [{"Name": "Pw", "Type": "String"}]}),
    );
    assert!(flip.assert_error(400).text.contains("was sensitive"));
    assert!(!server.get(secret_self).text.contains("hunter2-secret"));

    // A runs B; B may not then run A.
    let b = post(json!({"Name": "B", "Steps": [script("S", "echo b")]}))
        .assert_status(201)
        .clone();
    let a = post(json!({"Name": "A", "Steps": [{"Name": "Run B", "Actions": [{"ActionType": "Muster.RunRunbook",
        "Properties": {"Muster.Action.RunRunbook.RunbookId": "B"}}]}]}))
    .assert_status(201)
    .clone();
    assert_eq!(
        a["Steps"][0]["Actions"][0]["Properties"]["Muster.Action.RunRunbook.RunbookId"], b["Id"],
        "a child runbook given by name is stored by id"
    );
    let b_self = b["Links"]["Self"].as_str().unwrap();
    let cycle = server.put(
        b_self,
        &json!({"Steps": [{"Name": "Run A", "Actions": [{"ActionType": "Muster.RunRunbook",
            "Properties": {"Muster.Action.RunRunbook.RunbookId": a["Id"]}}]}]}),
    );
    assert!(
        cycle.assert_error(400).text.contains("would run itself"),
        "{}",
        cycle.text
    );
    // B is in use by A: it cannot be deleted.
    assert!(server.delete(b_self).assert_error(400).text.contains("'A'"));
    // The process view reads and writes the same steps.
    let process = server.ok(a["Links"]["RunbookProcess"].as_str().unwrap());
    assert_eq!(process["RunbookId"], a["Id"]);
    assert_eq!(process["Steps"][0]["Name"], "Run B");

    // Runs.
    let runs = "/api/Spaces-1/runbookRuns";
    server.post(runs, &json!({})).assert_error(400);
    assert!(
        server
            .post(runs, &json!({"RunbookId": "Runbooks-999"}))
            .assert_error(400)
            .text
            .contains("names no runbook")
    );
    server
        .post(runs, &json!({"RunbookId": b["Id"], "FormValues": [1]}))
        .assert_error(400);
    server
        .post(
            runs,
            &json!({"RunbookId": b["Id"], "FormValues": {"X": {"nested": 1}}}),
        )
        .assert_error(400);
    server
        .get("/api/Spaces-1/runbooks/Runbooks-999")
        .assert_error(404);
    server
        .get("/api/Spaces-1/runbookRuns/RunbookRuns-999")
        .assert_error(404);
    server
        .get("/api/Spaces-1/runbookProcesses/Nope")
        .assert_error(404);

    // Another space does not see these runbooks.
    let other = server
        .post("/api/spaces", &json!({"Name": "Other"}))
        .assert_status(201)
        .clone();
    let other_id = other["Id"].as_str().unwrap();
    server
        .get(&format!(
            "/api/{other_id}/runbooks/{}",
            b["Id"].as_str().unwrap()
        ))
        .assert_error(404);

    // A space viewer sees runbooks but may neither edit nor run them.
    let (user, key) = server.new_user("viewer");
    server.grant(&user, "Space viewer", "Spaces-1");
    server
        .as_user(&key, "GET", "/api/Spaces-1/runbooks", None)
        .assert_status(200);
    let denied = server.as_user(&key, "POST", runs, Some(&json!({"RunbookId": b["Id"]})));
    assert!(denied.assert_error(403).text.contains("RunbookRunCreate"));
    let denied = server.as_user(&key, "PUT", b_self, Some(&json!({"Name": "B2"})));
    assert!(denied.assert_error(403).text.contains("RunbookEdit"));
    // A task runner may run them.
    let (runner, runner_key) = server.new_user("runner");
    server.grant(&runner, "Task runner", "Spaces-1");
    let run = server.as_user(
        &runner_key,
        "POST",
        runs,
        Some(&json!({"RunbookId": b["Id"]})),
    );
    let task = run.assert_status(201)["TaskId"]
        .as_str()
        .unwrap()
        .to_string();
    let (task, _) = server.wait_task(&task);
    assert_eq!(task["State"], "Success");
}

/// The blog's failure: a parent run holds an exclusive lease on the only worker and waits for a
/// child runbook that needs an exclusive worker of the same pool, with a task cap of 1. The child
/// borrows the parent's lease and slot; meanwhile an unrelated exclusive task waits, and says for
/// whom. Then a chain of three nested runs, and a cancel that reaches the child.
#[test]
fn the_blogs_parent_and_exclusive_child_complete_on_one_worker() {
    let server = Server::start_with(&["--task-cap", "1"]);
    let _agent = server.polling_agent("only-worker");
    server.wait_health("only-worker", "Healthy");
    let dir = server.dir.clone();
    create(
        &server,
        "child.yaml",
        "name: Child\nexclusive: true\nsteps:\n  - name: Work\n    script: 'echo child on #{Octopus.Worker.Name}'\n",
    );
    create(
        &server,
        "parent.yaml",
        &format!(
            "name: Parent\nexclusive: true\nsteps:\n  - name: Hold\n    script: \"echo parent on #{{Octopus.Worker.Name}}; {}\"\n  - name: Run child\n    runbook: Child\n  - name: After\n    script: echo parent again\n",
            gate(&dir, "go")
        ),
    );
    let parent = start_run(&server, "Parent");
    eventually("the parent to start", || {
        (server.ok(&format!("/api/tasks/{parent}"))["State"] == "Executing").then_some(())
    });
    // An exclusive script for the same pool waits, and says for whom.
    let blocked = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo late", "OctopusBypassDeploymentMutex": "False"}),
    );
    let blocked = blocked["Id"].as_str().unwrap().to_string();
    let reason = eventually("a queue reason", || {
        server.ok(&format!("/api/tasks/{blocked}"))["QueueReason"]
            .as_str()
            .filter(|r| r.contains("exclusively leased"))
            .map(str::to_string)
    });
    assert!(
        reason.contains(&format!("only-worker is exclusively leased by {parent}")),
        "{reason}"
    );
    let show = cli(&server, &["task", "show", &blocked]);
    let shown = text(&show.stdout);
    assert!(shown.contains("Why queued"), "{shown}");
    assert!(
        shown.contains(&format!("exclusively leased by {parent}")),
        "{shown}"
    );
    let behind = server.ok(&format!("/api/tasks/{blocked}/queued-behind"));
    assert!(
        behind["QueueReason"]
            .as_str()
            .unwrap()
            .contains("exclusively leased")
    );

    std::fs::write(dir.join("go"), "").unwrap();
    let (task, lines) = server.wait_task(&parent);
    assert_eq!(task["State"], "Success", "{lines:?}");
    let child = child_of(&server, &parent);
    let (child_task, child_lines) = server.wait_task(&child);
    assert_eq!(child_task["State"], "Success");
    assert!(
        child_lines
            .iter()
            .any(|l| l["MessageText"] == "child on only-worker"),
        "{child_lines:?}"
    );
    let (late, _) = server.wait_task(&blocked);
    assert_eq!(late["State"], "Success");
    assert!(
        late["StartTime"].as_str().unwrap() >= task["CompletedTime"].as_str().unwrap(),
        "the exclusive script ran beside the parent"
    );

    // A chain of three nested exclusive runs on the same worker and slot.
    create(
        &server,
        "grand.yaml",
        "name: Grandparent\nexclusive: true\nsteps:\n  - name: First\n    script: echo grand\n  - name: Down\n    runbook: Parent\n",
    );
    std::fs::write(dir.join("go"), "").unwrap();
    let grand = start_run(&server, "Grandparent");
    let (task, lines) = server.wait_task(&grand);
    assert_eq!(task["State"], "Success", "{lines:?}");
    let parent2 = child_of(&server, &grand);
    let child2 = child_of(&server, &parent2);
    assert_eq!(
        server.ok(&format!("/api/tasks/{child2}"))["State"],
        "Success"
    );
    assert_eq!(
        server.ok(&format!("/api/tasks/{child2}"))["WorkerName"],
        "only-worker"
    );

    // Canceling a parent that waits cancels its child too.
    std::fs::remove_file(dir.join("go")).unwrap();
    create(
        &server,
        "slow.yaml",
        &format!(
            "name: Slow child\nsteps:\n  - name: Wait\n    script: \"{}\"\n",
            gate(&dir, "never")
        ),
    );
    create(
        &server,
        "waits.yaml",
        "name: Waits\nsteps:\n  - name: Run slow\n    runbook: Slow child\n",
    );
    let waits = start_run(&server, "Waits");
    let slow = eventually("the child to be queued", || {
        Some(child_of(&server, &waits)).filter(|c| !c.is_empty())
    });
    let slow_for_reason = slow.clone();
    eventually("the parent to say what it waits for", || {
        server.ok(&format!("/api/tasks/{waits}"))["WaitReason"]
            .as_str()
            .filter(|r| r.contains(&slow_for_reason))
            .map(|_| ())
    });
    eventually("the child to run", || {
        (server.ok(&format!("/api/tasks/{slow}"))["State"] == "Executing").then_some(())
    });
    server
        .post(&format!("/api/tasks/{waits}/cancel"), &json!({}))
        .assert_status(200);
    let (waits_task, _) = server.wait_task(&waits);
    assert_eq!(waits_task["State"], "Canceled");
    let (slow_task, _) = server.wait_task(&slow);
    assert_eq!(slow_task["State"], "Canceled");
}

/// Two workers, both taken by exclusive parents that each wait for an exclusive child: each child
/// borrows its own parent's worker. Then a step on each worker of the pool keeps to MaxParallelism.
#[test]
fn two_exclusive_parents_on_two_workers_and_a_fan_out_keep_their_rules() {
    let server = Server::start_with(&["--task-cap", "2"]);
    let _a = server.polling_agent("worker-a");
    let _b = server.polling_agent("worker-b");
    server.wait_health("worker-a", "Healthy");
    server.wait_health("worker-b", "Healthy");
    let dir = server.dir.clone();
    create(
        &server,
        "child.yaml",
        "name: Child\nexclusive: true\nsteps:\n  - name: Work\n    script: 'echo child on #{Octopus.Worker.Name}'\n",
    );
    create(
        &server,
        "parent.yaml",
        &format!(
            "name: Parent\nexclusive: true\nsteps:\n  - name: Hold\n    script: \"{}\"\n  - name: Run child\n    runbook: Child\n",
            gate(&dir, "go")
        ),
    );
    let first = start_run(&server, "Parent");
    let second = start_run(&server, "Parent");
    for task in [&first, &second] {
        eventually("both parents to hold a worker", || {
            (server.ok(&format!("/api/tasks/{task}"))["State"] == "Executing").then_some(())
        });
    }
    let workers: Vec<String> = [&first, &second]
        .iter()
        .map(|t| {
            server.ok(&format!("/api/tasks/{t}"))["WorkerName"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(workers[0], workers[1], "exclusive parents share a worker");
    std::fs::write(dir.join("go"), "").unwrap();
    for (task, worker) in [&first, &second].iter().zip(&workers) {
        let (done, lines) = server.wait_task(task);
        assert_eq!(done["State"], "Success", "{lines:?}");
        let child = child_of(&server, task);
        let (_, child_lines) = server.wait_task(&child);
        assert!(
            child_lines
                .iter()
                .any(|l| l["MessageText"] == format!("child on {worker}")),
            "the child of {task} did not run on its parent's worker {worker}: {child_lines:?}"
        );
    }

    // On each worker of the pool, one at a time.
    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    create(
        &server,
        "fan.yaml",
        &format!(
            "name: Fan\nsteps:\n  - name: Each\n    on: each-worker\n    max_parallelism: 1\n    script: \"date +%s%N > '{m}/#{{Octopus.Worker.Name}}.start'; sleep 0.2; date +%s%N > '{m}/#{{Octopus.Worker.Name}}.end'; echo done\"\n",
            m = marks.display()
        ),
    );
    let fan = start_run(&server, "Fan");
    let (done, lines) = server.wait_task(&fan);
    assert_eq!(done["State"], "Success", "{lines:?}");
    for worker in ["worker-a", "worker-b"] {
        assert!(
            lines
                .iter()
                .any(|l| l["MessageText"] == format!("{worker}: done")),
            "{lines:?}"
        );
    }
    let read = |name: &str| -> u128 {
        std::fs::read_to_string(marks.join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (a0, a1, b0, b1) = (
        read("worker-a.start"),
        read("worker-a.end"),
        read("worker-b.start"),
        read("worker-b.end"),
    );
    assert!(
        a1 <= b0 || b1 <= a0,
        "with MaxParallelism 1 the invocations overlapped: a {a0}..{a1}, b {b0}..{b1}"
    );
}

/// A cycle that lending cannot break: each parent holds a worker the other's child needs. One
/// child fails at once, naming the cycle; its parent fails, which frees the other.
#[test]
fn a_cycle_of_waits_fails_at_once_and_names_the_cycle() {
    let server = Server::start_with(&["--task-cap", "4"]);
    server
        .post(
            "/api/Spaces-1/workerpools",
            &json!({"Name": "Pool A", "WorkerPoolType": "StaticWorkerPool"}),
        )
        .assert_status(201);
    let _a = server.polling_agent_in("worker-a", "Pool A");
    server.wait_health("worker-a", "Healthy");
    let dir = server.dir.clone();
    // Side A: holds worker-a, then runs a child on the built-in worker. Side B the other way round.
    create(
        &server,
        "child-builtin.yaml",
        "name: On builtin\nexclusive: true\nsteps:\n  - name: Work\n    on: builtin\n    script: echo on builtin\n",
    );
    create(
        &server,
        "child-a.yaml",
        "name: On A\nexclusive: true\nsteps:\n  - name: Work\n    pool: Pool A\n    script: echo on a\n",
    );
    create(
        &server,
        "side-a.yaml",
        &format!(
            "name: Side A\nexclusive: true\nsteps:\n  - name: Hold\n    pool: Pool A\n    script: \"{}\"\n  - name: Cross\n    runbook: On builtin\n",
            gate(&dir, "go-a")
        ),
    );
    create(
        &server,
        "side-b.yaml",
        &format!(
            "name: Side B\nexclusive: true\nsteps:\n  - name: Hold\n    on: builtin\n    script: \"{}\"\n  - name: Cross\n    runbook: On A\n",
            gate(&dir, "go-b")
        ),
    );
    let side_a = start_run(&server, "Side A");
    let side_b = start_run(&server, "Side B");
    for task in [&side_a, &side_b] {
        eventually("both sides to hold their worker", || {
            (server.ok(&format!("/api/tasks/{task}"))["State"] == "Executing").then_some(())
        });
    }
    // A queues its child first; it waits (B's child is not queued yet, so no cycle exists).
    std::fs::write(dir.join("go-a"), "").unwrap();
    let child_a = eventually("side A's child", || {
        Some(child_of(&server, &side_a)).filter(|c| !c.is_empty())
    });
    let child_a_for_reason = child_a.clone();
    eventually("side A's child to wait for the built-in worker", || {
        server.ok(&format!("/api/tasks/{child_a_for_reason}"))["QueueReason"]
            .as_str()
            .filter(|r| r.contains("exclusively leased"))
            .map(|_| ())
    });
    std::fs::write(dir.join("go-b"), "").unwrap();
    let (a, _) = server.wait_task(&side_a);
    let (b, _) = server.wait_task(&side_b);
    let (failed, succeeded) = if a["State"] == "Failed" {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(succeeded["State"], "Success", "{succeeded}");
    let message = failed["ErrorMessage"].as_str().unwrap();
    assert!(message.contains("Deadlock"), "{message}");
    assert!(
        message.contains(side_a.as_str()) && message.contains(side_b.as_str()),
        "the cycle names both parents: {message}"
    );
    let (child, _) = server.wait_task(&child_a);
    let child_b = child_of(&server, &side_b);
    let (other_child, _) = server.wait_task(&child_b);
    let states = [child["State"].clone(), other_child["State"].clone()];
    assert!(
        states.contains(&json!("Failed")) && states.contains(&json!("Success")),
        "{states:?}"
    );
}
