//! The store test suite. Every test in `suite!` is one body run on each engine: on SQLite (a file in
//! a temporary directory) and on PostgreSQL (a database of its own, `testing::TestDatabase`, made
//! for the test and dropped after it). A PostgreSQL that cannot be reached fails the PostgreSQL
//! half, saying what to do; it is never skipped. Tests of what only one engine has (SQLite's files,
//! its upgrades from earlier releases) follow in `sqlite_only`.

use crate::engine::{Engine as _, on_engine};
use crate::{DocKind, Row, Store, StoreError, TaskQuery};
use muster_core::resources::{Event, LogLine, Space, Task, WorkerPool};
use muster_core::runbooks::{Runbook, Variable};
use muster_core::time::{Timestamp, now};
use muster_core::{LogCategory, TaskState};
use std::path::{Path, PathBuf};

/// A store opened for one test on one engine, and what it needs kept alive.
struct Opened {
    store: Store,
    dir: tempfile::TempDir,
    database: Option<crate::testing::TestDatabase>,
}

#[derive(Clone, Copy)]
enum On {
    Sqlite,
    Postgres,
}

impl On {
    async fn open(self) -> Opened {
        let dir = tempfile::tempdir().unwrap();
        match self {
            On::Sqlite => Opened {
                store: Store::open_sqlite(&dir.path().join("muster.db"))
                    .await
                    .unwrap(),
                dir,
                database: None,
            },
            On::Postgres => {
                let database = crate::testing::TestDatabase::create();
                let store = Store::open(database.url(), dir.path()).await.unwrap();
                Opened {
                    store,
                    dir,
                    database: Some(database),
                }
            }
        }
    }
}

impl Opened {
    /// Opens the same database again, with the key file `key` (the data directory's by default).
    async fn reopen(&self, key: Option<&Path>) -> crate::Result<Store> {
        let key = key.map_or_else(|| self.dir.path().join(crate::KEY_FILE), Path::to_path_buf);
        match &self.database {
            None => {
                let path = self.dir.path().join("muster.db");
                if key != self.dir.path().join(crate::KEY_FILE) {
                    std::fs::copy(&key, self.dir.path().join(crate::KEY_FILE)).unwrap();
                }
                Store::open_sqlite(&path).await
            }
            Some(database) => Store::open_postgres(database.url(), &key).await,
        }
    }
}

/// Generates, for each named test body `async fn name(store: &Opened)`, one test per engine.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let opened = super::On::Sqlite.open().await;
                    super::$name(&opened).await;
                    opened.store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let opened = super::On::Postgres.open().await;
                    super::$name(&opened).await;
                    opened.store.close().await;
                }
            )*
        }
    };
}

suite!(
    a_node_registers_beats_and_is_drained,
    an_agents_link_is_held_by_one_node_at_a_time,
    a_page_of_the_newest_documents_in_some_spaces,
    a_batch_of_long_lines_is_stored_in_bounded_chunks,
    documents_are_written_found_and_deleted,
    names_are_unique_per_kind_and_space_without_case,
    a_space_goes_with_everything_in_it,
    ids_count_up_per_kind_and_meta_values_are_kept,
    a_task_is_claimed_once_and_ends_once,
    tasks_are_listed_filtered_and_paged,
    log_lines_and_a_final_state_are_one_commit,
    sensitive_values_are_sealed_and_only_their_key_opens_them,
);

fn task(space: &str, name: &str, state: TaskState) -> Task {
    // Stored dates keep milliseconds.
    let at = muster_core::time::parse_date(&muster_core::time::format_date(&now())).unwrap();
    Task {
        id: String::new(),
        space_id: space.into(),
        name: name.into(),
        description: format!("{name} task"),
        arguments: serde_json::Map::from_iter([("Script".to_string(), "echo hi".into())]),
        state,
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
    }
}

/// Inserts a new task; returns it with its id.
async fn queue(store: &Store, space: &str, name: &str) -> Task {
    let mut new = task(space, name, TaskState::Queued);
    store
        .insert_new_task(&mut new, |t| Event {
            space_id: Some(t.space_id.clone()),
            message: format!("queued {}", t.id),
            ..Default::default()
        })
        .await
        .unwrap();
    new
}

fn line(seq: i64, text: &str) -> LogLine {
    LogLine {
        seq,
        occurred_at: now(),
        category: LogCategory::Info,
        message_text: text.into(),
        step: None,
    }
}

/// How many chunk rows a task's log has.
async fn chunk_count(store: &Store, num: i64) -> usize {
    let (mut count, mut after) = (0, 0);
    while let Some((last, _)) =
        on_engine!(&*store.engine, e => e.chunk_after(num, after).await).unwrap()
    {
        count += 1;
        after = last;
    }
    count
}

