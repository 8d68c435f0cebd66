//! The kinds of task this server runs, each with its arguments read once into types: a task's
//! `Name` and `Arguments` are parsed here, at the API when it is created, and nowhere else compares
//! task names.

use crate::resources::Task;
use crate::time::parse_timespan;
use crate::{ScriptSyntax, ScriptTarget};
use serde_json::{Map, Value};
use std::time::Duration;

/// A task, by what it does.
pub enum TaskKind {
    /// Runs a script on a worker (Octopus's script console).
    AdHocScript(ScriptArguments),
    /// Checks the health of workers, on the server, outside the task cap.
    Health(HealthArguments),
    /// Drives a runbook run's steps; its settings are in its run record.
    RunbookRun(RunArguments),
}

/// The names clients and the store know the kinds by.
pub const ADHOC_SCRIPT: &str = "AdHocScript";
pub const HEALTH: &str = "Health";
pub const RUNBOOK_RUN: &str = "RunbookRun";

/// How long one machine has to answer a health check, unless `MachineTimeout` says otherwise.
pub const DEFAULT_MACHINE_TIMEOUT: Duration = Duration::from_secs(20);

impl TaskKind {
    /// Reads a task's name and arguments; every problem is returned for a 400.
    pub fn parse(name: &str, arguments: &Map<String, Value>) -> Result<TaskKind, Vec<String>> {
        if name.eq_ignore_ascii_case(ADHOC_SCRIPT) {
            ScriptArguments::parse(arguments).map(TaskKind::AdHocScript)
        } else if name.eq_ignore_ascii_case(HEALTH) {
            HealthArguments::parse(arguments).map(TaskKind::Health)
        } else if name.eq_ignore_ascii_case(RUNBOOK_RUN) {
            Ok(TaskKind::RunbookRun(RunArguments::parse(arguments)))
        } else {
            Err(vec![format!(
                "Muster does not run tasks named '{name}': it runs {ADHOC_SCRIPT}, {HEALTH} and runbook runs."
            )])
        }
    }

    /// The kind of a stored task (its arguments were checked when it was created).
    pub fn of(task: &Task) -> Result<TaskKind, String> {
        TaskKind::parse(&task.name, &task.arguments).map_err(|errors| errors.join(" "))
    }

    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::AdHocScript(_) => ADHOC_SCRIPT,
            TaskKind::Health(_) => HEALTH,
            TaskKind::RunbookRun(_) => RUNBOOK_RUN,
        }
    }
}

/// The run that started a task through a "Run a runbook" step (read without parsing the rest of
/// its arguments: a dispatch pass asks it of every queued task).
pub fn parent_of(task: &Task) -> Option<String> {
    RunArguments::parse(&task.arguments).parent_task_id
}

/// The running task that waits for this one (its `ParentTaskId`, when `ParentWaits` is true): it
/// lends this task its leases and task-cap slot. Written by the node that creates the child, read
/// by the dispatcher, which may be another node.
pub fn waiting_parent_of(task: &Task) -> Option<String> {
    let arguments = RunArguments::parse(&task.arguments);
    arguments
        .parent_waits
        .then_some(arguments.parent_task_id)
        .flatten()
}

/// The settings of a runbook run's task.
pub struct RunArguments {
    /// The run that started this one through a "Run a runbook" step.
    pub parent_task_id: Option<String>,
    /// Whether that parent waits for this task.
    pub parent_waits: bool,
}

impl RunArguments {
    fn parse(arguments: &Map<String, Value>) -> RunArguments {
        RunArguments {
            parent_task_id: arguments
                .get("ParentTaskId")
                .and_then(Value::as_str)
                .map(str::to_string),
            parent_waits: arguments.get("ParentWaits") == Some(&Value::Bool(true)),
        }
    }
}

/// The settings of an AdHocScript task, read from its `Arguments`.
pub struct ScriptArguments {
    pub body: String,
    pub syntax: ScriptSyntax,
    pub target: ScriptTarget,
    pub pool_ids: Vec<String>,
    pub machine_ids: Vec<String>,
    pub timeout: Option<Duration>,
    /// `OctopusBypassDeploymentMutex` False: nothing else runs on its worker meanwhile.
    pub exclusive: bool,
}

pub fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str())
            .map(str::to_string)
            .collect(),
        Value::String(text) => text
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

