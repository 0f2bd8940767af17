//! CreateUser, DescribeUser, UpdateUser, DeleteUser, ListUsers: broker users are real
//! resources of our engine. Each change bumps the broker's generation and stays
//! pending (DescribeUser `pending`, DescribeBroker `users[].pendingChange`) until the
//! nodes report that generation applied.

use super::brokers::{broker_not_found, get_broker, parse_broker_id};
use super::{paging, password, validate, AppState};
use crate::api::{CreateUserRequest, PageQuery, UpdateUserRequest};
use crate::error::ApiError;
use crate::model::BrokerState;
use crate::store::{
    BrokerRecord, Constraint, NewAuditEvent, NewUser, StoreError, UserRecord, UserUpdate,
};

const LIST_DEFAULT: i64 = 100;

/// Groups are an ActiveMQ notion; RabbitMQ users take none.
pub(super) fn check_groups(groups: &[String]) -> Result<(), ApiError> {
    if groups.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "groups",
            "Groups do not apply to RabbitMQ brokers.",
        ))
    }
}

/// Replication users belong to cross-region replication, which is not supported.
pub(super) fn check_replication_user(flag: Option<bool>) -> Result<(), ApiError> {
    if flag == Some(true) {
        Err(ApiError::bad_request(
            "replicationUser",
            "Replication users are not supported.",
        ))
    } else {
        Ok(())
    }
}

fn user_not_found(username: &str) -> ApiError {
    ApiError::not_found(
        "username",
        format!("Can't find requested user [{username}]. Make sure your user exists."),
    )
}

async fn live_broker(state: &AppState, broker_id: &str) -> Result<BrokerRecord, ApiError> {
    let broker = get_broker(state, broker_id).await?;
    if broker.state == BrokerState::DeletionInProgress {
        return Err(ApiError::bad_request(
            "broker-id",
            format!("Broker {broker_id} is being deleted."),
        ));
    }
    Ok(broker)
}

/// Maps the store's answers for user writes to Amazon MQ's errors.
fn user_write_error(e: StoreError, broker_id: &str, username: &str) -> ApiError {
    match e {
        StoreError::NotFound("broker") => broker_not_found(broker_id),
        StoreError::NotFound(_) => user_not_found(username),
        StoreError::Constraint(Constraint::BrokerUser) => ApiError::conflict(
            "username",
            format!("User {username} already exists on broker {broker_id}."),
        ),
        e => e.into(),
    }
}

/// `audit`: the request's success record, committed with the user (see
/// `Store::user_create`).
pub async fn create_user(
    state: &AppState,
    broker_id: &str,
    username: &str,
    req: CreateUserRequest,
    audit: Option<&NewAuditEvent>,
) -> Result<i64, ApiError> {
    validate::username(username)?;
    let pw = req.password.ok_or_else(|| {
        ApiError::bad_request(
            "password",
            "The request is missing the required member password.",
        )
    })?;
    validate::password(&pw)?;
    let groups = req.groups.unwrap_or_default();
    check_groups(&groups)?;
    check_replication_user(req.replication_user)?;
    // No read of the broker first: the store's write checks that it exists and is live,
    // and only a refused write pays for the read that says why.
    let id = parse_broker_id(broker_id)?;
    let user = NewUser {
        username: username.to_owned(),
        password_hash: password::hash(&pw),
        console_access: req.console_access.unwrap_or(false),
        groups,
        replication_user: false,
    };
    let generation = match state.store.user_create(&id, &user, audit).await {
        Ok(generation) => generation,
        Err(StoreError::NotFound("broker")) => {
            // Missing, or being deleted: live_broker tells which.
            return Err(live_broker(state, broker_id)
                .await
                .err()
                .unwrap_or_else(|| broker_not_found(broker_id)));
        }
        Err(e) => return Err(user_write_error(e, broker_id, username)),
    };
    tracing::info!(broker_id, username, generation, "user created");
    state.wake_reconcilers();
    Ok(generation)
}

pub async fn describe_user(
    state: &AppState,
    broker_id: &str,
    username: &str,
) -> Result<UserRecord, ApiError> {
    let broker = get_broker(state, broker_id).await?;
    match state.store.user_get(&broker.id, username).await {
        Ok(u) => Ok(u),
        Err(StoreError::NotFound(_)) => Err(user_not_found(username)),
        Err(e) => Err(e.into()),
    }
}

pub async fn update_user(
    state: &AppState,
    broker_id: &str,
    username: &str,
    req: UpdateUserRequest,
) -> Result<i64, ApiError> {
    if let Some(pw) = &req.password {
        validate::password(pw)?;
    }
    if let Some(groups) = &req.groups {
        check_groups(groups)?;
    }
    check_replication_user(req.replication_user)?;
    let broker = live_broker(state, broker_id).await?;
    let update = UserUpdate {
        password_hash: req.password.as_deref().map(password::hash),
        console_access: req.console_access,
        groups: req.groups,
        replication_user: None,
    };
    let generation = state
        .store
        .user_update(&broker.id, username, &update)
        .await
        .map_err(|e| user_write_error(e, broker_id, username))?;
    tracing::info!(broker_id, username, generation, "user updated");
    state.wake_reconcilers();
    Ok(generation)
}

pub async fn delete_user(
    state: &AppState,
    broker_id: &str,
    username: &str,
) -> Result<i64, ApiError> {
    let broker = live_broker(state, broker_id).await?;
    let generation = state
        .store
        .user_delete(&broker.id, username)
        .await
        .map_err(|e| user_write_error(e, broker_id, username))?;
    tracing::info!(broker_id, username, generation, "user deletion requested");
    state.wake_reconcilers();
    Ok(generation)
}

pub async fn list_users(
    state: &AppState,
    broker_id: &str,
    q: &PageQuery,
) -> Result<(Vec<UserRecord>, Option<String>, i64), ApiError> {
    let limit = paging::max_results(q.max_results.as_deref(), LIST_DEFAULT)?;
    let after = paging::decode_token(q.next_token.as_deref())?;
    let broker = get_broker(state, broker_id).await?;
    let rows = state
        .store
        .user_list(&broker.id, after.as_deref(), limit + 1)
        .await?;
    let (users, token) = paging::page(rows, limit, |u| u.username.clone());
    Ok((users, token, limit))
}
