-- What run history shows of a call's origin (from its Accepted event): the trace
-- it ran under, the client's idempotency key, and the run it re-drives. And the
-- call's arguments, kept with the bodies (projects with store_bodies, redacted
-- like them): what a re-drive runs again; `arguments_altered` when redaction or
-- the size cap changed them (such a run cannot be re-driven).
ALTER TABLE runs
    ADD COLUMN trace_id          text,
    ADD COLUMN idempotency_key   text,
    ADD COLUMN redrive_of        uuid,
    ADD COLUMN arguments         text,
    ADD COLUMN arguments_altered boolean;

-- A run's re-drives, listed on its page.
CREATE INDEX runs_redrive_of_idx ON runs (redrive_of) WHERE redrive_of IS NOT NULL;
