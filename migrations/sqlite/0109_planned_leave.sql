-- A follower leaving the in-sync set for a planned restart (rolling restart, patching;
-- issue 5 point 4). The control plane drops it from in_sync before it is stopped, so that
-- confirms never wait on a node that is about to go, and the leader's proposals cannot put
-- it back until it has been stopped for the restart (leaving_node cleared then). One node
-- at a time: a rolling restart restarts one node at a time.
ALTER TABLE broker_replication ADD COLUMN leaving_node TEXT;
ALTER TABLE broker_replication ADD COLUMN leaving_since TEXT;
-- The leader's own proposal no longer names it: no confirm waits on it any more.
ALTER TABLE broker_replication ADD COLUMN leaving_acked BOOLEAN NOT NULL DEFAULT FALSE;
