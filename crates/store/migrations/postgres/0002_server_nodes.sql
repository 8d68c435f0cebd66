-- The server nodes. Each node that runs on this database has a row, keyed by its name: its task
-- cap, whether it is in maintenance mode (drained: it takes no new task), and when it was last
-- seen (its heartbeat, the contract's date text) with the version it ran.
CREATE TABLE server_nodes (
    name TEXT COLLATE "C" PRIMARY KEY,
    max_concurrent_tasks BIGINT NOT NULL,
    is_in_maintenance_mode BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen TEXT COLLATE "C" NOT NULL,
    version TEXT NOT NULL,
    last_modified_on TEXT COLLATE "C",
    last_modified_by TEXT
);
