//! Runbook runs: a `RunbookRun` task walks its run's steps in order on the workers it leased when it
//! started, substitutes variables, collects output variables, masks sensitive values in every line,
//! and runs child runbooks, waiting for them while it lends them its leases.

use crate::kinds::{self, Invocation, Line, Stop, WorkerKind};
use crate::state::App;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use muster_core::resources::{Space, Task, Worker, WorkerPool};
use muster_core::runbooks::{
    ActionPlan, BYPASS_MUTEX, Location, PROP_MAX_PARALLELISM, Runbook, RunbookRun, StepResult,
};
use muster_core::time::now;
use muster_core::variables::{self, Masker, VariableSet};
use muster_core::{IdKind, LogCategory, ScriptSyntax, TaskState};
use muster_scheduler::{BUILTIN_AGENT, DEFAULT_MAX_PARALLELISM, FanOut, Lease};
use serde_json::{Map, Value, json};
use std::sync::Mutex;
use std::time::Duration;

/// The most `VARIABLES_ENV` may hold: Linux refuses an environment string over 128 KiB.
const MAX_VARIABLES_ENV: usize = 120 * 1024;

/// How deep runs may nest through "Run a runbook" steps: deeper is a loop, not a design.
pub const MAX_DEPTH: u32 = 10;

/// A run's variables: the runbook's as they were when the run was queued, then the run's
/// `FormValues` over them. (name, value, sensitive)
pub fn run_variables(run: &RunbookRun) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = run
        .variables
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                v.value.clone().unwrap_or_default(),
                v.is_sensitive,
            )
        })
        .collect();
    for (name, value) in &run.form_values {
        let value = match value {
            Value::String(text) => text.clone(),
            Value::Null => continue,
            other => other.to_string(),
        };
        match out
            .iter_mut()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        {
            Some(existing) => existing.1 = value,
            None => out.push((name.clone(), value, false)),
        }
    }
    out
}

/// `OctopusBypassDeploymentMutex` False: the run's worker leases are exclusive.
pub fn is_exclusive(variables: &[(String, String, bool)]) -> bool {
    variables
        .iter()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(BYPASS_MUTEX))
        .and_then(|(_, value, _)| muster_core::runbooks::parse_bool(value))
        == Some(false)
}

/// Which lease serves a step: one per location (a pool's one worker, a pool's every worker, or the
/// built-in worker). The default pool is named by its id, so both spellings share a lease.
pub fn location_key(location: &Location, default_pool: Option<&str>) -> String {
    let pool = |p: &Option<String>| {
        p.as_deref()
            .or(default_pool)
            .unwrap_or("default")
            .to_ascii_lowercase()
    };
    match location {
        Location::BuiltIn => kinds::builtin::BUILTIN_KEY.into(),
        Location::Pool(p) => format!("pool:{}", pool(p)),
        Location::EachWorker(p) => format!("each:{}", pool(p)),
    }
}

/// The parent a run is created for by a caller that sent `X-Muster-Task-Token`: the running task
/// the token was given to, in the same space. Its child, as a native "Run a runbook" step's that
/// waits: the parent lends it its leases and task-cap slot, and a cycle of waits is named.
pub async fn token_origin(app: &App, space_id: &str, token: &str) -> Result<Origin, String> {
    let invalid = || {
        "The task token (X-Muster-Task-Token) is not valid: its task has ended, or this server did not give it.".to_string()
    };
    let task_id = app.store.task_of_token(token.trim()).ok_or_else(invalid)?;
    let parent = app
        .store
        .get_task(&task_id)
        .await
        .map_err(|e| format!("Cannot read the task of the task token: {e}"))?
        .ok_or_else(invalid)?;
    if parent.state.is_completed() {
        return Err(invalid());
    }
    if !parent.space_id.eq_ignore_ascii_case(space_id) {
        return Err(format!(
            "The task token belongs to a task of space {}; a task's child runs in its space.",
            parent.space_id
        ));
    }
    let depth = match run_of(app, &parent).await {
        Ok(Some(run)) => run.depth + 1,
        _ => 1,
    };
    if depth > MAX_DEPTH {
        return Err(format!(
            "Runbook runs nest at most {MAX_DEPTH} deep; this one would be {depth} deep."
        ));
    }
    Ok(Origin {
        parent_task_id: parent.id,
        depth,
        wait: true,
    })
}

