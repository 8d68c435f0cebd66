//! Task commands and `script run`: a task's log is followed over the server's event stream, so a line
//! shows as soon as the script prints it.

use crate::client::{Client, encode};
use crate::names::Names;
use crate::{
    ArtifactCommand, ScriptRun, SpaceOption, TaskCommand, array, id_of, output, resolve_pool,
    resolve_space, script_body,
};
use anyhow::{Context, anyhow};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

/// Exit codes of `script run` and `task log --follow`, by the task's final state.
fn exit_code(task: &Value) -> i32 {
    match task["State"].as_str() {
        Some("Success") => 0,
        Some("TimedOut") => 124,
        Some("Canceled") => 130,
        _ => 1,
    }
}

fn normalize_task_id(text: &str) -> String {
    let text = text.trim();
    if text.bytes().all(|b| b.is_ascii_digit()) {
        format!("ServerTasks-{text}")
    } else {
        text.to_string()
    }
}

pub async fn task(client: &Client, json: bool, command: TaskCommand) -> anyhow::Result<i32> {
    match command {
        TaskCommand::Artifacts { task } => {
            let task = client
                .get(&format!("/api/tasks/{}", normalize_task_id(&task)))
                .await?;
            let (space, id) = (output::text(&task["SpaceId"]), output::text(&task["Id"]));
            let items = client
                .get_all_pages(&format!(
                    "/api/{space}/artifacts?regarding={}&take=100",
                    encode(&id)
                ))
                .await?;
            if json {
                output::json(&Value::Array(items));
                return Ok(0);
            }
            let rows = items
                .iter()
                .map(|a| {
                    vec![
                        output::text(&a["Id"]),
                        output::text(&a["Filename"]),
                        output::text(&a["Length"]),
                        output::text(&a["Source"]),
                        output::text(&a["Created"]),
                    ]
                })
                .collect();
            output::table(&["ID", "FILE NAME", "BYTES", "SOURCE", "CREATED"], rows);
            Ok(0)
        }
        TaskCommand::List { space, state, take } => {
            let mut path = match space {
                Some(space) => {
                    let space = resolve_space(client, &SpaceOption { space: Some(space) }).await?;
                    format!("/api/{}/tasks?take={take}", id_of(&space))
                }
                None => format!("/api/tasks?take={take}"),
            };
            if let Some(state) = state {
                path.push_str(&format!("&states={}", encode(&state)));
            }
            let page = client.get(&path).await?;
            if json {
                output::json(&page["Items"]);
                return Ok(0);
            }
            let spaces = Names::spaces(client).await;
            let rows = array(&page["Items"])
                .iter()
                .map(|t| {
                    vec![
                        output::text(&t["Id"]),
                        spaces.name(&t["SpaceId"]),
                        output::text(&t["State"]),
                        output::text(&t["Description"]),
                        output::text(&t["QueueTime"]),
                        output::text(&t["Duration"]),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID",
                    "SPACE",
                    "STATE",
                    "DESCRIPTION",
                    "QUEUED AT",
                    "DURATION",
                ],
                rows,
            );
            Ok(0)
        }
        TaskCommand::Show { task } => {
            let task = client
                .get(&format!("/api/tasks/{}", normalize_task_id(&task)))
                .await?;
            if json {
                output::json(&task);
                return Ok(0);
            }
            let mut task = task;
            task["Space"] = json!(Names::spaces(client).await.name(&task["SpaceId"]));
            output::fields(
                &task,
                &[
                    "Id",
                    "Space",
                    "Name",
                    "Description",
                    "State",
                    "QueueTime",
                    "StartTime",
                    "CompletedTime",
                    "Duration",
                    "WorkerName",
                    "ServerNode",
                    "ErrorMessage",
                ],
            );
            if task["State"] == json!("Queued") {
                println!("Why queued    {}", output::text(&task["QueueReason"]));
                let behind = client
                    .get(&format!(
                        "/api/tasks/{}/queued-behind?take=1",
                        output::text(&task["Id"])
                    ))
                    .await?;
                println!("Tasks ahead   {}", output::text(&behind["TotalResults"]));
            }
            if task["WaitReason"].as_str().is_some_and(|r| !r.is_empty()) {
                println!("Waiting for   {}", output::text(&task["WaitReason"]));
            }
            Ok(0)
        }
        TaskCommand::Log {
            task, raw: true, ..
        } => {
            let text = client
                .get_text(&format!("/api/tasks/{}/raw", normalize_task_id(&task)))
                .await?;
            print!("{text}");
            Ok(0)
        }
        TaskCommand::Log { task, follow, .. } => {
            let id = normalize_task_id(&task);
            // An ended task's log is the same with or without --follow: the stream gives every
            // line and then the end. A task still running is shown so far, and says so.
            if !follow {
                let task = client.get(&format!("/api/tasks/{id}")).await?;
                if task["IsCompleted"] != json!(true) {
                    let text = client.get_text(&format!("/api/tasks/{id}/raw")).await?;
                    print!("{text}");
                    eprintln!(
                        "{id} is {}; `muster task log --follow {id}` follows it to its end.",
                        output::text(&task["State"])
                    );
                    return Ok(0);
                }
            }
            let task = self::follow(client, &id).await?;
            report_end(&task);
            Ok(exit_code(&task))
        }
        TaskCommand::Cancel { task } => {
            let task = client
                .send(
                    Method::POST,
                    &format!("/api/tasks/{}/cancel", normalize_task_id(&task)),
                    Some(&json!({})),
                )
                .await?;
            if json {
                output::json(&task);
            } else {
                println!(
                    "{} is {}",
                    output::text(&task["Id"]),
                    output::text(&task["State"])
                );
            }
            Ok(0)
        }
    }
}

fn report_end(task: &Value) {
    if task["State"] != json!("Success") {
        let message = task["ErrorMessage"]
            .as_str()
            .filter(|m| !m.is_empty())
            .unwrap_or("");
        eprintln!(
            "{} ended {}. {message}",
            output::text(&task["Id"]),
            output::text(&task["State"])
        );
    }
}

/// A script's first line that says something (a shebang does not), shortened to fit a task list.
fn default_description(body: &str) -> String {
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("#!"))
        .unwrap_or("Script run from the muster CLI");
    let mut text: String = line.chars().take(100).collect();
    if line.chars().count() > 100 {
        text.push('…');
    }
    text
}

