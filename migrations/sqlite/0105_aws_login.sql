-- Logging in with a real AWS identity (issue 4; DESIGN.md decision 7, the pattern
-- of HashiCorp Vault's aws auth method). Each row lets the AWS principals whose ARN
-- matches arn_pattern (IAM wildcards, after an assumed-role ARN is normalised to
-- its role's ARN) log in as the Mooring role role_name of account_id. See
-- control-plane/src/app/aws_login.rs.
--
-- With import_policies, each login also copies the AWS principal's identity
-- policies onto that Mooring role, replacing the previous copy; the pattern is
-- then an exact ARN (checked by the application), and the partial unique index
-- lets only one mapping import into a given role, so two AWS principals never
-- overwrite each other's policies on one role.
CREATE TABLE aws_login_mappings (
    arn_pattern      TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES iam_accounts (id),
    role_name        TEXT NOT NULL,
    import_policies  BOOLEAN NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE UNIQUE INDEX aws_login_mappings_import_key
    ON aws_login_mappings (account_id, role_name) WHERE import_policies;