/// A run started by another run's step.
pub struct Origin {
    pub parent_task_id: String,
    pub depth: u32,
    /// The parent waits for it, and lends it its leases and task-cap slot meanwhile.
    pub wait: bool,
}

/// Queues a run of a runbook: its record (with the runbook's steps and variables frozen) and its
/// task are committed together.
pub async fn queue_run(
    app: &App,
    runbook: &Runbook,
    form_values: Map<String, Value>,
    comments: Option<String>,
    origin: Option<Origin>,
) -> anyhow::Result<(RunbookRun, Task)> {
    let task_id = app.store.next_id(IdKind::ServerTask).await?;
    let run_id = app.store.next_id(IdKind::RunbookRun).await?;
    let at = now();
    let mut arguments = Map::new();
    arguments.insert("RunbookRunId".into(), json!(run_id));
    arguments.insert("RunbookId".into(), json!(runbook.id));
    if let Some(origin) = &origin {
        arguments.insert("ParentTaskId".into(), json!(origin.parent_task_id));
        arguments.insert("ParentWaits".into(), json!(origin.wait));
    }
    let run = RunbookRun {
        id: run_id,
        space_id: runbook.space_id.clone(),
        runbook_id: runbook.id.clone(),
        task_id: task_id.clone(),
        name: runbook.name.clone(),
        comments,
        form_values,
        parent_task_id: origin.as_ref().map(|o| o.parent_task_id.clone()),
        depth: origin.as_ref().map_or(0, |o| o.depth),
        steps: runbook.steps.clone(),
        variables: runbook.variables.clone(),
        step_results: runbook
            .steps
            .iter()
            .map(|s| StepResult {
                name: s.name.clone(),
                status: "Pending".into(),
                ..StepResult::default()
            })
            .collect(),
        failure_encountered: false,
        created: Some(at),
    };
    let task = Task {
        id: task_id,
        space_id: runbook.space_id.clone(),
        name: muster_core::tasks::RUNBOOK_RUN.into(),
        description: format!("Run runbook: {}", runbook.name),
        arguments,
        state: TaskState::Queued,
        error_message: None,
        queue_time: at,
        queue_time_expiry: None,
        start_time: None,
        completed_time: None,
        last_updated_time: at,
        server_node: None,
        has_warnings_or_errors: false,
        queue_reason: None,
        worker_name: None,
        worker_id: None,
    };
    if let Some(origin) = origin.as_ref().filter(|o| o.wait) {
        app.ledger()
            .wait_for(&origin.parent_task_id, Some(&task.id));
    }
    if let Err(error) = app
        .store
        .insert_task_with(&task, vec![muster_store::Row::of(&run)])
        .await
    {
        if let Some(origin) = &origin {
            app.ledger().wait_for(&origin.parent_task_id, None);
        }
        return Err(error.into());
    }
    app.signals.dispatch.notify_one();
    Ok((run, task))
}

/// What the steps of one run share: the values for `#{…}` (with the output variables as steps
/// set them) and the sensitive values to mask.
/// Where a step runs: a worker's kind and its id.
type Place = (std::sync::Arc<dyn WorkerKind>, String);

struct Shared {
    values: VariableSet,
    masker: Masker,
    stderr_seen: bool,
}

struct Driver<'a> {
    app: &'a App,
    task: &'a Task,
    stop: &'a Stop,
    shared: Mutex<Shared>,
}

impl Driver<'_> {
    fn mask(&self, text: &str) -> String {
        self.shared.lock().expect("run lock").masker.mask(text)
    }

    fn log(&self, step: i64, category: LogCategory, text: &str) {
        let text = self.mask(text);
        if step == 0 {
            self.app.logs.append(&self.task.id, category, text);
        } else {
            self.app
                .logs
                .append_step(&self.task.id, step, category, text);
        }
    }
}

/// The run record of a RunbookRun task.
pub async fn run_of(app: &App, task: &Task) -> anyhow::Result<Option<RunbookRun>> {
    Ok(app
        .store
        .find_by_ext::<RunbookRun>(&task.id)
        .await?
        .into_iter()
        .next())
}

