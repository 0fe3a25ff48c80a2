-- Run history filtered by status or by tool (the console's Runs screen, GET
-- /v1/projects/{id}/runs?status=…&tool=…), newest first: without these, a filter
-- that matches few runs walks the project's whole (project_id, accepted_at)
-- index. Measured by loadtest/scenarios/console with 100,000 runs.
CREATE INDEX runs_project_status_accepted_idx ON runs (project_id, status, accepted_at DESC, run_id DESC);
CREATE INDEX runs_project_tool_accepted_idx ON runs (project_id, tool_name, accepted_at DESC, run_id DESC);
