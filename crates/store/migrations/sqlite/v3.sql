-- Version 3: runbook runs. Each log line may belong to a step of a runbook run (its activity node,
-- numbered from 1); lines of the task itself have none.
ALTER TABLE task_log ADD COLUMN step INTEGER;
