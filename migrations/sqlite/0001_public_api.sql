-- The desired state behind Amazon MQ's public API: brokers, their users,
-- configurations with revisions, and tags. Reconcilers converge nodes to it.

CREATE TABLE brokers (
    id                              TEXT PRIMARY KEY,
    name                            TEXT NOT NULL,
    arn                             TEXT NOT NULL,
    state                           TEXT NOT NULL,
    engine_type                     TEXT NOT NULL,
    engine_version                  TEXT NOT NULL,
    host_instance_type              TEXT NOT NULL,
    deployment_mode                 TEXT NOT NULL,
    authentication_strategy         TEXT NOT NULL,
    storage_type                    TEXT NOT NULL,
    publicly_accessible             BOOLEAN NOT NULL,
    auto_minor_version_upgrade      BOOLEAN NOT NULL,
    maintenance_day                 TEXT NOT NULL,
    maintenance_time                TEXT NOT NULL,
    maintenance_time_zone           TEXT NOT NULL,
    logs_general                    BOOLEAN NOT NULL,
    logs_audit                      BOOLEAN NOT NULL,
    security_groups                 TEXT NOT NULL,
    subnet_ids                      TEXT NOT NULL,
    configuration_id                TEXT,
    configuration_revision          INTEGER,
    configuration_history           TEXT NOT NULL,
    pending_engine_version          TEXT,
    pending_host_instance_type      TEXT,
    pending_configuration_id        TEXT,
    pending_configuration_revision  INTEGER,
    creator_request_id              TEXT,
    generation                      INTEGER NOT NULL,
    reboot_generation               INTEGER,
    version                         INTEGER NOT NULL,
    created_at                      TEXT NOT NULL,
    updated_at                      TEXT NOT NULL,
    CONSTRAINT brokers_name_key UNIQUE (name),
    CONSTRAINT brokers_creator_request_id_key UNIQUE (creator_request_id)
);

CREATE TABLE broker_users (
    broker_id           TEXT NOT NULL REFERENCES brokers (id) ON DELETE CASCADE,
    username            TEXT NOT NULL,
    password_hash       TEXT NOT NULL,
    console_access      BOOLEAN NOT NULL,
    groups              TEXT NOT NULL,
    replication_user    BOOLEAN NOT NULL,
    pending_change      TEXT,
    pending_generation  INTEGER NOT NULL,
    created_at          TEXT NOT NULL,
    CONSTRAINT broker_users_pkey PRIMARY KEY (broker_id, username)
);

CREATE TABLE configurations (
    id                       TEXT PRIMARY KEY,
    arn                      TEXT NOT NULL,
    name                     TEXT NOT NULL,
    description              TEXT,
    engine_type              TEXT NOT NULL,
    engine_version           TEXT NOT NULL,
    authentication_strategy  TEXT NOT NULL,
    latest_revision          INTEGER NOT NULL,
    created_at               TEXT NOT NULL
);

CREATE TABLE configuration_revisions (
    configuration_id  TEXT NOT NULL REFERENCES configurations (id) ON DELETE CASCADE,
    revision          INTEGER NOT NULL,
    description       TEXT,
    data              TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    CONSTRAINT configuration_revisions_pkey PRIMARY KEY (configuration_id, revision)
);

CREATE TABLE tags (
    resource_arn  TEXT NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    CONSTRAINT tags_pkey PRIMARY KEY (resource_arn, key)
);
