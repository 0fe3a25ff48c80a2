-- Control plane: projects, their integrations (MCP client connections), API keys, tools.
CREATE TABLE projects (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE integrations (
    id          uuid PRIMARY KEY,
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX integrations_project_idx ON integrations (project_id);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY,
    project_id      uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    integration_id  uuid NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    name            text NOT NULL DEFAULT '',
    -- SHA-256 of the key; the key itself is shown once and never stored.
    key_hash        bytea NOT NULL UNIQUE,
    display_prefix  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
CREATE INDEX api_keys_project_idx ON api_keys (project_id);

CREATE TABLE tools (
    id                      uuid PRIMARY KEY,
    project_id              uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name                    text NOT NULL,
    description             text NOT NULL DEFAULT '',
    input_schema            jsonb NOT NULL,
    base_url                text NOT NULL,
    http_method             text NOT NULL,
    endpoint_path           text NOT NULL,
    headers_template        jsonb NOT NULL DEFAULT '{}',
    query_template          jsonb NOT NULL DEFAULT '{}',
    body_template           jsonb,
    auth_strategy           text NOT NULL DEFAULT 'none',
    -- XChaCha20-Poly1305 under the master key, tool id as associated data.
    auth_secret_ciphertext  bytea,
    timeout_ms              integer NOT NULL,
    enabled                 boolean NOT NULL DEFAULT true,
    -- Bumped on every change; commands carry the version they were validated against.
    version                 bigint NOT NULL DEFAULT 1,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

-- Run history, built by the projector from the event log.
CREATE TABLE runs (
    run_id          uuid PRIMARY KEY,
    project_id      uuid NOT NULL,
    integration_id  uuid NOT NULL,
    api_key_id      uuid NOT NULL,
    tool_name       text NOT NULL,
    status          text NOT NULL,
    error_class     text,
    error           text,
    http_status     integer,
    latency_ms      bigint,
    attempts        integer NOT NULL DEFAULT 0,
    accepted_at     timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_project_accepted_idx ON runs (project_id, accepted_at DESC, run_id DESC);

CREATE TABLE run_attempts (
    run_id        uuid NOT NULL,
    attempt       integer NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    http_status   integer,
    error_class   text,
    error         text,
    bytes_out     bigint,
    bytes_in      bigint,
    PRIMARY KEY (run_id, attempt)
);

-- Events already applied (written in the same transaction as their effect).
CREATE TABLE processed_events (
    event_id      uuid PRIMARY KEY,
    processed_at  timestamptz NOT NULL DEFAULT now()
);

-- Highest event-log stream sequence applied, per projector consumer.
CREATE TABLE projector_checkpoints (
    consumer    text PRIMARY KEY,
    stream_seq  bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
