//! The API's errors: `{ "error": { "code": ..., "message": ... } }` with the HTTP status its code
//! implies. Codes are the spec's `ConsensusError` names where one fits, plus `NotFound`,
//! `BadRequest`, `Unauthorized` and `Internal` (a failed store read: the node's fault, never the
//! caller's input).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// What went wrong, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub enum ErrorCode {
    /// The input does not parse or is out of range.
    BadRequest,
    /// No such round, block or transaction here.
    NotFound,
    /// A mutating call without the operator token, or with a wrong one.
    Unauthorized,
    /// The chain has not committed within the health threshold.
    RoundTimeout,
    /// Too few validators connected for a quorum.
    InsufficientVotes,
    /// A vote or message whose signature does not verify, or that contradicts one seen.
    ByzantineFault,
    /// A block proposal that breaks a rule.
    InvalidBlockProposal,
    /// The node could not serve the request (a store read failed).
    Internal,
    /// A queue is full: retry later.
    Busy,
}

impl ErrorCode {
    /// The HTTP status this code answers with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::ByzantineFault | ErrorCode::InvalidBlockProposal => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::RoundTimeout | ErrorCode::InsufficientVotes | ErrorCode::Busy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The error's body.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, by name.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

/// Every error answer: `{ "error": { "code", "message" } }`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    /// The error.
    pub error: ErrorDetail,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }

    /// [`ErrorCode::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// [`ErrorCode::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// [`ErrorCode::Internal`], from a store error.
    pub fn store(e: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, format!("reading the store: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.error.code.status(), Json(self)).into_response()
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<axum::Json<T>, ApiError>;
