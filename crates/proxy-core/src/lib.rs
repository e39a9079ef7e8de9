//! llm-proxy core: the domain types, protocols, routing, backend clients and
//! the request pipeline. Every other crate builds on this one; it depends on
//! no other workspace crate and never reads the environment.
//!
//! The seams other crates implement:
//! - [`ExchangeObserver`]: callbacks at each leg of an exchange (usage, capture);
//! - [`EndpointHealth`]: may a backend get traffic, and how did it go (health);
//! - [`RouteRewriter`]: send this request elsewhere (replacement);
//! - [`Backend`]: send one request upstream.

pub mod backend;
pub mod body;
pub mod config;
pub mod error;
pub mod handler;
pub mod health;
pub mod mock;
pub mod observer;
pub mod pipeline;
pub mod protocol;
pub mod request;
pub mod rewrite;
pub mod routing;
pub mod telemetry;
pub mod time;
pub mod translate;
pub mod usage_strip;

pub use backend::{Backend, BackendRequest, BackendResponse};
pub use body::ProxyBody;
pub use config::{BackendConfig, BackendType, RoutingConfig, Secret, UpstreamConfig};
pub use error::{ConfigError, ProxyError, UpstreamError, UpstreamErrorKind};
pub use handler::{ApiBody, RouteHandler};
pub use health::{AlwaysAvailable, AttemptOutcome, EndpointHealth};
pub use observer::{
    AttemptInfo, Completion, ExchangeContext, ExchangeObserver, ExchangeOutcome, IncompleteReason,
    ObserverSet,
};
pub use pipeline::{ClientRequest, Pipeline};
pub use protocol::{Frontend, is_event_stream};
pub use rewrite::{RewriteRequest, RouteRewriter};
pub use routing::{RoutePlan, Router, Target};
