//! Secrets: sensitive values masked in every form a script prints them in by accident.

use crate::support::{KEY, Server, muster};
use serde_json::{Value, json};
use std::process::Output;

fn cli(server: &Server, args: &[&str]) -> Output {
    muster()
        .args(args)
        .env("MUSTER_SERVER", &server.url)
        .env("MUSTER_API_KEY", KEY)
        .output()
        .expect("muster runs")
}

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
