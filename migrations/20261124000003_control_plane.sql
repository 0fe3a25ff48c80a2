-- Integrations may restrict which tools they see (NULL: all of the project's tools).
ALTER TABLE integrations ADD COLUMN allowed_tools text[];

-- ES256 public keys a project's backend signs member assertions with.
CREATE TABLE member_keys (
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    kid         text NOT NULL,
    public_key  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    PRIMARY KEY (project_id, kid)
);

-- Assertion ids already exchanged (replay protection), kept until the assertion expires.
CREATE TABLE member_assertions_used (
    project_id  uuid NOT NULL,
    jti         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (project_id, jti)
);

-- Member sessions issued before `revoked_before` no longer work.
CREATE TABLE member_revocations (
    project_id      uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    member_id       text NOT NULL,
    revoked_before  timestamptz NOT NULL,
    PRIMARY KEY (project_id, member_id)
);

ALTER TABLE tools
    ADD COLUMN require_member boolean NOT NULL DEFAULT false,
    ADD COLUMN inject_member_identity boolean NOT NULL DEFAULT false;

ALTER TABLE runs ADD COLUMN member_id text;
CREATE INDEX runs_project_member_idx ON runs (project_id, member_id, accepted_at DESC) WHERE member_id IS NOT NULL;
