-- Version 4: task logs in chunks. One row holds a run of one task's consecutive lines (a batch the
-- log writer commits together), as a JSON array of [seq, occurred_at, category, step, source_seq,
-- message]: a chatty script costs one row per batch instead of one per line, which is what storing
-- and reading back 100 MB of lines is bound by.
CREATE TABLE task_log_chunk (
    task_num INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    -- The highest agent sequence number among the chunk's lines (NULL when none came from an agent).
    max_source_seq INTEGER,
    line_count INTEGER NOT NULL,
    lines TEXT NOT NULL
);
-- Rows are large, so the table keeps its rowid and the keys live in indexes.
CREATE UNIQUE INDEX task_log_chunk_by_first ON task_log_chunk (task_num, first_seq);
CREATE INDEX task_log_chunk_by_last ON task_log_chunk (task_num, last_seq);
-- Lines stored before become chunks of one line each.
INSERT INTO task_log_chunk (task_num, first_seq, last_seq, max_source_seq, line_count, lines)
    SELECT task_num, seq, seq, source_seq, 1,
           json_array(json_array(seq, occurred_at, category, step, source_seq, message))
    FROM task_log;
DROP TABLE task_log;
