//! Random model replacement per session (see the issue «Random model
//! replacement»). This crate holds the `[replacement]` configuration so
//! configs load today; the rewriter implements `llm_proxy_core::RouteRewriter`.

pub mod config;

pub use config::{ReplacementConfig, ReplacementRule};
