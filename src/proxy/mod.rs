//! The listener-facing half of the gateway: the request path ([`pipeline`]), what goes
//! upstream ([`request`], [`upstream`]), what comes back ([`response`]), and refusals.

pub mod body;
pub mod path;
pub mod pipeline;
pub mod refusal;
pub mod request;
pub mod response;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::LimitsConfig;
use crate::consent::cache::ConsentService;
use crate::policy::compiled::CompiledPolicy;

/// Everything the request path shares.
pub struct Gateway {
    /// The policy in force; swapped whole on reload, never edited.
    pub policy: ArcSwap<CompiledPolicy>,
    /// Consent decisions, cached.
    pub consent: Arc<ConsentService>,
    /// The record of consent (admin API), over the same service.
    pub records: crate::consent::requests::ConsentRecords,
    /// The CRM.
    pub upstream: upstream::Upstream,
    /// Bounds on bodies.
    pub limits: LimitsConfig,
    /// The whole upstream exchange, body included.
    pub total_timeout: Duration,
    /// The origin written in place of the upstream's in links (`public_url`); `None`: the
    /// request's own.
    pub public_url: Option<Arc<str>>,
}
