//! The active probes. Each returns a [`CheckResult`](crate::state::CheckResult)
//! for the state machine; neither ever sends a credential or a request body.

pub mod http;
pub mod icmp;
