//! Every way the admin API answers with an error, and the one function that turns it into an
//! RFC 9457 `application/problem+json` response.
//!
//! A problem names what the client can fix (the `field`, the import `line`) and never carries
//! internals: a store error is logged where it happens and answered with a fixed detail.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

use crate::consent::event::ParseError;
use crate::consent::requests::ImportError;
use crate::consent::store::StoreError;

/// An admin request that failed, one variant per stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// No token, or one that no configured token matches.
    #[error("a valid admin token is required: send `Authorization: Bearer <token>`")]
    Unauthorized,
    /// The token's request budget is spent for now.
    #[error("too many requests for this token: retry after {} s", retry_after.as_secs())]
    RateLimited {
        /// When the next request will be accepted.
        retry_after: Duration,
    },
    /// The request body is over `admin.max_body_bytes`.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The body is not JSON at all.
    #[error("the body is not valid JSON: {detail}")]
    MalformedJson {
        /// The parser's message.
        detail: String,
    },
    /// JSON of the wrong shape as a whole (an array where an object belongs, say).
    #[error("{detail}")]
    InvalidBody {
        /// What is wrong.
        detail: String,
    },
    /// A field the API does not know.
    #[error("{detail}")]
    UnknownField {
        /// The path of the field (`events[1].colour`).
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// A required field is absent.
    #[error("{detail}")]
    MissingField {
        /// The path of the field.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// A field whose value cannot be used.
    #[error("{detail}")]
    InvalidField {
        /// The path of the field.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// An import line is bad; nothing was imported.
    #[error("line {line}: {detail}; nothing was imported")]
    InvalidImport {
        /// 1-based line number.
        line: usize,
        /// The column at fault, if one is.
        field: Option<String>,
        /// What is wrong.
        detail: String,
    },
    /// The body is not UTF-8 text.
    #[error("the body is not UTF-8 text")]
    InvalidEncoding,
    /// The import format cannot be told from the request.
    #[error(
        "cannot tell the import format: send Content-Type text/csv or application/x-ndjson, or ?format=csv|jsonl"
    )]
    UnsupportedMediaType,
    /// No such route.
    #[error("no such admin route")]
    NotFound,
    /// The route exists, not with this method.
    #[error("the method is not allowed on this route")]
    MethodNotAllowed,
    /// The consent store failed or could not be reached.
    #[error("the consent store is unavailable; nothing was changed")]
    StoreUnavailable,
    /// The store cannot do this.
    #[error("the consent store does not support this operation")]
    NotSupported,
    /// A bug or a corrupt store.
    #[error("the admin API failed internally")]
    Internal,
}

/// The body of every error answer (RFC 9457, with the gateway's extension members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProblemBody {
    /// A URI naming the problem type: `https://consentry.dev/problems/<reason>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short summary of the status.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person to read.
    pub detail: String,
    /// The stable reason code (`unknown_field`, `invalid_import`, `store_unavailable`, ...).
    pub reason: String,
    /// The offending field, as a path into the body (`events[1].kind`) or a column name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The offending line of an import (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl Problem {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::MalformedJson { .. } => "malformed_json",
            Self::InvalidBody { .. } => "invalid_body",
            Self::UnknownField { .. } => "unknown_field",
            Self::MissingField { .. } => "missing_field",
            Self::InvalidField { .. } => "invalid_field",
            Self::InvalidImport { .. } => "invalid_import",
            Self::InvalidEncoding => "invalid_encoding",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::StoreUnavailable => "store_unavailable",
            Self::NotSupported => "not_supported",
            Self::Internal => "internal_error",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MalformedJson { .. }
            | Self::InvalidBody { .. }
            | Self::UnknownField { .. }
            | Self::MissingField { .. }
            | Self::InvalidField { .. }
            | Self::InvalidImport { .. }
            | Self::InvalidEncoding => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotSupported => StatusCode::NOT_IMPLEMENTED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::UnknownField { field, .. }
            | Self::MissingField { field, .. }
            | Self::InvalidField { field, .. } => Some(field),
            Self::InvalidImport { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// An invalid value in `field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// The RFC 9457 body.
    pub fn body(&self) -> ProblemBody {
        let status = self.status();
        ProblemBody {
            type_uri: format!("https://consentry.dev/problems/{}", self.reason()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            reason: self.reason().to_owned(),
            field: self.field().map(str::to_owned),
            line: match self {
                Self::InvalidImport { line, .. } => Some(*line),
                _ => None,
            },
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut rsp = (self.status(), body).into_response();
        let headers = rsp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            Self::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"consentry-admin\""),
                );
            }
            Self::RateLimited { retry_after } => {
                // Whole seconds, rounded up: a client that waits this long is let in.
                let secs = retry_after
                    .as_secs()
                    .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
                    .max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        rsp
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidEvent { index, error } => Self::invalid(
                format!("events[{index}].{}", error.field()),
                error.to_string(),
            ),
            StoreError::Database(_) | StoreError::Io { .. } | StoreError::Http(_) => {
                tracing::warn!(target: "consentry::admin", error = %e, "consent store failed");
                Self::StoreUnavailable
            }
            StoreError::Unsupported(_) => Self::NotSupported,
            StoreError::Corrupt(_) => {
                tracing::error!(target: "consentry::admin", error = %e, "consent store is corrupt");
                Self::Internal
            }
        }
    }
}

impl From<ParseError> for Problem {
    fn from(e: ParseError) -> Self {
        Self::InvalidImport {
            line: e.line,
            field: e.field,
            detail: e.reason,
        }
    }
}

impl From<ImportError> for Problem {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Parse(p) => p.into(),
            ImportError::Store(s) => s.into(),
        }
    }
}

/// A JSON body that does not deserialise into `T`, as the problem that names the field.
pub fn json_problem(e: &serde_path_to_error::Error<serde_json::Error>) -> Problem {
    use serde_json::error::Category;
    let detail = e.inner().to_string();
    if e.inner().classify() != Category::Data {
        return Problem::MalformedJson { detail };
    }
    let field = crate::consent::event::json_error_field(e.path(), &detail);
    let Some(field) = field else {
        return Problem::InvalidBody { detail };
    };
    if detail.starts_with("unknown field") {
        Problem::UnknownField { field, detail }
    } else if detail.starts_with("missing field") {
        Problem::MissingField { field, detail }
    } else {
        Problem::InvalidField { field, detail }
    }
}
