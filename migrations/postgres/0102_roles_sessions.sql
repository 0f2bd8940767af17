-- Roles that can be assumed, the temporary credentials they hand out (STS
-- AssumeRole, and the AWS-identity login), and tags on users and roles
-- (aws:PrincipalTag/*). See control-plane/src/app/sessions.rs.

-- iam_roles (0002) already holds the trust policy; roles also carry how long
-- their sessions may last (IAM's MaxSessionDuration, 3600 to 43200 s) and a
-- description.
ALTER TABLE iam_roles ADD COLUMN max_session_duration INTEGER NOT NULL DEFAULT 3600;
ALTER TABLE iam_roles ADD COLUMN description TEXT NOT NULL DEFAULT '';

-- Temporary credentials. Exactly one of role_id / user_id names whose
-- permissions the session carries; deleting that principal ends its sessions.
-- The secret and the session token are sealed under the master key, like the
-- long-term secrets. Rows are removed some time after they expire, so that a
-- recently expired key is still answered "expired" rather than "unknown".
CREATE TABLE iam_sessions (
    access_key_id   TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES iam_accounts (id),
    role_id         TEXT REFERENCES iam_roles (id) ON DELETE CASCADE,
    user_id         TEXT REFERENCES iam_users (id) ON DELETE CASCADE,
    session_name    TEXT NOT NULL,
    secret_sealed   TEXT NOT NULL,
    token_sealed    TEXT NOT NULL,
    -- The policy passed at AssumeRole: the session may do at most what it allows.
    session_policy  TEXT,
    -- Who asked for the session (ARN), for the record.
    source_arn      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT iam_sessions_principal_check CHECK ((role_id IS NULL) <> (user_id IS NULL))
);
CREATE INDEX iam_sessions_expires_at_idx ON iam_sessions (expires_at);
CREATE INDEX iam_sessions_role_id_idx ON iam_sessions (role_id);
CREATE INDEX iam_sessions_user_id_idx ON iam_sessions (user_id);

-- Tags of users and roles; principal_kind is 'user' or 'role'. Removed with
-- their principal by the store (no foreign key can name two tables).
CREATE TABLE iam_principal_tags (
    principal_kind  TEXT NOT NULL,
    principal_id    TEXT NOT NULL,
    tag_key         TEXT NOT NULL,
    tag_value       TEXT NOT NULL,
    CONSTRAINT iam_principal_tags_pkey PRIMARY KEY (principal_kind, principal_id, tag_key)
);
