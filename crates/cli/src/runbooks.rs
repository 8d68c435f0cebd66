//! `muster runbook`: runbooks from a file, and runs followed live.
//!
//! The file (YAML or JSON) is a short form of Octopus's process, turned into its REST shape here:
//!
//! ```yaml
//! name: Nightly clean-up
//! exclusive: true                 # OctopusBypassDeploymentMutex = False: no other task on its workers
//! variables:
//!   Greeting: hello
//!   DbPassword: { value: s3cret, sensitive: true }
//!   Region: { value: eu, prompt: true }       # a run may set it: --var Region=us
//!   Ticket: { prompt: { label: Change ticket, required: true } }
//! steps:
//!   - name: Make
//!     script: set_octopusvariable Color blue
//!     pool: Linux Workers          # by name; default: the space's default pool
//!   - name: Everywhere
//!     script: hostname
//!     on: each-worker              # pool (default), each-worker, builtin
//!     max_parallelism: 2
//!   - name: Child
//!     runbook: Other runbook       # runs it, and waits (wait: false to fire and forget)
//! ```
//!
//! A file that already has Octopus's `Steps` (with `Actions`) is sent as it is.

use crate::client::Client;
use crate::tasks::follow_to_end;
use crate::{SpaceOption, array, id_of, matches, output, resolve_space};
use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::path::PathBuf;

#[derive(Debug, Clone, Subcommand)]
pub enum RunbookCommand {
    /// Creates a runbook from a YAML or JSON file; with --update, replaces the one of its name.
    Create {
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        space: SpaceOption,
        #[arg(long)]
        update: bool,
    },
    /// Lists a space's runbooks.
    List {
        #[command(flatten)]
        space: SpaceOption,
    },
    /// Shows a runbook's steps and variables (sensitive values are never shown).
    Show {
        runbook: String,
        #[command(flatten)]
        space: SpaceOption,
    },
    /// Runs a runbook and streams its log; exits 0 when the run succeeds (1 failed, 124 timed
    /// out, 130 canceled). Ctrl-C cancels the run.
    Run {
        runbook: String,
        #[command(flatten)]
        space: SpaceOption,
        /// A variable value for this run, NAME=VALUE; repeatable.
        #[arg(long = "var")]
        vars: Vec<String>,
        /// Print the run's task id and return at once.
        #[arg(long, conflicts_with = "wait")]
        no_wait: bool,
        /// Follow the run to its end (the default).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        comments: Option<String>,
    },
    /// Deletes a runbook.
    Delete {
        runbook: String,
        #[command(flatten)]
        space: SpaceOption,
    },
}