impl ScriptArguments {
    /// Reads and checks the arguments; every problem is returned for a 400.
    pub fn parse(
        arguments: &serde_json::Map<String, Value>,
    ) -> Result<ScriptArguments, Vec<String>> {
        let mut errors = Vec::new();
        let body = match arguments.get("ScriptBody") {
            Some(Value::String(body)) if !body.trim().is_empty() => body.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                errors.push("Arguments.ScriptBody is required: the script to run.".to_string());
                String::new()
            }
            Some(_) => {
                errors.push("Arguments.ScriptBody must be a string.".to_string());
                String::new()
            }
        };
        let syntax = match arguments.get("Syntax") {
            None | Some(Value::Null) => ScriptSyntax::Bash,
            Some(Value::String(text)) => ScriptSyntax::parse(text).unwrap_or_else(|| {
                errors.push(format!(
                    "Arguments.Syntax must be Bash, Python or PowerShell, got '{text}'."
                ));
                ScriptSyntax::Bash
            }),
            Some(_) => {
                errors.push("Arguments.Syntax must be a string.".to_string());
                ScriptSyntax::Bash
            }
        };
        let pool_ids = arguments
            .get("WorkerPoolIds")
            .map(string_list)
            .unwrap_or_default();
        let machine_ids = arguments
            .get("MachineIds")
            .map(string_list)
            .unwrap_or_default();
        let target = match arguments.get("TargetType") {
            None | Some(Value::Null) => {
                if !machine_ids.is_empty() {
                    ScriptTarget::Workers
                } else {
                    ScriptTarget::WorkerPools
                }
            }
            Some(Value::String(text)) => ScriptTarget::parse(text).unwrap_or_else(|| {
                errors.push(format!(
                    "Arguments.TargetType must be OctopusServer, WorkerPools or Workers, got '{text}'."
                ));
                ScriptTarget::OctopusServer
            }),
            Some(_) => {
                errors.push("Arguments.TargetType must be a string.".to_string());
                ScriptTarget::OctopusServer
            }
        };
        if target == ScriptTarget::Workers && machine_ids.is_empty() {
            errors.push(
                "Arguments.MachineIds must name at least one worker when TargetType is Workers."
                    .into(),
            );
        }
        let timeout = match arguments.get("Timeout") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(secs) if (1..=i32::MAX as u64).contains(&secs) => {
                    Some(Duration::from_secs(secs))
                }
                _ => {
                    errors.push(format!(
                        "Arguments.Timeout must be a whole number of seconds from 1 to {}, or a TimeSpan such as 00:10:00; got {n}.",
                        i32::MAX
                    ));
                    None
                }
            },
            Some(Value::String(text)) => match crate::time::parse_timespan(text) {
                Some(d) if !d.is_zero() => Some(d),
                _ => {
                    errors.push(format!(
                        "Arguments.Timeout must be a TimeSpan such as 00:10:00, got '{text}'."
                    ));
                    None
                }
            },
            Some(_) => {
                errors.push("Arguments.Timeout must be a TimeSpan such as 00:10:00.".into());
                None
            }
        };
        let exclusive = match exclusive_argument(arguments) {
            Ok(exclusive) => exclusive,
            Err(error) => {
                errors.push(error);
                false
            }
        };
        if errors.is_empty() {
            Ok(ScriptArguments {
                exclusive,
                body,
                syntax,
                target,
                pool_ids,
                machine_ids,
                timeout,
            })
        } else {
            Err(errors)
        }
    }
}

/// `Arguments.OctopusBypassDeploymentMutex`: False (a string or a boolean) makes the task's worker
/// lease exclusive; True or absent shares the worker.
pub fn exclusive_argument(arguments: &serde_json::Map<String, Value>) -> Result<bool, String> {
    let value = arguments
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(crate::runbooks::BYPASS_MUTEX))
        .map(|(_, v)| v);
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(bypass)) => Ok(!bypass),
        Some(Value::String(text)) => crate::runbooks::parse_bool(text)
            .map(|bypass| !bypass)
            .ok_or_else(|| {
                format!(
                    "Arguments.OctopusBypassDeploymentMutex must be True or False, got '{text}'."
                )
            }),
        Some(other) => Err(format!(
            "Arguments.OctopusBypassDeploymentMutex must be True or False, got {other}."
        )),
    }
}

/// The settings of a `Health` task, read from its `Arguments` (Octopus's names).
pub struct HealthArguments {
    pub pool_id: Option<String>,
    pub machine_ids: Vec<String>,
    pub machine_timeout: Duration,
}

impl HealthArguments {
    pub fn parse(arguments: &Map<String, Value>) -> Result<HealthArguments, Vec<String>> {
        let mut errors = Vec::new();
        // Octopus spells it WorkerpoolId; a body's WorkerPoolId (any case) reads the same.
        let given = arguments
            .get("WorkerpoolId")
            .filter(|v| !v.is_null())
            .or_else(|| arguments.get("WorkerPoolId"));
        let pool_id = match given {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if id.trim().is_empty() => None,
            Some(Value::String(id)) => Some(id.trim().to_string()),
            Some(_) => {
                errors.push("Arguments.WorkerpoolId must be a worker pool id.".to_string());
                None
            }
        };
        let machine_ids = match arguments.get("MachineIds") {
            None | Some(Value::Null) => Vec::new(),
            Some(value @ (Value::Array(_) | Value::String(_))) => string_list(value),
            Some(_) => {
                errors.push("Arguments.MachineIds must be a list of worker ids.".to_string());
                Vec::new()
            }
        };
        let machine_timeout = match arguments.get("MachineTimeout") {
            None | Some(Value::Null) => DEFAULT_MACHINE_TIMEOUT,
            Some(Value::String(text)) => match parse_timespan(text) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    errors.push(format!(
                        "Arguments.MachineTimeout must be a TimeSpan longer than zero, such as 00:00:30, got '{text}'."
                    ));
                    DEFAULT_MACHINE_TIMEOUT
                }
            },
            Some(_) => {
                errors.push("Arguments.MachineTimeout must be a TimeSpan string.".to_string());
                DEFAULT_MACHINE_TIMEOUT
            }
        };
        if errors.is_empty() {
            Ok(HealthArguments {
                pool_id,
                machine_ids,
                machine_timeout,
            })
        } else {
            Err(errors)
        }
    }
}
