//! Wire capture: every byte of every leg to rotating CBOR files (SPEC §8),
//! an inspector that points at problems, and a replayer.
//!
//! - [`writer`]: the [`llm_proxy_core::ExchangeObserver`] and its writer
//!   thread, fed by a bounded queue (a full queue drops and counts).
//! - [`files`]: rotation and the size budget.
//! - [`format`] / [`reader`]: the CBOR header and entry maps.
//! - [`redact`]: credentials out of heads and bodies.
//! - [`inspect`]: summaries, issue detection, per-request analysis.
//! - [`replay`]: re-send captured client requests, or act as the backend.

pub mod config;
pub mod files;
pub mod format;
pub mod inspect;
pub mod reader;
pub mod redact;
pub mod replay;
pub mod telemetry;
pub mod writer;

pub use config::WireCaptureConfig;
pub use format::{Direction, Entry, FileHeader, Meta, MetaValue};
pub use reader::{Capture, Damage, read_file};
pub use writer::{CaptureHandle, CaptureStats, CaptureWriter};
