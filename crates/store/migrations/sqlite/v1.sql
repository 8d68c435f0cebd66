-- Version 1 of Muster's SQLite schema.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE id_counters (kind TEXT PRIMARY KEY, next INTEGER NOT NULL);

-- Configuration resources are JSON documents with the columns that lookups need beside them.
-- space_id is '' for system-level documents (spaces, users, API keys).
CREATE TABLE documents (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    space_id TEXT NOT NULL,
    name TEXT NOT NULL,
    ext TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE UNIQUE INDEX documents_unique_name ON documents (kind, space_id, name COLLATE NOCASE);
CREATE INDEX documents_by_space ON documents (kind, space_id);
CREATE INDEX documents_by_ext ON documents (kind, ext);

CREATE TABLE tasks (
    num INTEGER PRIMARY KEY,
    space_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    arguments TEXT NOT NULL,
    state TEXT NOT NULL,
    error_message TEXT,
    queue_time TEXT NOT NULL,
    queue_time_expiry TEXT,
    start_time TEXT,
    completed_time TEXT,
    last_updated_time TEXT NOT NULL,
    server_node TEXT,
    has_warnings INTEGER NOT NULL DEFAULT 0,
    queue_reason TEXT,
    worker_name TEXT
);
CREATE INDEX tasks_by_state ON tasks (state, num);
CREATE INDEX tasks_by_space ON tasks (space_id, num);

CREATE TABLE task_log (
    task_num INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    occurred_at TEXT NOT NULL,
    category TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (task_num, seq)
) WITHOUT ROWID;
