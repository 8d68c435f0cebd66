-- The dispatcher's lease: one row. The node that holds it (`holder`, a node name) dispatches every
-- node's tasks until `expires_at`, renewing it as it goes; a node takes it over only once it has
-- expired, and each taking moves `epoch` on. Every write of a task made by the dispatcher holds
-- its epoch, so a node that lost the role (it was paused past its lease) cannot write after
-- another took over. It starts expired, with nobody.
CREATE TABLE dispatch_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO dispatch_lease (id, holder, epoch, expires_at) VALUES (1, '', 0, '-infinity');
