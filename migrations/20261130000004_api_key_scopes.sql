-- What an API key may do: 'call' (MCP; reading only its own integration's runs of
-- the tools it may call) and 'read' (the whole project's run history, bodies and
-- usage). Existing keys keep what they could do.
ALTER TABLE api_keys ADD COLUMN scopes text[] NOT NULL DEFAULT '{call}';
