//! Backend health: ICMP and HTTP probes, the endpoint state machine and the
//! passive circuit breaker (see the issue «Backend health»). This crate holds
//! the `[health_check]` configuration so configs load today; the probes and
//! breaker that use it implement `llm_proxy_core::EndpointHealth`.

pub mod config;

pub use config::{CircuitBreakerConfig, HealthCheckConfig, HttpProbeConfig, PingConfig};
