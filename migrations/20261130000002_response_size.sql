-- What the API answered, as run history shows it: the response body's full size
-- in bytes (counted before any conversion), and whether it was larger than
-- worker.max_response_bytes (only its beginning was kept). NULL for runs without
-- a response and for runs recorded before these columns.
ALTER TABLE runs
    ADD COLUMN response_size       bigint,
    ADD COLUMN response_truncated  boolean;
