//! The operator token: mutating endpoints take `Authorization: Bearer <token>`, compared with
//! the token read at start from `node.operator_token_file` (mode 0600). A node without a token
//! file refuses every mutating call.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::{ApiError, ErrorCode};
use super::view::NodeView;

/// Proof that the caller sent the operator token (an extractor: a handler that takes it runs
/// only for a caller that did).
#[derive(Debug)]
pub struct Operator;

/// Equal in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<Arc<NodeView>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        view: &Arc<NodeView>,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = &view.operator_token else {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "this node has no operator token (node.operator_token_file): mutating calls are off",
            ));
        };
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "missing `Authorization: Bearer <operator token>`",
                )
            })?;
        if same(given.trim().as_bytes(), expected.as_bytes()) {
            Ok(Operator)
        } else {
            Err(ApiError::new(
                ErrorCode::Unauthorized,
                "wrong operator token",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::same(b"abcdef", b"abcdef"));
        assert!(!super::same(b"abcdef", b"abcdeg"));
        assert!(!super::same(b"abc", b"abcdef"));
    }
}
