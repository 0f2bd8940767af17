-- Broker nodes: one row per node a broker should have, owned by the provisioning
-- reconciler. The row is written before the node's process or data directory exists
-- and removed only after both are gone, so neither can be orphaned by a crash.

CREATE TABLE broker_nodes (
    id                   TEXT PRIMARY KEY,
    -- No cascade: a broker row cannot vanish while one of its nodes is still recorded.
    broker_id            TEXT NOT NULL REFERENCES brokers (id),
    ordinal              INTEGER NOT NULL,
    zone                 TEXT NOT NULL,
    -- Chosen once, at the node's first provisioning, so its endpoint never moves.
    host                 TEXT NOT NULL,
    amqp_port            INTEGER NOT NULL,
    admin_port           INTEGER NOT NULL,
    -- SHA-256 (hex) of the token issued at the node's latest start; NULL before the first.
    token_hash           TEXT,
    -- 'pending' (never started), 'unknown' (a provider action is in flight or was
    -- interrupted), 'started', 'stopped', 'deleting'.
    observed_state       TEXT NOT NULL,
    pid                  INTEGER,
    -- The broker reboot generation the node's latest start satisfies.
    restart_generation   INTEGER NOT NULL,
    started_at           TEXT,
    -- Set when the agent started with the current token registers; cleared on each start.
    registered_at        TEXT,
    agent_version        TEXT,
    last_heartbeat       TEXT,
    engine_ready         BOOLEAN NOT NULL,
    connections          INTEGER NOT NULL,
    queues               INTEGER NOT NULL,
    messages             INTEGER NOT NULL,
    applied_generation   INTEGER NOT NULL,
    rejected_generation  INTEGER,
    rejected_reason      TEXT,
    created_at           TEXT NOT NULL,
    CONSTRAINT broker_nodes_broker_ordinal_key UNIQUE (broker_id, ordinal),
    CONSTRAINT broker_nodes_amqp_port_key UNIQUE (amqp_port),
    CONSTRAINT broker_nodes_admin_port_key UNIQUE (admin_port)
);

CREATE INDEX broker_nodes_broker_id ON broker_nodes (broker_id);
