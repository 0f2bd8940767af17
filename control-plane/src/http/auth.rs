//! Authentication of public API requests. SigV4 verification arrives in a later issue
//! (DESIGN.md decision 7) and goes here: this layer sees every public API request
//! before any handler. Until then requests are accepted unsigned.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;

pub async fn authenticate(
    State(_state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    next.run(request).await
}
