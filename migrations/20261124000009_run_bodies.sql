-- Opt-in request and response bodies in run history, capped and redacted by the
-- worker before they are logged (off by default).
ALTER TABLE projects
    ADD COLUMN store_bodies    boolean NOT NULL DEFAULT false,
    ADD COLUMN body_max_bytes  integer NOT NULL DEFAULT 4096,
    ADD COLUMN redact_fields   text[] NOT NULL DEFAULT '{}';

ALTER TABLE runs
    ADD COLUMN request_body      text,
    ADD COLUMN response_body     text,
    ADD COLUMN bodies_truncated  boolean;
