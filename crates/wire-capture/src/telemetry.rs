//! Metric names of wire capture, in one place.

/// Gauge: 1 while capture is writing, 0 once it turned itself off (or never started).
pub const ENABLED: &str = "llm_proxy_wire_capture_enabled";
/// Counter: entries written.
pub const ENTRIES_TOTAL: &str = "llm_proxy_wire_capture_entries_total";
/// Counter: bytes written (encoded).
pub const BYTES_TOTAL: &str = "llm_proxy_wire_capture_bytes_total";
/// Counter: entries dropped, label `reason` = `queue_full` (entry count) | `queue_bytes`
/// (byte budget `max_queue_bytes`) | `disabled`.
pub const DROPPED_TOTAL: &str = "llm_proxy_wire_capture_dropped_total";
/// Counter: files opened after the first (rotations).
pub const ROTATIONS_TOTAL: &str = "llm_proxy_wire_capture_rotations_total";
/// Counter: old files deleted to stay under `max_total_bytes`.
pub const FILES_DELETED_TOTAL: &str = "llm_proxy_wire_capture_files_deleted_total";
/// Counter: write errors (the first one turns capture off).
pub const WRITE_ERRORS_TOTAL: &str = "llm_proxy_wire_capture_write_errors_total";

/// Sets the [`ENABLED`] gauge to 0 (capture configured off), so dashboards
/// see the series either way.
pub fn report_off() {
    metrics::gauge!(ENABLED).set(0.0);
}
