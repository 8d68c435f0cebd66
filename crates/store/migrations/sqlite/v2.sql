-- Version 2: what a server needs to re-attach to a script an agent kept running across its restart.
-- The worker a task runs on, by id.
ALTER TABLE tasks ADD COLUMN worker_id TEXT;
-- For a line that came from an agent, the agent's own sequence number of it: the highest one stored
-- is where a re-attached server resumes, so no line is lost or repeated.
ALTER TABLE task_log ADD COLUMN source_seq INTEGER;