pub async fn runbook(client: &Client, json: bool, command: RunbookCommand) -> anyhow::Result<i32> {
    match command {
        RunbookCommand::Create {
            file,
            space,
            update,
        } => {
            let space = resolve_space(client, &space).await?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let body = read_file(&text)?;
            let name = body["Name"].as_str().unwrap_or_default().to_string();
            let existing = find(client, &space, &name).await.ok();
            let saved = match existing {
                Some(existing) if update => {
                    client
                        .send(Method::PUT, &self_link(&existing), Some(&body))
                        .await?
                }
                Some(_) => {
                    bail!("a runbook named '{name}' already exists; use --update to replace it")
                }
                None => {
                    client
                        .send(
                            Method::POST,
                            &format!("/api/{}/runbooks", id_of(&space)),
                            Some(&body),
                        )
                        .await?
                }
            };
            if json {
                output::json(&saved);
            } else {
                println!(
                    "{} {} ({} step(s))",
                    id_of(&saved),
                    output::text(&saved["Name"]),
                    array(&saved["Steps"]).len()
                );
            }
            Ok(0)
        }
        RunbookCommand::List { space } => {
            let space = resolve_space(client, &space).await?;
            let items = client
                .get(&format!("/api/{}/runbooks/all", id_of(&space)))
                .await?;
            if json {
                output::json(&items);
            } else {
                let rows = array(&items)
                    .iter()
                    .map(|r| {
                        vec![
                            id_of(r),
                            output::text(&r["Name"]),
                            array(&r["Steps"]).len().to_string(),
                            output::text(&r["Description"]),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "STEPS", "DESCRIPTION"], rows);
            }
            Ok(0)
        }
        RunbookCommand::Show { runbook, space } => {
            let space = resolve_space(client, &space).await?;
            let runbook = find(client, &space, &runbook).await?;
            if json {
                output::json(&runbook);
                return Ok(0);
            }
            let mut runbook = runbook;
            runbook["Space"] = json!(output::text(&space["Name"]));
            output::fields(&runbook, &["Id", "Name", "Description", "Space"]);
            println!();
            // Steps name pools and runbooks by id; show their names.
            let mut names: Vec<(String, String)> = Vec::new();
            for kind in ["workerpools", "runbooks"] {
                for item in array(
                    &client
                        .get(&format!("/api/{}/{kind}/all", id_of(&space)))
                        .await?,
                ) {
                    names.push((id_of(&item), output::text(&item["Name"])));
                }
            }
            let name_of = |id: &str| {
                names
                    .iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, n)| format!("'{n}'"))
                    .unwrap_or_else(|| id.to_string())
            };
            let rows = array(&runbook["Steps"])
                .iter()
                .enumerate()
                .map(|(i, step)| {
                    let action = &step["Actions"][0];
                    let props = &action["Properties"];
                    let what = if action["ActionType"] == json!("Muster.RunRunbook") {
                        format!(
                            "run runbook {}",
                            name_of(&output::text(&props["Muster.Action.RunRunbook.RunbookId"]))
                        )
                    } else {
                        let location = props["Muster.Action.ExecutionLocation"]
                            .as_str()
                            .unwrap_or("WorkerPool");
                        let pool = match action["WorkerPoolId"].as_str() {
                            Some(id) => format!("pool {}", name_of(id)),
                            None => "the default pool".to_string(),
                        };
                        match location {
                            "BuiltInWorker" => "script on the built-in worker".to_string(),
                            "EachWorkerInPool" => format!("script on each worker of {pool}"),
                            _ => format!("script on {pool}"),
                        }
                    };
                    vec![
                        (i + 1).to_string(),
                        output::text(&step["Name"]),
                        output::text(&step["Condition"]),
                        what,
                    ]
                })
                .collect();
            output::table(&["#", "STEP", "CONDITION", "DOES"], rows);
            let variables = array(&runbook["Variables"]);
            if !variables.is_empty() {
                println!();
                let rows = variables
                    .iter()
                    .map(|v| {
                        vec![
                            output::text(&v["Name"]),
                            if v["IsSensitive"] == json!(true) {
                                "(sensitive)".to_string()
                            } else {
                                output::text(&v["Value"])
                            },
                        ]
                    })
                    .collect();
                output::table(&["VARIABLE", "VALUE"], rows);
            }
            Ok(0)
        }
        RunbookCommand::Run {
            runbook,
            space,
            vars,
            no_wait,
            comments,
            wait: _,
        } => {
            // Run by a task's script and waited for, the run is that task's child (the CLI sends
            // MUSTER_TASK_TOKEN); not waited for, it is not.
            let client = &if no_wait {
                client.without_task_token()
            } else {
                client.clone()
            };
            let space = resolve_space(client, &space).await?;
            let runbook = find(client, &space, &runbook).await?;
            let mut form_values = Map::new();
            for var in vars {
                let (name, value) = var
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--var takes NAME=VALUE, got '{var}'"))?;
                form_values.insert(name.trim().to_string(), json!(value));
            }
            let run = client
                .send(
                    Method::POST,
                    &format!("/api/{}/runbookRuns", id_of(&space)),
                    Some(&json!({"RunbookId": id_of(&runbook), "FormValues": form_values, "Comments": comments})),
                )
                .await?;
            let task_id = output::text(&run["TaskId"]);
            if no_wait {
                if json {
                    output::json(&run);
                } else {
                    println!("{task_id}");
                }
                return Ok(0);
            }
            eprintln!(
                "{} runs runbook '{}' as task {task_id}",
                id_of(&run),
                output::text(&runbook["Name"])
            );
            follow_to_end(client, json, &task_id).await
        }
        RunbookCommand::Delete { runbook, space } => {
            let space = resolve_space(client, &space).await?;
            let runbook = find(client, &space, &runbook).await?;
            client
                .send(Method::DELETE, &self_link(&runbook), None)
                .await?;
            println!("Deleted {}", output::text(&runbook["Name"]));
            Ok(0)
        }
    }
}

fn self_link(resource: &Value) -> String {
    output::text(&resource["Links"]["Self"])
}

async fn find(client: &Client, space: &Value, key: &str) -> anyhow::Result<Value> {
    array(
        &client
            .get(&format!("/api/{}/runbooks/all", id_of(space)))
            .await?,
    )
    .into_iter()
    .find(|r| matches(r, key))
    .ok_or_else(|| {
        anyhow!(
            "no runbook named '{key}' in space {}",
            output::text(&space["Name"])
        )
    })
}

