//! The walls between spaces: every route the router serves (its own list, so a new route cannot
//! escape), × every built-in role and a user with no role, × every spelling a path can take (id,
//! slug, `/api/spaces/…`, case, percent-encoding anywhere). Each answer must be what the permission
//! table says, and no answer to a user without a role there may carry a byte of the walled space.

use crate::support::{KEY, Server};
use muster_server::Rule;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

/// Every resource of the walled space carries this in its name, script output or secret.
const MARK: &str = "WALLB";

fn last_segment(link: &Value) -> String {
    link.as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

/// Percent-encodes the character at `index` of `text` (upper-case hex).
fn encode_at(text: &str, index: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.char_indices() {
        if i == index {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Percent-encodes every character of a path but its slashes (lower-case hex).
fn encode_all(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '/' => "/".to_string(),
            c => format!("%{:02x}", c as u32),
        })
        .collect()
}

/// The resource ids a template's parameters take in one space.
struct Ids {
    space_id: String,
    slug: String,
    by_collection: HashMap<&'static str, String>,
    fallback: String,
}

impl Ids {
    /// The concrete tail of a `/api/s/{space}/…` template (or a whole non-space template).
    fn fill(&self, tail: &str) -> String {
        let mut out = Vec::new();
        let mut previous = "";
        for segment in tail.split('/') {
            let filled = match segment {
                "{id}" => self
                    .by_collection
                    .get(previous)
                    .cloned()
                    .unwrap_or_else(|| self.fallback.clone()),
                "{target}" => "Spaces-999".to_string(),
                "{key}" => "APIKeys-999".to_string(),
                s => s.to_string(),
            };
            out.push(filled);
            previous = segment;
        }
        out.join("/")
    }

    /// Every spelling of a space-scoped route. Unprefixed forms name the default space only.
    fn spellings(&self, rest: &str, default_space: bool) -> Vec<String> {
        let rest = self.fill(rest);
        let rest = if rest.is_empty() {
            String::new()
        } else {
            format!("/{rest}")
        };
        let id = &self.space_id;
        let slug = &self.slug;
        let mut forms = vec![
            format!("/api/{id}{rest}"),
            format!("/api/spaces/{id}{rest}"),
            format!("/api/spaces/{slug}{rest}"),
            format!("/api/s/{id}{rest}"),
            format!("/api/{id}{rest}").to_uppercase(),
            format!("/api/spaces/{}{rest}", slug.to_uppercase()),
            format!("/api/{}{rest}", encode_at(id, 6)),
            format!("/api/spaces/{}{rest}", encode_at(slug, 0)),
            format!(
                "/api/{id}{}",
                encode_at(&rest, rest.len().saturating_sub(1))
            ),
            format!("/api{}", encode_all(&format!("/{id}{rest}"))),
            format!("/api/{id}{}", rest.replacen('/', "%2F", 1)),
            format!("/api/{id}{rest}/"),
        ];
        if rest.is_empty() {
            // `/api/spaces/{id}` with nothing after it is the space resource, another route.
            forms.retain(|f| !f.to_lowercase().starts_with("/api/spaces/"));
        }
        if default_space {
            let collection = rest.trim_start_matches('/').split('/').next().unwrap_or("");
            if muster_server::SCOPED_COLLECTIONS.contains(&collection) {
                forms.push(format!("/api{rest}"));
                forms.push(format!("/api{}", encode_at(&rest, 1)));
            }
        }
        forms
    }
}

/// A space's permissions as a built-in role grants them.
fn role_permissions(role: &str) -> BTreeSet<String> {
    muster_core::permissions::BUILT_IN_ROLES
        .iter()
        .find(|r| r.name == role)
        .map(|r| r.space.iter().map(|p| p.to_string()).collect())
        .unwrap_or_default()
}

/// What a user may do in the space a request names.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// The wall: 404, as for a space that does not exist.
    Unseen,
    /// 403, naming what is missing.
    Forbidden,
    /// Past the check: the handler answers (a 4xx for a bad body or an unknown id is fine), never
    /// the check's 403 nor the space's 404.
    Allowed,
}

fn expect_in_space(rule: Rule, granted: Option<&BTreeSet<String>>) -> Expect {
    let Some(granted) = granted.filter(|g| !g.is_empty()) else {
        return Expect::Unseen;
    };
    match rule {
        Rule::Space(None) => Expect::Allowed,
        Rule::Space(Some(permission)) if granted.contains(permission) => Expect::Allowed,
        Rule::Space(Some(_)) | Rule::SpaceAdmin => Expect::Forbidden,
        other => panic!("not a space rule: {other:?}"),
    }
}

struct Answer {
    status: u16,
    text: String,
    body: Value,
}

/// One request as a client sends it: a JSON `{}` body on writes.
fn call(
    client: &reqwest::blocking::Client,
    url: &str,
    key: &str,
    method: &str,
    path: &str,
) -> Answer {
    let verb = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client
        .request(verb, format!("{url}{path}"))
        .header("X-Octopus-ApiKey", key);
    if method != "GET" && method != "DELETE" {
        request = request.json(&json!({}));
    }
    let response = request.send().expect("the server answers");
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, text, body }
}

