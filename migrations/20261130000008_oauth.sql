-- MCP authorization (OAuth 2.1): a project may act as the authorization server of
-- its own MCP resource, with the end user's login federated to the customer's app.
ALTER TABLE projects
    ADD COLUMN oauth_enabled boolean NOT NULL DEFAULT false,
    -- The customer's page that signs its user in and sends back a member assertion.
    ADD COLUMN oauth_login_url text,
    -- The integration OAuth-connected clients act through (NULL: the default one).
    ADD COLUMN oauth_integration_id uuid REFERENCES integrations (id),
    -- Which clients may be authorized (NULL: any): exact client_ids, redirect URI hosts.
    ADD COLUMN oauth_allowed_client_ids text[],
    ADD COLUMN oauth_allowed_redirect_hosts text[];

-- Clients: registered dynamically (RFC 7591) or described by a Client ID Metadata
-- Document at their https client_id (cached here, fetched again when stale).
CREATE TABLE oauth_clients (
    project_id     uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    client_id      text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('registered', 'metadata_document')),
    client_name    text,
    client_uri     text,
    redirect_uris  text[] NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    fetched_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, client_id)
);

-- Grants: one per consent (member x client). Each holds an API key of the
-- project's OAuth integration that its access tokens are bound to, so revoking
-- the grant revokes that key and every token stops at once on every instance.
CREATE TABLE oauth_grants (
    id           uuid PRIMARY KEY,
    project_id   uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    client_id    text NOT NULL,
    member_id    text NOT NULL,
    member       jsonb NOT NULL,
    api_key_id   uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    resource     text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    revoked_reason text
);
CREATE INDEX oauth_grants_project_idx ON oauth_grants (project_id, created_at);
CREATE INDEX oauth_grants_key_idx ON oauth_grants (api_key_id);

-- An authorization request on its way: login (tengine_login), consent (CSRF),
-- code, exchanged. Only SHA-256 hashes of the secrets are stored.
CREATE TABLE oauth_authorizations (
    id              uuid PRIMARY KEY,
    project_id      uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    client_id       text NOT NULL,
    redirect_uri    text NOT NULL,
    state           text,
    code_challenge  text NOT NULL,
    resource        text NOT NULL,
    stage           text NOT NULL CHECK (stage IN ('login', 'consent', 'code', 'exchanged', 'denied')),
    login_hash      bytea NOT NULL UNIQUE,
    csrf_hash       bytea,
    code_hash       bytea UNIQUE,
    member          jsonb,
    grant_id        uuid REFERENCES oauth_grants (id) ON DELETE SET NULL,
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_authorizations_expiry_idx ON oauth_authorizations (project_id, expires_at);

-- Refresh tokens: rotated on every use; a used one presented again revokes its grant.
CREATE TABLE oauth_refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    grant_id    uuid NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX oauth_refresh_tokens_grant_idx ON oauth_refresh_tokens (grant_id);

-- What happened to a project's OAuth access, newest read first: consents given
-- or refused, grants revoked (and why).
CREATE TABLE oauth_events (
    id          uuid PRIMARY KEY,
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    kind        text NOT NULL CHECK (kind IN ('consent_approved', 'consent_denied', 'grant_revoked')),
    client_id   text NOT NULL,
    member_id   text,
    grant_id    uuid,
    reason      text
);
CREATE INDEX oauth_events_project_idx ON oauth_events (project_id, at DESC);
