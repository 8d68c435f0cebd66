//! Server tasks (contract 2.6): the queue as clients see it, logs in three forms (raw text, activity
//! details, and a live stream), and cancel. Unprefixed `/api/tasks` spans every space.

use super::{check_space_id, events, path_id, resolve_space};
use crate::access::Access;
use crate::access::SpaceScope;
use crate::auth::CurrentUser;
use crate::dispatch;
use crate::http::{ApiError, ApiResult, JsonBody, Params, created, ok};
use crate::links;
use crate::logs::LogEvent;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use muster_core::resources::{LogLine, Space, Task, Worker, WorkerPool};
use muster_core::tasks::{self as task_kinds, HealthArguments, ScriptArguments, TaskKind};
use muster_core::time::{format_date, now};
use muster_core::{IdKind, ScriptTarget, TaskState};
use muster_store::TaskQuery;
use serde_json::{Map, Value, json};
use std::convert::Infallible;
use tokio::sync::{broadcast, mpsc};

/// The task types this server runs: name, default description, what it does.
pub const TASK_TYPES: &[(&str, &str, &str)] = &[
    (
        task_kinds::ADHOC_SCRIPT,
        "Run a script",
        "Runs a Bash, Python or PowerShell script on a worker or the built-in worker.",
    ),
    (
        task_kinds::HEALTH,
        "Check health",
        "Checks the health of a pool's workers (WorkerpoolId), named workers (MachineIds), or every worker of the space.",
    ),
];

const TEMPLATE: &str =
    "skip,active,name,node,running,states,hasWarningsOrErrors,take,ids,partialName,spaces";

