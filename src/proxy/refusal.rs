//! Every way the gateway refuses a request, and the one function that turns a refusal into an
//! RFC 9457 `application/problem+json` response.
//!
//! A refusal never carries data from the upstream: its detail is written by the gateway.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use super::body::{self, Body};

/// A refusal, one variant per stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no caller is identified by the credentials presented")]
    UnknownCaller,
    #[error("the credentials are ambiguous: present one API key")]
    AmbiguousCredentials,
    #[error("no purpose declared: send one `X-Purpose` header")]
    PurposeMissing,
    #[error("the purpose is declared more than once")]
    PurposeAmbiguous,
    #[error("the purpose `{0}` is not known")]
    PurposeUnknown(String),
    #[error("the caller may not declare the purpose `{0}`")]
    PurposeNotAllowed(String),
    #[error("the route does not serve the purpose `{0}`")]
    PurposeNotCovered(String),
    #[error("no policy covers this route")]
    RouteNotCovered,
    #[error("the method is not allowed on this route")]
    MethodNotAllowed,
    #[error("the request target is not acceptable: {0}")]
    BadPath(String),
    #[error("the request is not acceptable: {0}")]
    BadRequest(&'static str),
    #[error("the data subject has no lawful basis for this purpose")]
    NoLawfulBasis,
    #[error("the upstream answered with a record of another subject")]
    SubjectMismatch,
    #[error("the upstream response cannot be examined: {0}")]
    UpstreamUnreadable(&'static str),
    /// The upstream's status, with the few fields of its head passed on with an error (when to
    /// retry, request ids: [`super::response::passed_fields`]).
    #[error("the upstream answered with a status the gateway does not pass on")]
    UpstreamStatus(StatusCode, Vec<(HeaderName, HeaderValue)>),
    #[error("the upstream body is larger than the limit")]
    BodyTooLarge,
    #[error("the request body is larger than the limit")]
    RequestTooLarge,
    #[error("the request header fields are larger than the limit")]
    HeadersTooLarge,
    #[error("the upstream cannot be reached")]
    UpstreamUnavailable,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the gateway failed internally")]
    Internal,
}

impl Refusal {
    /// The stable reason code: labels responses, metrics and decision lines.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownCaller => "unknown_caller",
            Self::AmbiguousCredentials => "ambiguous_credentials",
            Self::PurposeMissing => "purpose_missing",
            Self::PurposeAmbiguous => "purpose_ambiguous",
            Self::PurposeUnknown(_) => "purpose_unknown",
            Self::PurposeNotAllowed(_) => "purpose_not_allowed",
            Self::PurposeNotCovered(_) => "purpose_not_covered",
            Self::RouteNotCovered => "route_not_covered",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BadPath(_) => "bad_path",
            Self::BadRequest(_) => "bad_request",
            Self::NoLawfulBasis => "no_lawful_basis",
            Self::SubjectMismatch => "subject_mismatch",
            Self::UpstreamUnreadable(_) => "upstream_unreadable",
            Self::UpstreamStatus(..) => "upstream_error",
            Self::BodyTooLarge => "body_too_large",
            Self::RequestTooLarge => "request_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Internal => "internal_error",
        }
    }

    /// The HTTP status: 4xx for the client's doing, 502/504 for the upstream's, 500 for ours.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownCaller | Self::AmbiguousCredentials => StatusCode::UNAUTHORIZED,
            Self::PurposeMissing
            | Self::PurposeAmbiguous
            | Self::BadPath(_)
            | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PurposeUnknown(_)
            | Self::PurposeNotAllowed(_)
            | Self::PurposeNotCovered(_)
            | Self::RouteNotCovered
            | Self::NoLawfulBasis => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            // The upstream's own status class is kept for its errors (a 404 stays a 404, so
            // clients can tell "not found" from "refused"); its body is not.
            Self::UpstreamStatus(s, _) if s.is_client_error() || s.is_server_error() => *s,
            Self::UpstreamStatus(..)
            | Self::SubjectMismatch
            | Self::UpstreamUnreadable(_)
            | Self::BodyTooLarge
            | Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short title per reason.
    fn title(&self) -> &'static str {
        match self.status().as_u16() {
            400 => "Bad request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not found",
            405 => "Method not allowed",
            413 => "Payload too large",
            431 => "Request header fields too large",
            502 => "Bad gateway",
            504 => "Gateway timeout",
            s if s >= 500 => "Upstream or gateway error",
            _ => "Refused",
        }
    }

    /// The RFC 9457 body.
    pub fn problem_json(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "type": format!("https://consentry.dev/problems/{}", self.reason()),
            "title": self.title(),
            "status": self.status().as_u16(),
            "detail": self.to_string(),
            "reason": self.reason(),
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The response for this refusal.
    pub fn into_response(&self) -> Response<Body> {
        let mut rsp = Response::new(body::full(Bytes::from(self.problem_json())));
        *rsp.status_mut() = self.status();
        let headers = rsp.headers_mut();
        if let Self::UpstreamStatus(_, passed) = self {
            for (name, value) in passed {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
        if self.status() == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("ApiKey header=\"X-Api-Key\""),
            );
        }
        rsp
    }
}
