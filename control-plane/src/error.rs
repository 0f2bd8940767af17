//! The public API's one error type and its one HTTP mapping: Amazon MQ's error name in
//! the `x-amzn-ErrorType` header, `{"errorAttribute", "message"}` in the body.
//! Internal details are logged here, where the error is answered, and never returned.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        attribute: Option<String>,
        message: String,
    },
    #[error("{message}")]
    NotFound {
        attribute: Option<String>,
        message: String,
    },
    #[error("{message}")]
    Conflict {
        attribute: Option<String>,
        message: String,
    },
    #[error("{message}")]
    Forbidden { message: String },
    #[error("{message}")]
    Unauthorized { message: String },
    /// Anything the client cannot fix; logged with its whole chain, answered blandly.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(attribute: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            attribute: Some(attribute.to_owned()),
            message: message.into(),
        }
    }

    pub fn not_found(attribute: &str, message: impl Into<String>) -> Self {
        ApiError::NotFound {
            attribute: Some(attribute.to_owned()),
            message: message.into(),
        }
    }

    pub fn conflict(attribute: &str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            attribute: Some(attribute.to_owned()),
            message: message.into(),
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }

    /// Amazon MQ's name for this error, as SDKs match it.
    pub fn name(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "BadRequestException",
            ApiError::NotFound { .. } => "NotFoundException",
            ApiError::Conflict { .. } => "ConflictException",
            ApiError::Forbidden { .. } => "ForbiddenException",
            ApiError::Unauthorized { .. } => "UnauthorizedException",
            ApiError::Internal(_) => "InternalServerErrorException",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> ErrorBody {
        let (attribute, message) = match self {
            ApiError::BadRequest { attribute, message }
            | ApiError::NotFound { attribute, message }
            | ApiError::Conflict { attribute, message } => (attribute.clone(), message.clone()),
            ApiError::Forbidden { message } | ApiError::Unauthorized { message } => {
                (None, message.clone())
            }
            ApiError::Internal(_) => (
                None,
                "An internal error occurred. Try again later.".to_owned(),
            ),
        };
        ErrorBody {
            error_attribute: attribute,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.name()));
        response
    }
}

/// The fallback for store errors an operation does not handle itself: operations map
/// the cases they expect (with Amazon MQ's messages) before this.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::NotFound(what) => ApiError::NotFound {
                attribute: None,
                message: format!("The {what} was not found."),
            },
            StoreError::Constraint(_) | StoreError::VersionConflict => ApiError::Conflict {
                attribute: None,
                message: "The resource was changed concurrently; retry the request.".to_owned(),
            },
            e @ (StoreError::Corrupt(_) | StoreError::Database(_)) => ApiError::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_hide_their_detail() {
        let response =
            ApiError::internal(anyhow::anyhow!("password=hunter2 leaked")).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()["x-amzn-ErrorType"],
            "InternalServerErrorException"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body reads");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn client_errors_carry_name_attribute_and_message() {
        let response = ApiError::bad_request("brokerName", "bad name").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()["x-amzn-ErrorType"],
            "BadRequestException"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body reads");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"errorAttribute": "brokerName", "message": "bad name"})
        );
    }
}
