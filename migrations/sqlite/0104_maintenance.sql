-- Maintenance (DESIGN.md decision 8): the schedule of every broker's pending disruptive
-- changes, the brokers being patched right now, and the fleet-wide pause switch.
--
-- What a pending engine version, instance type or configuration *is* stays in the brokers
-- row (UpdateBroker writes it, RebootBroker applies it); a row here says *when* it is due.

CREATE TABLE maintenance_actions (
    broker_id     TEXT NOT NULL REFERENCES brokers (id) ON DELETE CASCADE,
    -- ENGINE_VERSION, HOST_INSTANCE_TYPE, CONFIGURATION, AGENT_VERSION: one of each at most.
    kind          TEXT NOT NULL,
    -- The version, instance type, `<configuration-id>:<revision>` or agent version.
    target        TEXT NOT NULL,
    -- USER (UpdateBroker), AUTO_MINOR_VERSION_UPGRADE, AGENT (a new agent binary).
    source        TEXT NOT NULL,
    -- The start of the window it is due in (or the moment it was found, in an open window).
    scheduled_at  TEXT NOT NULL,
    -- The window (`DAY HH:MM ZONE`) scheduled_at was computed from: a changed window
    -- reschedules.
    window_spec   TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (broker_id, kind)
);

-- A broker whose maintenance has started. The row is written before the broker's spec
-- (so a crash in between is seen as "started, maybe not applied") and removed once its
-- nodes run the change; the fleet-wide concurrency limit counts these rows.
CREATE TABLE maintenance_runs (
    broker_id    TEXT PRIMARY KEY REFERENCES brokers (id) ON DELETE CASCADE,
    -- The broker generation the run's reboot request bumps to; the run applied iff the
    -- broker's reboot_generation reached it.
    generation   INTEGER NOT NULL,
    -- JSON list of the actions applied, for the event recorded at the end.
    actions      TEXT NOT NULL,
    started_at   TEXT NOT NULL
);

-- One row: the operator's switch that pauses window-driven maintenance everywhere.
CREATE TABLE maintenance_settings (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    paused      BOOLEAN NOT NULL,
    updated_at  TEXT NOT NULL
);