fn query_from(params: &Params, space_ids: Option<Vec<String>>) -> Result<TaskQuery, ApiError> {
    let page = params.page(30)?;
    let mut states: Option<Vec<TaskState>> = match params.list("states") {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .map(|n| {
                    TaskState::parse_filter(n)
                        .ok_or_else(|| ApiError::bad_request(format!("'{n}' is not a task state.")))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let mut narrow = |allowed: &[TaskState]| {
        let current = states.take().unwrap_or_else(|| TaskState::ALL.to_vec());
        states = Some(
            current
                .into_iter()
                .filter(|s| allowed.contains(s))
                .collect(),
        );
    };
    match params.bool("active")? {
        Some(true) => narrow(&[
            TaskState::Queued,
            TaskState::Executing,
            TaskState::Cancelling,
        ]),
        Some(false) => narrow(&[
            TaskState::Success,
            TaskState::Failed,
            TaskState::Canceled,
            TaskState::TimedOut,
        ]),
        None => {}
    }
    if params.bool("running")? == Some(true) {
        narrow(&[TaskState::Executing, TaskState::Cancelling]);
    }
    Ok(TaskQuery {
        space_ids,
        states,
        ids: params.list("ids"),
        name: params.get("name").map(str::to_string),
        partial_name: params.get("partialname").map(str::to_string),
        has_warnings_or_errors: params.bool("haswarningsorerrors")?,
        skip: page.skip,
        take: page.take,
    })
}

async fn list(app: &App, params: &Params, space_ids: Option<Vec<String>>, path: &str) -> ApiResult {
    let query = query_from(params, space_ids)?;
    let (total, tasks) = app.store.list_tasks(&query).await?;
    let items: Vec<Value> = tasks.iter().map(links::task).collect();
    let request = params.page(30)?;
    ok(&muster_core::paging::envelope(
        "Task",
        &items,
        total,
        request,
        path,
        TEMPLATE,
        &params.filters(),
    ))
}

pub async fn list_in_space(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    list(
        &app,
        &params,
        Some(vec![space.id.clone()]),
        &format!("/api/{}/tasks", space.id),
    )
    .await
}

pub async fn list_all(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    params: Params,
) -> ApiResult {
    let mut spaces: Option<Vec<String>> = params.list("spaces").map(|ids| {
        ids.iter()
            .map(|id| {
                muster_core::ids::canonical_id(IdKind::Space, id).unwrap_or_else(|| id.clone())
            })
            .collect()
    });
    // Only the spaces whose tasks the user may see.
    if !access.admin {
        let visible: Vec<String> = access
            .spaces
            .iter()
            .filter(|(_, granted)| granted.contains("TaskView"))
            .map(|(id, _)| id.clone())
            .collect();
        spaces = Some(match spaces {
            Some(asked) => asked.into_iter().filter(|s| visible.contains(s)).collect(),
            None => visible,
        });
    }
    list(&app, &params, spaces, "/api/tasks").await
}

async fn find_in_space(app: &App, space: &Space, id: &str) -> Result<Task, ApiError> {
    let id = path_id(IdKind::ServerTask, id)?;
    app.store
        .get_task(&id)
        .await?
        .filter(|t| t.space_id == space.id)
        .ok_or_else(|| ApiError::not_found(&id))
}

/// A task by id alone (unprefixed routes), if the user has `permission` in its space; a task of a
/// space the user cannot see is not found.
async fn find_any(
    app: &App,
    access: &Access,
    id: &str,
    permission: &str,
) -> Result<Task, ApiError> {
    let id = path_id(IdKind::ServerTask, id)?;
    let task = app
        .store
        .get_task(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    if !access.admin {
        let space = app
            .store
            .get::<Space>(&task.space_id)
            .await?
            .ok_or_else(|| ApiError::not_found(&id))?;
        if !access.sees_space(&space.id) {
            return Err(ApiError::not_found(&id));
        }
        access.require(&space, permission)?;
    }
    Ok(task)
}

/// Reads, checks and normalizes a new task; it is committed before the 201.
async fn create(
    app: &App,
    user: &CurrentUser,
    space: &Space,
    headers: &HeaderMap,
    body: &Value,
) -> ApiResult {
    check_space_id(body, space)?;
    // A running task's script that sends its token makes the task that task's child, which it
    // waits for: the parent lends it its leases and task-cap slot, as to a child run.
    let origin = match headers.get(super::runbooks::TASK_TOKEN_HEADER) {
        None => None,
        Some(token) => Some(
            crate::runbook::token_origin(app, &space.id, token.to_str().unwrap_or_default())
                .await
                .map_err(ApiError::bad_request)?,
        ),
    };
    let mut errors = Vec::new();
    let task_type = match body.get("Name") {
        Some(Value::String(name)) => TASK_TYPES
            .iter()
            .find(|(id, _, _)| id.eq_ignore_ascii_case(name.trim())),
        _ => None,
    };
    let Some(&(name, default_description, _)) = task_type else {
        let known: Vec<&str> = TASK_TYPES.iter().map(|t| t.0).collect();
        return Err(ApiError::validation(vec![format!(
            "Name must name a task type this server runs: {}.",
            known.join(", ")
        )]));
    };
    let mut arguments: Map<String, Value> = match body.get("Arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err(ApiError::bad_request("Arguments must be a JSON object.")),
    };
    // Only a task token makes a child; a client cannot name a parent itself.
    arguments.remove("ParentTaskId");
    arguments.remove("ParentWaits");
    let description = match body.get("Description") {
        None | Some(Value::Null) => default_description.to_string(),
        Some(Value::String(text)) if text.trim().is_empty() => default_description.to_string(),
        Some(Value::String(text)) => text.trim().to_string(),
        Some(_) => return Err(ApiError::bad_request("Description must be a string.")),
    };
    let date = |field: &str, errors: &mut Vec<String>| match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => {
            let parsed = muster_core::time::parse_date(text);
            if parsed.is_none() {
                errors.push(format!("{field} must be an ISO-8601 date, got '{text}'."));
            }
            parsed
        }
        Some(_) => {
            errors.push(format!("{field} must be an ISO-8601 date."));
            None
        }
    };
    let queue_time = date("QueueTime", &mut errors);
    let queue_time_expiry = date("QueueTimeExpiry", &mut errors);
    if let (Some(start), Some(expiry)) = (queue_time, queue_time_expiry)
        && expiry <= start
    {
        errors.push("QueueTimeExpiry must be after QueueTime.".into());
    }
    // The one parse of the arguments into the task's kind; the store keeps them canonical.
    match TaskKind::parse(name, &arguments) {
        Err(problems) => errors.extend(problems),
        Ok(TaskKind::Health(health)) => {
            check_health_arguments(app, space, health, &mut arguments, &mut errors).await?
        }
        Ok(TaskKind::AdHocScript(script)) => {
            check_script_arguments(app, space, script, &mut arguments, &mut errors).await?
        }
        Ok(TaskKind::RunbookRun(_)) => errors.push(
            "A runbook run is started with POST /api/{space}/runbookRuns, not as a task.".into(),
        ),
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if let Some(origin) = &origin {
        arguments.insert("ParentTaskId".into(), json!(origin.parent_task_id));
        arguments.insert("ParentWaits".into(), json!(true));
    }
    let at = now();
    let mut task = Task {
        id: String::new(),
        space_id: space.id.clone(),
        name: name.to_string(),
        description,
        arguments,
        state: TaskState::Queued,
        error_message: None,
        queue_time: queue_time.unwrap_or(at),
        queue_time_expiry,
        start_time: None,
        completed_time: None,
        last_updated_time: at,
        server_node: None,
        has_warnings_or_errors: false,
        queue_reason: None,
        worker_name: None,
        worker_id: None,
    };
    // The task and the event that records it are one commit.
    app.store
        .insert_new_task(&mut task, |task| queued_event(user, task))
        .await?;
    if let Some(origin) = &origin {
        // Its id is known only now; a dispatch pass that saw it before waits one more pass.
        app.ledger()
            .wait_for(&origin.parent_task_id, Some(&task.id));
    }
    app.signals.dispatch.notify_one();
    created(&links::task(&task))
}

/// Resolves ids a client gave (in any case) against the ids that exist, once each; the rest are errors.
fn resolve_ids(
    kind: IdKind,
    given: &[String],
    existing: &[&str],
    what: &str,
    space: &Space,
    errors: &mut Vec<String>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for given in given {
        let id = muster_core::ids::canonical_id(kind, given).unwrap_or_else(|| given.clone());
        if ids.contains(&id) {
            // Named twice: once is enough.
        } else if existing.contains(&id.as_str()) {
            ids.push(id);
        } else {
            errors.push(format!("'{given}' is not a {what} of space {}.", space.id));
        }
    }
    ids
}

/// The pools and workers a task names, checked against the space's and spelled canonically.
async fn resolve_targets(
    app: &App,
    space: &Space,
    pool_ids: &[String],
    machine_ids: &[String],
    errors: &mut Vec<String>,
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let pools: Vec<WorkerPool> = app.store.list(&space.id).await?;
    let existing: Vec<&str> = pools.iter().map(|p| p.id.as_str()).collect();
    let pools = resolve_ids(
        IdKind::WorkerPool,
        pool_ids,
        &existing,
        "worker pool",
        space,
        errors,
    );
    let workers: Vec<Worker> = app.store.list(&space.id).await?;
    let existing: Vec<&str> = workers.iter().map(|w| w.id.as_str()).collect();
    let workers = resolve_ids(
        IdKind::Worker,
        machine_ids,
        &existing,
        "worker",
        space,
        errors,
    );
    Ok((pools, workers))
}

/// Checks an AdHocScript's arguments and stores them in their canonical form.
async fn check_script_arguments(
    app: &App,
    space: &Space,
    script: ScriptArguments,
    arguments: &mut Map<String, Value>,
    errors: &mut Vec<String>,
) -> Result<(), ApiError> {
    {
        {
            let (pool_ids, machine_ids) =
                resolve_targets(app, space, &script.pool_ids, &script.machine_ids, errors).await?;
            arguments.insert("Syntax".into(), json!(script.syntax.as_str()));
            let target = match script.target {
                ScriptTarget::OctopusServer => "OctopusServer",
                ScriptTarget::WorkerPools => "WorkerPools",
                ScriptTarget::Workers => "Workers",
            };
            arguments.insert("TargetType".into(), json!(target));
            arguments.insert("WorkerPoolIds".into(), json!(pool_ids));
            arguments.insert("MachineIds".into(), json!(machine_ids));
        }
    }
    Ok(())
}

/// Checks a Health task's arguments (Octopus's `WorkerpoolId`, `MachineIds`, `MachineTimeout`).
async fn check_health_arguments(
    app: &App,
    space: &Space,
    health: HealthArguments,
    arguments: &mut Map<String, Value>,
    errors: &mut Vec<String>,
) -> Result<(), ApiError> {
    {
        {
            let (pool, machine_ids) = resolve_targets(
                app,
                space,
                health.pool_id.as_slice(),
                &health.machine_ids,
                errors,
            )
            .await?;
            arguments.remove("WorkerPoolId");
            arguments.insert("WorkerpoolId".into(), json!(pool.first()));
            arguments.insert("MachineIds".into(), json!(machine_ids));
        }
    }
    Ok(())
}

pub async fn create_in_space(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult {
    create(&app, &user, &space, &headers, body.object()?).await
}

pub async fn create_default(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult {
    let body = body.object()?;
    let given = body
        .get("SpaceId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    // A space the user cannot see answers exactly as one that does not exist, echoing what was
    // given, so a slug cannot be probed for its id.
    let unknown = || {
        ApiError::bad_request(format!(
            "SpaceId '{}' is not a space of this server.",
            given.unwrap_or("")
        ))
    };
    let space = match given {
        Some(id) => resolve_space(&app, &id.to_ascii_lowercase())
            .await
            .map_err(|_| unknown())?,
        None => resolve_space(&app, crate::http::DEFAULT_SPACE).await?,
    };
    if !access.sees_space(&space.id) {
        return Err(match given {
            Some(_) => unknown(),
            None => ApiError::not_found(&space.id),
        });
    }
    access.require(&space, "TaskCreate")?;
    create(&app, &user, &space, &headers, body).await
}

pub async fn get_in_space(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    ok(&links::task(&find_in_space(&app, &space, &id).await?))
}

pub async fn get_any(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    ok(&links::task(
        &find_any(&app, &access, &id, "TaskView").await?,
    ))
}

/// The most lines `details` answers, whatever `tail` asks: the whole log is `raw`'s to give.
const DETAILS_MAX_LINES: usize = 10_000;
/// The most message bytes `details` answers (about; at least one line).
const DETAILS_MAX_BYTES: usize = 2 * 1024 * 1024;

/// The activity log of a task: its last lines (`tail`, at most [`DETAILS_MAX_LINES`] and
/// [`DETAILS_MAX_BYTES`]), read from the end of the log, so that a task of millions of lines costs
/// what it answers. When lines are left out of a read without `tail`, the first line says so and
/// where the whole log is.
async fn details(app: &App, task: Task, params: &Params) -> ApiResult {
    let asked = params.get("tail").is_some();
    let tail = match params.get("tail") {
        None => DETAILS_MAX_LINES,
        Some(text) => text
            .trim()
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("tail must be a whole number."))?
            .min(DETAILS_MAX_LINES),
    };
    let (mut lines, earlier) = if tail == 0 {
        (Vec::new(), app.store.last_log_seq(&task.id).await?)
    } else {
        app.store
            .logs_tail(&task.id, tail, DETAILS_MAX_BYTES)
            .await?
    };
    let size = app.store.log_bytes(&task.id).await?;
    // A client that asked for a tail gets exactly that; one that asked for the whole log is told
    // where the rest is.
    if earlier > 0 && !asked {
        let first = &lines[0];
        let note = LogLine {
            seq: 0,
            occurred_at: first.occurred_at,
            category: muster_core::LogCategory::Info,
            message_text: format!(
                "… {earlier} earlier lines are not shown here; the whole log is at /api/tasks/{}/raw",
                task.id
            ),
            step: first.step,
        };
        lines.insert(0, note);
    }
    let status = json!(task.state.activity_status());
    let date = |t: &Option<muster_core::time::Timestamp>| t.as_ref().map(format_date);
    let progress = if task.state.is_completed() { 100 } else { 0 };
    let run = if let Ok(TaskKind::RunbookRun(_)) = TaskKind::of(&task) {
        crate::runbook::run_of(app, &task)
            .await
            .map_err(ApiError::internal)?
    } else {
        None
    };
    let (children, own) = match run {
        // A runbook run: one activity node per step, with that step's lines.
        Some(run) => {
            let children = run
                .step_results
                .iter()
                .enumerate()
                .map(|(index, result)| {
                    let n = index as i64 + 1;
                    let pending = matches!(result.status.as_str(), "Pending" | "Running");
                    Activity {
                        id: format!("{}_{n}", task.id),
                        name: format!("Step {n}: {}", result.name),
                        started: date(&result.started),
                        ended: date(&result.ended),
                        status: json!(result.status),
                        show_at_summary_level: true,
                        progress_percentage: if pending { 0 } else { 100 },
                        progress_message: json!(result.detail),
                        children: Vec::new(),
                        log_elements: lines
                            .iter()
                            .filter(|l| l.step == Some(n))
                            .map(element)
                            .collect(),
                    }
                })
                .collect();
            let own = lines
                .iter()
                .filter(|l| l.step.is_none())
                .map(element)
                .collect();
            (children, own)
        }
        None => {
            let step_name = match &task.worker_name {
                Some(worker) => format!("Run script on {worker}"),
                None => "Run script".to_string(),
            };
            let step = Activity {
                id: format!("{}_1", task.id),
                name: step_name,
                started: date(&task.start_time),
                ended: date(&task.completed_time),
                status: status.clone(),
                show_at_summary_level: true,
                progress_percentage: progress,
                progress_message: Value::Null,
                children: Vec::new(),
                log_elements: lines.iter().map(element).collect(),
            };
            (vec![step], Vec::new())
        }
    };
    let root = Activity {
        id: task.id.clone(),
        name: task.description.clone(),
        started: date(&task.start_time),
        ended: date(&task.completed_time),
        status,
        show_at_summary_level: true,
        progress_percentage: progress,
        progress_message: Value::Null,
        children,
        log_elements: own,
    };
    // Serialized straight from these borrowed views: no tree of JSON values is built for the lines.
    ok(&Details {
        task: links::task(&task),
        progress: json!({"ProgressPercentage": progress, "EstimatedTimeRemaining": null}),
        physical_log_size: size,
        activity_logs: [root],
    })
}

/// `details`' answer, in the contract's shape.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Details<'a> {
    task: Value,
    progress: Value,
    physical_log_size: i64,
    activity_logs: [Activity<'a>; 1],
}

/// An activity node of `details`: the task, or one of its steps.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Activity<'a> {
    id: String,
    name: String,
    started: Option<String>,
    ended: Option<String>,
    status: Value,
    show_at_summary_level: bool,
    progress_percentage: i64,
    progress_message: Value,
    children: Vec<Activity<'a>>,
    log_elements: Vec<Element<'a>>,
}

fn element(l: &LogLine) -> Element<'_> {
    Element {
        category: l.category,
        detail: None,
        message_text: &l.message_text,
        occurred_at: format_date(&l.occurred_at),
    }
}

/// A log line of an activity node.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Element<'a> {
    category: muster_core::LogCategory,
    detail: Option<()>,
    message_text: &'a str,
    occurred_at: String,
}

pub async fn details_in_space(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    params: Params,
) -> ApiResult {
    let task = find_in_space(&app, &space, &id).await?;
    details(&app, task, &params).await
}

pub async fn details_any(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let task = find_any(&app, &access, &id, "TaskView").await?;
    details(&app, task, &params).await
}

/// The whole log as text: `HH:MM:SS  Category | message`.
async fn raw(app: &App, task: Task) -> ApiResult {
    // Streamed a page at a time, so a log of millions of lines never sits whole in memory.
    const PAGE: i64 = 20_000;
    let app = app.clone();
    let id = task.id.clone();
    let pages = futures_util::stream::unfold(Some(0i64), move |after| {
        let app = app.clone();
        let id = id.clone();
        async move {
            let after = after?;
            match app.store.raw_log_page(&id, after, PAGE).await {
                Ok(None) => None,
                // A page may end early on its byte bound: read on until a page is empty.
                Ok(Some((last, _, text))) => Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(text)),
                    Some(last),
                )),
                Err(error) => Some((Err(std::io::Error::other(error.to_string())), None)),
            }
        }
    });
    let mut response = axum::body::Body::from_stream(pages).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

pub async fn raw_in_space(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let task = find_in_space(&app, &space, &id).await?;
    raw(&app, task).await
}

pub async fn raw_any(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let task = find_any(&app, &access, &id, "TaskView").await?;
    raw(&app, task).await
}

async fn cancel(app: &App, user: &CurrentUser, task: Task) -> ApiResult {
    let before = task.state;
    let task = dispatch::cancel(app, &task.id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(&task.id))?;
    if !before.is_completed() && task.state != before {
        events::record(
            app,
            Some(&user.0),
            Some(&task.space_id),
            events::CANCELED,
            format!("Task {} canceled: {}", task.id, task.description),
            vec![task.id.clone()],
        )
        .await;
    }
    ok(&links::task(&task))
}

pub async fn cancel_in_space(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let task = find_in_space(&app, &space, &id).await?;
    cancel(&app, &user, task).await
}

pub async fn cancel_any(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let task = find_any(&app, &access, &id, "TaskCancel").await?;
    cancel(&app, &user, task).await
}

pub async fn rerun(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let task = find_any(&app, &access, &id, "TaskCreate").await?;
    if !task.state.is_completed() {
        return Err(ApiError::bad_request(
            "Only a finished task can be run again.",
        ));
    }
    if let Ok(TaskKind::RunbookRun(_)) = TaskKind::of(&task) {
        let Some(run) = crate::runbook::run_of(&app, &task)
            .await
            .map_err(ApiError::internal)?
        else {
            return Err(ApiError::bad_request(
                "This runbook run's record no longer exists.",
            ));
        };
        let Some(runbook) =
            crate::runbook::find_runbook(&app, &task.space_id, &run.runbook_id).await?
        else {
            return Err(ApiError::bad_request(
                "The runbook of this run no longer exists.",
            ));
        };
        // The runbook may have changed since: its values are checked as a new run's are.
        let mut errors = Vec::new();
        let form_values = super::runbooks::read_form_values(
            Some(&serde_json::Value::Object(run.form_values.clone())),
            Some(&runbook),
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        let (_, task) =
            crate::runbook::queue_run(&app, &runbook, form_values, run.comments.clone(), None)
                .await
                .map_err(ApiError::internal)?;
        task_created(&app, &user, &task).await;
        return created(&links::task(&task));
    }
    let space = resolve_space(&app, &task.space_id.to_ascii_lowercase()).await?;
    let body =
        json!({"Name": task.name, "Description": task.description, "Arguments": task.arguments});
    // A task run again is nobody's child.
    create(&app, &user, &space, &HeaderMap::new(), &body).await
}

/// The event of a task queued by a user.
fn queued_event(user: &CurrentUser, task: &Task) -> muster_core::resources::Event {
    events::new(
        Some(&user.0),
        Some(&task.space_id),
        events::CREATED,
        format!("Task {} queued: {}", task.id, task.description),
        vec![task.id.clone()],
    )
}

/// Records the event of a task queued by a user, after its commit (a runbook run's task).
pub async fn task_created(app: &App, user: &CurrentUser, task: &Task) {
    let event = queued_event(user, task);
    events::record(
        app,
        Some(&user.0),
        event.space_id.as_deref(),
        &event.category,
        event.message,
        vec![task.id.clone()],
    )
    .await;
}

pub async fn task_types() -> ApiResult {
    let types: Vec<Value> = TASK_TYPES
        .iter()
        .map(|(id, name, description)| json!({"Id": id, "Name": name, "Description": description}))
        .collect();
    ok(&types)
}

/// The tasks a queued task waits behind, and why it waits, in words.
async fn queued_behind(app: &App, access: &Access, task: Task, params: &Params) -> ApiResult {
    let mut ahead: Vec<Task> = app
        .store
        .tasks_in_states(&[
            TaskState::Queued,
            TaskState::Executing,
            TaskState::Cancelling,
        ])
        .await?
        .into_iter()
        .filter(|t| t.id != task.id && task.state == TaskState::Queued)
        .filter(|t| {
            t.state != TaskState::Queued
                || t.queue_time < task.queue_time
                || (t.queue_time == task.queue_time && t.id < task.id)
        })
        .collect();
    ahead.reverse();
    // Tasks of spaces the user cannot see still hold their place in the queue: they are counted, not shown.
    let hidden = ahead
        .iter()
        .filter(|t| !access.has(&t.space_id, "TaskView"))
        .count();
    ahead.retain(|t| access.has(&t.space_id, "TaskView"));
    let request = params.page(30)?;
    let range = request.range(ahead.len());
    let items: Vec<Value> = ahead[range].iter().map(links::task).collect();
    let path = format!("/api/tasks/{}/queued-behind", task.id);
    let mut body = muster_core::paging::envelope(
        "Task",
        &items,
        ahead.len() as u64,
        request,
        &path,
        "skip,take",
        "",
    );
    body["HiddenTasksAhead"] = json!(hidden);
    body["QueueReason"] = json!(if task.state == TaskState::Queued {
        task.queue_reason.clone()
    } else {
        None
    });
    ok(&body)
}

pub async fn queued_behind_in_space(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    params: Params,
) -> ApiResult {
    let task = find_in_space(&app, &space, &id).await?;
    queued_behind(&app, &access, task, &params).await
}

pub async fn queued_behind_any(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let task = find_any(&app, &access, &id, "TaskView").await?;
    queued_behind(&app, &access, task, &params).await
}

/// A live view of a task as server-sent events: `task` events carry the task resource (first, on each
/// state change, and last), `line` events each log line in order. `after=N` skips lines up to N. The
/// stream ends after the task's final state.
fn stream(app: App, task: Task, params: &Params) -> Result<Response, ApiError> {
    let after: i64 = match params.get("after") {
        None => 0,
        Some(text) => text
            .trim()
            .parse()
            .ok()
            .filter(|n: &i64| *n >= 0)
            .ok_or_else(|| ApiError::bad_request("after must be a whole number, 0 or more."))?,
    };
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(256);
    tokio::spawn(async move {
        let mut shutdown = app.shutdown.subscribe();
        tokio::select! {
            result = follow(&app, &task.id, after, &tx) => {
                if let Err(error) = result {
                    tracing::debug!(%error, "a task stream ended early");
                }
            }
            // The server is stopping: the stream ends so that the shutdown does not wait on it.
            _ = shutdown.wait_for(|stopping| *stopping) => {}
        }
    });
    let body =
        Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::default());
    Ok(body.into_response())
}

type Sender = mpsc::Sender<Result<Event, Infallible>>;

async fn send_task(tx: &Sender, task: &Task) -> anyhow::Result<()> {
    let event = Event::default()
        .event("task")
        .data(links::task(task).to_string());
    tx.send(Ok(event))
        .await
        .map_err(|_| anyhow::anyhow!("the follower left"))
}

async fn send_line(tx: &Sender, line: &LogLine) -> anyhow::Result<()> {
    let event = Event::default()
        .event("line")
        .id(line.seq.to_string())
        .data(serde_json::to_string(line)?);
    tx.send(Ok(event))
        .await
        .map_err(|_| anyhow::anyhow!("the follower left"))
}

async fn send_stored(app: &App, id: &str, last: &mut i64, tx: &Sender) -> anyhow::Result<()> {
    loop {
        let lines = app.store.logs(id, *last, 1000).await?;
        if lines.is_empty() {
            return Ok(());
        }
        for line in &lines {
            send_line(tx, line).await?;
            *last = line.seq;
        }
    }
}

async fn follow(app: &App, id: &str, after: i64, tx: &Sender) -> anyhow::Result<()> {
    let mut changes = app.logs.watch_changes();
    let mut last = after;
    let mut last_state = None;
    // A task that has not ended comes first, so a follower knows what it follows; an ended one comes
    // last only, after its lines, since a completed task event is how a follower knows the stream ends.
    if let Some(task) = app.store.get_task(id).await?
        && !task.state.is_completed()
    {
        send_task(tx, &task).await?;
        last_state = Some((task.state, task.queue_reason.clone()));
    }
    loop {
        // Subscribe, then commit every line appended before the subscription, then read what is
        // stored: no line falls between the two.
        let live = app.logs.subscribe(id);
        if live.is_some() {
            app.logs.flush().await;
        }
        send_stored(app, id, &mut last, tx).await?;
        let Some(task) = app.store.get_task(id).await? else {
            return Ok(());
        };
        if task.state.is_completed() {
            // Its last line was committed before its final state: read once more, then end.
            send_stored(app, id, &mut last, tx).await?;
            return send_task(tx, &task).await;
        }
        if last_state != Some((task.state, task.queue_reason.clone())) {
            send_task(tx, &task).await?;
            last_state = Some((task.state, task.queue_reason.clone()));
        }
        match live {
            // Running here: its lines as they come, until it ends or its state changes.
            Some(mut events) => loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(LogEvent::Line(line)) if line.seq > last => {
                            send_line(tx, &line).await?;
                            last = line.seq;
                        }
                        Ok(LogEvent::Line(_)) => {}
                        Ok(LogEvent::Done) | Err(broadcast::error::RecvError::Closed) => break,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            app.logs.flush().await;
                            send_stored(app, id, &mut last, tx).await?;
                        }
                    },
                    changed = changes.recv() => match changed {
                        Ok(changed) if changed == id || changed.is_empty() => break,
                        Ok(_) => {}
                        Err(_) => break,
                    },
                    _ = tx.closed() => return Ok(()),
                }
            },
            // Queued (or running on another node): wait for its next change, or for the follower to leave.
            None => loop {
                tokio::select! {
                    changed = changes.recv() => match changed {
                        Ok(changed) if changed == id || changed.is_empty() => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    },
                    _ = tx.closed() => return Ok(()),
                }
            },
        }
    }
}

pub async fn stream_in_space(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    params: Params,
) -> ApiResult {
    let task = find_in_space(&app, &space, &id).await?;
    stream(app, task, &params)
}

pub async fn stream_any(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let task = find_any(&app, &access, &id, "TaskView").await?;
    stream(app, task, &params)
}
