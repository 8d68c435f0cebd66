-- Version 1 of Muster's PostgreSQL schema: the SQLite schema at its version 4, in PostgreSQL's terms.
-- Applied by sqlx's migrator (its `_sqlx_migrations` table), one transaction per file.
--
-- Texts that are compared or ordered by the store (ids, spaces, extra values, dates) are COLLATE "C":
-- byte order, as SQLite compares them, whatever the database's locale. Dates are the contract's
-- fixed-width UTC text (`2024-01-01T00:00:00.000+00:00`), so text order is time order. Document
-- bodies and log chunks are JSON kept as TEXT: only the store reads them, whole, and lookups use
-- the columns beside them.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE id_counters (kind TEXT PRIMARY KEY, next BIGINT NOT NULL);

-- Configuration resources are JSON documents with the columns that lookups need beside them.
-- space_id is '' for system-level documents (spaces, users, API keys).
CREATE TABLE documents (
    kind TEXT NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    space_id TEXT COLLATE "C" NOT NULL,
    name TEXT NOT NULL,
    ext TEXT COLLATE "C",
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
-- Names are unique per kind and space without case (SQLite: COLLATE NOCASE).
CREATE UNIQUE INDEX documents_unique_name ON documents (kind, space_id, lower(name));
CREATE INDEX documents_by_space ON documents (kind, space_id);
CREATE INDEX documents_by_ext ON documents (kind, ext);

CREATE TABLE tasks (
    num BIGINT PRIMARY KEY,
    space_id TEXT COLLATE "C" NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    arguments TEXT NOT NULL,
    state TEXT NOT NULL,
    error_message TEXT,
    queue_time TEXT COLLATE "C" NOT NULL,
    queue_time_expiry TEXT COLLATE "C",
    start_time TEXT COLLATE "C",
    completed_time TEXT COLLATE "C",
    last_updated_time TEXT COLLATE "C" NOT NULL,
    server_node TEXT,
    has_warnings BOOLEAN NOT NULL DEFAULT FALSE,
    queue_reason TEXT,
    worker_name TEXT,
    worker_id TEXT
);
CREATE INDEX tasks_by_state ON tasks (state, num);
CREATE INDEX tasks_by_space ON tasks (space_id, num);

-- Task logs in chunks: one row holds a run of one task's consecutive lines (a batch the log writer
-- commits together), as a JSON array of [seq, occurred_at, category, step, source_seq, message].
CREATE TABLE task_log_chunk (
    task_num BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    -- The highest agent sequence number among the chunk's lines (NULL when none came from an agent).
    max_source_seq BIGINT,
    line_count BIGINT NOT NULL,
    lines TEXT NOT NULL,
    PRIMARY KEY (task_num, first_seq)
);
CREATE INDEX task_log_chunk_by_last ON task_log_chunk (task_num, last_seq);