pub async fn script_run(client: &Client, json: bool, args: ScriptRun) -> anyhow::Result<i32> {
    let body = script_body(&args)?;
    let space = resolve_space(client, &args.space).await?;
    let mut arguments = json!({"ScriptBody": body, "Syntax": args.syntax});
    if args.builtin {
        arguments["TargetType"] = json!("OctopusServer");
    } else {
        let pool = match &args.pool {
            Some(name) => resolve_pool(client, &space, name).await?,
            None => array(
                &client
                    .get(&format!("/api/{}/workerpools/all", id_of(&space)))
                    .await?,
            )
            .into_iter()
            .find(|p| p["IsDefault"] == json!(true))
            .ok_or_else(|| anyhow!("the space has no default worker pool"))?,
        };
        arguments["TargetType"] = json!("WorkerPools");
        arguments["WorkerPoolIds"] = json!([id_of(&pool)]);
    }
    if let Some(timeout) = &args.timeout {
        arguments["Timeout"] = json!(timeout);
    }
    let description = args
        .description
        .clone()
        .unwrap_or_else(|| default_description(&body));
    let request =
        json!({"Name": "AdHocScript", "Description": description, "Arguments": arguments});
    if args.no_wait {
        // Not waited for, it is not the running task's child (see `runbook run --no-wait`).
        let task = client
            .without_task_token()
            .send(
                Method::POST,
                &format!("/api/{}/tasks", id_of(&space)),
                Some(&request),
            )
            .await?;
        if json {
            output::json(&task);
        } else {
            println!("{}", id_of(&task));
        }
        return Ok(0);
    }
    run_and_follow(client, json, &space, &request).await
}

/// Creates a task, prints its log as it grows, and exits by its final state; Ctrl-C or SIGTERM
/// cancels it.
pub async fn run_and_follow(
    client: &Client,
    json: bool,
    space: &Value,
    request: &Value,
) -> anyhow::Result<i32> {
    let task = client
        .send(
            Method::POST,
            &format!("/api/{}/tasks", id_of(space)),
            Some(request),
        )
        .await?;
    follow_to_end(client, json, &id_of(&task)).await
}

/// Prints a running task's log as it grows, and exits by its final state; Ctrl-C or SIGTERM
/// cancels it.
pub async fn follow_to_end(client: &Client, json: bool, task_id: &str) -> anyhow::Result<i32> {
    let task_id = task_id.to_string();
    // Ctrl-C cancels the task, and the log is followed to its end.
    let canceller = {
        let client = client.clone();
        let task_id = task_id.clone();
        tokio::spawn(async move {
            let terminate = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            let interrupted = tokio::select! {
                result = tokio::signal::ctrl_c() => result.is_ok(),
                _ = terminate => true,
            };
            if interrupted {
                eprintln!("Canceling {task_id}…");
                let _ = client
                    .send(
                        Method::POST,
                        &format!("/api/tasks/{task_id}/cancel"),
                        Some(&json!({})),
                    )
                    .await;
            }
        })
    };
    let result = follow(client, &task_id).await;
    canceller.abort();
    let task = result?;
    if json {
        output::json(&task);
    }
    report_end(&task);
    Ok(exit_code(&task))
}

