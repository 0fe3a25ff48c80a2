-- Usage per project x integration x member x tool x hour, built by the projector.
-- A run is counted once, when it first becomes terminal (runs.usage_counted).
CREATE TABLE usage_hourly (
    project_id      uuid NOT NULL,
    integration_id  uuid NOT NULL,
    member_id       text NOT NULL DEFAULT '',
    tool_name       text NOT NULL,
    hour            timestamptz NOT NULL,
    calls           bigint NOT NULL DEFAULT 0,
    successes       bigint NOT NULL DEFAULT 0,
    failures        bigint NOT NULL DEFAULT 0,
    latency_ms_sum  bigint NOT NULL DEFAULT 0,
    -- Calls by latency: <=10, <=50, <=100, <=250, <=500, <=1000, <=2500, <=5000, <=10000, more (ms).
    latency_buckets bigint[] NOT NULL DEFAULT '{0,0,0,0,0,0,0,0,0,0}',
    bytes_in        bigint NOT NULL DEFAULT 0,
    bytes_out       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, integration_id, member_id, tool_name, hour)
);
ALTER TABLE runs ADD COLUMN usage_counted boolean NOT NULL DEFAULT false;