#[test]
fn every_route_every_role_every_spelling_answers_as_the_permission_table_says() {
    let server = Server::start();
    let table = muster_server::route_table();

    // The router's list is the OpenAPI document's, so no route escapes either.
    let shape = muster_server::route_shape;
    let routed: BTreeSet<(String, String)> = table
        .iter()
        .map(|(m, p, _)| (m.to_ascii_lowercase(), shape(p)))
        .collect();
    let documented: BTreeSet<(String, String)> = muster_server::openapi_operations()
        .into_iter()
        .map(|(m, p)| (m.to_ascii_lowercase(), shape(p)))
        .collect();
    assert_eq!(
        routed, documented,
        "the router and the OpenAPI document differ"
    );
    assert_eq!(routed.len(), table.len());
    // The document says what each operation needs, as the table does.
    let document = server.ok("/api/openapi.json");
    assert_eq!(
        document["paths"]["/api/{spaceId}/tasks/{taskId}/cancel"]["post"]["x-muster-permission"],
        "TaskCancel"
    );
    assert_eq!(
        document["paths"]["/api/teams"]["get"]["x-muster-permission"],
        "AdministerSystem"
    );
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            assert!(
                operation["x-muster-permission"].is_string(),
                "{method} {path} does not say what it needs"
            );
        }
    }
    let known: BTreeSet<&str> = muster_core::permissions::SPACE_PERMISSIONS
        .iter()
        .map(|(p, _)| *p)
        .collect();
    for (method, path, rule) in &table {
        if let Rule::Space(Some(p)) = rule {
            assert!(known.contains(p), "{method} {path} needs unknown {p}");
        }
        let scoped = path.starts_with("/api/s/{space}");
        assert_eq!(
            scoped,
            matches!(rule, Rule::Space(_) | Rule::SpaceAdmin),
            "{method} {path}: a route names a space exactly when its rule is a space's"
        );
    }

    // The walled space: the default space, full of marked resources.
    let wall = "Spaces-1";
    let pool = server
        .post(
            &format!("/api/{wall}/workerpools"),
            &json!({"Name": format!("{MARK} pool")}),
        )
        .assert_status(201)
        .clone();
    let mut endpoint = crate::support::listening_endpoint(1);
    endpoint["Uri"] = json!("https://127.0.0.1:1/");
    let worker = server
        .post(
            &format!("/api/{wall}/workers"),
            &json!({"Name": format!("{MARK} worker"), "WorkerPoolIds": [pool["Id"]], "Endpoint": endpoint}),
        )
        .assert_status(201)
        .clone();
    let runbook = server
        .post(
            &format!("/api/{wall}/runbooks"),
            &json!({"Name": format!("{MARK} runbook"),
                "Steps": [{"Name": "Say", "Actions": [{"ActionType": "Octopus.Script",
                    "Properties": {"Octopus.Action.Script.ScriptBody": format!("echo {MARK}-LOG #{{Secret}}"),
                        "Muster.Action.ExecutionLocation": "BuiltInWorker"}}]}],
                "Variables": [{"Name": "Secret", "Type": "Sensitive", "Value": format!("{MARK}-SECRET")}]}),
        )
        .assert_status(201)
        .clone();
    let run = server
        .post(
            &format!("/api/{wall}/runbookRuns"),
            &json!({"RunbookId": runbook["Id"]}),
        )
        .assert_status(201)
        .clone();
    server.wait_task(run["TaskId"].as_str().unwrap());
    let task = server.run_script(
        wall,
        json!({"ScriptBody": format!("echo {MARK}-LOG"), "Description": format!("{MARK} task")}),
    );
    let task_id = task["Id"].as_str().unwrap().to_string();
    let (_, log) = server.wait_task(&task_id);
    assert!(
        format!("{log:?}").contains(&format!("{MARK}-LOG")),
        "the marked task logs its mark"
    );
    let policy = server.ok(&format!("/api/{wall}/machinepolicies/all"))[0]["Id"].clone();
    let account = server
        .post(
            &format!("/api/{wall}/accounts"),
            &json!({"Name": format!("{MARK} account"), "AccountType": "UsernamePassword",
                "Username": format!("{MARK}-user"), "Password": {"NewValue": format!("{MARK}-SECRET")}}),
        )
        .assert_status(201)
        .clone();
    let walled = Ids {
        space_id: wall.into(),
        slug: "default".into(),
        by_collection: HashMap::from([
            ("workerpools", pool["Id"].as_str().unwrap().to_string()),
            ("workers", worker["Id"].as_str().unwrap().to_string()),
            ("machinepolicies", policy.as_str().unwrap().to_string()),
            ("accounts", account["Id"].as_str().unwrap().to_string()),
            ("runbooks", runbook["Id"].as_str().unwrap().to_string()),
            (
                "runbookprocesses",
                last_segment(&runbook["Links"]["RunbookProcess"]),
            ),
            ("variables", last_segment(&runbook["Links"]["Variables"])),
            ("runbookruns", run["Id"].as_str().unwrap().to_string()),
            ("tasks", task_id.clone()),
            ("rerun", task_id.clone()),
            ("spaces", wall.to_string()),
            ("users", "Users-1".to_string()),
        ]),
        fallback: task_id.clone(),
    };

    // The users' own space, where every id is unknown: an allowed call changes nothing.
    let own = server
        .post("/api/spaces", &json!({"Name": "Alpha"}))
        .assert_status(201)
        .clone();
    let own = Ids {
        space_id: own["Id"].as_str().unwrap().to_string(),
        slug: own["Slug"].as_str().unwrap().to_string(),
        by_collection: HashMap::new(),
        fallback: "Unknown-999".into(),
    };

    // One user per built-in space role, granted in their own space only, and one with no role.
    let mut users: Vec<(String, String, BTreeSet<String>)> = Vec::new();
    for role in [
        "Space manager",
        "Worker manager",
        "Task runner",
        "Space viewer",
        "",
    ] {
        let name = if role.is_empty() {
            "nobody".to_string()
        } else {
            role.replace(' ', "-").to_lowercase()
        };
        let (id, key) = server.new_user(&name);
        if !role.is_empty() {
            server.grant(&id, role, &own.space_id);
        }
        users.push((name, key, role_permissions(role)));
    }

    // (who, method, path, expectation or None for "the handler decides", body)
    let mut cases: Vec<(String, String, String, String, Option<Expect>)> = Vec::new();
    for (method, template, rule) in &table {
        if *rule == Rule::Anonymous {
            continue;
        }
        for (name, key, granted) in &users {
            match rule {
                Rule::Space(_) | Rule::SpaceAdmin => {
                    let rest = template
                        .strip_prefix("/api/s/{space}")
                        .unwrap()
                        .trim_start_matches('/');
                    for path in walled.spellings(rest, true) {
                        cases.push((
                            name.clone(),
                            key.clone(),
                            method.clone(),
                            path,
                            Some(Expect::Unseen),
                        ));
                    }
                    let expect = expect_in_space(*rule, Some(granted));
                    for path in own.spellings(rest, false) {
                        cases.push((
                            name.clone(),
                            key.clone(),
                            method.clone(),
                            path,
                            Some(expect),
                        ));
                    }
                }
                Rule::Admin => {
                    let path = walled.fill(template);
                    for spelled in [
                        path.clone(),
                        path.to_uppercase(),
                        encode_at(&path, 6),
                        encode_all(&path),
                    ] {
                        cases.push((
                            name.clone(),
                            key.clone(),
                            method.clone(),
                            spelled,
                            Some(Expect::Forbidden),
                        ));
                    }
                }
                Rule::User => {
                    let path = walled.fill(template);
                    for spelled in [path.clone(), path.to_uppercase(), encode_at(&path, 6)] {
                        cases.push((name.clone(), key.clone(), method.clone(), spelled, None));
                    }
                }
                Rule::Anonymous => {}
            }
        }
        // The administrator passes every check in the users' space.
        if let Rule::Space(_) | Rule::SpaceAdmin = rule {
            let rest = template
                .strip_prefix("/api/s/{space}")
                .unwrap()
                .trim_start_matches('/');
            for path in own.spellings(rest, false) {
                cases.push((
                    "admin".into(),
                    KEY.into(),
                    method.clone(),
                    path,
                    Some(Expect::Allowed),
                ));
            }
        }
    }
    assert!(cases.len() > 5000, "only {} cases", cases.len());

    let failures = std::sync::Mutex::new(Vec::<String>::new());
    let chunk = cases.len().div_ceil(4);
    std::thread::scope(|scope| {
        for part in cases.chunks(chunk) {
            let (url, failures) = (&server.url, &failures);
            scope.spawn(move || {
                let client = crate::support::client();
                for (who, key, method, path, expect) in part {
                    let reply = call(&client, url, key, method, path);
                    let message = reply.body["ErrorMessage"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    let wall_404 = reply.status == 404
                        && (message.contains("was not found")
                            && (message.to_lowercase().contains("'spaces-")
                                || message.to_lowercase().contains("'alpha'")
                                || message.to_lowercase().contains("'default'")
                                || message.contains("'space'")));
                    let mut wrong = Vec::new();
                    if reply.status >= 500 || reply.status == 401 {
                        wrong.push("a 5xx or 401".to_string());
                    }
                    if who != "admin" && reply.text.contains(MARK) {
                        wrong.push(format!("leaks {MARK}"));
                    }
                    match expect {
                        Some(Expect::Unseen) if reply.status != 404 => {
                            wrong.push("not the wall's 404".into())
                        }
                        Some(Expect::Forbidden) if reply.status != 403 => {
                            wrong.push("not a 403".into())
                        }
                        Some(Expect::Allowed) if reply.status == 403 || wall_404 => {
                            wrong.push("refused, though allowed".into())
                        }
                        None if reply.status == 403 && method == "GET" => {
                            wrong.push("a user route refused a read".into())
                        }
                        _ => {}
                    }
                    if !wrong.is_empty() {
                        failures.lock().unwrap().push(format!(
                            "{who}: {method} {path} ({expect:?}) → {} {}: {}",
                            reply.status,
                            wrong.join(", "),
                            reply.text.chars().take(160).collect::<String>()
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} answers broke the permission table:\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The walled space's task is still whole: nothing above could touch it.
    let (after, _) = server.wait_task(&task_id);
    assert_eq!(after["State"], "Success");
}

#[test]
fn a_path_is_decoded_once_and_double_encoding_is_refused() {
    let server = Server::start();
    // `%2541` would be `%41` to one reader and `A` to another: refused outright.
    for path in [
        "/api/Spaces-1/w%256Frkers",
        "/api/Spaces%252D1/workers",
        "/api/%00/workers",
        "/api/Spaces-1/%ff",
        "/api/Spaces-1/workers%3Fskip=0",
        "/api/Spaces-1/workers%23top",
    ] {
        let reply = server.get(path);
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert!(reply.body["ErrorMessage"].is_string(), "{path}");
    }
    // One encoding of anything reads as the plain path.
    for path in [
        "/api/Spaces%2D1/workers",
        "/api/Spaces-1/w%6Frkers",
        "/api/spaces/%64efault/workers",
        "/api%2FSpaces-1%2Fworkers",
    ] {
        server.get(path).assert_status(200);
    }
}

#[test]
fn the_builtin_worker_run_as_another_user_cannot_read_the_data_directory() {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        eprintln!("skipped: switching the built-in worker's user needs a server running as root");
        return;
    }
    let server = Server::start_with(&["--builtin-worker-user", "nobody"]);
    let data = server.dir.display().to_string();
    let script = format!(
        "id -un\n\
         cat '{data}/muster.db' >/dev/null 2>&1 && echo READ-DB || echo DENIED-DB\n\
         cat '{data}/secrets.key' >/dev/null 2>&1 && echo READ-KEY || echo DENIED-KEY\n\
         ls '{data}' >/dev/null 2>&1 && echo LISTED || echo DENIED-LIST\n\
         cat /proc/$PPID/environ >/dev/null 2>&1 && echo READ-ENV || echo DENIED-ENV\n\
         echo hi > own-file && cat own-file && stat -c %a script.sh"
    );
    let task = server.run_script("Spaces-1", json!({"ScriptBody": script}));
    let (done, lines) = server.wait_task(task["Id"].as_str().unwrap());
    let printed: Vec<String> = lines
        .iter()
        .map(|l| l["MessageText"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(done["State"], "Success", "{printed:?}");
    for expected in [
        "nobody",
        "DENIED-DB",
        "DENIED-KEY",
        "DENIED-LIST",
        "DENIED-ENV",
        "hi",
        "600",
    ] {
        assert!(
            printed.iter().any(|l| l == expected),
            "{expected} not in {printed:?}"
        );
    }
    // A user that does not exist, or root, is refused at start.
    let dir = tempfile::tempdir().unwrap();
    let refused = Server::start_in(dir.path(), &["--builtin-worker-user", "no-such-user-here"]);
    assert!(refused.is_err_and(|e| e.contains("no user 'no-such-user-here'")));
    let refused = Server::start_in(dir.path(), &["--builtin-worker-user", "root"]);
    assert!(refused.is_err_and(|e| e.contains("other than root")));
}