/// The REST body of a runbook file: YAML (JSON is YAML too).
pub fn read_file(text: &str) -> anyhow::Result<Value> {
    // YAML reads ` #` as the start of a comment, so an unquoted `script: echo #{Name}` would lose
    // its variable silently.
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some((key, value)) = trimmed.split_once(':') {
            let value = value.trim_start();
            let plain = !value.starts_with(['|', '>', '\'', '"']);
            if plain && value.contains(" #{") && !key.trim().starts_with('#') {
                bail!(
                    "line {}: YAML reads ' #' as a comment, so '#{{…}}' would be lost; quote the value or use a block (`{}: |`)",
                    n + 1,
                    key.trim()
                );
            }
        }
    }
    let file: Value =
        serde_norway::from_str(text).context("the runbook file is not valid YAML or JSON")?;
    let Value::Object(file) = file else {
        bail!("the runbook file must be a mapping with name and steps");
    };
    if file.contains_key("Steps") {
        return Ok(Value::Object(file));
    }
    let known = ["name", "description", "exclusive", "variables", "steps"];
    if let Some(unknown) = file.keys().find(|k| !known.contains(&k.as_str())) {
        bail!(
            "unknown key '{unknown}' in the runbook file (known: {})",
            known.join(", ")
        );
    }
    let name = file
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the runbook file needs a name"))?;
    let mut variables: Vec<Value> = Vec::new();
    if let Some(vars) = file.get("variables") {
        let Value::Object(vars) = vars else {
            bail!("variables must be a mapping of names to values");
        };
        for (name, value) in vars {
            let (value, sensitive, prompt) = match value {
                Value::Object(spec) => {
                    let sensitive = spec.get("sensitive") == Some(&json!(true));
                    // A secret without a value keeps the one the server has (--update).
                    let value = match spec.get("value") {
                        None | Some(Value::Null) if sensitive => Value::Null,
                        Some(v) => json!(scalar(v)),
                        None => json!(""),
                    };
                    (value, sensitive, read_prompt(name, spec.get("prompt"))?)
                }
                other => (json!(scalar(other)), false, Value::Null),
            };
            variables.push(
                json!({"Name": name, "Value": value, "IsSensitive": sensitive, "Prompt": prompt}),
            );
        }
    }
    match file.get("exclusive") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            if variables.iter().any(|v| {
                v["Name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("OctopusBypassDeploymentMutex"))
            }) {
                bail!(
                    "give either exclusive: true or the variable OctopusBypassDeploymentMutex, not both"
                );
            }
            variables.push(json!({"Name": "OctopusBypassDeploymentMutex", "Value": "False"}))
        }
        Some(other) => bail!("exclusive must be true or false, got {other}"),
    }
    let steps = file
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("the runbook file needs steps: a list"))?;
    let steps: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, step)| read_step(i + 1, step))
        .collect::<anyhow::Result<_>>()?;
    Ok(json!({
        "Name": name,
        "Description": file.get("description").map(scalar),
        "Steps": steps,
        "Variables": variables,
    }))
}

