-- The outcome of runs whose client sent its own idempotency key, kept for as long as
-- the key maps to the run (ExecuteCommand.keep_result_until): a retry with the key
-- still gets the recorded result after the event log has rolled past the run.
-- Written by the projector from the Finished event; expired rows are deleted hourly.
CREATE TABLE run_results (
    run_id      uuid PRIMARY KEY,
    project_id  uuid NOT NULL,
    expires_at  timestamptz NOT NULL,
    -- The outcome as a MessagePack envelope, exactly as the worker recorded it
    -- (bytes: any body, NUL or binary, is stored as it is).
    outcome     bytea NOT NULL
);
CREATE INDEX run_results_expires_idx ON run_results (expires_at);