/// Prints a task's log as it grows and returns the task once it has ended. A dropped stream is
/// opened again after the last line seen.
pub async fn follow(client: &Client, task_id: &str) -> anyhow::Result<Value> {
    let mut after: i64 = 0;
    let mut last_reason = String::new();
    let mut attempts = 0;
    loop {
        let response = client
            .open_stream(&format!("/api/tasks/{task_id}/stream?after={after}"))
            .await?;
        let mut stream = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            attempts = 0;
            buffer.extend_from_slice(&chunk);
            while let Some(end) = find_event_end(&buffer) {
                let raw: Vec<u8> = buffer.drain(..end).collect();
                let (kind, data) = parse_event(&String::from_utf8_lossy(&raw));
                match kind.as_str() {
                    "line" => {
                        let line: Value = serde_json::from_str(&data)
                            .context("a log line from the server is not JSON")?;
                        print_line(&line);
                        after = line["Seq"].as_i64().unwrap_or(after);
                    }
                    "task" => {
                        let task: Value = serde_json::from_str(&data)
                            .context("a task from the server is not JSON")?;
                        if task["IsCompleted"] == json!(true) {
                            return Ok(task);
                        }
                        let (label, reason) = match task["State"].as_str() {
                            Some("Queued") => ("Queued", &task["QueueReason"]),
                            _ => ("Waiting", &task["WaitReason"]),
                        };
                        let reason = reason.as_str().unwrap_or("").to_string();
                        if !reason.is_empty() && reason != last_reason {
                            eprintln!("{label}: {reason}");
                            last_reason = reason;
                        }
                    }
                    _ => {}
                }
            }
        }
        attempts += 1;
        if attempts > 5 {
            return Err(anyhow!(
                "the log stream of {task_id} keeps breaking off; see `muster task show {task_id}`"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * attempts)).await;
    }
}

fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// The `event:` name and the joined `data:` lines of one server-sent event.
fn parse_event(raw: &str) -> (String, String) {
    let mut kind = String::from("message");
    let mut data: Vec<&str> = Vec::new();
    for line in raw.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim().to_string();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    (kind, data.join("\n"))
}

/// Script output goes to stdout; stderr lines, warnings and Muster's own notes go to stderr.
fn print_line(line: &Value) {
    use std::io::Write;
    let text = line["MessageText"].as_str().unwrap_or("");
    match line["Category"].as_str() {
        Some("Info") | Some("Highlight") => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
        _ => eprintln!("{text}"),
    }
}

/// `artifact download`: the file is written as its chunks arrive (to a temporary name beside the
/// target, renamed once whole), never held whole in memory.
pub async fn artifact(
    client: &Client,
    json: bool,
    command: ArtifactCommand,
) -> anyhow::Result<i32> {
    use std::io::Write;
    let ArtifactCommand::Download {
        artifact,
        space,
        output: target,
    } = command;
    let space = resolve_space(client, &space).await?;
    let space = id_of(&space);
    let artifact = artifact.trim();
    let artifact = if artifact.bytes().all(|b| b.is_ascii_digit()) {
        format!("Artifacts-{artifact}")
    } else {
        artifact.to_string()
    };
    let artifact = client
        .get(&format!("/api/{space}/artifacts/{}", encode(&artifact)))
        .await?;
    let id = output::text(&artifact["Id"]);
    let mut response = client
        .open(
            &format!("/api/{space}/artifacts/{id}/content"),
            "application/octet-stream",
        )
        .await?;
    let to_stdout = target.as_deref() == Some(std::path::Path::new("-"));
    let target = target.unwrap_or_else(|| {
        // The server's name has no directories; this keeps it so whatever a server sends.
        let name = output::text(&artifact["Filename"]);
        let name = name.rsplit(['/', '\\']).next().unwrap_or_default();
        match name {
            "" | "." | ".." => std::path::PathBuf::from(&id),
            name => std::path::PathBuf::from(name),
        }
    });
    let mut written: u64 = 0;
    if to_stdout {
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = response.chunk().await? {
            out.write_all(&chunk)?;
        }
        out.flush()?;
        return Ok(0);
    }
    let partial = {
        let mut name = target.as_os_str().to_owned();
        name.push(".partial");
        std::path::PathBuf::from(name)
    };
    let result: anyhow::Result<()> = async {
        let mut file = std::fs::File::create(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        while let Some(chunk) = response.chunk().await? {
            file.write_all(&chunk)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            written += chunk.len() as u64;
        }
        file.sync_all()?;
        std::fs::rename(&partial, &target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        Ok(())
    }
    .await;
    if let Err(error) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    if json {
        output::json(&json!({"Id": id, "File": target.display().to_string(), "Bytes": written}));
    } else {
        println!("{id}: {written} bytes written to {}", target.display());
    }
    Ok(0)
}
