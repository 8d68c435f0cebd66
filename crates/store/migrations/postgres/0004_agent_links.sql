-- Which node holds each polling agent's link. Every node listens on its comms port; an agent holds
-- one link to any one of them, and the other nodes reach it through that node (the relay, over the
-- nodes' shared certificate). `comms_address` is where the other nodes dial a node's comms port.
-- Scripts run on every node: `builtin_worker` says whether a node runs the built-in worker, and
-- `incarnation` fences a node that the dispatcher presumed dead (it missed its heartbeats): the
-- dispatcher moves it on before taking the node's tasks over, and every write of the node holds the
-- incarnation it started with, so a node that was only paused writes nothing when it wakes.
ALTER TABLE server_nodes ADD COLUMN comms_address TEXT;
ALTER TABLE server_nodes ADD COLUMN builtin_worker BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE server_nodes ADD COLUMN incarnation BIGINT NOT NULL DEFAULT 0;
CREATE TABLE agent_links (
    thumbprint TEXT COLLATE "C" PRIMARY KEY,
    node TEXT COLLATE "C" NOT NULL,
    since TEXT COLLATE "C" NOT NULL
);
CREATE INDEX agent_links_node ON agent_links (node);
