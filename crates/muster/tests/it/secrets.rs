//! Secrets: sensitive values masked in every form a script prints them in by accident.

use crate::support::{KEY, Server, cli};
use serde_json::{Value, json};

/// Creates a runbook from the CLI's short form (JSON is YAML too).
fn create(server: &Server, runbook: &Value) {
    let path = server.dir.join("runbook.json");
    std::fs::write(&path, runbook.to_string()).unwrap();
    let out = cli(
        server,
        &["runbook", "create", "--file", path.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a runbook with the CLI; (exit code, its task's raw log).
fn run(server: &Server, name: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = cli(server, &[&["runbook", "run", name], extra].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let task = stderr
        .split_whitespace()
        .find(|w| w.starts_with("ServerTasks-"))
        .unwrap_or_else(|| panic!("the CLI names the task: {stderr}"))
        .to_string();
    let raw = server.get(&format!("/api/tasks/{task}/raw")).text;
    (out.status.code(), raw)
}

/// The secret's escaped forms (`set -x`, `printf %q`, `$'…'`, JSON, `repr`, URL-encoding) never
/// reach the log: every one of the script's labelled lines is there, masked.
#[test]
fn a_secret_with_quotes_backslashes_and_dollars_is_masked_however_a_script_prints_it() {
    let server = Server::start();
    // Every form of either secret contains "ecret" or "zqx".
    let secret = r#"it's a "$ecret" \ path"#;
    let other = "tab\tzqx \u{fc}\nsecond-zqy";
    let bash = r#"s=$(cat <<'EOF'
#{Secret}
EOF
)
o=$(cat <<'EOF'
#{Other}
EOF
)
set -x
: "trace $s"
set +x
printf 'q1 %q\n' "$s"
printf 'q2 %q\n' "$o"
echo "plain $s"
"#;
    let python = r##"import json, urllib.parse
s = r"""#{Secret}"""
o = r"""#{Other}"""
print("j1", json.dumps(s))
print("j2", json.dumps({"pw": o}))
print("j3", json.dumps(o, ensure_ascii=False))
print("r1", repr(s))
print("r2", [s, o])
print("r3", repr("don't " + s))
print("u1", urllib.parse.quote(s))
print("u2", urllib.parse.quote_plus(s))
print("u3", urllib.parse.quote(o, safe="").lower())
"##;
    create(
        &server,
        &json!({
            "name": "Leaky",
            "variables": {
                "Secret": {"value": secret, "sensitive": true},
                "Other": {"value": other, "sensitive": true},
            },
            "steps": [
                {"name": "Bash", "script": bash, "on": "builtin"},
                {"name": "Python", "script": python, "syntax": "Python", "on": "builtin"},
            ],
        }),
    );
    let (code, raw) = run(&server, "Leaky", &[]);
    assert_eq!(code, Some(0), "{raw}");
    for fragment in ["ecret", "zqx", "zqy"] {
        assert!(!raw.contains(fragment), "'{fragment}' in the log:\n{raw}");
    }
    for label in [
        "+ : ", "q1 ", "q2 ", "plain ", "j1 ", "j2 ", "j3 ", "r1 ", "r2 ", "r3 ", "u1 ", "u2 ",
        "u3 ",
    ] {
        assert!(
            raw.lines()
                .any(|l| l.contains(label) && l.contains("********")),
            "no masked line '{label}' in:\n{raw}"
        );
    }
}

/// A run's `FormValues` set only prompted variables (a required one must be given), and a script
/// reads them with `get_octopusvariable` as data: a value full of shell and Python syntax runs
/// nothing.
#[test]
fn form_values_set_only_prompted_variables_and_scripts_read_them_as_data() {
    let server = Server::start();
    let bash = r#"v=$(get_octopusvariable WHO)
echo "bash got [$v]"
echo "fixed [$(get_octopusvariable Fixed)] none [$(get_octopusvariable Nope)]"
echo "output [$(get_octopusvariable 'Octopus.Action[Set].Output.Color')]"
"#;
    let python = r#"print("python got [" + get_octopusvariable("who") + "]")
try:
    get_octopusvariable("Nope")
except KeyError:
    print("python: no Nope")
"#;
    create(
        &server,
        &json!({
            "name": "Data",
            "variables": {
                "Fixed": "keep",
                "Who": {"prompt": {"label": "Who is it?", "required": true}},
                "Optional": {"value": "o", "prompt": true},
            },
            "steps": [
                {"name": "Set", "script": "set_octopusvariable Color 'blue sky'", "on": "builtin"},
                {"name": "Bash", "script": bash, "on": "builtin"},
                {"name": "Python", "script": python, "syntax": "Python", "on": "builtin"},
            ],
        }),
    );
    let runs = "/api/Spaces-1/runbookRuns";
    let refused = |form: Value| {
        server
            .post(runs, &json!({"RunbookId": "Data", "FormValues": form}))
            .assert_error(400)
            .text
            .clone()
    };
    let text = refused(json!({"Fixed": "changed", "Who": "x"}));
    assert!(
        text.contains("not prompted: Fixed") && text.contains("prompted: Who, Optional"),
        "{text}"
    );
    assert!(refused(json!({"Optional": "x"})).contains("required prompted variable(s): Who"));
    assert!(refused(json!({"Who": ""})).contains("required prompted variable(s): Who"));
    assert!(refused(json!({"Who": "x", "Nope": 1})).contains("no variable of that name"));

    let pwned = server.dir.join("pwned");
    let who = format!(
        "x\"; touch '{0}'; echo \"$(touch '{0}')` + \"\"\"\nimport os; os.system('touch {0}')",
        pwned.display()
    );
    let run = server
        .post(
            runs,
            &json!({"RunbookId": "Data", "FormValues": {"who": who}}),
        )
        .assert_status(201)
        .clone();
    let (task, lines) = server.wait_task(run["TaskId"].as_str().unwrap());
    let texts: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["MessageText"].as_str())
        .collect();
    assert_eq!(task["State"], "Success", "{texts:#?}");
    let first_line = who.lines().next().unwrap();
    assert!(
        texts.contains(&format!("bash got [{first_line}").as_str()),
        "{texts:#?}"
    );
    assert!(texts.contains(&"fixed [keep] none []"), "{texts:#?}");
    assert!(texts.contains(&"output [blue sky]"), "{texts:#?}");
    assert!(
        texts.contains(&format!("python got [{first_line}").as_str()),
        "{texts:#?}"
    );
    assert!(texts.contains(&"python: no Nope"), "{texts:#?}");
    assert!(!pwned.exists(), "a value ran as code");

    // Once the runbook no longer prompts for Who, a rerun of that run is refused too.
    let runbook = server.ok("/api/Spaces-1/runbooks/all")[0].clone();
    let set_path = runbook["Links"]["Variables"].as_str().unwrap().to_string();
    let mut set = server.ok(&set_path);
    for variable in set["Variables"].as_array_mut().unwrap() {
        variable["Prompt"] = Value::Null;
    }
    server
        .put(&set_path, &json!({"Variables": set["Variables"]}))
        .assert_status(200);
    let rerun = server
        .post(
            &format!("/api/tasks/rerun/{}", task["Id"].as_str().unwrap()),
            &json!({}),
        )
        .assert_error(400)
        .text
        .clone();
    assert!(rerun.contains("not prompted: Who"), "{rerun}");
}

/// At rest: the data directory is 0700, the database files and the key file 0600, and neither a
/// sensitive variable nor a value a run gave a sensitive prompted variable is in the database's
/// bytes; a run still reads both.
#[test]
fn sensitive_values_are_sealed_at_rest_and_runs_still_read_them() {
    let server = Server::start();
    let secret = "at-rest-s3cret-zz";
    let given = "form-value-s3cret-yy";
    let python = r#"for name in ("Secret", "Token"):
    print("reversed", name, get_octopusvariable(name)[::-1])
"#;
    create(
        &server,
        &json!({
            "name": "Sealed",
            "variables": {
                "Secret": {"value": secret, "sensitive": true},
                "Token": {"sensitive": true, "value": "default-s3cret", "prompt": true},
            },
            "steps": [{"name": "Read", "script": python, "syntax": "Python", "on": "builtin"}],
        }),
    );
    let (code, raw) = run(&server, "Sealed", &["--var", &format!("Token={given}")]);
    assert_eq!(code, Some(0), "{raw}");
    let reversed = |s: &str| s.chars().rev().collect::<String>();
    assert!(
        raw.contains(&format!("reversed Secret {}", reversed(secret))),
        "{raw}"
    );
    assert!(
        raw.contains(&format!("reversed Token {}", reversed(given))),
        "{raw}"
    );

    use std::os::unix::fs::PermissionsExt;
    let mode = |name: &str| {
        std::fs::metadata(server.dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    for file in ["muster.db", "muster.db-wal", "muster.db-shm", "secrets.key"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    for file in ["muster.db", "muster.db-wal"] {
        let bytes = std::fs::read(server.dir.join(file)).unwrap();
        for plain in [secret, given, "default-s3cret"] {
            assert!(
                !bytes.windows(plain.len()).any(|w| w == plain.as_bytes()),
                "{file} holds {plain} in the clear"
            );
        }
    }
    // What is not secret is still stored as it is (the test reads the right files).
    let db: Vec<u8> = ["muster.db", "muster.db-wal"]
        .iter()
        .flat_map(|f| std::fs::read(server.dir.join(f)).unwrap())
        .collect();
    assert!(db.windows(6).any(|w| w == b"Sealed"));
}

/// Failed API keys are logged with the address they came from; after 10 within a minute that
/// address gets 429 with `Retry-After` (even with a right key), while other clients are unaffected.
#[test]
fn failed_api_keys_are_logged_with_their_address_and_then_slowed() {
    let server = Server::start();
    let wrong = "API-WRONGWRONGWRONGWRONGWRONG1";
    for _ in 0..10 {
        server
            .as_user(wrong, "GET", "/api/spaces", None)
            .assert_error(401);
    }
    let response = crate::support::client()
        .get(format!("{}/api/spaces", server.url))
        .header("X-Octopus-ApiKey", wrong)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let body: Value = response.json().unwrap();
    assert!(
        body["ErrorMessage"]
            .as_str()
            .unwrap()
            .contains("wrong API key"),
        "{body}"
    );
    assert!(body["Errors"].is_array());
    // A right key from the same address waits too; the anonymous root document does not.
    server.get("/api/spaces").assert_error(429);
    server.get("/api").assert_status(200);
    // Another address (127.0.0.2 is loopback too) is heard.
    let other = reqwest::blocking::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    let response = other
        .get(format!("{}/api/spaces", server.url))
        .header("X-Octopus-ApiKey", KEY)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        log.matches("refused an API key from 127.0.0.1:").count() >= 10,
        "{log}"
    );
    assert!(!log.contains(wrong), "the key itself is never logged");
}
