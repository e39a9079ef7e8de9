//! `[wire_capture]` configuration (the seed's keys).

use llm_proxy_core::ConfigError;
use serde::{Deserialize, Serialize};

/// Byte-exact capture of every leg to rotating CBOR files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WireCaptureConfig {
    /// Capture at all.
    pub enabled: bool,
    /// Directory for capture files.
    pub output_dir: String,
    /// A file rotates when it reaches this size.
    pub max_file_bytes: u64,
    /// Oldest files are deleted past this total.
    pub max_total_bytes: u64,
    /// Bytes of entries waiting for the writer thread; past this, new
    /// entries are dropped (`dropped_total{reason="queue_bytes"}`).
    pub max_queue_bytes: u64,
    /// Bytes of one non-stream response body kept for its entry; the rest
    /// is cut and the entry's meta gets `trunc: true`.
    pub max_body_bytes: u64,
}

impl Default for WireCaptureConfig {
    fn default() -> Self {
        WireCaptureConfig {
            enabled: false,
            output_dir: "./var/captures".into(),
            max_file_bytes: 64 * 1024 * 1024,
            max_total_bytes: 1024 * 1024 * 1024,
            max_queue_bytes: 256 * 1024 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

impl WireCaptureConfig {
    /// Checks values; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_file_bytes == 0 {
            return Err(ConfigError::new(
                "wire_capture.max_file_bytes",
                "must be greater than 0",
            ));
        }
        if self.max_total_bytes < self.max_file_bytes {
            return Err(ConfigError::new(
                "wire_capture.max_total_bytes",
                "must be at least wire_capture.max_file_bytes",
            ));
        }
        if self.max_queue_bytes == 0 {
            return Err(ConfigError::new(
                "wire_capture.max_queue_bytes",
                "must be greater than 0",
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "wire_capture.max_body_bytes",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_budgets_are_rejected_by_key() {
        let mut c = WireCaptureConfig::default();
        assert!(c.validate().is_ok());
        c.max_queue_bytes = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("wire_capture.max_queue_bytes"), "{e}");
        c.max_queue_bytes = 1;
        c.max_body_bytes = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("wire_capture.max_body_bytes"), "{e}");
    }
}
