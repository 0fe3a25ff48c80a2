-- Every change to what decides whether a call may run (credentials, integrations,
-- member revocations, tools, project settings) is announced on the channel
-- `tengine_control` with the project's id, by the database itself at commit: no
-- code path (admin API, CLI, SQL by hand, cascades) can change access without
-- every instance's in-memory copy hearing of it. See `tengine_control::freshness`.
CREATE FUNCTION tengine_control_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    project uuid;
BEGIN
    IF TG_TABLE_NAME = 'projects' THEN
        project := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
    ELSE
        project := CASE WHEN TG_OP = 'DELETE' THEN OLD.project_id ELSE NEW.project_id END;
    END IF;
    -- Identical payloads within one transaction are delivered once.
    PERFORM pg_notify('tengine_control', project::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER projects_control_changed AFTER INSERT OR UPDATE OR DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION tengine_control_changed();
CREATE TRIGGER integrations_control_changed AFTER INSERT OR UPDATE OR DELETE ON integrations
    FOR EACH ROW EXECUTE FUNCTION tengine_control_changed();
CREATE TRIGGER api_keys_control_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tengine_control_changed();
CREATE TRIGGER member_revocations_control_changed AFTER INSERT OR UPDATE OR DELETE ON member_revocations
    FOR EACH ROW EXECUTE FUNCTION tengine_control_changed();
CREATE TRIGGER tools_control_changed AFTER INSERT OR UPDATE OR DELETE ON tools
    FOR EACH ROW EXECUTE FUNCTION tengine_control_changed();