/// Events are paged by the database, newest first (Events-10 after Events-9), in the spaces
/// asked for.
async fn a_page_of_the_newest_documents_in_some_spaces(opened: &Opened) {
    let store = &opened.store;
    for n in 1..=12 {
        let event = Event {
            id: format!("Events-{n}"),
            space_id: match n % 3 {
                0 => None,
                1 => Some("Spaces-1".into()),
                _ => Some("Spaces-2".into()),
            },
            ..Default::default()
        };
        store.put(&event).await.unwrap();
    }
    let ids = |page: Vec<Event>| page.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let (total, page) = store.page_newest::<Event>(None, 1, 3).await.unwrap();
    assert_eq!(total, 12);
    assert_eq!(ids(page), ["Events-11", "Events-10", "Events-9"]);
    let spaces = ["Spaces-1".to_string(), String::new()];
    let (total, page) = store
        .page_newest::<Event>(Some(&spaces), 0, 100)
        .await
        .unwrap();
    assert_eq!(total, 8);
    assert_eq!(
        ids(page),
        [
            "Events-12",
            "Events-10",
            "Events-9",
            "Events-7",
            "Events-6",
            "Events-4",
            "Events-3",
            "Events-1"
        ]
    );
    let (total, page) = store.page_newest::<Event>(Some(&[]), 0, 100).await.unwrap();
    assert_eq!((total, page.len()), (0, 0));
    let (total, page) = store
        .page_newest::<Event>(Some(&spaces), 7, u64::MAX)
        .await
        .unwrap();
    assert_eq!((total, ids(page)), (8, vec!["Events-1".to_string()]));
}

