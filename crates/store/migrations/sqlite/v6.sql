-- Version 6: which node holds each polling agent's link, and where the other nodes dial a node's
-- comms port. One SQLite node holds every link itself; the tables match PostgreSQL's, where the
-- nodes relay to each other's agents.
ALTER TABLE server_nodes ADD COLUMN comms_address TEXT;
ALTER TABLE server_nodes ADD COLUMN builtin_worker INTEGER NOT NULL DEFAULT 1;
ALTER TABLE server_nodes ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;
CREATE TABLE agent_links (
    thumbprint TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    since TEXT NOT NULL
);
CREATE INDEX agent_links_node ON agent_links (node);
