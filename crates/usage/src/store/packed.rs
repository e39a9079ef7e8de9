//! A compact binary encoding of a batch of [`UsageRecord`]s, for stores that
//! keep a whole batch as one blob while the machine has no spare CPU and turn
//! the blobs into rows later.
//!
//! Encoding runs on the writer thread at saturation: no serde, nothing
//! allocated per record beyond growing the output buffer. Decoding runs
//! later and trusts nothing: any byte string decodes to the records or to an
//! [`UsageError::Encoding`] naming what was wrong and at which byte, never a
//! panic, and no length read from the bytes is allocated before it is
//! checked against the bytes there are. A realistic record (the
//! conformance suite's synthetic ones) packs into ~200 bytes, a fifth of its
//! JSON, in ~1,200 instructions.
//!
//! # Layout (version 1)
//!
//! A batch is a 5-byte header — the format version byte [`FORMAT_V1`] and the
//! record count as a `u32` little-endian, which [`push_record`] bumps — then
//! the records back to back. Because the header carries the count, every
//! truncation is an error, also one that ends on a record boundary.
//!
//! A record is: a `u16` LE bit set ([`Flags`]: `streaming`, `replaced`, and
//! one bit per `Option` present); one byte of enum codes (`token_source` in
//! bits 0–1, `cost_source` in bits 2–3, `completion_outcome` in bits 4–5,
//! each a stable code given by the `match`es below); then `id`, `timestamp`,
//! `timestamp_us`, `session_id`, `turn_number`, `backend_type`, `backend`,
//! `model`, `requested_model`, `frontend_type`, `prompt_tokens`,
//! `completion_tokens`, `total_tokens`, `http_status_code`,
//! `tool_call_count`, `total_duration_ms`, `proxy_overhead_ms`; then the
//! present optional fields in flag order (`backend_reported_usage` as a
//! presence byte, one bit per field, and its present fields); then
//! `tool_names` as a count and the strings. Integers are LEB128 varints
//! (`timestamp_us` zigzag), strings a varint byte length and UTF-8, `f64`s the
//! 8 little-endian bytes of their bits (NaN payloads, infinities and -0.0
//! survive). The varint, string and float primitives are the ones of the
//! rollup blobs (`crate::sketch`).

use crate::error::UsageError;
use crate::record::{BackendUsage, CompletionOutcome, CostSource, TokenSource, UsageRecord};
use crate::sketch::{Reader, put_f64, put_i64, put_str, put_u64};

/// The version byte that leads a version-1 batch.
pub(crate) const FORMAT_V1: u8 = 1;

/// Version byte + `u32` record count.
const HEADER_LEN: usize = 5;

/// The fewest bytes a record can take (the default record): flags 2, codes
/// 1, eight empty strings 8, seven one-byte integers 7, two `f64`s 16, the
/// tool-name count 1. Bounds the record count a batch can claim.
const MIN_RECORD_LEN: usize = 35;

/// Bits of a record's `u16` flags.
struct Flags;

impl Flags {
    const STREAMING: u16 = 1 << 0;
    const REPLACED: u16 = 1 << 1;
    const VERBATIM_PROMPT: u16 = 1 << 2;
    const MUTATED_PROMPT: u16 = 1 << 3;
    const VERBATIM_COMPLETION: u16 = 1 << 4;
    const MUTATED_COMPLETION: u16 = 1 << 5;
    const BACKEND_USAGE: u16 = 1 << 6;
    const COST: u16 = 1 << 7;
    const INCOMPLETE_REASON: u16 = 1 << 8;
    const TTFT: u16 = 1 << 9;
    const TOKENS_PER_SECOND: u16 = 1 << 10;
    const USER_AGENT: u16 = 1 << 11;
    const PROXY_USER: u16 = 1 << 12;
    const CALL_PURPOSE: u16 = 1 << 13;
    /// Bits no version-1 encoder sets.
    const UNKNOWN: u16 = !((1 << 14) - 1);
}

/// Starts a batch: writes the header (version byte, record count 0) into
/// `buf`, cleared first.
pub(crate) fn begin_batch(buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(FORMAT_V1);
    buf.extend_from_slice(&0u32.to_le_bytes());
}