/// Runs a RunbookRun task to its end and says how it ended (the dispatcher concludes it).
pub async fn drive(
    app: &App,
    task: Task,
    stop: Stop,
    leases: Vec<Lease>,
) -> (Task, TaskState, String) {
    let driver = Driver {
        app,
        task: &task,
        stop: &stop,
        shared: Mutex::new(Shared {
            values: VariableSet::default(),
            masker: Masker::default(),
            stderr_seen: false,
        }),
    };
    let (state, message) = match execute(&driver, &leases).await {
        Ok(end) => end,
        Err(error) => (
            TaskState::Failed,
            format!("The run could not go on: {error:#}"),
        ),
    };
    let message = driver.mask(&message);
    let stderr_seen = driver.shared.lock().expect("run lock").stderr_seen;
    let mut task = task.clone();
    task.has_warnings_or_errors |= stderr_seen;
    (task, state, message)
}

async fn execute(driver: &Driver<'_>, leases: &[Lease]) -> anyhow::Result<(TaskState, String)> {
    let app = driver.app;
    let task = driver.task;
    let Some(mut run) = run_of(app, task).await? else {
        return Ok((
            TaskState::Failed,
            "This runbook run's record no longer exists.".into(),
        ));
    };
    let space = app.store.get::<Space>(&task.space_id).await?;
    let pools: Vec<WorkerPool> = app.store.list(&task.space_id).await?;
    let default_pool = pools.iter().find(|p| p.is_default).map(|p| p.id.clone());
    {
        let mut shared = driver.shared.lock().expect("run lock");
        shared.masker.add(&app.store.task_token(&task.id));
        for (name, value, sensitive) in run_variables(&run) {
            if sensitive {
                shared.masker.add(&value);
            }
            shared.values.set(&name, value);
        }
        let system = [
            ("Octopus.Task.Id", task.id.clone()),
            ("Octopus.Space.Id", task.space_id.clone()),
            (
                "Octopus.Space.Name",
                space.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            ),
            ("Octopus.Runbook.Id", run.runbook_id.clone()),
            ("Octopus.Runbook.Name", run.name.clone()),
            ("Octopus.RunbookRun.Id", run.id.clone()),
            ("Octopus.Web.ServerUri", String::new()),
        ];
        for (name, value) in system {
            shared.values.set(name, value);
        }
    }
    let workers: Vec<String> = leases.iter().map(|l| l.worker_name.clone()).collect();
    driver.log(
        0,
        LogCategory::Info,
        &format!(
            "Running runbook '{}' ({} step(s)){}",
            run.name,
            run.steps.len(),
            if workers.is_empty() {
                String::new()
            } else {
                format!(" on {}", dedup(workers).join(", "))
            }
        ),
    );
    let mut failed = false;
    let mut canceled = false;
    let mut first_error: Option<String> = None;
    for index in 0..run.steps.len() {
        let step = run.steps[index].clone();
        let n = index as i64 + 1;
        if driver.stop.cancel.is_cancelled() {
            canceled = true;
        }
        if canceled || step.is_disabled() || !step.runs_after(failed) {
            let why = if canceled { "Canceled" } else { "Skipped" };
            run.step_results[index].status = why.into();
            driver.log(
                n,
                LogCategory::Verbose,
                &format!(
                    "Step {n}: {} was {}",
                    step.name,
                    if canceled {
                        "not run: the run was canceled".to_string()
                    } else if step.is_disabled() {
                        "skipped: it is disabled".to_string()
                    } else {
                        format!("skipped: its condition is {}", step.condition)
                    }
                ),
            );
            continue;
        }
        run.step_results[index].status = "Running".into();
        run.step_results[index].started = Some(now());
        app.store.put(&run).await?;
        driver.log(n, LogCategory::Info, &format!("Step {n}: {}", step.name));
        let outcome = match step.plan() {
            Err(errors) => Err((TaskState::Failed, errors.join(" "))),
            Ok(ActionPlan::Script {
                body,
                syntax,
                location,
                max_parallelism,
            }) => {
                let key = location_key(&location, default_pool.as_deref());
                let mine: Vec<&Lease> = leases.iter().filter(|l| l.key == key).collect();
                let each = matches!(location, Location::EachWorker(_));
                let max = max_parallelism
                    .or_else(|| {
                        let shared = driver.shared.lock().expect("run lock");
                        shared
                            .values
                            .get(PROP_MAX_PARALLELISM)
                            .and_then(muster_core::runbooks::parse_parallelism)
                    })
                    .unwrap_or(DEFAULT_MAX_PARALLELISM);
                run_script_step(driver, n, &step.name, &body, syntax, &mine, each, max).await
            }
            Ok(ActionPlan::RunRunbook { runbook, wait }) => {
                run_child(driver, &run, n, &runbook, wait).await
            }
        };
        let result = &mut run.step_results[index];
        result.ended = Some(now());
        match outcome {
            Ok(detail) => {
                result.status = "Success".into();
                result.detail = detail;
            }
            Err((state, message)) => {
                result.status = if state == TaskState::Canceled {
                    "Canceled".into()
                } else {
                    "Failed".into()
                };
                canceled |= state == TaskState::Canceled;
                failed = true;
                if state != TaskState::Canceled {
                    driver.log(n, LogCategory::Error, &message);
                }
                first_error.get_or_insert(format!("Step '{}' failed: {message}", step.name));
            }
        }
        app.store.put(&run).await?;
    }
    run.failure_encountered = failed;
    app.store.put(&run).await?;
    Ok(if canceled && driver.stop.is_shutdown() {
        (
            TaskState::Failed,
            "The Muster server shut down while this runbook run was executing; its scripts were stopped."
                .into(),
        )
    } else if canceled {
        (TaskState::Canceled, "The task was canceled.".into())
    } else if let Some(error) = first_error {
        (TaskState::Failed, error)
    } else {
        (TaskState::Success, String::new())
    })
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

type StepOutcome = Result<Option<String>, (TaskState, String)>;

/// Runs a script step on its leased worker, or on each of them, at most `max` at once.
#[allow(clippy::too_many_arguments)]
async fn run_script_step(
    driver: &Driver<'_>,
    n: i64,
    step_name: &str,
    body: &str,
    syntax: ScriptSyntax,
    leases: &[&Lease],
    each: bool,
    max: usize,
) -> StepOutcome {
    if leases.is_empty() {
        return Err((
            TaskState::Failed,
            "No worker was leased for this step's location (the runbook changed after the run was planned)."
                .into(),
        ));
    }
    // Each leased worker: its kind, its id (the ticket's suffix) and its name.
    let mut places: Vec<(Place, String)> = Vec::new();
    for lease in leases {
        // A run's built-in worker is its node's (runs are driven by the dispatching node).
        let place = if muster_scheduler::builtin_node(&lease.agent).is_some() {
            (kinds::of(None), BUILTIN_AGENT.to_string())
        } else {
            match driver.app.store.get::<Worker>(&lease.worker_id).await {
                Ok(Some(worker)) => (kinds::of(Some(&worker)), worker.id),
                Ok(None) => {
                    return Err((
                        TaskState::Failed,
                        format!("Worker {} was deleted during the run.", lease.worker_name),
                    ));
                }
                Err(error) => return Err((TaskState::Failed, error.to_string())),
            }
        };
        places.push((place, lease.worker_name.clone()));
    }
    let fan = each && places.len() > 1;
    if each {
        driver.log(
            n,
            LogCategory::Verbose,
            &format!(
                "Running on each of {} worker(s), at most {max} at once",
                places.len()
            ),
        );
    }
    let mut fan_out = FanOut::new(if each { places.len() } else { 1 }, max);
    let mut running = FuturesUnordered::new();
    let mut failures: Vec<String> = Vec::new();
    let mut worst = TaskState::Success;
    loop {
        if !driver.stop.cancel.is_cancelled() {
            while let Some(i) = fan_out.start_next() {
                let (place, name) = places[i].clone();
                running.push(invoke(driver, n, step_name, body, syntax, place, name, fan));
            }
        }
        let Some((name, state, message)) = running.next().await else {
            break;
        };
        fan_out.done();
        if state != TaskState::Success {
            if worst == TaskState::Success || state == TaskState::Canceled {
                worst = state;
            }
            failures.push(if fan {
                format!("on {name}: {message}")
            } else {
                message
            });
        }
    }
    if driver.stop.cancel.is_cancelled() && worst == TaskState::Success && !fan_out.finished() {
        return Err((TaskState::Canceled, "The task was canceled.".into()));
    }
    let detail = Some(dedup(places.iter().map(|(_, n)| n.clone()).collect()).join(", "));
    if failures.is_empty() {
        Ok(detail)
    } else {
        Err((worst, failures.join(" ")))
    }
}

/// One script on one worker: substituted, given the output-variable helpers, and its lines read
/// for output variables and masked.
#[allow(clippy::too_many_arguments)]
async fn invoke(
    driver: &Driver<'_>,
    n: i64,
    step_name: &str,
    body: &str,
    syntax: ScriptSyntax,
    place: Place,
    worker_name: String,
    fan: bool,
) -> (String, TaskState, String) {
    let (kind, worker_id) = place;
    let (script, values_env) = {
        let shared = driver.shared.lock().expect("run lock");
        let mut values = shared.values.clone();
        values.set("Octopus.Action.Name", step_name);
        values.set("Octopus.Step.Name", step_name);
        values.set("Octopus.Worker.Name", worker_name.clone());
        values.set("Octopus.Worker.Id", worker_id.clone());
        let script = format!("{}{}", variables::prelude(syntax), values.substitute(body));
        (script, values.to_env())
    };
    let mut env = vec![
        ("MUSTER_TASK_ID".into(), driver.task.id.clone()),
        ("MUSTER_SPACE_ID".into(), driver.task.space_id.clone()),
        (
            "MUSTER_TASK_TOKEN".into(),
            driver.app.store.task_token(&driver.task.id),
        ),
    ];
    // The helpers read the values from the environment, where one string may hold 128 KiB.
    if values_env.len() <= MAX_VARIABLES_ENV {
        env.push((variables::VARIABLES_ENV.into(), values_env));
    } else {
        driver.log(
            n,
            LogCategory::Warning,
            &format!(
                "The run's variables take {} KiB, more than the {} KiB get_octopusvariable can carry: it reads nothing in this step.",
                values_env.len() / 1024,
                MAX_VARIABLES_ENV / 1024
            ),
        );
    }
    let ticket = format!("{}/{n}/{worker_id}", driver.task.id);
    let invocation = Invocation {
        ticket: ticket.clone(),
        syntax,
        body: script,
        env,
        timeout: None,
        resumable: false,
    };
    let prefix = if fan {
        format!("{worker_name}: ")
    } else {
        String::new()
    };
    let mut announced = Vec::new();
    let mut sink = |line: Line| {
        if let Some(message) = variables::parse_create_artifact(&line.text) {
            let (category, text) = crate::artifacts::announcement(&message);
            if message.is_err() {
                driver.shared.lock().expect("run lock").stderr_seen = true;
            }
            driver.log(n, category, &format!("{prefix}{text}"));
            announced.extend(message.ok());
            return;
        }
        if let Some(output) = variables::parse_set_variable(&line.text) {
            let text = {
                let mut shared = driver.shared.lock().expect("run lock");
                if output.sensitive {
                    shared.masker.add(&output.value);
                }
                let plain = format!("Octopus.Action[{step_name}].Output.{}", output.name);
                let per_worker = format!(
                    "Octopus.Action[{step_name}].Output[{worker_name}].{}",
                    output.name
                );
                shared.values.set(&plain, output.value.clone());
                shared.values.set(&per_worker, output.value);
                format!("{prefix}Output variable {plain} was set")
            };
            driver.log(n, LogCategory::Verbose, &text);
            return;
        }
        let category = if line.error {
            driver.shared.lock().expect("run lock").stderr_seen = true;
            LogCategory::Error
        } else {
            LogCategory::Info
        };
        driver.log(n, category, &format!("{prefix}{}", line.text));
    };
    let (state, message) = match kind
        .run(driver.app, invocation, driver.stop, &mut sink, None)
        .await
    {
        Some(end) => end,
        None => (
            TaskState::Failed,
            "The Muster server shut down while this step was executing.".into(),
        ),
    };
    // A step's artifacts belong to the run's task; their names are masked like its lines.
    if !announced.is_empty() && !driver.stop.is_shutdown() {
        let mask = |text: &str| driver.mask(text);
        let files = crate::artifacts::Collection {
            task_id: driver.task.id.clone(),
            space_id: driver.task.space_id.clone(),
            step: n,
            source: worker_name.clone(),
            mask: &mask,
            announced,
            warned: Default::default(),
        };
        kind.collect(driver.app, &ticket, &files).await;
        if files.warned() {
            driver.shared.lock().expect("run lock").stderr_seen = true;
        }
    }
    kind.release(driver.app, &ticket);
    (worker_name, state, message)
}

/// Starts a child runbook of the same space; with `wait`, waits for it (lending it this run's
/// leases and task-cap slot) and takes its outcome as the step's.
async fn run_child(
    driver: &Driver<'_>,
    run: &RunbookRun,
    n: i64,
    wanted: &str,
    wait: bool,
) -> StepOutcome {
    let app = driver.app;
    let fail = |message: String| Err((TaskState::Failed, message));
    if run.depth + 1 > MAX_DEPTH {
        return fail(format!(
            "Runbook runs nest at most {MAX_DEPTH} deep; this one would be {} deep.",
            run.depth + 1
        ));
    }
    let runbook = match find_runbook(app, &run.space_id, wanted).await {
        Ok(Some(runbook)) => runbook,
        Ok(None) => {
            return fail(format!(
                "There is no runbook '{wanted}' in this space to run."
            ));
        }
        Err(error) => return fail(error.to_string()),
    };
    let origin = Origin {
        parent_task_id: driver.task.id.clone(),
        depth: run.depth + 1,
        wait,
    };
    let (_, child) = match queue_run(app, &runbook, Map::new(), None, Some(origin)).await {
        Ok(queued) => queued,
        Err(error) => {
            return fail(format!(
                "Cannot queue runbook '{}': {error:#}",
                runbook.name
            ));
        }
    };
    driver.log(
        n,
        LogCategory::Info,
        &format!("Queued {} to run runbook '{}'", child.id, runbook.name),
    );
    if !wait {
        return Ok(Some(child.id));
    }
    set_wait_reason(
        app,
        &driver.task.id,
        Some(format!(
            "Waiting for child task {} (runbook '{}') to finish.",
            child.id, runbook.name
        )),
    )
    .await;
    let mut changes = app.logs.watch_changes();
    let ended = loop {
        match app.store.get_task(&child.id).await {
            Ok(Some(task)) if task.state.is_completed() => break task,
            Ok(Some(_)) => {}
            Ok(None) => break child.clone(),
            Err(error) => tracing::warn!(%error, "cannot read a child task"),
        }
        // Pushed: any task's change wakes this; the timer only guards against a missed one.
        let _ = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await;
    };
    app.ledger().wait_for(&driver.task.id, None);
    set_wait_reason(app, &driver.task.id, None).await;
    driver.log(
        n,
        LogCategory::Info,
        &format!("Child task {} ended {}", ended.id, ended.state.as_str()),
    );
    match ended.state {
        TaskState::Success => Ok(Some(ended.id)),
        TaskState::Canceled if driver.stop.cancel.is_cancelled() => {
            Err((TaskState::Canceled, "The task was canceled.".into()))
        }
        state => fail(format!(
            "Child task {} (runbook '{}') ended {}: {}",
            ended.id,
            runbook.name,
            state.as_str(),
            ended.error_message.unwrap_or_default()
        )),
    }
}

/// Shows what an executing run waits for (Muster's `WaitReason`), or clears it.
async fn set_wait_reason(app: &App, task_id: &str, reason: Option<String>) {
    for _ in 0..3 {
        let Ok(Some(mut task)) = app.store.get_task(task_id).await else {
            return;
        };
        if task.state.is_completed() {
            return;
        }
        task.queue_reason = reason.clone();
        if app
            .store
            .transition_task(&task, task.state)
            .await
            .unwrap_or(false)
        {
            app.logs.changed(task_id);
            return;
        }
    }
}

/// A runbook of a space by id or name (any case).
pub async fn find_runbook(
    app: &App,
    space_id: &str,
    wanted: &str,
) -> muster_store::Result<Option<Runbook>> {
    let wanted = wanted.trim();
    if let Some(id) = muster_core::ids::canonical_id(IdKind::Runbook, wanted) {
        return Ok(app
            .store
            .get::<Runbook>(&id)
            .await?
            .filter(|r| r.space_id == space_id));
    }
    let runbooks: Vec<Runbook> = app.store.list(space_id).await?;
    Ok(runbooks
        .into_iter()
        .find(|r| r.name.eq_ignore_ascii_case(wanted) || r.slug.eq_ignore_ascii_case(wanted)))
}
