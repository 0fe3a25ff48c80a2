-- Quotas: a monthly call limit per project and a calls-per-minute limit per member
-- (per API key for callers without a member session). NULL: unlimited.
ALTER TABLE projects
    ADD COLUMN monthly_call_limit      bigint,
    ADD COLUMN member_calls_per_minute integer;

-- Calls counted against a limit, per fixed window (calendar month in UTC, or minute).
-- Shared by every ingress instance: a conditional upsert checks and counts at once.
CREATE TABLE quota_counters (
    project_id    uuid NOT NULL,
    -- 'month', or 'minute:member:<id>' / 'minute:key:<api key id>'.
    scope         text NOT NULL,
    window_start  timestamptz NOT NULL,
    calls         bigint NOT NULL,
    PRIMARY KEY (project_id, scope, window_start)
);
CREATE INDEX quota_counters_window_idx ON quota_counters (window_start);
