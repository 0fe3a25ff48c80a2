-- How a tool's calls execute beyond the HTTP request: as MCP tasks
-- (never | optional | required), behind an approval (none | client | operator),
-- and which client capabilities a call needs (2026-07-28: refused with -32021
-- when a request does not declare them).
ALTER TABLE tools
    ADD COLUMN task_support        text NOT NULL DEFAULT 'optional',
    ADD COLUMN approval            text NOT NULL DEFAULT 'none',
    ADD COLUMN client_capabilities jsonb;