/// Appends one record to a batch begun by [`begin_batch`] (a buffer that
/// holds no batch header is begun first).
pub(crate) fn push_record(buf: &mut Vec<u8>, r: &UsageRecord) {
    if buf.len() < HEADER_LEN || buf.first() != Some(&FORMAT_V1) {
        begin_batch(buf);
    }
    if let Some(count) = buf
        .get_mut(1..HEADER_LEN)
        .and_then(|c| <&mut [u8; 4]>::try_from(c).ok())
    {
        *count = u32::from_le_bytes(*count).saturating_add(1).to_le_bytes();
    }
    let flag = |present: bool, bit: u16| if present { bit } else { 0 };
    let flags = flag(r.streaming, Flags::STREAMING)
        | flag(r.replaced, Flags::REPLACED)
        | flag(r.verbatim_prompt_tokens.is_some(), Flags::VERBATIM_PROMPT)
        | flag(r.mutated_prompt_tokens.is_some(), Flags::MUTATED_PROMPT)
        | flag(
            r.verbatim_completion_tokens.is_some(),
            Flags::VERBATIM_COMPLETION,
        )
        | flag(
            r.mutated_completion_tokens.is_some(),
            Flags::MUTATED_COMPLETION,
        )
        | flag(r.backend_reported_usage.is_some(), Flags::BACKEND_USAGE)
        | flag(r.cost_usd.is_some(), Flags::COST)
        | flag(r.incomplete_reason.is_some(), Flags::INCOMPLETE_REASON)
        | flag(r.ttft_ms.is_some(), Flags::TTFT)
        | flag(
            r.completion_tokens_per_second.is_some(),
            Flags::TOKENS_PER_SECOND,
        )
        | flag(r.user_agent.is_some(), Flags::USER_AGENT)
        | flag(r.proxy_user.is_some(), Flags::PROXY_USER)
        | flag(r.call_purpose.is_some(), Flags::CALL_PURPOSE);
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.push(
        token_source_code(r.token_source)
            | cost_source_code(r.cost_source) << 2
            | outcome_code(r.completion_outcome) << 4,
    );
    put_str(buf, &r.id);
    put_str(buf, &r.timestamp);
    put_i64(buf, r.timestamp_us);
    put_str(buf, &r.session_id);
    put_u64(buf, u64::from(r.turn_number));
    put_str(buf, &r.backend_type);
    put_str(buf, &r.backend);
    put_str(buf, &r.model);
    put_str(buf, &r.requested_model);
    put_str(buf, &r.frontend_type);
    put_u64(buf, r.prompt_tokens);
    put_u64(buf, r.completion_tokens);
    put_u64(buf, r.total_tokens);
    put_u64(buf, u64::from(r.http_status_code));
    put_u64(buf, u64::from(r.tool_call_count));
    put_f64(buf, r.total_duration_ms);
    put_f64(buf, r.proxy_overhead_ms);
    for v in [
        r.verbatim_prompt_tokens,
        r.mutated_prompt_tokens,
        r.verbatim_completion_tokens,
        r.mutated_completion_tokens,
    ]
    .into_iter()
    .flatten()
    {
        put_u64(buf, v);
    }
    if let Some(u) = &r.backend_reported_usage {
        push_backend_usage(buf, u);
    }
    if let Some(v) = r.cost_usd {
        put_f64(buf, v);
    }
    if let Some(s) = &r.incomplete_reason {
        put_str(buf, s);
    }
    for v in [r.ttft_ms, r.completion_tokens_per_second]
        .into_iter()
        .flatten()
    {
        put_f64(buf, v);
    }
    for s in [&r.user_agent, &r.proxy_user, &r.call_purpose]
        .into_iter()
        .flatten()
    {
        put_str(buf, s);
    }
    put_u64(buf, r.tool_names.len() as u64);
    for name in &r.tool_names {
        put_str(buf, name);
    }
}

/// A presence byte (bit i: the i-th field below) and the present fields.
fn push_backend_usage(buf: &mut Vec<u8>, u: &BackendUsage) {
    let counts = [
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens,
        u.cached_tokens,
        u.cache_creation_tokens,
        u.reasoning_tokens,
    ];
    let mut present = 0u8;
    for (i, v) in counts.iter().enumerate() {
        present |= u8::from(v.is_some()) << i;
    }
    present |= u8::from(u.cost.is_some()) << 6;
    buf.push(present);
    for v in counts.into_iter().flatten() {
        put_u64(buf, v);
    }
    if let Some(c) = u.cost {
        put_f64(buf, c);
    }
}

