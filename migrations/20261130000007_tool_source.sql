-- Where a tool came from: an OpenAPI import stores {"kind": "openapi", "api": info.title,
-- "key": "METHOD /path", "operation_id", "tags", "arguments": {argument: {"in", "name"}}};
-- null for tools registered one by one. A re-import finds its tools by (api, key), so an
-- operation is one tool per project however often it is imported.
ALTER TABLE tools ADD COLUMN source jsonb;
CREATE UNIQUE INDEX tools_source ON tools (project_id, (source->>'api'), (source->>'key')) WHERE source IS NOT NULL;
