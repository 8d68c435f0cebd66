//! Runbooks: a process of ordered steps in Octopus's shapes (`Steps[].Actions[]` with `Properties`),
//! their variables, and runs. `ActionPlan` is what a step means once its properties are read.

use crate::ScriptSyntax;
use crate::time::{Timestamp, date_format};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const SCRIPT_ACTION: &str = "Octopus.Script";
pub const RUN_RUNBOOK_ACTION: &str = "Muster.RunRunbook";

pub const PROP_SCRIPT_BODY: &str = "Octopus.Action.Script.ScriptBody";
pub const PROP_SYNTAX: &str = "Octopus.Action.Script.Syntax";
pub const PROP_SCRIPT_SOURCE: &str = "Octopus.Action.Script.ScriptSource";
pub const PROP_MAX_PARALLELISM: &str = "Octopus.Action.MaxParallelism";
/// `BuiltInWorker`, `WorkerPool` (the default) or `EachWorkerInPool`.
pub const PROP_LOCATION: &str = "Muster.Action.ExecutionLocation";
pub const PROP_CHILD_RUNBOOK: &str = "Muster.Action.RunRunbook.RunbookId";
pub const PROP_CHILD_WAIT: &str = "Muster.Action.RunRunbook.WaitForCompletion";
/// The variable that makes a run's worker leases exclusive when it is False.
pub const BYPASS_MUTEX: &str = "OctopusBypassDeploymentMutex";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Runbook {
    pub id: String,
    pub space_id: String,
    pub name: String,
    pub slug: String,
    pub description: Option<String>,
    /// `RunbookProcess-{Id}`, where the steps are also served.
    pub runbook_process_id: String,
    /// The process's steps (Muster keeps them with the runbook: one document, one write).
    pub steps: Vec<Step>,
    pub variables: Vec<Variable>,
    #[serde(with = "date_format::option")]
    pub last_modified_on: Option<Timestamp>,
    pub last_modified_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Step {
    pub id: String,
    pub name: String,
    /// `Success` (run only when every step before succeeded), `Failure` or `Always`.
    pub condition: String,
    pub start_trigger: String,
    pub package_requirement: String,
    pub properties: Map<String, Value>,
    pub actions: Vec<Action>,
}

impl Default for Step {
    fn default() -> Self {
        Step {
            id: String::new(),
            name: String::new(),
            condition: "Success".into(),
            start_trigger: "StartAfterPrevious".into(),
            package_requirement: "LetOctopusDecide".into(),
            properties: Map::new(),
            actions: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Action {
    pub id: String,
    pub name: String,
    pub action_type: String,
    pub is_disabled: bool,
    pub worker_pool_id: Option<String>,
    pub properties: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Variable {
    pub id: String,
    pub name: String,
    /// Never shown for a sensitive variable (null); a PUT with null keeps the stored value.
    pub value: Option<String>,
    pub description: Option<String>,
    /// `String` or `Sensitive`.
    #[serde(rename = "Type")]
    pub kind: String,
    pub is_sensitive: bool,
    pub scope: Map<String, Value>,
    /// Set when a run may give the variable a value (Octopus's prompted variable); a run's
    /// `FormValues` may set no other.
    pub prompt: Option<VariablePrompt>,
}

/// Octopus's `Prompt` of a variable: how a person running the runbook is asked for its value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VariablePrompt {
    pub label: Option<String>,
    pub description: Option<String>,
    /// A run must give it a value, unless the variable has one of its own.
    pub required: bool,
    pub display_settings: Map<String, Value>,
}

/// A run of a runbook: what was run (the steps and variables as they were when it was queued), its
/// task, and each step's outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RunbookRun {
    pub id: String,
    pub space_id: String,
    pub runbook_id: String,
    pub task_id: String,
    pub name: String,
    pub comments: Option<String>,
    /// Variable values given for this run, by name; they override the runbook's.
    pub form_values: Map<String, Value>,
    /// The run that started this one through a "Run a runbook" step.
    pub parent_task_id: Option<String>,
    /// How many runs deep this one is nested (0 for a run started by a user).
    pub depth: u32,
    pub steps: Vec<Step>,
    pub variables: Vec<Variable>,
    pub step_results: Vec<StepResult>,
    pub failure_encountered: bool,
    #[serde(with = "date_format::option")]
    pub created: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StepResult {
    pub name: String,
    /// An ActivityStatus: Pending, Running, Success, Failed, Skipped, Canceled.
    pub status: String,
    #[serde(with = "date_format::option")]
    pub started: Option<Timestamp>,
    #[serde(with = "date_format::option")]
    pub ended: Option<Timestamp>,
    /// The workers it ran on, or the child task it started.
    pub detail: Option<String>,
}

/// Where a script step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    BuiltIn,
    /// One worker of the pool (None: the space's default pool), leased for the whole run.
    Pool(Option<String>),
    /// Every worker of the pool, at most MaxParallelism at once.
    EachWorker(Option<String>),
}

/// What a step does, once its properties are read.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionPlan {
    Script {
        body: String,
        syntax: ScriptSyntax,
        location: Location,
        max_parallelism: Option<usize>,
    },
    RunRunbook {
        /// An id, or a name in the same space.
        runbook: String,
        wait: bool,
    },
}

/// A property's text: Octopus sends every property as a string; a number or a boolean is taken too.
pub fn property(properties: &Map<String, Value>, name: &str) -> Option<String> {
    let (_, value) = properties
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))?;
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Bool(b) => Some(if *b { "True".into() } else { "False".into() }),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// `Octopus.Action.MaxParallelism`: a whole number from 1.
pub fn parse_parallelism(text: &str) -> Option<usize> {
    text.trim().parse::<usize>().ok().filter(|n| *n >= 1)
}

impl Step {
    /// Reads what the step does; every problem is returned, each naming the step.
    pub fn plan(&self) -> Result<ActionPlan, Vec<String>> {
        let who = format!("Step '{}'", self.name);
        let action = match self.actions.as_slice() {
            [action] => action,
            [] => return Err(vec![format!("{who} has no action.")]),
            _ => {
                return Err(vec![format!(
                    "{who} has {} actions; Muster runs one action per step (make each its own step).",
                    self.actions.len()
                )]);
            }
        };
        let mut errors = Vec::new();
        let props = &action.properties;
        for (key, value) in props {
            // Strings, as Octopus sends them; a boolean or a number where one is meant.
            let fits = match value {
                Value::String(_) | Value::Null => true,
                Value::Bool(_) | Value::Number(_) => !key.eq_ignore_ascii_case(PROP_SCRIPT_BODY),
                _ => false,
            };
            if !fits {
                errors.push(format!(
                    "{who}: property {key} must be a string, got {}.",
                    match value {
                        Value::Number(_) => "a number",
                        Value::Bool(_) => "a boolean",
                        Value::Array(_) => "an array",
                        _ => "an object",
                    }
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let script = action.action_type.eq_ignore_ascii_case(SCRIPT_ACTION);
        let foreign: &[&str] = if script {
            &[PROP_CHILD_RUNBOOK, PROP_CHILD_WAIT]
        } else {
            &[
                PROP_SCRIPT_BODY,
                PROP_SYNTAX,
                PROP_LOCATION,
                PROP_MAX_PARALLELISM,
            ]
        };
        for key in props.keys() {
            if foreign.iter().any(|f| f.eq_ignore_ascii_case(key)) {
                errors.push(format!(
                    "{who}: {key} does not apply to a {} action.",
                    action.action_type
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if script {
            let body = property(props, PROP_SCRIPT_BODY).unwrap_or_default();
            if body.trim().is_empty() {
                errors.push(format!(
                    "{who} needs {PROP_SCRIPT_BODY}: the script to run."
                ));
            }
            if let Some(source) = property(props, PROP_SCRIPT_SOURCE)
                && !source.eq_ignore_ascii_case("Inline")
            {
                errors.push(format!(
                    "{who}: {PROP_SCRIPT_SOURCE} must be Inline, got '{source}'."
                ));
            }
            let syntax = match property(props, PROP_SYNTAX) {
                None => ScriptSyntax::Bash,
                Some(text) => ScriptSyntax::parse(&text).unwrap_or_else(|| {
                    errors.push(format!(
                        "{who}: {PROP_SYNTAX} must be Bash, Python or PowerShell, got '{text}'."
                    ));
                    ScriptSyntax::Bash
                }),
            };
            let pool = action
                .worker_pool_id
                .clone()
                .filter(|p| !p.trim().is_empty());
            let location = match property(props, PROP_LOCATION) {
                None => Location::Pool(pool),
                Some(text) => match text.trim().to_ascii_lowercase().as_str() {
                    "workerpool" => Location::Pool(pool),
                    "eachworkerinpool" => Location::EachWorker(pool),
                    "builtinworker" => {
                        if pool.is_some() {
                            errors.push(format!(
                                "{who} runs on the built-in worker, so it must not name a WorkerPoolId."
                            ));
                        }
                        Location::BuiltIn
                    }
                    _ => {
                        errors.push(format!(
                            "{who}: {PROP_LOCATION} must be WorkerPool, EachWorkerInPool or BuiltInWorker, got '{text}'."
                        ));
                        Location::Pool(pool)
                    }
                },
            };
            let max_parallelism = match property(props, PROP_MAX_PARALLELISM) {
                None => None,
                Some(text) => match parse_parallelism(&text) {
                    Some(n) => Some(n),
                    None => {
                        errors.push(format!(
                            "{who}: {PROP_MAX_PARALLELISM} must be a whole number of 1 or more, got '{text}'."
                        ));
                        None
                    }
                },
            };
            if errors.is_empty() {
                return Ok(ActionPlan::Script {
                    body,
                    syntax,
                    location,
                    max_parallelism,
                });
            }
        } else if action.action_type.eq_ignore_ascii_case(RUN_RUNBOOK_ACTION) {
            let runbook = property(props, PROP_CHILD_RUNBOOK).unwrap_or_default();
            if runbook.trim().is_empty() {
                errors.push(format!(
                    "{who} needs {PROP_CHILD_RUNBOOK}: the runbook to run (its id or name)."
                ));
            }
            let wait = match property(props, PROP_CHILD_WAIT) {
                None => true,
                Some(text) => parse_bool(&text).unwrap_or_else(|| {
                    errors.push(format!(
                        "{who}: {PROP_CHILD_WAIT} must be True or False, got '{text}'."
                    ));
                    true
                }),
            };
            if errors.is_empty() {
                return Ok(ActionPlan::RunRunbook {
                    runbook: runbook.trim().to_string(),
                    wait,
                });
            }
        } else {
            errors.push(format!(
                "{who}: ActionType must be {SCRIPT_ACTION} or {RUN_RUNBOOK_ACTION}, got '{}'.",
                action.action_type
            ));
        }
        Err(errors)
    }

    /// Whether the step runs after the steps before it: `Success` only when all succeeded,
    /// `Failure` only when one failed, `Always` whatever happened.
    pub fn runs_after(&self, failed: bool) -> bool {
        match self.condition.to_ascii_lowercase().as_str() {
            "always" => true,
            "failure" => failed,
            _ => !failed,
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.actions.iter().all(|a| a.is_disabled)
    }
}

pub const CONDITIONS: &[&str] = &["Success", "Failure", "Always"];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(value: Value) -> Step {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_script_step_reads_its_properties() {
        let s = step(
            json!({"Name": "Make", "Actions": [{"ActionType": "Octopus.Script", "WorkerPoolId": "WorkerPools-2",
            "Properties": {"Octopus.Action.Script.ScriptBody": "echo hi", "Octopus.Action.Script.Syntax": "Python",
            "Muster.Action.ExecutionLocation": "EachWorkerInPool", "Octopus.Action.MaxParallelism": "2"}}]}),
        );
        assert_eq!(
            s.plan(),
            Ok(ActionPlan::Script {
                body: "echo hi".into(),
                syntax: ScriptSyntax::Python,
                location: Location::EachWorker(Some("WorkerPools-2".into())),
                max_parallelism: Some(2),
            })
        );
        assert_eq!(s.condition, "Success");
    }

    #[test]
    fn bad_steps_say_what_is_wrong() {
        let s = step(
            json!({"Name": "X", "Actions": [{"ActionType": "Octopus.Script",
            "Properties": {"Octopus.Action.MaxParallelism": "0", "Muster.Action.ExecutionLocation": "Moon"}}]}),
        );
        assert_eq!(s.plan().unwrap_err().len(), 3);
        let s = step(json!({"Name": "Y", "Actions": [{"ActionType": "Octopus.Email"}]}));
        assert!(s.plan().unwrap_err()[0].contains("ActionType"));
        let s = step(
            json!({"Name": "Z", "Actions": [{"ActionType": "Muster.RunRunbook",
            "Properties": {"Muster.Action.RunRunbook.RunbookId": "Child", "Muster.Action.RunRunbook.WaitForCompletion": false}}]}),
        );
        assert_eq!(
            s.plan(),
            Ok(ActionPlan::RunRunbook {
                runbook: "Child".into(),
                wait: false
            })
        );
    }
}
