-- Run history partitioned by day, so retention drops whole days (DROP TABLE of a
-- partition: no long DELETE, no bloat). The day is the UTC date of the UUIDv7
-- timestamp of the row's id (the run id for runs and attempts, the event id for
-- processed_events): it never changes for a row, every event of a run carries it,
-- and readers can compute it from the id alone to prune partitions.
--
-- Rewrites the three tables once: the rows are copied into the partitioned tables.
-- The projector creates further partitions (`<table>_pYYYYMMDD`) before it writes
-- rows of a new day, and drops those past `projector.history_retention_days`.
-- usage_hourly is not partitioned and is never dropped.

-- UTC day of a UUIDv7's timestamp (milliseconds since the epoch in the first 48
-- bits). Integer arithmetic only, so it is exact and matches the projector's Rust
-- copy (`tengine_projector::retention::uuid_day`).
CREATE FUNCTION uuid_v7_day(id uuid) RETURNS date
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT date '1970-01-01' + (('x' || left(replace(id::text, '-', ''), 12))::bit(48)::bigint / 86400000)::int $$;

ALTER TABLE runs RENAME TO runs_unpartitioned;
ALTER TABLE run_attempts RENAME TO run_attempts_unpartitioned;
ALTER TABLE processed_events RENAME TO processed_events_unpartitioned;
-- Index names are per schema: free them for the new tables.
ALTER INDEX runs_pkey RENAME TO runs_unpartitioned_pkey;
ALTER INDEX runs_project_accepted_idx RENAME TO runs_unpartitioned_project_accepted_idx;
ALTER INDEX runs_project_member_idx RENAME TO runs_unpartitioned_project_member_idx;
ALTER INDEX run_attempts_pkey RENAME TO run_attempts_unpartitioned_pkey;
ALTER INDEX processed_events_pkey RENAME TO processed_events_unpartitioned_pkey;

CREATE TABLE runs (
    run_id            uuid NOT NULL,
    -- uuid_v7_day(run_id): the partition key.
    day               date NOT NULL,
    project_id        uuid NOT NULL,
    integration_id    uuid NOT NULL,
    api_key_id        uuid NOT NULL,
    tool_name         text NOT NULL,
    status            text NOT NULL,
    error_class       text,
    error             text,
    http_status       integer,
    latency_ms        bigint,
    attempts          integer NOT NULL DEFAULT 0,
    accepted_at       timestamptz NOT NULL,
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    member_id         text,
    usage_counted     boolean NOT NULL DEFAULT false,
    request_body      text,
    response_body     text,
    bodies_truncated  boolean,
    PRIMARY KEY (run_id, day)
) PARTITION BY RANGE (day);

CREATE TABLE run_attempts (
    run_id        uuid NOT NULL,
    -- uuid_v7_day(run_id): a run's attempts are dropped with it.
    day           date NOT NULL,
    attempt       integer NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    http_status   integer,
    error_class   text,
    error         text,
    bytes_out     bigint,
    bytes_in      bigint,
    PRIMARY KEY (run_id, day, attempt)
) PARTITION BY RANGE (day);

-- Kept as long as run history, which must outlast the event log
-- (`history_retention_days` > `events_max_age_secs`): a redelivered event is
-- always still recognised.
CREATE TABLE processed_events (
    event_id      uuid NOT NULL,
    -- uuid_v7_day(event_id).
    day           date NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, day)
) PARTITION BY RANGE (day);

-- A partition per day present, and today's.
DO $$
DECLARE
    d date;
    t text;
BEGIN
    FOR d IN
        SELECT uuid_v7_day(run_id) FROM runs_unpartitioned
        UNION SELECT uuid_v7_day(run_id) FROM run_attempts_unpartitioned
        UNION SELECT uuid_v7_day(event_id) FROM processed_events_unpartitioned
        UNION SELECT (now() AT TIME ZONE 'UTC')::date
    LOOP
        FOREACH t IN ARRAY ARRAY['runs', 'run_attempts', 'processed_events'] LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                t || '_p' || to_char(d, 'YYYYMMDD'), t, to_char(d, 'YYYY-MM-DD'), to_char(d + 1, 'YYYY-MM-DD'));
        END LOOP;
    END LOOP;
END
$$;

INSERT INTO runs (run_id, day, project_id, integration_id, api_key_id, tool_name, status, error_class, error,
                  http_status, latency_ms, attempts, accepted_at, started_at, finished_at, updated_at, member_id,
                  usage_counted, request_body, response_body, bodies_truncated)
SELECT run_id, uuid_v7_day(run_id), project_id, integration_id, api_key_id, tool_name, status, error_class, error,
       http_status, latency_ms, attempts, accepted_at, started_at, finished_at, updated_at, member_id,
       usage_counted, request_body, response_body, bodies_truncated
FROM runs_unpartitioned;

INSERT INTO run_attempts (run_id, day, attempt, started_at, finished_at, http_status, error_class, error,
                          bytes_out, bytes_in)
SELECT run_id, uuid_v7_day(run_id), attempt, started_at, finished_at, http_status, error_class, error,
       bytes_out, bytes_in
FROM run_attempts_unpartitioned;

INSERT INTO processed_events (event_id, day, processed_at)
SELECT event_id, uuid_v7_day(event_id), processed_at FROM processed_events_unpartitioned;

DROP TABLE runs_unpartitioned, run_attempts_unpartitioned, processed_events_unpartitioned;

-- Created on the parent, so every partition (present and future) gets them.
CREATE INDEX runs_project_accepted_idx ON runs (project_id, accepted_at DESC, run_id DESC);
CREATE INDEX runs_project_member_idx ON runs (project_id, member_id, accepted_at DESC) WHERE member_id IS NOT NULL;
