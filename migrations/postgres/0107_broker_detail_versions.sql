-- A version per broker of the rows DescribeBroker shows from other tables (its users, tags,
-- nodes, scheduled maintenance actions and leadership), so that a control plane can keep
-- them in memory and re-read only the broker row while the version stands (issue 3 point 4:
-- those five lookups cost Postgres more than the rest of the request).
--
-- Triggers keep it, so no writer, on any replica, can forget to. They are deferred to
-- commit: the version row is the last lock a writing transaction takes, after all of its
-- own row locks, so it never waits for it while holding a row another transaction waits
-- for (bumping it at once would add lock cycles, e.g. a heartbeat's node update against a
-- failover's replication-then-nodes update). The bump commits atomically with the change,
-- so a reader's snapshot sees both or neither.
--
-- Postgres only: on SQLite, DescribeBroker is one in-process statement and no cache is kept.
CREATE TABLE broker_detail_versions (
    broker_id TEXT PRIMARY KEY REFERENCES brokers (id) ON DELETE CASCADE,
    detail_version BIGINT NOT NULL DEFAULT 0
);
INSERT INTO broker_detail_versions (broker_id) SELECT id FROM brokers;

CREATE FUNCTION broker_detail_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO broker_detail_versions (broker_id) VALUES (NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER brokers_detail_row AFTER INSERT ON brokers
    FOR EACH ROW EXECUTE FUNCTION broker_detail_row();

-- For tables with a broker_id column. A deleted broker has no version row left to bump.
CREATE FUNCTION broker_detail_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE broker_detail_versions SET detail_version = detail_version + 1 WHERE broker_id = OLD.broker_id;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE broker_detail_versions SET detail_version = detail_version + 1
        WHERE broker_id IN (OLD.broker_id, NEW.broker_id);
    ELSE
        UPDATE broker_detail_versions SET detail_version = detail_version + 1 WHERE broker_id = NEW.broker_id;
    END IF;
    RETURN NULL;
END $$;

-- Tags are keyed by ARN; a broker's ARN ends with its id (`...:broker:<name>:<id>`). Other
-- resources' ids (configurations) match no version row.
CREATE FUNCTION broker_detail_tag_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE broker_detail_versions SET detail_version = detail_version + 1
        WHERE broker_id = substring(OLD.resource_arn FROM '[^:]*$');
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE broker_detail_versions SET detail_version = detail_version + 1
        WHERE broker_id = substring(NEW.resource_arn FROM '[^:]*$');
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER broker_users_detail AFTER INSERT OR UPDATE OR DELETE ON broker_users
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION broker_detail_changed();
CREATE CONSTRAINT TRIGGER maintenance_actions_detail
    AFTER INSERT OR UPDATE OR DELETE ON maintenance_actions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION broker_detail_changed();
CREATE CONSTRAINT TRIGGER tags_detail AFTER INSERT OR UPDATE OR DELETE ON tags
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION broker_detail_tag_changed();
-- Nodes and replication rows change with every heartbeat or lease renewal; only the
-- columns DescribeBroker shows count.
CREATE CONSTRAINT TRIGGER broker_nodes_detail_rows AFTER INSERT OR DELETE ON broker_nodes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION broker_detail_changed();
CREATE CONSTRAINT TRIGGER broker_nodes_detail_shown AFTER UPDATE ON broker_nodes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.broker_id, OLD.id, OLD.ordinal, OLD.zone, OLD.host, OLD.amqp_port,
           OLD.admin_port, OLD.observed_state)
          IS DISTINCT FROM (NEW.broker_id, NEW.id, NEW.ordinal, NEW.zone, NEW.host,
           NEW.amqp_port, NEW.admin_port, NEW.observed_state))
    EXECUTE FUNCTION broker_detail_changed();
CREATE CONSTRAINT TRIGGER broker_replication_detail_rows
    AFTER INSERT OR DELETE ON broker_replication
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION broker_detail_changed();
CREATE CONSTRAINT TRIGGER broker_replication_detail_shown AFTER UPDATE ON broker_replication
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.broker_id, OLD.leader_node, OLD.action_required)
          IS DISTINCT FROM (NEW.broker_id, NEW.leader_node, NEW.action_required))
    EXECUTE FUNCTION broker_detail_changed();
