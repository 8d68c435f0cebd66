//! Runbooks of a space (Octopus's `/runbooks`, `/runbookProcesses`, `/variables` and
//! `/runbookRuns`). A runbook is one document holding its process's steps and its variables; the
//! process and the variable set are views of it. A run freezes the runbook as it was and queues a
//! `RunbookRun` task.

use super::{actor, check_space_id, empty_ok, events, filter_named, page, path_id};
use crate::access::SpaceScope;
use crate::auth::CurrentUser;
use crate::http::{ApiError, ApiResult, JsonBody, Params, created, ok};
use crate::links;
use crate::runbook;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use muster_core::IdKind;
use muster_core::resources::{Space, WorkerPool, apply};
use muster_core::runbooks::{
    Action, ActionPlan, CONDITIONS, Location, PROP_CHILD_RUNBOOK, Runbook, RunbookRun, Variable,
};
use serde_json::{Map, Value, json};

const PROCESS_PREFIX: &str = "RunbookProcess-";
const VARIABLE_SET_PREFIX: &str = "variableset-";

pub async fn sorted(app: &App, space: &Space) -> Result<Vec<Runbook>, ApiError> {
    let mut runbooks: Vec<Runbook> = app.store.list(&space.id).await?;
    runbooks.sort_by_key(|r| r.name.to_lowercase());
    Ok(runbooks)
}

async fn find(app: &App, space: &Space, id: &str) -> Result<Runbook, ApiError> {
    super::find_in_space(app, space, IdKind::Runbook, id).await
}

/// `RunbookProcess-Runbooks-1` or `variableset-Runbooks-1` → the runbook.
async fn find_by_view(
    app: &App,
    space: &Space,
    id: &str,
    prefix: &str,
) -> Result<Runbook, ApiError> {
    let lower = id.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix(&prefix.to_ascii_lowercase()) else {
        return Err(ApiError::not_found(id));
    };
    find(app, space, rest).await
}

pub async fn list(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let runbooks = filter_named(sorted(&app, &space).await?, &params, |r| &r.id, |r| &r.name);
    let path = format!("/api/{}/runbooks", space.id);
    page(
        "Runbook",
        runbooks.iter().map(links::runbook).collect(),
        &params,
        &path,
        "skip,take,ids,partialName,name",
        30,
    )
}

pub async fn all(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let runbooks = filter_named(sorted(&app, &space).await?, &params, |r| &r.id, |r| &r.name);
    ok(&runbooks.iter().map(links::runbook).collect::<Vec<_>>())
}

pub async fn get_one(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    ok(&links::runbook(&find(&app, &space, &id).await?))
}

