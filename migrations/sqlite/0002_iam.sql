-- IAM principals behind SigV4 authentication (DESIGN.md decision 7): accounts,
-- users, groups, roles, access keys (secrets sealed under the master key),
-- inline and managed identity policies and their attachments.

CREATE TABLE iam_accounts (
    id          TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);

CREATE TABLE iam_users (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES iam_accounts (id),
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,
    arn         TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    CONSTRAINT iam_users_name_key UNIQUE (account_id, name)
);

CREATE TABLE iam_groups (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES iam_accounts (id),
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,
    arn         TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    CONSTRAINT iam_groups_name_key UNIQUE (account_id, name)
);

CREATE TABLE iam_group_members (
    group_id    TEXT NOT NULL REFERENCES iam_groups (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES iam_users (id) ON DELETE CASCADE,
    CONSTRAINT iam_group_members_pkey PRIMARY KEY (group_id, user_id)
);

CREATE TABLE iam_roles (
    id                  TEXT PRIMARY KEY,
    account_id          TEXT NOT NULL REFERENCES iam_accounts (id),
    name                TEXT NOT NULL,
    path                TEXT NOT NULL,
    arn                 TEXT NOT NULL,
    assume_role_policy  TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    CONSTRAINT iam_roles_name_key UNIQUE (account_id, name)
);

-- A user holds at most two keys: each takes slot 1 or 2, and the unique
-- (user_id, slot) pair makes a concurrent third insert fail in the database.
CREATE TABLE iam_access_keys (
    access_key_id  TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES iam_users (id) ON DELETE CASCADE,
    slot           INTEGER NOT NULL CHECK (slot IN (1, 2)),
    secret_sealed  TEXT NOT NULL,
    status         TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    CONSTRAINT iam_access_keys_slot_key UNIQUE (user_id, slot)
);

CREATE TABLE iam_managed_policies (
    arn         TEXT PRIMARY KEY,
    id          TEXT NOT NULL,
    account_id  TEXT NOT NULL REFERENCES iam_accounts (id),
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,
    document    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    CONSTRAINT iam_managed_policies_name_key UNIQUE (account_id, name)
);

-- principal_kind is 'user', 'group' or 'role'; principal_id that entity's id.
CREATE TABLE iam_inline_policies (
    principal_kind  TEXT NOT NULL,
    principal_id    TEXT NOT NULL,
    name            TEXT NOT NULL,
    document        TEXT NOT NULL,
    CONSTRAINT iam_inline_policies_pkey PRIMARY KEY (principal_kind, principal_id, name)
);

CREATE TABLE iam_policy_attachments (
    principal_kind  TEXT NOT NULL,
    principal_id    TEXT NOT NULL,
    policy_arn      TEXT NOT NULL REFERENCES iam_managed_policies (arn) ON DELETE CASCADE,
    CONSTRAINT iam_policy_attachments_pkey PRIMARY KEY (principal_kind, principal_id, policy_arn)
);