fn token_source_code(s: TokenSource) -> u8 {
    match s {
        TokenSource::Backend => 0,
        TokenSource::Proxy => 1,
        TokenSource::Estimate => 2,
    }
}

fn token_source_of(code: u8) -> Option<TokenSource> {
    match code {
        0 => Some(TokenSource::Backend),
        1 => Some(TokenSource::Proxy),
        2 => Some(TokenSource::Estimate),
        _ => None,
    }
}

fn cost_source_code(s: CostSource) -> u8 {
    match s {
        CostSource::Backend => 0,
        CostSource::PricingTable => 1,
        CostSource::Unknown => 2,
    }
}

fn cost_source_of(code: u8) -> Option<CostSource> {
    match code {
        0 => Some(CostSource::Backend),
        1 => Some(CostSource::PricingTable),
        2 => Some(CostSource::Unknown),
        _ => None,
    }
}

fn outcome_code(o: CompletionOutcome) -> u8 {
    match o {
        CompletionOutcome::Completed => 0,
        CompletionOutcome::Failed => 1,
        CompletionOutcome::Incomplete => 2,
    }
}

fn outcome_of(code: u8) -> Option<CompletionOutcome> {
    match code {
        0 => Some(CompletionOutcome::Completed),
        1 => Some(CompletionOutcome::Failed),
        2 => Some(CompletionOutcome::Incomplete),
        _ => None,
    }
}

/// Decodes a whole batch, in order. Fails on a short or long batch (the
/// header's record count is checked), an unknown version, and any invalid
/// field.
pub(crate) fn decode_batch(bytes: &[u8]) -> Result<Vec<UsageRecord>, UsageError> {
    let prefixed = |e: UsageError| match e {
        UsageError::Encoding(m) => UsageError::Encoding(format!("packed usage batch: {m}")),
        other => other,
    };
    let mut r = Reader::new(bytes);
    let version = r.u8("format version").map_err(prefixed)?;
    if version != FORMAT_V1 {
        return Err(UsageError::Encoding(format!(
            "packed usage batch: unknown format version {version} at byte 0 (this binary reads version {FORMAT_V1})"
        )));
    }
    let count = r.bytes(4, "record count").map_err(prefixed)?;
    let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]) as usize;
    let room = (bytes.len() - HEADER_LEN) / MIN_RECORD_LEN;
    if count > room {
        return Err(UsageError::Encoding(format!(
            "packed usage batch: record count {count} at byte 1 exceeds the {room} records {} bytes can hold",
            bytes.len()
        )));
    }
    let mut records = Vec::with_capacity(count);
    for i in 0..count {
        let record = decode_record(&mut r, bytes.len()).map_err(|e| match e {
            UsageError::Encoding(m) => {
                UsageError::Encoding(format!("packed usage batch: record {i} of {count}: {m}"))
            }
            other => other,
        })?;
        records.push(record);
    }
    if !r.is_at_end() {
        return Err(UsageError::Encoding(format!(
            "packed usage batch: {} trailing bytes at byte {} after the {count} records",
            bytes.len() - r.position(),
            r.position()
        )));
    }
    Ok(records)
}

fn invalid(at: usize, what: String) -> UsageError {
    UsageError::Encoding(format!("{what} at byte {at}"))
}

