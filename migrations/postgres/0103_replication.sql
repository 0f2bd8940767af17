-- Replicated brokers (issue 5; DESIGN.md decisions 3 and 4): who leads each
-- ACTIVE_STANDBY_MULTI_AZ or CLUSTER_MULTI_AZ broker under which epoch, the leader's lease,
-- the recorded in-sync set, what every node last reported, and the event log of
-- failovers, switchovers and patch steps.

-- One row per replicated broker, written before its nodes are recorded.
CREATE TABLE broker_replication (
    broker_id               TEXT PRIMARY KEY REFERENCES brokers (id) ON DELETE CASCADE,
    -- Only grows. A promotion is an UPDATE ... WHERE epoch = <old>: of two control planes
    -- racing, exactly one wins.
    epoch                   BIGINT NOT NULL,
    -- The leader under `epoch`.
    leader_node             TEXT NOT NULL,
    -- JSON array of node ids, sorted: every node holding every confirmed publish. Changed
    -- only at the request of the current epoch's leader, or shrunk by a promotion.
    in_sync                 TEXT NOT NULL,
    -- When the leader's lease ends on the control plane's clock; NULL: none granted yet
    -- under this epoch.
    lease_expires_at        TIMESTAMPTZ,
    -- The leader gave its lease up (planned switchover): it confirms nothing more.
    lease_released          BOOLEAN NOT NULL,
    -- The log position the leader reported when it released its lease.
    released_position       BIGINT,
    -- The replication handshake secret, sealed under the master key. Never logged.
    secret_sealed           TEXT NOT NULL,
    -- A requested switchover: requested_at set; target NULL means "the best follower".
    switchover_requested_at TIMESTAMPTZ,
    switchover_target       TEXT,
    switchover_reason       TEXT,
    -- Why the broker shows CRITICAL_ACTION_REQUIRED (an actionRequiredCode), if it does.
    action_required         TEXT,
    leader_since            TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL
);

-- Where a node's replication listener is bound (replicated brokers only).
ALTER TABLE broker_nodes ADD COLUMN replication_port INTEGER;
CREATE UNIQUE INDEX broker_nodes_replication_port_key ON broker_nodes (replication_port);
-- What the node last said of its replication: the epoch it has seen, the role it acts in
-- ('leader' / 'follower'), the last log position it holds durably.
ALTER TABLE broker_nodes ADD COLUMN reported_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE broker_nodes ADD COLUMN reported_role TEXT;
ALTER TABLE broker_nodes ADD COLUMN reported_position BIGINT NOT NULL DEFAULT 0;

-- What happened to a broker's leadership and nodes, for the events API. Kinds: failover,
-- switchover, switchover-refused, in-sync-change, patch-step, ...
CREATE TABLE broker_events (
    id           BIGSERIAL PRIMARY KEY,
    broker_id    TEXT NOT NULL REFERENCES brokers (id) ON DELETE CASCADE,
    at           TIMESTAMPTZ NOT NULL,
    kind         TEXT NOT NULL,
    from_node    TEXT,
    to_node      TEXT,
    epoch        BIGINT,
    reason       TEXT NOT NULL,
    duration_ms  BIGINT
);

CREATE INDEX broker_events_broker_id ON broker_events (broker_id, id);
