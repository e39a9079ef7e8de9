//! Wire capture: every byte of every leg to rotating CBOR files, an
//! inspector and a replayer (see the issue «Wire capture»). This crate holds
//! the `[wire_capture]` configuration so configs load today; the writer
//! implements `llm_proxy_core::ExchangeObserver`.

pub mod config;

pub use config::WireCaptureConfig;
