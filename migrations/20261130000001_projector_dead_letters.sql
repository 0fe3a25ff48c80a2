-- Events the projector could not apply because of their data (a PostgreSQL data
-- exception, integrity violation or program limit, or bytes that are no event):
-- retrying cannot fix them, so each is kept here with its error, marked processed,
-- and the projector goes on. `tengine projector dead-letters` lists them and
-- re-applies one once its cause is fixed (`reapplied_at`). A run with an
-- unresolved dead letter shows `history_error` in the admin API.
CREATE TABLE projector_dead_letters (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The durable consumer that met it, and where in the event log.
    consumer      text NOT NULL,
    stream_seq    bigint NOT NULL,
    -- Unknown (NULL) when the message could not be decoded; run and project
    -- then come from its subject, if that names them.
    event_id      uuid,
    run_id        uuid,
    project_id    uuid,
    subject       text NOT NULL,
    -- The message as stored in the event log.
    payload       bytea NOT NULL,
    error         text NOT NULL,
    -- The PostgreSQL error code, when the database refused the event.
    sqlstate      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    reapplied_at  timestamptz,
    -- A redelivered poison event is recorded once.
    UNIQUE (consumer, stream_seq)
);

-- Run reads look up a run's unresolved dead letters.
CREATE INDEX projector_dead_letters_run_idx ON projector_dead_letters (run_id) WHERE reapplied_at IS NULL;
