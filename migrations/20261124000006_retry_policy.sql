-- Per-tool retry policy (NULL: the defaults).
ALTER TABLE tools ADD COLUMN retry_policy jsonb;