fn decode_record(r: &mut Reader<'_>, len: usize) -> Result<UsageRecord, UsageError> {
    let at = r.position();
    let f = r.bytes(2, "flags")?;
    let flags = u16::from_le_bytes([f[0], f[1]]);
    if flags & Flags::UNKNOWN != 0 {
        return Err(invalid(at, format!("unknown flag bits {flags:#06x}")));
    }
    let at = r.position();
    let codes = r.u8("enum codes")?;
    let (token_source, cost_source, completion_outcome) = match (
        token_source_of(codes & 3),
        cost_source_of((codes >> 2) & 3),
        outcome_of((codes >> 4) & 3),
    ) {
        (Some(t), Some(c), Some(o)) if codes >> 6 == 0 => (t, c, o),
        _ => return Err(invalid(at, format!("invalid enum codes {codes:#04x}"))),
    };
    let string = |r: &mut Reader<'_>, what: &str| r.str(what).map(str::to_owned);
    let has = |bit: u16| flags & bit != 0;
    let id = string(r, "id")?;
    let timestamp = string(r, "timestamp")?;
    let timestamp_us = r.i64("timestamp_us")?;
    let session_id = string(r, "session_id")?;
    let turn_number = narrow(r, "turn_number")?;
    let backend_type = string(r, "backend_type")?;
    let backend = string(r, "backend")?;
    let model = string(r, "model")?;
    let requested_model = string(r, "requested_model")?;
    let frontend_type = string(r, "frontend_type")?;
    let prompt_tokens = r.u64("prompt_tokens")?;
    let completion_tokens = r.u64("completion_tokens")?;
    let total_tokens = r.u64("total_tokens")?;
    let http_status_code = narrow(r, "http_status_code")?;
    let tool_call_count = narrow(r, "tool_call_count")?;
    let total_duration_ms = r.f64("total_duration_ms")?;
    let proxy_overhead_ms = r.f64("proxy_overhead_ms")?;
    let opt_u64 =
        |r: &mut Reader<'_>, bit: u16, what: &str| has(bit).then(|| r.u64(what)).transpose();
    let verbatim_prompt_tokens = opt_u64(r, Flags::VERBATIM_PROMPT, "verbatim_prompt_tokens")?;
    let mutated_prompt_tokens = opt_u64(r, Flags::MUTATED_PROMPT, "mutated_prompt_tokens")?;
    let verbatim_completion_tokens =
        opt_u64(r, Flags::VERBATIM_COMPLETION, "verbatim_completion_tokens")?;
    let mutated_completion_tokens =
        opt_u64(r, Flags::MUTATED_COMPLETION, "mutated_completion_tokens")?;
    let backend_reported_usage = has(Flags::BACKEND_USAGE)
        .then(|| decode_backend_usage(r))
        .transpose()?;
    let cost_usd = has(Flags::COST).then(|| r.f64("cost_usd")).transpose()?;
    let incomplete_reason = has(Flags::INCOMPLETE_REASON)
        .then(|| string(r, "incomplete_reason"))
        .transpose()?;
    let ttft_ms = has(Flags::TTFT).then(|| r.f64("ttft_ms")).transpose()?;
    let completion_tokens_per_second = has(Flags::TOKENS_PER_SECOND)
        .then(|| r.f64("completion_tokens_per_second"))
        .transpose()?;
    let user_agent = has(Flags::USER_AGENT)
        .then(|| string(r, "user_agent"))
        .transpose()?;
    let proxy_user = has(Flags::PROXY_USER)
        .then(|| string(r, "proxy_user"))
        .transpose()?;
    let call_purpose = has(Flags::CALL_PURPOSE)
        .then(|| string(r, "call_purpose"))
        .transpose()?;
    // Each name takes at least its length byte: the count is bounded by the
    // bytes left, and the vector grows only with names actually read.
    let n = r.len(len - r.position(), "tool_names count")?;
    let mut tool_names = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        tool_names.push(string(r, "tool name")?);
    }
    Ok(UsageRecord {
        id,
        timestamp,
        timestamp_us,
        session_id,
        turn_number,
        backend_type,
        backend,
        model,
        requested_model,
        frontend_type,
        streaming: has(Flags::STREAMING),
        verbatim_prompt_tokens,
        mutated_prompt_tokens,
        verbatim_completion_tokens,
        mutated_completion_tokens,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        backend_reported_usage,
        token_source,
        cost_usd,
        cost_source,
        http_status_code,
        completion_outcome,
        incomplete_reason,
        tool_call_count,
        tool_names,
        ttft_ms,
        total_duration_ms,
        proxy_overhead_ms,
        completion_tokens_per_second,
        user_agent,
        proxy_user,
        call_purpose,
        replaced: has(Flags::REPLACED),
    })
}

/// A varint that must fit a narrower integer type (`u32`, `u16`).
fn narrow<T: TryFrom<u64>>(r: &mut Reader<'_>, what: &str) -> Result<T, UsageError> {
    let at = r.position();
    let v = r.u64(what)?;
    T::try_from(v).map_err(|_| invalid(at, format!("{what} {v} out of range")))
}