/// Checks and normalizes the steps: names unique, one action each, what they do readable, pools
/// and child runbooks of this space (written as their ids), and no runbook that runs itself.
async fn check_steps(
    app: &App,
    space: &Space,
    runbook: &mut Runbook,
    errors: &mut Vec<String>,
) -> Result<(), ApiError> {
    let pools: Vec<WorkerPool> = app.store.list(&space.id).await?;
    let others: Vec<Runbook> = app.store.list(&space.id).await?;
    let mut names: Vec<String> = Vec::new();
    for (index, step) in runbook.steps.iter_mut().enumerate() {
        step.name = step.name.trim().to_string();
        if step.name.is_empty()
            && let [action] = step.actions.as_slice()
        {
            step.name = action.name.trim().to_string();
        }
        if let Some(problem) = muster_core::ids::check_name(&step.name) {
            errors.push(format!("Step {}: {problem}", index + 1));
            continue;
        }
        if names.contains(&step.name.to_lowercase()) {
            errors.push(format!(
                "Two steps are named '{}'; step names must be unique (output variables name them).",
                step.name
            ));
        }
        names.push(step.name.to_lowercase());
        match CONDITIONS
            .iter()
            .find(|c| c.eq_ignore_ascii_case(step.condition.trim()))
        {
            Some(condition) => step.condition = condition.to_string(),
            None => errors.push(format!(
                "Step '{}': Condition must be {}, got '{}'.",
                step.name,
                CONDITIONS.join(", "),
                step.condition
            )),
        }
        if step.id.is_empty() {
            step.id = uuid::Uuid::new_v4().to_string();
        }
        let step_name = step.name.clone();
        for action in &mut step.actions {
            if action.id.is_empty() {
                action.id = uuid::Uuid::new_v4().to_string();
            }
            if action.name.trim().is_empty() {
                action.name = step_name.clone();
            }
        }
        let plan = match step.plan() {
            Ok(plan) => plan,
            Err(mut problems) => {
                errors.append(&mut problems);
                continue;
            }
        };
        let action: &mut Action = &mut step.actions[0];
        match plan {
            ActionPlan::Script {
                location, syntax, ..
            } => {
                action.action_type = muster_core::runbooks::SCRIPT_ACTION.into();
                action
                    .properties
                    .retain(|k, _| !k.eq_ignore_ascii_case(muster_core::runbooks::PROP_SYNTAX));
                action.properties.insert(
                    muster_core::runbooks::PROP_SYNTAX.into(),
                    json!(syntax.as_str()),
                );
                let pool = match &location {
                    Location::Pool(Some(p)) | Location::EachWorker(Some(p)) => Some(p.clone()),
                    _ => None,
                };
                if let Some(wanted) = pool {
                    match pools.iter().find(|p| {
                        p.id.eq_ignore_ascii_case(wanted.trim())
                            || p.name.eq_ignore_ascii_case(wanted.trim())
                    }) {
                        Some(p) => action.worker_pool_id = Some(p.id.clone()),
                        None => errors.push(format!(
                            "Step '{step_name}': WorkerPoolId '{wanted}' is not a worker pool of space {}.",
                            space.id
                        )),
                    }
                }
            }
            ActionPlan::RunRunbook {
                runbook: wanted, ..
            } => {
                action.action_type = muster_core::runbooks::RUN_RUNBOOK_ACTION.into();
                let target = others.iter().find(|r| {
                    r.id.eq_ignore_ascii_case(&wanted)
                        || r.name.eq_ignore_ascii_case(&wanted)
                        || r.slug.eq_ignore_ascii_case(&wanted)
                });
                match target {
                    Some(target) => {
                        action
                            .properties
                            .retain(|k, _| !k.eq_ignore_ascii_case(PROP_CHILD_RUNBOOK));
                        action
                            .properties
                            .insert(PROP_CHILD_RUNBOOK.into(), json!(target.id));
                    }
                    None if runbook.name.eq_ignore_ascii_case(&wanted)
                        || (!runbook.id.is_empty() && runbook.id.eq_ignore_ascii_case(&wanted)) =>
                    {
                        errors.push(format!(
                            "Step '{step_name}' runs this runbook itself, which would never end."
                        ))
                    }
                    None => errors.push(format!(
                        "Step '{step_name}': there is no runbook '{wanted}' in space {} to run.",
                        space.id
                    )),
                }
            }
        }
    }
    if errors.is_empty()
        && !runbook.id.is_empty()
        && let Some(cycle) = reference_cycle(runbook, &others)
    {
        errors.push(format!(
            "Runbook '{}' would run itself through its child runbooks: {cycle}.",
            runbook.name
        ));
    }
    Ok(())
}

/// The child runbooks a runbook's steps run, by id.
fn children(runbook: &Runbook) -> Vec<String> {
    runbook
        .steps
        .iter()
        .filter_map(|s| match s.plan() {
            Ok(ActionPlan::RunRunbook { runbook, .. }) => Some(runbook),
            _ => None,
        })
        .collect()
}

