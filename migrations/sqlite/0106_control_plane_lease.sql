-- The control-plane leader lease: of several `mooring serve` replicas on one database, only
-- the holder runs the loops that act on the world (provisioning, failover, maintenance);
-- every replica serves the API and the agent API. One row, taken and renewed by
-- compare-and-set (see `store::cp_lease`).
--
-- Times are milliseconds since the Unix epoch on the database's clock, so replicas never
-- compare their own clocks with each other's.

CREATE TABLE control_plane_lease (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    -- The replica holding (or last holding) the lease; '' before anyone took it.
    holder          TEXT NOT NULL,
    -- Fencing counter: bumped every time the lease is acquired (never on renewal).
    term            INTEGER NOT NULL,
    acquired_at_ms  INTEGER NOT NULL,
    renewed_at_ms   INTEGER NOT NULL,
    -- Free for the taking once the database's clock passes this.
    expires_at_ms   INTEGER NOT NULL
);

INSERT INTO control_plane_lease (id, holder, term, acquired_at_ms, renewed_at_ms, expires_at_ms)
VALUES (1, '', 0, 0, 0, 0);