fn decode_backend_usage(r: &mut Reader<'_>) -> Result<BackendUsage, UsageError> {
    let at = r.position();
    let present = r.u8("backend_reported_usage presence")?;
    if present & 0x80 != 0 {
        return Err(invalid(
            at,
            format!("invalid backend_reported_usage presence byte {present:#04x}"),
        ));
    }
    let mut field = |i: u32, what: &str| ((present >> i) & 1 == 1).then(|| r.u64(what)).transpose();
    Ok(BackendUsage {
        prompt_tokens: field(0, "backend prompt_tokens")?,
        completion_tokens: field(1, "backend completion_tokens")?,
        total_tokens: field(2, "backend total_tokens")?,
        cached_tokens: field(3, "backend cached_tokens")?,
        cache_creation_tokens: field(4, "backend cache_creation_tokens")?,
        reasoning_tokens: field(5, "backend reasoning_tokens")?,
        cost: (present & 0x40 != 0)
            .then(|| r.f64("backend cost"))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::conformance::synthetic_records;

    fn encode(records: &[UsageRecord]) -> Vec<u8> {
        let mut buf = Vec::new();
        begin_batch(&mut buf);
        for r in records {
            push_record(&mut buf, r);
        }
        buf
    }

    /// A record with its `f64`s replaced by their bits, so that `==` holds
    /// exactly when every field round-tripped bit for bit (NaN != NaN).
    fn by_bits(r: &UsageRecord) -> (UsageRecord, [Option<u64>; 6]) {
        let mut r = r.clone();
        let bits = [
            r.cost_usd.map(f64::to_bits),
            r.ttft_ms.map(f64::to_bits),
            Some(r.total_duration_ms.to_bits()),
            Some(r.proxy_overhead_ms.to_bits()),
            r.completion_tokens_per_second.map(f64::to_bits),
            r.backend_reported_usage
                .as_ref()
                .and_then(|u| u.cost)
                .map(f64::to_bits),
        ];
        for v in [
            &mut r.cost_usd,
            &mut r.ttft_ms,
            &mut r.completion_tokens_per_second,
        ] {
            *v = v.map(|_| 0.0);
        }
        r.total_duration_ms = 0.0;
        r.proxy_overhead_ms = 0.0;
        if let Some(u) = &mut r.backend_reported_usage {
            u.cost = u.cost.map(|_| 0.0);
        }
        (r, bits)
    }

    fn assert_round_trips(records: &[UsageRecord]) {
        let decoded = decode_batch(&encode(records)).unwrap();
        assert_eq!(decoded.len(), records.len());
        for (i, (d, r)) in decoded.iter().zip(records).enumerate() {
            assert_eq!(by_bits(d), by_bits(r), "record {i}");
        }
    }

    fn edge_records() -> Vec<UsageRecord> {
        let full_usage = BackendUsage {
            prompt_tokens: Some(u64::MAX),
            completion_tokens: Some(0),
            total_tokens: Some(1 << 63),
            cached_tokens: Some(127),
            cache_creation_tokens: Some(128),
            reasoning_tokens: Some(16_384),
            cost: Some(f64::from_bits(0x7ff8_0000_dead_beef)),
        };
        let maxed = UsageRecord {
            id: "req-ünïcødé-🦀-日本語".into(),
            timestamp: "2026-01-05T10:17:23.456Z".into(),
            timestamp_us: i64::MAX,
            session_id: "s\u{0}\u{7f}\u{80}\u{ffff}".into(),
            turn_number: u32::MAX,
            backend_type: "anthropic".into(),
            backend: "b".repeat(300),
            model: "claude-sonnet-4".into(),
            requested_model: String::new(),
            frontend_type: "responses".into(),
            streaming: true,
            verbatim_prompt_tokens: Some(u64::MAX),
            mutated_prompt_tokens: Some(0),
            verbatim_completion_tokens: Some(u64::MAX - 1),
            mutated_completion_tokens: Some(1),
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            total_tokens: u64::MAX,
            backend_reported_usage: Some(full_usage),
            token_source: TokenSource::Proxy,
            cost_usd: Some(f64::NAN),
            cost_source: CostSource::PricingTable,
            http_status_code: u16::MAX,
            completion_outcome: CompletionOutcome::Incomplete,
            incomplete_reason: Some(String::new()),
            tool_call_count: u32::MAX,
            tool_names: vec![String::new(), "bash".into(), "édit_файл".into()],
            ttft_ms: Some(f64::INFINITY),
            total_duration_ms: -0.0,
            proxy_overhead_ms: f64::NEG_INFINITY,
            completion_tokens_per_second: Some(f64::MIN_POSITIVE / 2.0),
            user_agent: Some(String::new()),
            proxy_user: Some("ålice".into()),
            call_purpose: Some("replacement".into()),
            replaced: true,
        };
        let minimal = UsageRecord {
            timestamp_us: i64::MIN,
            token_source: TokenSource::Backend,
            cost_source: CostSource::Backend,
            completion_outcome: CompletionOutcome::Failed,
            backend_reported_usage: Some(BackendUsage::default()),
            cost_usd: Some(-0.0),
            total_duration_ms: f64::from_bits(1),
            proxy_overhead_ms: -f64::NAN,
            ..UsageRecord::default()
        };
        let negative = UsageRecord {
            timestamp_us: -1,
            cost_usd: Some(0.0),
            total_duration_ms: f64::MAX,
            proxy_overhead_ms: f64::MIN,
            ..UsageRecord::default()
        };
        vec![UsageRecord::default(), maxed, minimal, negative]
    }

    #[test]
    fn synthetic_records_round_trip() {
        assert_round_trips(&synthetic_records(
            3_000,
            1_767_608_243_456_000,
            86_400_000_000,
            7,
        ));
    }

    #[test]
    fn edge_records_round_trip_alone_and_together() {
        let records = edge_records();
        for r in &records {
            assert_round_trips(std::slice::from_ref(r));
        }
        assert_round_trips(&records);
        // The bit patterns really are the odd ones (by_bits is not vacuous).
        let decoded = decode_batch(&encode(&records)).unwrap();
        assert!(decoded[1].cost_usd.unwrap().is_nan());
        assert_eq!(
            decoded[1]
                .backend_reported_usage
                .as_ref()
                .unwrap()
                .cost
                .unwrap()
                .to_bits(),
            0x7ff8_0000_dead_beef
        );
        assert!(decoded[1].total_duration_ms.is_sign_negative());
        assert_eq!(decoded[1].incomplete_reason.as_deref(), Some(""));
        assert_eq!(decoded[0].incomplete_reason, None);
        assert_eq!(decoded[2].timestamp_us, i64::MIN);
        assert_ne!(by_bits(&decoded[2]), by_bits(&decoded[3]));
    }

    #[test]
    fn an_empty_batch_decodes_to_no_records() {
        assert_eq!(decode_batch(&encode(&[])).unwrap(), Vec::new());
        // begin_batch clears what was there.
        let mut buf = encode(&edge_records());
        begin_batch(&mut buf);
        assert_eq!(buf, [FORMAT_V1, 0, 0, 0, 0]);
    }

    #[test]
    fn push_record_begins_a_buffer_without_a_header() {
        let r = &edge_records()[1];
        let mut buf = Vec::new();
        push_record(&mut buf, r);
        assert_eq!(buf, encode(std::slice::from_ref(r)));
    }

    #[test]
    fn the_default_record_takes_the_minimum_length() {
        // MIN_RECORD_LEN bounds the record count a batch may claim: it
        // must not exceed the real minimum, or valid batches would fail.
        let buf = encode(&[UsageRecord::default()]);
        assert_eq!(buf.len(), HEADER_LEN + MIN_RECORD_LEN);
    }

    #[test]
    fn the_64_bit_varint_writers_match_the_128_bit_ones() {
        // `put_u64` / `put_i64` skip 128-bit arithmetic for speed; the
        // bytes (also those of the rollup blobs) must not change.
        use crate::sketch::{put_i128, put_u128};
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            put_u64(&mut a, v);
            put_u128(&mut b, u128::from(v));
            assert_eq!(a, b, "{v}");
        }
        for v in [0, 1, -1, 63, -64, 64, -65, i64::MAX, i64::MIN, i64::MIN + 1] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            put_i64(&mut a, v);
            put_i128(&mut b, i128::from(v));
            assert_eq!(a, b, "{v}");
        }
    }

    #[test]
    fn enum_codes_are_stable() {
        let r = UsageRecord {
            token_source: TokenSource::Estimate,
            cost_source: CostSource::PricingTable,
            completion_outcome: CompletionOutcome::Failed,
            ..UsageRecord::default()
        };
        // Byte 7 (after the header and the flags) holds the codes.
        assert_eq!(encode(&[r])[7], 2 | 1 << 2 | 1 << 4);
    }

    #[test]
    fn every_truncation_is_an_error() {
        // The header carries the record count, so a batch cut on a record
        // boundary is an error too, not a shorter batch.
        let mut records = edge_records();
        records.extend(synthetic_records(20, 0, 1_000_000, 3));
        let buf = encode(&records);
        for len in 0..buf.len() {
            let err = decode_batch(&buf[..len]).unwrap_err().to_string();
            assert!(err.contains("packed usage batch"), "{len}: {err}");
            assert!(err.contains("at byte"), "{len}: {err}");
        }
        assert_eq!(decode_batch(&buf).unwrap().len(), records.len());
    }

    #[test]
    fn an_unknown_version_is_an_error_naming_it() {
        let mut buf = encode(&edge_records());
        buf[0] = 7;
        let err = decode_batch(&buf).unwrap_err().to_string();
        assert!(err.contains("unknown format version 7"), "{err}");
        let err = decode_batch(b"{\"id\":1}").unwrap_err().to_string();
        assert!(err.contains("unknown format version 123"), "{err}");
    }

    #[test]
    fn corrupt_batches_are_errors_naming_the_fault() {
        let good = encode(&[UsageRecord::default()]);
        let corrupt = |at: usize, byte: u8| {
            let mut b = good.clone();
            b[at] = byte;
            decode_batch(&b).unwrap_err().to_string()
        };
        // A count the bytes cannot hold is refused before allocating.
        let mut huge = good.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_batch(&huge).unwrap_err().to_string();
        assert!(err.contains("record count 4294967295 at byte 1"), "{err}");
        assert!(corrupt(6, 0x40).contains("unknown flag bits 0x4000 at byte 5"));
        assert!(corrupt(7, 3).contains("invalid enum codes 0x03 at byte 7"));
        assert!(corrupt(7, 0x40).contains("invalid enum codes"));
        // Two records claimed, one present (and room for two).
        let r = UsageRecord {
            id: "x".repeat(40),
            ..UsageRecord::default()
        };
        let mut b = encode(&[r]);
        b[1] = 2;
        let err = decode_batch(&b).unwrap_err().to_string();
        assert!(err.contains("record 1 of 2: truncated"), "{err}");
        // Trailing bytes.
        let mut long = good.clone();
        long.push(0);
        let err = decode_batch(&long).unwrap_err().to_string();
        assert!(err.contains("1 trailing bytes at byte 40"), "{err}");
        // Invalid UTF-8 in the id.
        let r = UsageRecord {
            id: "ab".into(),
            ..UsageRecord::default()
        };
        let mut b = encode(&[r]);
        b[9] = 0xff;
        let err = decode_batch(&b).unwrap_err().to_string();
        assert!(err.contains("invalid id at byte"), "{err}");
        // A string length past the end.
        let err = corrupt(8, 100);
        assert!(err.contains("truncated or invalid id"), "{err}");
        // A turn number over u32::MAX (varint 2^32 in place of 0).
        // (header, flags, codes, id, timestamp, timestamp_us, session_id).
        let turn_at = HEADER_LEN + 2 + 1 + 4;
        let mut b = good[..turn_at].to_vec();
        put_u64(&mut b, 1 << 32);
        b.extend_from_slice(&good[turn_at + 1..]);
        let err = decode_batch(&b).unwrap_err().to_string();
        assert!(
            err.contains("turn_number 4294967296 out of range at byte 12"),
            "{err}"
        );
    }

    #[test]
    fn packed_batches_are_smaller_than_json() {
        let records = synthetic_records(10_000, 1_767_608_243_456_000, 86_400_000_000, 11);
        let packed = encode(&records).len();
        let json: usize = records
            .iter()
            .map(|r| serde_json::to_vec(r).unwrap().len())
            .sum();
        assert!(
            packed * 2 < json,
            "packed {packed} bytes, JSON {json} bytes"
        );
    }

    fn arb_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            any::<f64>(),
            Just(f64::NAN),
            Just(-0.0),
            Just(f64::INFINITY),
        ]
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z0-9_-]{1,24}", any::<String>()]
    }

    fn arb_backend_usage() -> impl Strategy<Value = BackendUsage> {
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(arb_f64()),
        )
            .prop_map(|(p, c, t, ca, cc, re, cost)| BackendUsage {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: t,
                cached_tokens: ca,
                cache_creation_tokens: cc,
                reasoning_tokens: re,
                cost,
            })
    }

    fn arb_record() -> impl Strategy<Value = UsageRecord> {
        let names = (
            arb_string(),
            arb_string(),
            any::<i64>(),
            arb_string(),
            any::<u32>(),
            arb_string(),
            arb_string(),
            arb_string(),
            arb_string(),
            arb_string(),
            any::<bool>(),
            any::<bool>(),
        );
        let counts = (
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(arb_backend_usage()),
            0..3usize,
            0..3usize,
            0..3usize,
        );
        let rest = (
            proptest::option::of(arb_f64()),
            any::<u16>(),
            proptest::option::of(arb_string()),
            any::<u32>(),
            proptest::collection::vec(arb_string(), 0..4),
            proptest::option::of(arb_f64()),
            arb_f64(),
            arb_f64(),
            proptest::option::of(arb_f64()),
            proptest::option::of(arb_string()),
            proptest::option::of(arb_string()),
            proptest::option::of(arb_string()),
        );
        (names, counts, rest).prop_map(|(n, c, r)| UsageRecord {
            id: n.0,
            timestamp: n.1,
            timestamp_us: n.2,
            session_id: n.3,
            turn_number: n.4,
            backend_type: n.5,
            backend: n.6,
            model: n.7,
            requested_model: n.8,
            frontend_type: n.9,
            streaming: n.10,
            replaced: n.11,
            verbatim_prompt_tokens: c.0,
            mutated_prompt_tokens: c.1,
            verbatim_completion_tokens: c.2,
            mutated_completion_tokens: c.3,
            prompt_tokens: c.4,
            completion_tokens: c.5,
            total_tokens: c.6,
            backend_reported_usage: c.7,
            token_source: [
                TokenSource::Backend,
                TokenSource::Proxy,
                TokenSource::Estimate,
            ][c.8],
            cost_source: [
                CostSource::Backend,
                CostSource::PricingTable,
                CostSource::Unknown,
            ][c.9],
            completion_outcome: [
                CompletionOutcome::Completed,
                CompletionOutcome::Failed,
                CompletionOutcome::Incomplete,
            ][c.10],
            cost_usd: r.0,
            http_status_code: r.1,
            incomplete_reason: r.2,
            tool_call_count: r.3,
            tool_names: r.4,
            ttft_ms: r.5,
            total_duration_ms: r.6,
            proxy_overhead_ms: r.7,
            completion_tokens_per_second: r.8,
            user_agent: r.9,
            proxy_user: r.10,
            call_purpose: r.11,
        })
    }

    proptest! {
        #[test]
        fn arbitrary_batches_round_trip(records in proptest::collection::vec(arb_record(), 0..6)) {
            let decoded = decode_batch(&encode(&records)).unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (d, r) in decoded.iter().zip(&records) {
                prop_assert_eq!(by_bits(d), by_bits(r));
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&bytes);
            // Behind a valid header, so the record decoder sees them too.
            let mut b = vec![FORMAT_V1, 1, 0, 0, 0];
            b.extend_from_slice(&bytes);
            let _ = decode_batch(&b);
        }

        #[test]
        fn corrupted_batches_never_panic(
            records in proptest::collection::vec(arb_record(), 1..4),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut b = encode(&records);
            for (at, byte) in flips {
                let at = at % b.len();
                b[at] = byte;
            }
            if let Err(e) = decode_batch(&b) {
                prop_assert!(e.to_string().contains("packed usage batch: "), "{}", e);
            }
        }
    }
}
