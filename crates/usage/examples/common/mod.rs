//! Records for the usage-store benchmarks: [`synthetic_records`] (3
//! backends, 6 models, ~25-turn sessions) with the ids the proxy really
//! writes — random 32-hex-digit request ids (UUID v4 `simple`) and
//! 16-hex-digit session ids — instead of the suite's sequential ones.

use llm_proxy_usage::record::UsageRecord;
use llm_proxy_usage::store::conformance::{SplitMix, synthetic_records};

/// `count` records spread over `[start_us, start_us + span_us)`, seeded by
/// `seed` (chunks with different seeds have distinct ids and sessions).
pub fn bench_records(count: usize, start_us: i64, span_us: i64, seed: u64) -> Vec<UsageRecord> {
    let mut records = synthetic_records(count, start_us, span_us, seed);
    let mut rng = SplitMix::new(seed ^ 0x05ee_d1d5);
    let session_salt = SplitMix::new(seed.wrapping_mul(31)).next_u64();
    for r in &mut records {
        r.id = format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64());
        // The same suite session keeps the same (random-looking) id.
        let mut h = SplitMix::new(session_salt ^ fnv(r.session_id.as_bytes()));
        r.session_id = format!("{:016x}", h.next_u64());
    }
    records
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
