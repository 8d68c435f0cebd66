//! The server on PostgreSQL (`--database postgres://…`): a database of its own per test
//! (`muster_store::testing`), dropped afterwards.

use crate::support::Server;
use muster_store::testing::TestDatabase;
use serde_json::{Value, json};

fn id(task: &Value) -> String {
    task["Id"].as_str().unwrap().to_string()
}

/// A script task runs to Success with its store on PostgreSQL, and the task, its log and the
/// space's resources are there after a restart. Nothing is kept in SQLite meanwhile.
#[test]
fn a_script_task_runs_to_success_on_postgres_and_survives_a_restart() {
    let database = TestDatabase::create();
    let temp = tempfile::tempdir().unwrap();
    let args = ["--database", database.url()];
    let server = Server::start_in(temp.path(), &args).expect("the server starts on PostgreSQL");
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("store on postgres")),
        "{:?}",
        server.banner
    );
    let task = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "echo hello from postgres\necho oops >&2", "Syntax": "Bash"}),
    );
    let (done, lines) = server.wait_task(&id(&task));
    assert_eq!(done["State"], "Success");
    assert_eq!(done["HasWarningsOrErrors"], true);
    let texts: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["MessageText"].as_str())
        .collect();
    assert!(texts.contains(&"hello from postgres"), "{texts:?}");
    let pool = server.default_pool();
    assert!(!temp.path().join("muster.db").exists(), "no SQLite file");
    assert!(
        temp.path().join("secrets.key").exists(),
        "the key stays in the data directory"
    );
    server.stop();

    let server = Server::start_in(temp.path(), &args).expect("the server starts again");
    let again = server.ok(&format!("/api/tasks/{}", id(&task)));
    assert_eq!(again["State"], "Success");
    assert!(
        server
            .get(&format!("/api/tasks/{}/raw", id(&task)))
            .text
            .contains("hello from postgres")
    );
    assert_eq!(server.default_pool(), pool);
    // Ids go on from where they were.
    let next = server.run_script(
        "Spaces-1",
        json!({"ScriptBody": "exit 3", "Syntax": "Bash"}),
    );
    assert_ne!(id(&next), id(&task));
    let (failed, _) = server.wait_task(&id(&next));
    assert_eq!(failed["State"], "Failed");
    let list = server.ok("/api/Spaces-1/tasks?states=Success,Failed");
    assert_eq!(list["TotalResults"], 2, "{list}");

    // A second node needs the database's key: a data directory without it is refused, saying so.
    let other = tempfile::tempdir().unwrap();
    let refused = Server::start_in(other.path(), &args)
        .err()
        .expect("refused");
    assert!(refused.contains("copy secrets.key"), "{refused}");
}