/// A path from the runbook back to itself through "Run a runbook" steps, in words.
fn reference_cycle(runbook: &Runbook, others: &[Runbook]) -> Option<String> {
    fn walk(
        at: &str,
        target: &str,
        graph: &dyn Fn(&str) -> Vec<String>,
        path: &mut Vec<String>,
    ) -> bool {
        for child in graph(at) {
            if path.contains(&child) && child != target {
                continue;
            }
            path.push(child.clone());
            if child.eq_ignore_ascii_case(target) || walk(&child, target, graph, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    let graph = |id: &str| -> Vec<String> {
        if id.eq_ignore_ascii_case(&runbook.id) {
            children(runbook)
        } else {
            others
                .iter()
                .find(|r| r.id.eq_ignore_ascii_case(id))
                .map(children)
                .unwrap_or_default()
        }
    };
    let mut path = vec![runbook.id.clone()];
    if !walk(&runbook.id, &runbook.id, &graph, &mut path) {
        return None;
    }
    let name = |id: &String| {
        others
            .iter()
            .chain(std::iter::once(runbook))
            .find(|r| r.id == *id)
            .map(|r| format!("'{}'", r.name))
            .unwrap_or_else(|| id.clone())
    };
    Some(path.iter().map(name).collect::<Vec<_>>().join(" → "))
}

/// Checks and normalizes the variables: names given and unique, `Type` and `IsSensitive` agreeing,
/// and a sensitive variable sent back without its value keeping the stored one.
fn check_variables(runbook: &mut Runbook, stored: &[Variable], errors: &mut Vec<String>) {
    let mut names: Vec<String> = Vec::new();
    for variable in &mut runbook.variables {
        variable.name = variable.name.trim().to_string();
        if variable.name.is_empty() {
            errors.push("Every variable needs a Name.".into());
            continue;
        }
        if variable.name.contains(['#', '{', '}']) {
            errors.push(format!(
                "Variable '{}': a name must not contain '#', '{{' or '}}'.",
                variable.name
            ));
        }
        if names.contains(&variable.name.to_lowercase()) {
            errors.push(format!(
                "Two variables are named '{}'; Muster has no scopes, so names must be unique.",
                variable.name
            ));
        }
        names.push(variable.name.to_lowercase());
        let kind = variable.kind.trim().to_ascii_lowercase();
        match kind.as_str() {
            "" | "string" => {}
            "sensitive" => variable.is_sensitive = true,
            _ => errors.push(format!(
                "Variable '{}': Type must be String or Sensitive, got '{}'.",
                variable.name, variable.kind
            )),
        }
        if variable
            .name
            .eq_ignore_ascii_case(muster_core::runbooks::BYPASS_MUTEX)
            && variable
                .value
                .as_deref()
                .is_some_and(|v| muster_core::runbooks::parse_bool(v).is_none())
        {
            errors.push(format!(
                "Variable {}: its value must be True or False.",
                muster_core::runbooks::BYPASS_MUTEX
            ));
        }
        variable.kind = if variable.is_sensitive {
            "Sensitive".into()
        } else {
            "String".into()
        };
        if variable.id.is_empty() {
            variable.id = uuid::Uuid::new_v4().to_string();
        }
        if variable.value.is_none() {
            let was = stored
                .iter()
                .find(|s| s.id == variable.id || s.name.eq_ignore_ascii_case(&variable.name));
            match was {
                // A secret keeps its value only while it stays a secret: turning it into a plain
                // variable must not reveal it.
                Some(was) if was.is_sensitive && !variable.is_sensitive => errors.push(format!(
                    "Variable '{}' was sensitive; to make it a plain variable, give it a new Value.",
                    variable.name
                )),
                Some(was) if was.is_sensitive => variable.value = was.value.clone(),
                _ => variable.value = Some(String::new()),
            }
        }
    }
}

/// Reads a runbook from a body over `base`, checks and normalizes it; every problem is a 400.
async fn read_runbook(
    app: &App,
    space: &Space,
    base: &Runbook,
    body: &Value,
) -> Result<Runbook, ApiError> {
    let mut runbook = apply(base, body).map_err(ApiError::bad_request)?;
    runbook.id = base.id.clone();
    runbook.space_id = space.id.clone();
    runbook.name = runbook.name.trim().to_string();
    let mut errors = Vec::new();
    errors.extend(muster_core::ids::check_name(&runbook.name));
    runbook.slug = muster_core::ids::slugify(if runbook.slug.trim().is_empty() {
        &runbook.name
    } else {
        &runbook.slug
    });
    // Lists replace, not merge: the body's steps and variables are the whole of them.
    if let Some(steps) = body.get("Steps").filter(|v| !v.is_null()) {
        runbook.steps = serde_json::from_value(steps.clone())
            .map_err(|e| ApiError::bad_request(format!("Steps: {e}")))?;
    }
    if let Some(variables) = body.get("Variables").filter(|v| !v.is_null()) {
        runbook.variables = serde_json::from_value(variables.clone())
            .map_err(|e| ApiError::bad_request(format!("Variables: {e}")))?;
    }
    check_steps(app, space, &mut runbook, &mut errors).await?;
    check_variables(&mut runbook, &base.variables, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    Ok(runbook)
}

/// Stamps who changed a runbook and when, and stores it.
async fn save(app: &App, user: &CurrentUser, runbook: &mut Runbook) -> Result<(), ApiError> {
    runbook.last_modified_on = Some(muster_core::time::now());
    runbook.last_modified_by = actor(user);
    app.store.put(runbook).await?;
    Ok(())
}

/// The event of a runbook created or changed: what changed, and of its variables only their names.
async fn record_change(
    app: &App,
    user: &CurrentUser,
    existing: Option<&Runbook>,
    runbook: &Runbook,
) {
    let (category, mut message) = match existing {
        None => (
            events::CREATED,
            format!("Runbook '{}' created", runbook.name),
        ),
        Some(old) => {
            let mut parts = Vec::new();
            if old.name != runbook.name {
                parts.push(format!("renamed from '{}'", old.name));
            }
            if old.steps != runbook.steps {
                parts.push("its process changed".to_string());
            }
            let others = Runbook {
                name: old.name.clone(),
                steps: old.steps.clone(),
                variables: old.variables.clone(),
                last_modified_on: old.last_modified_on,
                last_modified_by: old.last_modified_by.clone(),
                ..runbook.clone()
            };
            if others != *old {
                parts.push("its settings changed".to_string());
            }
            if let Some(variables) = variable_changes(&old.variables, &runbook.variables) {
                parts.push(format!("variables {variables}"));
            }
            let text = if parts.is_empty() {
                format!("Runbook '{}' saved unchanged", runbook.name)
            } else {
                format!("Runbook '{}': {}", runbook.name, parts.join("; "))
            };
            (events::MODIFIED, text)
        }
    };
    if existing.is_none()
        && let Some(variables) = variable_changes(&[], &runbook.variables)
    {
        message.push_str(&format!(" with variables {variables}"));
    }
    events::record(
        app,
        Some(&user.0),
        Some(&runbook.space_id),
        category,
        message,
        vec![runbook.id.clone()],
    )
    .await;
}

/// Which variables were added, changed or removed, by name only (never a value); None when none.
fn variable_changes(old: &[Variable], new: &[Variable]) -> Option<String> {
    let of = |list: &[Variable], name: &str| -> Vec<Variable> {
        list.iter()
            .filter(|v| v.name.eq_ignore_ascii_case(name))
            .map(|v| Variable {
                id: String::new(),
                ..v.clone()
            })
            .collect()
    };
    let mut names: Vec<&str> = old.iter().chain(new).map(|v| v.name.as_str()).collect();
    names.sort_by_key(|n| n.to_lowercase());
    names.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    let (mut added, mut changed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        let (before, after) = (of(old, name), of(new, name));
        if before.is_empty() {
            added.push(name);
        } else if after.is_empty() {
            removed.push(name);
        } else if before != after {
            changed.push(name);
        }
    }
    let parts: Vec<String> = [("added", added), ("changed", changed), ("removed", removed)]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| format!("{what} {}", names.join(", ")))
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

pub async fn create(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    body: JsonBody,
) -> ApiResult {
    let body = body.object()?;
    check_space_id(body, &space)?;
    let mut runbook = read_runbook(&app, &space, &Runbook::default(), body).await?;
    runbook.id = app.store.next_id(IdKind::Runbook).await?;
    runbook.runbook_process_id = format!("{PROCESS_PREFIX}{}", runbook.id);
    save(&app, &user, &mut runbook).await?;
    record_change(&app, &user, None, &runbook).await;
    created(&links::runbook(&runbook))
}

pub async fn update(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult {
    let existing = find(&app, &space, &id).await?;
    let body = body.object()?;
    check_space_id(body, &space)?;
    let mut runbook = read_runbook(&app, &space, &existing, body).await?;
    runbook.runbook_process_id = existing.runbook_process_id.clone();
    save(&app, &user, &mut runbook).await?;
    record_change(&app, &user, Some(&existing), &runbook).await;
    ok(&links::runbook(&runbook))
}

pub async fn delete(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let runbook = find(&app, &space, &id).await?;
    let users: Vec<String> = sorted(&app, &space)
        .await?
        .iter()
        .filter(|r| r.id != runbook.id && children(r).contains(&runbook.id))
        .map(|r| format!("'{}'", r.name))
        .collect();
    if !users.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Runbook '{}' cannot be deleted: {} run(s) it. Remove those steps first.",
            runbook.name,
            users.join(", ")
        )));
    }
    app.store.delete::<Runbook>(&runbook.id).await?;
    events::record(
        &app,
        Some(&user.0),
        Some(&space.id),
        events::DELETED,
        format!("Runbook '{}' deleted", runbook.name),
        vec![runbook.id.clone()],
    )
    .await;
    empty_ok()
}

pub async fn get_process(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let runbook = find_by_view(&app, &space, &id, PROCESS_PREFIX).await?;
    ok(&links::runbook_process(&runbook))
}

pub async fn update_process(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult {
    let existing = find_by_view(&app, &space, &id, PROCESS_PREFIX).await?;
    let body = body.object()?;
    check_space_id(body, &space)?;
    let Some(steps) = body.get("Steps") else {
        return Err(ApiError::bad_request(
            "Steps is required: the process's steps.",
        ));
    };
    let mut runbook = read_runbook(&app, &space, &existing, &json!({"Steps": steps})).await?;
    save(&app, &user, &mut runbook).await?;
    record_change(&app, &user, Some(&existing), &runbook).await;
    ok(&links::runbook_process(&runbook))
}

pub async fn get_variables(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let runbook = find_by_view(&app, &space, &id, VARIABLE_SET_PREFIX).await?;
    ok(&links::variable_set(&runbook))
}

pub async fn update_variables(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult {
    let existing = find_by_view(&app, &space, &id, VARIABLE_SET_PREFIX).await?;
    let body = body.object()?;
    check_space_id(body, &space)?;
    let Some(variables) = body.get("Variables") else {
        return Err(ApiError::bad_request(
            "Variables is required: the whole list of the runbook's variables.",
        ));
    };
    let mut runbook =
        read_runbook(&app, &space, &existing, &json!({"Variables": variables})).await?;
    save(&app, &user, &mut runbook).await?;
    record_change(&app, &user, Some(&existing), &runbook).await;
    ok(&links::variable_set(&runbook))
}

async fn find_run(app: &App, space: &Space, id: &str) -> Result<RunbookRun, ApiError> {
    let id = path_id(IdKind::RunbookRun, id)?;
    app.store
        .get::<RunbookRun>(&id)
        .await?
        .filter(|r| r.space_id == space.id)
        .ok_or_else(|| ApiError::not_found(&id))
}

pub async fn list_runs(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let mut runs: Vec<RunbookRun> = app.store.list(&space.id).await?;
    if let Some(wanted) = params.get("runbook") {
        let wanted = wanted.trim().to_ascii_lowercase();
        runs.retain(|r| r.runbook_id.to_ascii_lowercase() == wanted);
    }
    if let Some(ids) = params.list("ids") {
        let ids: Vec<String> = ids.iter().map(|i| i.to_ascii_lowercase()).collect();
        runs.retain(|r| ids.contains(&r.id.to_ascii_lowercase()));
    }
    // Newest first.
    runs.sort_by_key(|r| {
        std::cmp::Reverse(muster_core::parse_id(IdKind::RunbookRun, &r.id).unwrap_or(0))
    });
    let path = format!("/api/{}/runbookRuns", space.id);
    page(
        "RunbookRun",
        runs.iter().map(links::runbook_run).collect(),
        &params,
        &path,
        "skip,take,ids,runbook",
        30,
    )
}

pub async fn get_run(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    ok(&links::runbook_run(&find_run(&app, &space, &id).await?))
}

/// Variables that set how a run is scheduled; a run may give them whether or not the runbook has them.
fn is_setting(name: &str) -> bool {
    name.eq_ignore_ascii_case(muster_core::runbooks::BYPASS_MUTEX)
        || name.eq_ignore_ascii_case(muster_core::runbooks::PROP_MAX_PARALLELISM)
}

/// A run's `FormValues`: values for the runbook's prompted variables only (as in Octopus), so that
/// whoever may run a runbook but not edit it can give it data, never change what it does; and a
/// value for each required prompted variable that has none of its own. The scheduling settings
/// may be given too, checked as what they are.
pub(crate) fn read_form_values(
    given: Option<&Value>,
    runbook: Option<&Runbook>,
    errors: &mut Vec<String>,
) -> Map<String, Value> {
    let mut form = Map::new();
    let empty = Map::new();
    let values = match given {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(values)) => values,
        Some(_) => {
            errors.push("FormValues must be an object of variable names and values.".into());
            return form;
        }
    };
    let mut not_prompted: Vec<String> = Vec::new();
    for (name, value) in values {
        let text = match value {
            Value::Null => continue,
            Value::String(text) => text.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            _ => {
                errors.push(format!(
                    "FormValues.{name} must be a string, a number or a boolean."
                ));
                continue;
            }
        };
        let variable = runbook.and_then(|r| {
            r.variables
                .iter()
                .find(|v| v.name.eq_ignore_ascii_case(name))
        });
        if name.trim().is_empty() {
            errors.push("FormValues names a variable with an empty name.".into());
        } else if is_setting(name) {
            if name.eq_ignore_ascii_case(muster_core::runbooks::BYPASS_MUTEX)
                && muster_core::runbooks::parse_bool(&text).is_none()
            {
                errors.push(format!(
                    "FormValues.{name} must be True or False, got '{text}'."
                ));
            }
            if name.eq_ignore_ascii_case(muster_core::runbooks::PROP_MAX_PARALLELISM)
                && muster_core::runbooks::parse_parallelism(&text).is_none()
            {
                errors.push(format!(
                    "FormValues.{name} must be a whole number of 1 or more, got '{text}'."
                ));
            }
        } else if let Some(runbook) = runbook {
            match variable {
                None => errors.push(format!(
                    "FormValues.{name}: the runbook has no variable of that name (its prompted variables: {}).",
                    prompted_names(runbook)
                )),
                Some(v) if v.prompt.is_none() => not_prompted.push(v.name.clone()),
                Some(_) => {}
            }
        }
        form.insert(name.clone(), json!(text));
    }
    let Some(runbook) = runbook else {
        return form;
    };
    if !not_prompted.is_empty() {
        errors.push(format!(
            "FormValues may set only the runbook's prompted variables; not prompted: {} (prompted: {}). Whoever may edit the runbook can give a variable a Prompt.",
            not_prompted.join(", "),
            prompted_names(runbook)
        ));
    }
    let missing: Vec<String> = runbook
        .variables
        .iter()
        .filter(|v| v.prompt.as_ref().is_some_and(|p| p.required))
        .filter(|v| {
            let given = form
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(&v.name))
                .and_then(|(_, value)| value.as_str());
            given.or(v.value.as_deref()).is_none_or(|t| t.is_empty())
        })
        .map(|v| v.name.clone())
        .collect();
    if !missing.is_empty() {
        errors.push(format!(
            "FormValues must give a value for the required prompted variable(s): {}.",
            missing.join(", ")
        ));
    }
    form
}

fn prompted_names(runbook: &Runbook) -> String {
    let names: Vec<&str> = runbook
        .variables
        .iter()
        .filter(|v| v.prompt.is_some())
        .map(|v| v.name.as_str())
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The header a running task's script sends its `MUSTER_TASK_TOKEN` in.
pub const TASK_TOKEN_HEADER: &str = "x-muster-task-token";

/// `POST /api/{s}/runbookRuns` `{RunbookId, FormValues?, Comments?}`: queues a run; 201 with the
/// run, whose `TaskId` is the task to follow.
pub async fn create_run(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    headers: axum::http::HeaderMap,
    body: JsonBody,
) -> ApiResult {
    let body = body.object()?;
    check_space_id(body, &space)?;
    let mut errors = Vec::new();
    let runbook = match body.get("RunbookId") {
        Some(Value::String(wanted)) if !wanted.trim().is_empty() => {
            match runbook::find_runbook(&app, &space.id, wanted).await? {
                Some(runbook) => Some(runbook),
                None => {
                    errors.push(format!(
                        "RunbookId '{wanted}' names no runbook of space {}.",
                        space.id
                    ));
                    None
                }
            }
        }
        None | Some(Value::Null) => {
            errors.push("RunbookId is required: the runbook to run (its id or name).".into());
            None
        }
        Some(Value::String(_)) => {
            errors.push("RunbookId must not be empty.".into());
            None
        }
        Some(other) => {
            errors.push(format!(
                "RunbookId must be a string (a runbook's id or name), got {other}."
            ));
            None
        }
    };
    let form_values = read_form_values(body.get("FormValues"), runbook.as_ref(), &mut errors);
    let comments = match body.get("Comments") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            errors.push("Comments must be a string.".into());
            None
        }
    };
    let Some(runbook) = runbook.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    if runbook.steps.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Runbook '{}' has no steps to run.",
            runbook.name
        )));
    }
    // A running task's script that sends its token makes the run that task's child.
    let origin = match headers.get(TASK_TOKEN_HEADER) {
        None => None,
        Some(token) => Some(
            runbook::token_origin(&app, &space.id, token.to_str().unwrap_or_default())
                .await
                .map_err(ApiError::bad_request)?,
        ),
    };
    let (run, task) = runbook::queue_run(&app, &runbook, form_values, comments, origin)
        .await
        .map_err(ApiError::internal)?;
    super::tasks::task_created(&app, &user, &task).await;
    created(&links::runbook_run(&run))
}