/// `prompt: true`, or `prompt: {label, description, required}`: a run may give the variable a value.
fn read_prompt(name: &str, prompt: Option<&Value>) -> anyhow::Result<Value> {
    match prompt {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(Value::Null),
        Some(Value::Bool(true)) => Ok(json!({"Label": name, "Required": false})),
        Some(Value::Object(spec)) => {
            if let Some(unknown) = spec
                .keys()
                .find(|k| !["label", "description", "required"].contains(&k.as_str()))
            {
                bail!(
                    "variable {name}: unknown prompt key '{unknown}' (known: label, description, required)"
                );
            }
            Ok(json!({
                "Label": spec.get("label").map(scalar).unwrap_or_else(|| name.to_string()),
                "Description": spec.get("description").map(scalar),
                "Required": spec.get("required") == Some(&json!(true)),
            }))
        }
        Some(other) => bail!("variable {name}: prompt must be true or a mapping, got {other}"),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn read_step(n: usize, step: &Value) -> anyhow::Result<Value> {
    let Value::Object(step) = step else {
        bail!("step {n} must be a mapping");
    };
    let known = [
        "name",
        "script",
        "syntax",
        "pool",
        "on",
        "max_parallelism",
        "condition",
        "runbook",
        "wait",
        "disabled",
    ];
    if let Some(unknown) = step.keys().find(|k| !known.contains(&k.as_str())) {
        bail!(
            "step {n}: unknown key '{unknown}' (known: {})",
            known.join(", ")
        );
    }
    let name = step
        .get("name")
        .map(scalar)
        .ok_or_else(|| anyhow!("step {n} needs a name"))?;
    let mut properties = Map::new();
    let only = |keys: &[&str], kind: &str| -> anyhow::Result<()> {
        match keys.iter().find(|k| step.contains_key(**k)) {
            Some(key) => bail!("step '{name}': {key} does not apply to a {kind} step"),
            None => Ok(()),
        }
    };
    let (action_type, pool) = match (step.get("script"), step.get("runbook")) {
        (Some(script), None) => {
            only(&["wait"], "script")?;
            properties.insert(
                "Octopus.Action.Script.ScriptBody".into(),
                json!(scalar(script)),
            );
            properties.insert(
                "Octopus.Action.Script.Syntax".into(),
                json!(
                    step.get("syntax")
                        .map(scalar)
                        .unwrap_or_else(|| "Bash".into())
                ),
            );
            let location = match step.get("on").map(scalar).as_deref() {
                None | Some("pool") => "WorkerPool",
                Some("each-worker") => "EachWorkerInPool",
                Some("builtin") => "BuiltInWorker",
                Some(other) => {
                    bail!("step '{name}': on must be pool, each-worker or builtin, got '{other}'")
                }
            };
            properties.insert("Muster.Action.ExecutionLocation".into(), json!(location));
            if let Some(max) = step.get("max_parallelism") {
                properties.insert("Octopus.Action.MaxParallelism".into(), json!(scalar(max)));
            }
            ("Octopus.Script", step.get("pool").map(scalar))
        }
        (None, Some(runbook)) => {
            only(&["syntax", "on", "pool", "max_parallelism"], "runbook")?;
            properties.insert(
                "Muster.Action.RunRunbook.RunbookId".into(),
                json!(scalar(runbook)),
            );
            let wait = step.get("wait") != Some(&json!(false));
            properties.insert(
                "Muster.Action.RunRunbook.WaitForCompletion".into(),
                json!(if wait { "True" } else { "False" }),
            );
            ("Muster.RunRunbook", None)
        }
        (Some(_), Some(_)) => bail!("step '{name}' has both script and runbook: give only one"),
        (None, None) => bail!("step '{name}' needs either script or runbook"),
    };
    Ok(json!({
        "Name": name,
        "Condition": step.get("condition").map(scalar).unwrap_or_else(|| "Success".into()),
        "Actions": [{
            "Name": name,
            "ActionType": action_type,
            "WorkerPoolId": pool,
            "IsDisabled": step.get("disabled") == Some(&json!(true)),
            "Properties": properties,
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_file_becomes_octopus_steps() {
        let body = read_file(
            "name: R\nexclusive: true\nvariables:\n  A: 1\n  P: {value: x, sensitive: true, prompt: {label: Pass, required: true}}\nsteps:\n  - name: S\n    script: echo hi\n    on: each-worker\n    pool: Linux\n  - name: C\n    runbook: Other\n    wait: false\n",
        )
        .unwrap();
        assert_eq!(body["Steps"][0]["Actions"][0]["WorkerPoolId"], "Linux");
        assert_eq!(
            body["Steps"][0]["Actions"][0]["Properties"]["Muster.Action.ExecutionLocation"],
            "EachWorkerInPool"
        );
        assert_eq!(
            body["Steps"][1]["Actions"][0]["Properties"]["Muster.Action.RunRunbook.WaitForCompletion"],
            "False"
        );
        assert_eq!(body["Variables"][0]["Value"], "1");
        assert_eq!(body["Variables"][1]["IsSensitive"], true);
        assert_eq!(
            body["Variables"][1]["Prompt"],
            json!({"Label": "Pass", "Description": null, "Required": true})
        );
        assert_eq!(body["Variables"][0]["Prompt"], Value::Null);
        assert_eq!(body["Variables"][2]["Name"], "OctopusBypassDeploymentMutex");
        assert!(read_file("name: R\nsteps:\n  - name: S\n    scrpt: x\n").is_err());
        let comment = read_file("name: R\nsteps:\n  - name: S\n    script: echo #{A}\n");
        assert!(comment.unwrap_err().to_string().contains("comment"));
        assert!(read_file("name: R\nsteps:\n  - name: S\n    script: 'echo #{A}'\n").is_ok());
    }
}
