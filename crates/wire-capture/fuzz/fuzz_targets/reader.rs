//! Garbage never panics the capture reader or the inspector.
//!
//! `cd crates/wire-capture/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run reader`
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_proxy_wire_capture::inspect;
use llm_proxy_wire_capture::reader::read_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(capture) = read_bytes(data) {
        let issues = inspect::detect_issues(&capture.entries, std::time::Duration::from_secs(1));
        let _ = issues.len();
        let _ = inspect::analyze(&capture.entries);
    }
});
