-- The audit trail (issue 4): one row per public API request, refused ones included.
-- Rows are appended by the control plane's group-commit writer and deleted only by
-- the retention cleanup. `seq` orders rows in commit order and keys the pages of
-- GET /v1/audit-events (newest first).
--
-- principal: the verified principal's ARN, or the access key id the request named
--            when it did not verify, or 'anonymous' when it named none.
-- action, resource: NULL when the request never named a known operation.
-- decision: 'allowed' | 'denied' | 'unauthenticated' | 'throttled'.
-- error_code: the error name answered (x-amzn-ErrorType or the Query API's Code),
--             NULL on success.
CREATE TABLE audit_events (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  TIMESTAMPTZ NOT NULL,
    request_id   TEXT NOT NULL,
    principal    TEXT NOT NULL,
    action       TEXT,
    resource     TEXT,
    decision     TEXT NOT NULL
        CHECK (decision IN ('allowed', 'denied', 'unauthenticated', 'throttled')),
    http_status  INTEGER NOT NULL,
    error_code   TEXT,
    source_ip    TEXT
);

CREATE INDEX audit_events_occurred_at ON audit_events (occurred_at);
CREATE INDEX audit_events_principal ON audit_events (principal, seq);
CREATE INDEX audit_events_resource ON audit_events (resource, seq);
