-- How a tool is presented to MCP clients and how its response is mapped.
ALTER TABLE tools
    ADD COLUMN title          text,
    ADD COLUMN annotations    jsonb,
    ADD COLUMN response_mode  text NOT NULL DEFAULT 'text',
    ADD COLUMN output_schema  jsonb;
