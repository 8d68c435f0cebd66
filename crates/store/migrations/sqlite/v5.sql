-- Version 5: the server nodes. Each node that runs on this database has a row, keyed by its name:
-- its task cap, whether it is in maintenance mode (drained: it takes no new task), and when it was
-- last seen (its heartbeat, the contract's date text) with the version it ran.
CREATE TABLE server_nodes (
    name TEXT PRIMARY KEY,
    max_concurrent_tasks INTEGER NOT NULL,
    is_in_maintenance_mode INTEGER NOT NULL DEFAULT 0,
    last_seen TEXT NOT NULL,
    version TEXT NOT NULL,
    last_modified_on TEXT,
    last_modified_by TEXT
);
