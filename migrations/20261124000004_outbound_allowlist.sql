-- Networks (CIDR) a project's tools may reach although they are private,
-- loopback or link-local (e.g. an internal API behind a VPN).
ALTER TABLE projects ADD COLUMN outbound_allowlist text[] NOT NULL DEFAULT '{}';