/// Long lines of one batch are split over chunks of about 1 MiB, and read back whole and in
/// order from any point.
async fn a_batch_of_long_lines_is_stored_in_bounded_chunks(opened: &Opened) {
    let store = &opened.store;
    let lines: Vec<_> = (1..=5)
        .map(|seq| {
            let line = line(seq, &format!("{seq}{}", "x".repeat(600 * 1024)));
            ("ServerTasks-3".to_string(), line, Some(seq as u64 + 100))
        })
        .collect();
    store.append_logs(&lines).await.unwrap();
    assert_eq!(
        chunk_count(store, 3).await,
        5,
        "600 KiB lines take a chunk each"
    );
    let seqs = |lines: &[LogLine]| -> Vec<i64> { lines.iter().map(|l| l.seq).collect() };
    // A read answers about 1 MiB of messages at most, and pages on from its last line.
    let read = store.logs("ServerTasks-3", 2, 100).await.unwrap();
    assert_eq!(seqs(&read), [3, 4]);
    assert!(read[0].message_text.starts_with("3xxx"));
    let rest = store.logs("ServerTasks-3", 4, 100).await.unwrap();
    assert_eq!(seqs(&rest), [5]);
    assert!(
        store
            .logs("ServerTasks-3", 5, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // The tail is read from the end, by lines and by bytes, and counts what comes before it.
    let (tail, earlier) = store.logs_tail("ServerTasks-3", 2, 4 << 20).await.unwrap();
    assert_eq!((seqs(&tail), earlier), (vec![4, 5], 3));
    let (tail, earlier) = store.logs_tail("ServerTasks-3", 100, 1).await.unwrap();
    assert_eq!((seqs(&tail), earlier), (vec![5], 4));
    let (tail, earlier) = store.logs_tail("ServerTasks-9", 100, 1).await.unwrap();
    assert_eq!((seqs(&tail), earlier), (vec![], 0));
    assert_eq!(store.last_source_seq("ServerTasks-3").await.unwrap(), 105);
    assert_eq!(store.last_log_seq("ServerTasks-3").await.unwrap(), 5);
    let bytes = store.log_bytes("ServerTasks-3").await.unwrap();
    assert!(bytes > 5 * 600 * 1024, "{bytes}");
    assert_eq!(store.log_bytes("ServerTasks-9").await.unwrap(), 0);
}

fn pool(id: &str, space: &str, name: &str) -> WorkerPool {
    WorkerPool {
        id: id.into(),
        space_id: space.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// An agent's link is recorded where it opened; a node forgets only a link it holds itself, and a
/// starting node holds none; a node's comms address is kept.
async fn an_agents_link_is_held_by_one_node_at_a_time(opened: &Opened) {
    let store = &opened.store;
    let at = muster_core::time::parse_date("2026-12-01T10:00:00.000+00:00").unwrap();
    let mut notes = store.notes();
    store.set_agent_link("AAAA", "n1", &at).await.unwrap();
    assert_eq!(
        notes.recv().await.unwrap(),
        crate::Note::Agent("AAAA".into())
    );
    store.set_agent_link("BBBB", "n1", &at).await.unwrap();
    // The agent moved: n2 holds it now, and n1's late close does not forget it.
    store.set_agent_link("AAAA", "n2", &at).await.unwrap();
    store.clear_agent_link("AAAA", "n1").await.unwrap();
    assert_eq!(
        store.agent_link("AAAA").await.unwrap().as_deref(),
        Some("n2")
    );
    store.clear_agent_link("AAAA", "n2").await.unwrap();
    assert_eq!(store.agent_link("AAAA").await.unwrap(), None);
    store.set_agent_link("CCCC", "n2", &at).await.unwrap();
    store.clear_agent_links_of("n1").await.unwrap();
    assert_eq!(
        store.agent_links().await.unwrap(),
        [("CCCC".to_string(), "n2".to_string())]
    );
    store.node_seen("n2", 5, false, &at, "1.0.0").await.unwrap();
    store
        .set_node_facts("n2", "127.0.0.1:10943", false)
        .await
        .unwrap();
    let node = store.node("n2").await.unwrap().unwrap();
    assert_eq!(node.comms_address.as_deref(), Some("127.0.0.1:10943"));
    assert!(!node.builtin_worker);
    assert_eq!(node.incarnation, 0);
    // Presumed dead only while its last heartbeat is older than the mark.
    let earlier = muster_core::time::parse_date("2026-12-01T09:59:00.000+00:00").unwrap();
    assert!(!store.presume_dead("n2", &earlier).await.unwrap());
    let later = muster_core::time::parse_date("2026-12-01T10:01:00.000+00:00").unwrap();
    assert!(store.presume_dead("n2", &later).await.unwrap());
    assert_eq!(store.node("n2").await.unwrap().unwrap().incarnation, 1);
    store.set_agent_link("DDDD", "n2", &at).await.unwrap();
    assert!(store.delete_node("n2").await.unwrap());
    assert!(!store.delete_node("n2").await.unwrap());
    assert_eq!(store.node("n2").await.unwrap(), None);
    assert_eq!(store.agent_links().await.unwrap(), []);
}

/// A node registers with its cap at its first heartbeat; later beats write when it was seen and
/// keep the stored cap unless one is given; an administrator's write drains it.
async fn a_node_registers_beats_and_is_drained(opened: &Opened) {
    let store = &opened.store;
    let first = muster_core::time::parse_date("2026-12-01T10:00:00.000+00:00").unwrap();
    let later = muster_core::time::parse_date("2026-12-01T10:00:05.000+00:00").unwrap();
    let node = store
        .node_seen("node-a", 5, false, &first, "1.0.0")
        .await
        .unwrap();
    assert_eq!(node.max_concurrent_tasks, 5);
    assert!(!node.is_in_maintenance_mode);
    assert_eq!(node.last_seen, first);
    let node = store
        .node_seen("node-a", 9, false, &later, "1.0.1")
        .await
        .unwrap();
    assert_eq!(
        (
            node.max_concurrent_tasks,
            node.last_seen,
            node.version.as_str()
        ),
        (5, later, "1.0.1")
    );
    let node = store
        .node_seen("node-a", 9, true, &later, "1.0.1")
        .await
        .unwrap();
    assert_eq!(node.max_concurrent_tasks, 9);
    store
        .node_seen("node-b", 2, false, &first, "1.0.0")
        .await
        .unwrap();
    let drained = store
        .update_node("node-a", 3, true, &later, Some("admin"))
        .await
        .unwrap()
        .unwrap();
    assert!(drained.is_in_maintenance_mode);
    assert_eq!(drained.max_concurrent_tasks, 3);
    assert_eq!(drained.last_modified_by.as_deref(), Some("admin"));
    // A heartbeat keeps the administrator's choice.
    let node = store
        .node_seen("node-a", 9, false, &later, "1.0.1")
        .await
        .unwrap();
    assert!(node.is_in_maintenance_mode);
    assert_eq!(node.max_concurrent_tasks, 3);
    let names: Vec<String> = store
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["node-a", "node-b"]);
    assert!(
        store
            .update_node("node-c", 1, true, &later, None)
            .await
            .unwrap()
            .is_none()
    );
}

/// A document reads back as written, is listed in id order (Ids-2 before Ids-10) in its space
/// only, is found by its extra column, is replaced in place, and is gone once deleted; an update
/// does not bring it back. A write of a space, pool or worker moves the generation.
async fn documents_are_written_found_and_deleted(opened: &Opened) {
    let store = &opened.store;
    let generation = store.workers_generation();
    for (id, space, name) in [
        ("WorkerPools-10", "Spaces-1", "Ten"),
        ("WorkerPools-2", "Spaces-1", "Two"),
        ("WorkerPools-3", "Spaces-2", "Three"),
    ] {
        store.put(&pool(id, space, name)).await.unwrap();
    }
    assert!(store.workers_generation() > generation);
    let got: WorkerPool = store.get("WorkerPools-10").await.unwrap().unwrap();
    assert_eq!(got, pool("WorkerPools-10", "Spaces-1", "Ten"));
    assert!(
        store
            .get::<WorkerPool>("WorkerPools-9")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get::<Space>("WorkerPools-10")
            .await
            .unwrap()
            .is_none(),
        "kinds apart"
    );
    let names = |pools: Vec<WorkerPool>| pools.into_iter().map(|p| p.name).collect::<Vec<_>>();
    assert_eq!(names(store.list("Spaces-1").await.unwrap()), ["Two", "Ten"]);
    assert_eq!(
        names(store.list_all().await.unwrap()),
        ["Two", "Three", "Ten"]
    );
    assert!(
        store
            .list::<WorkerPool>("Spaces-3")
            .await
            .unwrap()
            .is_empty()
    );

    let space = Space {
        id: "Spaces-7".into(),
        name: "Seven".into(),
        slug: "seven".into(),
        ..Default::default()
    };
    store.put(&space).await.unwrap();
    let found: Vec<Space> = store.find_by_ext("seven").await.unwrap();
    assert_eq!(found, std::slice::from_ref(&space));
    assert!(
        store
            .find_by_ext::<Space>("Seven")
            .await
            .unwrap()
            .is_empty(),
        "ext is exact"
    );
    let renamed = Space {
        name: "Seventh".into(),
        slug: "seventh".into(),
        ..space
    };
    store.put(&renamed).await.unwrap();
    assert!(
        store
            .find_by_ext::<Space>("seven")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list_all::<Space>().await.unwrap(), [renamed]);

    assert!(store.delete::<WorkerPool>("WorkerPools-2").await.unwrap());
    assert!(!store.delete::<WorkerPool>("WorkerPools-2").await.unwrap());
    assert_eq!(names(store.list("Spaces-1").await.unwrap()), ["Ten"]);

    // An update changes a document that exists and never brings a deleted one back.
    let mut ten = pool("WorkerPools-10", "Spaces-1", "Ten");
    ten.description = Some("updated".into());
    assert!(store.update(&ten).await.unwrap());
    assert_eq!(store.get::<WorkerPool>(&ten.id).await.unwrap(), Some(ten));
    assert!(
        !store
            .update(&pool("WorkerPools-2", "Spaces-1", "Two"))
            .await
            .unwrap()
    );
    assert_eq!(names(store.list("Spaces-1").await.unwrap()), ["Ten"]);
}

/// A name is taken per kind and space whatever its case, and the refused write (with the rest of
/// its transaction) leaves nothing behind.
async fn names_are_unique_per_kind_and_space_without_case(opened: &Opened) {
    let store = &opened.store;
    store
        .put(&pool("WorkerPools-1", "Spaces-1", "Linux"))
        .await
        .unwrap();
    let taken = store
        .put_rows(vec![
            Row::of(&pool("WorkerPools-2", "Spaces-1", "Other")),
            Row::of(&pool("WorkerPools-3", "Spaces-1", "LINUX")),
        ])
        .await
        .unwrap_err();
    match taken {
        StoreError::Conflict(message) => {
            assert_eq!(message, "A worker pool named 'LINUX' already exists here")
        }
        other => panic!("{other}"),
    }
    assert!(
        store
            .get::<WorkerPool>("WorkerPools-2")
            .await
            .unwrap()
            .is_none()
    );
    // Another space, or another kind, may have it.
    store
        .put(&pool("WorkerPools-4", "Spaces-2", "linux"))
        .await
        .unwrap();
    let space = Space {
        id: "Spaces-1".into(),
        name: "Linux".into(),
        slug: "linux".into(),
        ..Default::default()
    };
    store.put(&space).await.unwrap();
    // A document may keep its own name in another case.
    store
        .put(&pool("WorkerPools-1", "Spaces-1", "LINUX"))
        .await
        .unwrap();
}

/// Deleting a space deletes its documents, its tasks and their logs, and nothing of another
/// space.
async fn a_space_goes_with_everything_in_it(opened: &Opened) {
    let store = &opened.store;
    for (id, name) in [("Spaces-1", "One"), ("Spaces-2", "Two")] {
        let space = Space {
            id: id.into(),
            name: name.into(),
            slug: name.to_lowercase(),
            ..Default::default()
        };
        store.put(&space).await.unwrap();
        store
            .put(&pool(&format!("WorkerPools-{}", &id[7..]), id, "Default"))
            .await
            .unwrap();
    }
    let gone = queue(store, "Spaces-1", "AdHocScript").await;
    let kept = queue(store, "Spaces-2", "AdHocScript").await;
    for task in [&gone, &kept] {
        store
            .append_logs(&[(task.id.clone(), line(1, "hello"), None)])
            .await
            .unwrap();
    }
    store.delete_space("Spaces-1").await.unwrap();
    assert!(store.get::<Space>("Spaces-1").await.unwrap().is_none());
    assert!(
        store
            .list::<WorkerPool>("Spaces-1")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_task(&gone.id).await.unwrap().is_none());
    assert!(store.logs(&gone.id, 0, 10).await.unwrap().is_empty());
    assert!(store.get::<Space>("Spaces-2").await.unwrap().is_some());
    assert_eq!(store.list::<WorkerPool>("Spaces-2").await.unwrap().len(), 1);
    assert_eq!(store.get_task(&kept.id).await.unwrap().unwrap(), kept);
    assert_eq!(store.logs(&kept.id, 0, 10).await.unwrap().len(), 1);
}

/// Each kind counts on its own from 1; meta values are written and replaced.
async fn ids_count_up_per_kind_and_meta_values_are_kept(opened: &Opened) {
    let store = &opened.store;
    use muster_core::IdKind;
    assert_eq!(
        store.next_id(IdKind::WorkerPool).await.unwrap(),
        "WorkerPools-1"
    );
    assert_eq!(
        store.next_id(IdKind::WorkerPool).await.unwrap(),
        "WorkerPools-2"
    );
    assert_eq!(store.next_id(IdKind::Space).await.unwrap(), "Spaces-1");
    let first = queue(store, "Spaces-1", "AdHocScript").await;
    let second = queue(store, "Spaces-1", "AdHocScript").await;
    assert_eq!(
        (first.id.as_str(), second.id.as_str()),
        ("ServerTasks-1", "ServerTasks-2")
    );
    // Each new task's event was written with it, with an id of its own.
    let (_, events) = store.page_newest::<Event>(None, 0, 10).await.unwrap();
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["queued ServerTasks-2", "queued ServerTasks-1"]);
    assert_eq!(store.meta("colour").await.unwrap(), None);
    store.set_meta("colour", "blue").await.unwrap();
    store.set_meta("colour", "green").await.unwrap();
    assert_eq!(
        store.meta("colour").await.unwrap().as_deref(),
        Some("green")
    );
}

/// A claim is a conditional write: of two claims from Queued only the first moves the task; a
/// final state is written only while the task is still running.
async fn a_task_is_claimed_once_and_ends_once(opened: &Opened) {
    let store = &opened.store;
    store.watch_new_tasks();
    let queued = queue(store, "Spaces-1", "AdHocScript").await;
    let other = queue(store, "Spaces-1", "AdHocScript").await;
    let new: Vec<String> = store.take_new_tasks().into_iter().map(|t| t.id).collect();
    assert_eq!(new, [queued.id.clone(), other.id.clone()]);
    assert!(store.take_new_tasks().is_empty());

    let mut claimed = queued.clone();
    claimed.state = TaskState::Executing;
    claimed.start_time = Some(now());
    claimed.server_node = Some("node-a".into());
    claimed.worker_name = Some("built-in".into());
    assert!(
        store
            .transition_task(&claimed, TaskState::Queued)
            .await
            .unwrap()
    );
    let mut late = queued.clone();
    late.state = TaskState::Executing;
    late.server_node = Some("node-b".into());
    assert!(
        !store
            .transition_task(&late, TaskState::Queued)
            .await
            .unwrap()
    );
    let stored = store.get_task(&queued.id).await.unwrap().unwrap();
    assert_eq!(stored.server_node.as_deref(), Some("node-a"));
    assert_eq!(
        stored.start_time.map(|t| t.timestamp_millis()),
        claimed.start_time.map(|t| t.timestamp_millis())
    );

    // Many at once: each says whether it moved.
    let mut both = vec![late.clone(), other.clone()];
    both[1].state = TaskState::Executing;
    let moved = store
        .transition_tasks(&both, TaskState::Queued)
        .await
        .unwrap();
    assert_eq!(moved, [false, true]);
    let running = store
        .tasks_in_states(&[TaskState::Executing, TaskState::Cancelling])
        .await
        .unwrap();
    let ids: Vec<&str> = running.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [queued.id.as_str(), other.id.as_str()]);
    assert!(
        store
            .tasks_in_states(&[TaskState::Queued])
            .await
            .unwrap()
            .is_empty()
    );

    let mut ended = claimed.clone();
    ended.state = TaskState::Success;
    ended.completed_time = Some(now());
    let written = store
        .append_logs_and_end(&[], &[ended.clone()])
        .await
        .unwrap();
    assert_eq!(written, [true]);
    let mut again = ended.clone();
    again.state = TaskState::Failed;
    let written = store.append_logs_and_end(&[], &[again]).await.unwrap();
    assert_eq!(written, [false], "an ended task does not end twice");
    assert_eq!(
        store.get_task(&queued.id).await.unwrap().unwrap().state,
        TaskState::Success
    );
    // update_task writes whatever the state.
    let mut updated = ended;
    updated.queue_reason = Some("why not".into());
    updated.has_warnings_or_errors = true;
    store.update_task(&updated).await.unwrap();
    let stored = store.get_task(&queued.id).await.unwrap().unwrap();
    assert_eq!(stored.queue_reason.as_deref(), Some("why not"));
    assert!(stored.has_warnings_or_errors);
    assert!(store.get_task("ServerTasks-999").await.unwrap().is_none());
    assert!(store.get_task("Spaces-1").await.unwrap().is_none());
}

/// Tasks are filtered by space, state, id, name (without case), part of a name and warnings, and
/// paged newest first with the total; tasks on workers are found by when they ran.
async fn tasks_are_listed_filtered_and_paged(opened: &Opened) {
    let store = &opened.store;
    let mut all = Vec::new();
    for n in 0..6 {
        let space = if n % 2 == 0 { "Spaces-1" } else { "Spaces-2" };
        let name = if n < 3 { "AdHocScript" } else { "Health" };
        all.push(queue(store, space, name).await);
    }
    let ids = |tasks: &[Task]| -> Vec<String> { tasks.iter().map(|t| t.id.clone()).collect() };
    let list = |q: TaskQuery| async move { store.list_tasks(&q).await.unwrap() };
    let (total, page) = list(TaskQuery {
        take: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(
        (total, ids(&page)),
        (6, vec!["ServerTasks-6".into(), "ServerTasks-5".into()])
    );
    let (total, page) = list(TaskQuery {
        skip: 5,
        take: 10,
        ..Default::default()
    })
    .await;
    assert_eq!((total, ids(&page)), (6, vec!["ServerTasks-1".into()]));
    let (total, _) = list(TaskQuery {
        space_ids: Some(vec!["Spaces-2".into()]),
        take: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(total, 3);
    let (total, _) = list(TaskQuery {
        space_ids: Some(vec![]),
        take: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(total, 0, "no spaces, no tasks");
    let (total, page) = list(TaskQuery {
        ids: Some(vec![
            "ServerTasks-2".into(),
            "ServerTasks-4".into(),
            "nonsense".into(),
        ]),
        take: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(
        (total, ids(&page)),
        (2, vec!["ServerTasks-4".into(), "ServerTasks-2".into()])
    );
    let (total, _) = list(TaskQuery {
        name: Some("adhocSCRIPT".into()),
        take: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(total, 3);
    let (total, _) = list(TaskQuery {
        partial_name: Some("ALT".into()),
        space_ids: Some(vec!["Spaces-1".into(), "Spaces-2".into()]),
        take: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(total, 3);

    let mut warned = all[1].clone();
    warned.has_warnings_or_errors = true;
    warned.state = TaskState::Failed;
    warned.worker_id = Some("Workers-1".into());
    let hour = chrono::Duration::hours(1);
    let base: Timestamp = now();
    warned.start_time = Some(base - hour);
    warned.completed_time = Some(base);
    store.update_task(&warned).await.unwrap();
    let (total, page) = list(TaskQuery {
        has_warnings_or_errors: Some(true),
        take: 10,
        ..Default::default()
    })
    .await;
    assert_eq!((total, ids(&page)), (1, vec![warned.id.clone()]));
    let (total, _) = list(TaskQuery {
        has_warnings_or_errors: Some(false),
        states: Some(vec![TaskState::Queued]),
        take: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(total, 5);

    // Ran within the window, or not.
    let ran = store
        .tasks_on_workers_between(&(base - hour / 2), &(base + hour))
        .await
        .unwrap();
    assert_eq!(ids(&ran), [warned.id.clone()]);
    let before = store
        .tasks_on_workers_between(&(base - hour * 3), &(base - hour * 2))
        .await
        .unwrap();
    assert!(before.is_empty());
    let after = store
        .tasks_on_workers_between(&(base + hour), &(base + hour * 2))
        .await
        .unwrap();
    assert!(after.is_empty());
}

/// Lines of several tasks and the end of one are one commit; a chunk written twice (a retried
/// batch) is kept once; lines read back in order with their steps.
async fn log_lines_and_a_final_state_are_one_commit(opened: &Opened) {
    let store = &opened.store;
    let first = queue(store, "Spaces-1", "AdHocScript").await;
    let second = queue(store, "Spaces-1", "AdHocScript").await;
    let mut running = first.clone();
    running.state = TaskState::Executing;
    assert!(
        store
            .transition_task(&running, TaskState::Queued)
            .await
            .unwrap()
    );
    let mut stepped = line(2, "in step one");
    stepped.step = Some(1);
    stepped.category = LogCategory::Error;
    let batch = vec![
        (first.id.clone(), line(1, "first \"quoted\" line"), None),
        (second.id.clone(), line(1, "other task"), Some(7)),
        (first.id.clone(), stepped, Some(41)),
    ];
    let mut ended = running.clone();
    ended.state = TaskState::Failed;
    ended.error_message = Some("it failed".into());
    let written = store
        .append_logs_and_end(&batch, &[ended.clone()])
        .await
        .unwrap();
    assert_eq!(written, [true]);
    // The same batch again changes nothing.
    store.append_logs(&batch).await.unwrap();
    let lines = store.logs(&first.id, 0, 100).await.unwrap();
    let texts: Vec<&str> = lines.iter().map(|l| l.message_text.as_str()).collect();
    assert_eq!(texts, ["first \"quoted\" line", "in step one"]);
    assert_eq!(lines[1].step, Some(1));
    assert_eq!(lines[1].category, LogCategory::Error);
    assert_eq!(store.last_source_seq(&first.id).await.unwrap(), 41);
    assert_eq!(store.last_source_seq(&second.id).await.unwrap(), 7);
    let stored = store.get_task(&first.id).await.unwrap().unwrap();
    assert_eq!(stored.state, TaskState::Failed);
    assert_eq!(stored.error_message.as_deref(), Some("it failed"));
    let (last, count, text) = store.raw_log_page(&first.id, 0, 10).await.unwrap().unwrap();
    assert_eq!((last, count), (2, 2));
    assert!(text.ends_with("  Error    | in step one\n"), "{text}");
    assert!(
        store
            .raw_log_page(&first.id, 2, 10)
            .await
            .unwrap()
            .is_none()
    );
}

fn runbook(secret: &str) -> Runbook {
    Runbook {
        id: "Runbooks-1".into(),
        space_id: "Spaces-1".into(),
        name: "R".into(),
        slug: "r".into(),
        variables: vec![
            Variable {
                name: "Pw".into(),
                value: Some(secret.into()),
                is_sensitive: true,
                ..Default::default()
            },
            Variable {
                name: "Plain".into(),
                value: Some("visible-value".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// A sensitive value is stored sealed and read back open; the store opens again with its key, and
/// refuses another key or none.
async fn sensitive_values_are_sealed_and_only_their_key_opens_them(opened: &Opened) {
    let store = &opened.store;
    let secret = "plain-old-s3cret-value";
    store.put(&runbook(secret)).await.unwrap();
    let body =
        on_engine!(&*store.engine, e => e.document(DocKind::Runbook.as_str(), "Runbooks-1").await)
            .unwrap()
            .unwrap();
    assert!(!body.contains(secret), "{body}");
    assert!(body.contains("visible-value"));
    let read: Runbook = store.get("Runbooks-1").await.unwrap().unwrap();
    assert_eq!(read, runbook(secret));
    store.close().await;

    let again = opened.reopen(None).await.unwrap();
    let read: Runbook = again.get("Runbooks-1").await.unwrap().unwrap();
    assert_eq!(read.variables[0].value.as_deref(), Some(secret));
    again.close().await;
    let key = opened.dir.path().join(crate::KEY_FILE);
    let kept = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let missing = opened.reopen(None).await.err().unwrap();
    assert!(missing.to_string().contains("missing"), "{missing}");
    let other: PathBuf = opened.dir.path().join("other.key");
    std::fs::write(&other, [7u8; 32]).unwrap();
    let wrong = opened.reopen(Some(&other)).await.err().unwrap();
    assert!(wrong.to_string().contains("not the key"), "{wrong}");
    std::fs::write(&key, kept).unwrap();
    opened.reopen(None).await.unwrap().close().await;
}

/// `Store::open` takes a URL: PostgreSQL's, or `sqlite:PATH`; anything else is refused without
/// showing a password.
#[tokio::test]
async fn a_database_url_chooses_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    let store = Store::open(&format!("sqlite:{}", path.display()), dir.path())
        .await
        .unwrap();
    assert_eq!(store.engine_name(), "sqlite");
    store.close().await;
    assert!(path.exists());
    let store = Store::open(&format!("sqlite://{}", path.display()), dir.path())
        .await
        .unwrap();
    store.close().await;
    let refused = Store::open("mysql://me:hunter2@db/muster", dir.path())
        .await
        .err()
        .unwrap();
    let message = refused.to_string();
    assert!(message.contains("mysql://me:***@db/muster"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

mod postgres_only {
    use crate::testing::TestDatabase;
    use crate::{Store, StoreError};

    /// Several nodes share a database; a copy into it is refused while any holds it.
    #[tokio::test]
    async fn nodes_share_a_database_that_a_copy_may_not_write() {
        let database = TestDatabase::create();
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(database.url(), dir.path()).await.unwrap();
        let second = Store::open(database.url(), dir.path()).await.unwrap();
        let source = dir.path().join("source.db");
        Store::open_sqlite(&source).await.unwrap().close().await;
        let refused = crate::copy(
            &format!("sqlite:{}", source.display()),
            database.url(),
            true,
            &mut |_: &str| {},
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(refused, StoreError::InUse(_)), "{refused}");
        first.close().await;
        second.close().await;
    }

    /// A note of one node reaches the other node's readers, and a new task of one is kept for the
    /// other's dispatcher before its note arrives; a node does not hear its own notes twice.
    #[tokio::test]
    async fn notes_go_from_node_to_node() {
        use crate::Note;
        use muster_core::resources::Event;
        let database = TestDatabase::create();
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(database.url(), dir.path()).await.unwrap();
        let b = Store::open(database.url(), dir.path()).await.unwrap();
        b.watch_new_tasks();
        let mut heard_by_b = b.notes();
        let mut heard_by_a = a.notes();
        a.note(Note::Lines("ServerTasks-9".into())).await.unwrap();
        let within = std::time::Duration::from_secs(5);
        assert_eq!(
            tokio::time::timeout(within, heard_by_b.recv())
                .await
                .unwrap()
                .unwrap(),
            Note::Lines("ServerTasks-9".into())
        );
        assert_eq!(
            tokio::time::timeout(within, heard_by_a.recv())
                .await
                .unwrap()
                .unwrap(),
            Note::Lines("ServerTasks-9".into()),
            "its own readers hear it at once"
        );
        let mut task =
            crate::tests::task("Spaces-1", "AdHocScript", muster_core::TaskState::Queued);
        a.insert_new_task(&mut task, |_| Event::default())
            .await
            .unwrap();
        let heard = loop {
            match tokio::time::timeout(within, heard_by_b.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Note::NewTask(id) => break id,
                _ => continue,
            }
        };
        assert_eq!(heard, task.id);
        let kept = b.take_new_tasks();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].id, task.id);
        // Nothing more: A's readers did not hear A's task note from the database as well.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), heard_by_a.recv())
                .await
                .is_err()
        );
        a.close().await;
        b.close().await;
    }
}

mod sqlite_only {
    use crate::Store;
    use crate::engine::sqlite::MIGRATIONS;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    /// A data directory of schema v3 keeps its task logs through the move to chunks (v4): every
    /// line, in order, with its step and its agent sequence number.
    #[tokio::test]
    async fn lines_stored_before_chunks_read_back_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.db");
        {
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap();
            for script in &MIGRATIONS[..3] {
                sqlx::raw_sql(*script).execute(&pool).await.unwrap();
            }
            sqlx::raw_sql(
                "PRAGMA user_version = 3; \
                 INSERT INTO task_log (task_num, seq, occurred_at, category, message, source_seq, step) VALUES \
                 (7, 1, '2026-12-01T10:11:12.000001Z', 'Info', 'first \"quoted\" line', NULL, NULL), \
                 (7, 2, '2026-12-01T10:11:13.5Z', 'Error', 'from the agent', 41, 2);",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = Store::open_sqlite(&path).await.unwrap();
        let lines = store.logs("ServerTasks-7", 0, 100).await.unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].message_text, "first \"quoted\" line");
        assert_eq!(lines[1].step, Some(2));
        assert_eq!(store.last_log_seq("ServerTasks-7").await.unwrap(), 2);
        assert_eq!(store.last_source_seq("ServerTasks-7").await.unwrap(), 41);
        let (last, count, text) = store
            .raw_log_page("ServerTasks-7", 0, 10)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((last, count), (2, 2));
        assert_eq!(
            text,
            "10:11:12  Info     | first \"quoted\" line\n10:11:13  Error    | from the agent\n"
        );
        // New lines go on after the old ones.
        let line = muster_core::resources::LogLine {
            seq: 3,
            occurred_at: muster_core::time::now(),
            category: muster_core::LogCategory::Info,
            message_text: "after the upgrade".into(),
            step: None,
        };
        store
            .append_logs(&[("ServerTasks-7".into(), line, None)])
            .await
            .unwrap();
        let lines = store.logs("ServerTasks-7", 1, 100).await.unwrap();
        let texts: Vec<&str> = lines.iter().map(|l| l.message_text.as_str()).collect();
        assert_eq!(texts, ["from the agent", "after the upgrade"]);
    }

    /// A sensitive value stored in the clear before values were sealed is sealed at the next open:
    /// neither the database nor its WAL holds it afterwards, and it reads back as it was. The key
    /// file is made 0600, the database files are 0600, and another key is refused.
    #[tokio::test]
    async fn sensitive_values_stored_in_the_clear_are_sealed_on_upgrade() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.db");
        let secret = "plain-old-s3cret-value";
        {
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap();
            for script in MIGRATIONS {
                sqlx::raw_sql(*script).execute(&pool).await.unwrap();
            }
            let runbook = serde_json::json!({"Id": "Runbooks-1", "SpaceId": "Spaces-1", "Name": "R",
                "Variables": [{"Name": "Pw", "Value": secret, "IsSensitive": true},
                              {"Name": "Plain", "Value": "visible-value"}]});
            sqlx::query("INSERT INTO documents (kind, id, space_id, name, ext, body) VALUES ('runbook', 'Runbooks-1', 'Spaces-1', 'R', 'r', ?1)")
                .bind(runbook.to_string())
                .execute(&pool)
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PRAGMA user_version = {}",
                MIGRATIONS.len()
            )))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open_sqlite(&path).await.unwrap();
        let on_disk = |name: &str| std::fs::read(dir.path().join(name)).unwrap_or_default();
        for file in ["muster.db", "muster.db-wal"] {
            let bytes = on_disk(file);
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{file} holds the secret in the clear"
            );
        }
        let visible = on_disk("muster.db");
        assert!(visible.windows(13).any(|w| w == b"visible-value"));
        let runbook: muster_core::runbooks::Runbook =
            store.get("Runbooks-1").await.unwrap().unwrap();
        assert_eq!(runbook.variables[0].value.as_deref(), Some(secret));
        for file in [
            "muster.db",
            "muster.db-wal",
            "muster.db-shm",
            crate::KEY_FILE,
        ] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        store.close().await;
    }

    /// A store made by the last release (schema v4 by `PRAGMA user_version`, its documents and
    /// tasks written by that release's SQL) opens and reads back, and is not migrated again.
    #[tokio::test]
    async fn a_store_of_the_last_release_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.db");
        {
            let store = Store::open_sqlite(&path).await.unwrap();
            let space = muster_core::resources::Space {
                id: "Spaces-1".into(),
                name: "Default".into(),
                slug: "default".into(),
                ..Default::default()
            };
            store.put(&space).await.unwrap();
            store.close().await;
        }
        let options = SqliteConnectOptions::new().filename(&path);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let (version,): (i64,) = sqlx::query_as("PRAGMA user_version")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        // A task row exactly as the last release wrote it (has_warnings an INTEGER 0 or 1).
        sqlx::query(
            "INSERT INTO tasks (num, space_id, name, description, arguments, state, queue_time, \
             last_updated_time, has_warnings) VALUES (9, 'Spaces-1', 'AdHocScript', 'd', '{}', \
             'Success', '2026-12-01T10:11:12.000+00:00', '2026-12-01T10:11:13.000+00:00', 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let store = Store::open_sqlite(&path).await.unwrap();
        let space: muster_core::resources::Space = store.get("Spaces-1").await.unwrap().unwrap();
        assert_eq!(space.slug, "default");
        let task = store.get_task("ServerTasks-9").await.unwrap().unwrap();
        assert!(task.has_warnings_or_errors);
        assert_eq!(task.state, muster_core::TaskState::Success);
    }
}
