-- Which node holds each polling agent's link. Every node listens on its comms port; an agent holds
-- one link to any one of them, and the other nodes reach it through that node (the relay, over the
-- nodes' shared certificate). `comms_address` is where the other nodes dial a node's comms port.
ALTER TABLE server_nodes ADD COLUMN comms_address TEXT;
CREATE TABLE agent_links (
    thumbprint TEXT COLLATE "C" PRIMARY KEY,
    node TEXT COLLATE "C" NOT NULL,
    since TEXT COLLATE "C" NOT NULL
);
CREATE INDEX agent_links_node ON agent_links (node);
