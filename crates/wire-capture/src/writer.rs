//! The request-path half of capture: an [`ExchangeObserver`] that renders
//! heads (credentials redacted), keeps cheap `Bytes` clones of bodies and
//! pushes entries into a bounded queue. A dedicated thread owns the files.
//! A full queue drops and counts; nothing on the request path touches disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use llm_proxy_core::{
    AttemptInfo, Completion, ExchangeContext, ExchangeObserver, ExchangeOutcome, UpstreamError,
    is_event_stream,
};

use crate::config::WireCaptureConfig;
use crate::files::RotatingFiles;
use crate::format::{Direction, Entry, Meta, MetaValue};
use crate::redact::Redactor;
use crate::telemetry;

/// Entries the queue holds before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 16 * 1024;

/// An entry on its way to the writer thread: the head is rendered and
/// redacted; bodies are redacted on the thread.
struct Pending {
    ts: f64,
    dir: Direction,
    head: Vec<u8>,
    body: Vec<Bytes>,
    meta: Meta,
    /// Bytes this entry counts against `max_queue_bytes`.
    size: u64,
}

enum Message {
    Entry(Pending),
    Flush(SyncSender<()>),
    Shutdown,
}

/// Counts of what the writer did, for the shutdown log line and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Entries written.
    pub written: u64,
    /// Entries dropped because the queue was full or capture was off.
    pub dropped: u64,
    /// Whether capture was still on at the end.
    pub enabled: bool,
}

#[derive(Debug)]
struct Shared {
    enabled: AtomicBool,
    written: AtomicU64,
    dropped: AtomicU64,
    /// Bytes of entries in the queue (head and body of each).
    queued_bytes: AtomicU64,
    max_queue_bytes: u64,
}

/// Starts capture: the writer thread and its observer.
///
/// `secrets` are the configured keys (backend and proxy) to redact wherever
/// they appear.
pub fn start(
    config: &WireCaptureConfig,
    secrets: impl IntoIterator<Item = String>,
) -> std::io::Result<CaptureHandle> {
    let redactor = Arc::new(Redactor::new(secrets));
    let shared = Arc::new(Shared {
        enabled: AtomicBool::new(true),
        written: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        queued_bytes: AtomicU64::new(0),
        max_queue_bytes: config.max_queue_bytes,
    });
    let (tx, rx) = sync_channel(QUEUE_CAPACITY);
    let files = RotatingFiles::new(
        PathBuf::from(&config.output_dir),
        config.max_file_bytes,
        config.max_total_bytes,
        writer_session_id(),
    );
    let thread = {
        let shared = shared.clone();
        let redactor = redactor.clone();
        std::thread::Builder::new()
            .name("wire-capture".into())
            .spawn(move || run_writer(rx, files, &shared, &redactor))?
    };
    metrics::gauge!(telemetry::ENABLED).set(1.0);
    let observer = Arc::new(CaptureWriter {
        tx: tx.clone(),
        shared: shared.clone(),
        redactor,
        max_body_bytes: config.max_body_bytes,
        shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
    });
    Ok(CaptureHandle {
        observer,
        tx,
        shared,
        thread: Some(thread),
    })
}

/// A unique id for one writer run: time and process id.
fn writer_session_id() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:x}-{:x}-{:x}",
        t.as_secs(),
        t.subsec_nanos(),
        std::process::id()
    )
}

/// The running capture: its observer and the writer thread.
#[derive(Debug)]
pub struct CaptureHandle {
    observer: Arc<CaptureWriter>,
    tx: SyncSender<Message>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl CaptureHandle {
    /// The observer to add to the pipeline.
    pub fn observer(&self) -> Arc<CaptureWriter> {
        self.observer.clone()
    }

    /// Whether capture is still writing.
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Relaxed)
    }

    /// Waits until everything queued so far is written and flushed to the kernel.
    pub fn flush(&self) {
        let (tx, rx) = sync_channel(1);
        if self.tx.send(Message::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Writes what is queued, fsyncs the file and stops the thread (blocking).
    pub fn shutdown(mut self) -> CaptureStats {
        let _ = self.tx.send(Message::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        CaptureStats {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            enabled: self.shared.enabled.load(Ordering::Relaxed),
        }
    }
}

fn run_writer(
    rx: Receiver<Message>,
    mut files: RotatingFiles,
    shared: &Shared,
    redactor: &Redactor,
) {
    let mut seq: u64 = 0;
    let mut dirty = false;
    loop {
        // Block for the next message; flush once the queue is drained.
        let message = if dirty {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    dirty = false;
                    if let Err(e) = files.flush() {
                        disable(shared, &e);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => Message::Shutdown,
            }
        } else {
            match rx.recv() {
                Ok(m) => m,
                Err(_) => Message::Shutdown,
            }
        };
        match message {
            Message::Entry(p) => {
                shared.queued_bytes.fetch_sub(p.size, Ordering::Relaxed);
                if !shared.enabled.load(Ordering::Relaxed) {
                    continue;
                }
                seq += 1;
                let mut data = p.head;
                let mut body = Vec::new();
                for b in &p.body {
                    body.extend_from_slice(b);
                }
                data.extend_from_slice(&redactor.body(body));
                let entry = Entry {
                    ts: p.ts,
                    dir: p.dir,
                    seq,
                    data,
                    meta: p.meta,
                };
                match files.append(&entry) {
                    Ok(len) => {
                        dirty = true;
                        shared.written.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(telemetry::ENTRIES_TOTAL).increment(1);
                        metrics::counter!(telemetry::BYTES_TOTAL).increment(len);
                    }
                    Err(e) => disable(shared, &e),
                }
            }
            Message::Flush(done) => {
                if shared.enabled.load(Ordering::Relaxed)
                    && let Err(e) = files.flush()
                {
                    disable(shared, &e);
                }
                dirty = false;
                let _ = done.send(());
            }
            Message::Shutdown => {
                if shared.enabled.load(Ordering::Relaxed)
                    && let Err(e) = files.close_current()
                {
                    disable(shared, &e);
                }
                return;
            }
        }
    }
}

/// Turns capture off after a write error: one error line, the gauge at 0.
fn disable(shared: &Shared, error: &std::io::Error) {
    metrics::counter!(telemetry::WRITE_ERRORS_TOTAL).increment(1);
    if shared.enabled.swap(false, Ordering::Relaxed) {
        metrics::gauge!(telemetry::ENABLED).set(0.0);
        tracing::error!(error = %error, "wire capture write failed; capture is now off (the proxy keeps serving)");
    }
}

const SHARDS: usize = 16;

/// One leg's response as it arrives.
#[derive(Debug)]
struct ResponseLeg {
    head: Vec<u8>,
    status: u16,
    sse: bool,
    head_at: Instant,
    body: Vec<Bytes>,
    /// Bytes in `body` (non-stream legs; at most `max_body_bytes`).
    kept: u64,
    /// Whether the non-stream body was cut at `max_body_bytes`.
    truncated: bool,
    chunks: i64,
    bytes: i64,
    first_at: Option<Instant>,
}

impl ResponseLeg {
    fn new(head: Vec<u8>, status: StatusCode, sse: bool, at: Instant) -> ResponseLeg {
        ResponseLeg {
            head,
            status: status.as_u16(),
            sse,
            head_at: at,
            body: Vec::new(),
            kept: 0,
            truncated: false,
            chunks: 0,
            bytes: 0,
            first_at: None,
        }
    }
}

#[derive(Debug)]
struct ExchangeState {
    /// Wall clock of `ctx.started`, epoch seconds.
    epoch: f64,
    backend_sent: Option<Instant>,
    backend: Option<ResponseLeg>,
    client: Option<ResponseLeg>,
}

/// The capture observer (see the module docs).
pub struct CaptureWriter {
    tx: SyncSender<Message>,
    shared: Arc<Shared>,
    redactor: Arc<Redactor>,
    max_body_bytes: u64,
    shards: Vec<Mutex<HashMap<Arc<str>, ExchangeState>>>,
}

impl std::fmt::Debug for CaptureWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureWriter").finish_non_exhaustive()
    }
}

fn shard_of(id: &str) -> usize {
    id.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % SHARDS
}

fn ms(d: Duration) -> MetaValue {
    MetaValue::Float((d.as_secs_f64() * 1e6).round() / 1e3)
}

impl CaptureWriter {
    fn on(&self) -> bool {
        self.shared.enabled.load(Ordering::Relaxed)
    }

    fn push(&self, mut p: Pending) {
        if !self.on() {
            return;
        }
        let size = p.head.len() as u64 + p.body.iter().map(|b| b.len() as u64).sum::<u64>();
        let before = self.shared.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if before.saturating_add(size) > self.shared.max_queue_bytes {
            self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::DROPPED_TOTAL, "reason" => "queue_bytes").increment(1);
            return;
        }
        p.size = size;
        match self.tx.try_send(Message::Entry(p)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::DROPPED_TOTAL, "reason" => "queue_full").increment(1);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::DROPPED_TOTAL, "reason" => "disabled").increment(1);
            }
        }
    }

    fn with_state<R>(
        &self,
        ex: &ExchangeContext,
        f: impl FnOnce(&mut ExchangeState) -> R,
    ) -> Option<R> {
        let shard = &self.shards[shard_of(&ex.request_id)];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(&ex.request_id).map(f)
    }

    fn base_meta(ex: &ExchangeContext) -> Meta {
        let mut m = Meta::default();
        m.set("sid", MetaValue::Text(ex.session_id.to_string()));
        m.set("rid", MetaValue::Text(ex.request_id.to_string()));
        m
    }

    fn backend_meta(ex: &ExchangeContext, attempt: &AttemptInfo) -> Meta {
        let mut m = CaptureWriter::base_meta(ex);
        m.set("be", MetaValue::Text(attempt.backend.to_string()));
        m.set("mod", MetaValue::Text(attempt.model.clone()));
        m
    }

    fn status_head(&self, status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .into_bytes();
        self.redactor.write_headers(headers, &mut head);
        head.extend_from_slice(b"\r\n");
        head
    }

    fn request_head(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Vec<u8> {
        let mut head = format!("{method} {uri} HTTP/1.1\r\n").into_bytes();
        self.redactor.write_headers(headers, &mut head);
        head.extend_from_slice(b"\r\n");
        head
    }

    /// Entries for a response head: the head itself; for streams also the
    /// start marker.
    fn push_head(
        &self,
        ts: f64,
        dir: Direction,
        leg: &ResponseLeg,
        mut meta: Meta,
        ttfb: Duration,
    ) {
        meta.set("sc", MetaValue::Int(i64::from(leg.status)));
        meta.set("ttfb", ms(ttfb));
        if !leg.sse {
            return;
        }
        self.push(Pending {
            ts,
            dir,
            head: leg.head.clone(),
            body: Vec::new(),
            meta: meta.clone(),
            size: 0,
        });
        meta.0
            .retain(|(k, _)| matches!(k.as_str(), "sid" | "rid" | "be" | "mod"));
        meta.set("ss", MetaValue::Bool(true));
        self.push(Pending {
            ts,
            dir,
            head: Vec::new(),
            body: Vec::new(),
            meta,
            size: 0,
        });
    }

    /// The closing entries of a response leg: a stream's end marker (or an
    /// `err` entry when it broke), or a whole non-stream response.
    #[expect(clippy::too_many_arguments, reason = "one call site per leg")]
    fn push_end(
        &self,
        ts: f64,
        dir: Direction,
        leg: ResponseLeg,
        mut meta: Meta,
        error: Option<String>,
        lat: Duration,
        ttfb: Duration,
        end: Instant,
    ) {
        meta.set("lat", ms(lat));
        if leg.sse {
            match error {
                None => {
                    meta.set("se", MetaValue::Bool(true));
                    meta.set("tc", MetaValue::Int(leg.chunks));
                    meta.set("tb", MetaValue::Int(leg.bytes));
                    let start = leg.first_at.unwrap_or(leg.head_at);
                    meta.set("sdur", ms(end.saturating_duration_since(start)));
                }
                Some(e) => {
                    meta.set("tc", MetaValue::Int(leg.chunks));
                    meta.set("tb", MetaValue::Int(leg.bytes));
                    meta.set("err", MetaValue::Text(e));
                }
            }
            self.push(Pending {
                ts,
                dir,
                head: Vec::new(),
                body: Vec::new(),
                meta,
                size: 0,
            });
        } else {
            meta.set("sc", MetaValue::Int(i64::from(leg.status)));
            meta.set("ttfb", ms(ttfb));
            if let Some(e) = error {
                meta.set("err", MetaValue::Text(e));
            }
            if leg.truncated {
                meta.set("trunc", MetaValue::Bool(true));
                meta.set("tb", MetaValue::Int(leg.bytes));
            }
            self.push(Pending {
                ts,
                dir,
                head: leg.head,
                body: leg.body,
                meta,
                size: 0,
            });
        }
    }

    fn chunk(
        &self,
        ts: f64,
        dir: Direction,
        leg: &mut ResponseLeg,
        chunk: &Bytes,
        at: Instant,
        meta: Meta,
    ) {
        leg.first_at.get_or_insert(at);
        leg.chunks += 1;
        leg.bytes += chunk.len() as i64;
        if leg.sse {
            let mut meta = meta;
            meta.set("ci", MetaValue::Int(leg.chunks));
            self.push(Pending {
                ts,
                dir,
                head: Vec::new(),
                body: vec![chunk.clone()],
                meta,
                size: 0,
            });
        } else {
            let room = self.max_body_bytes.saturating_sub(leg.kept);
            let len = chunk.len() as u64;
            if len <= room {
                leg.body.push(chunk.clone());
                leg.kept += len;
            } else {
                if room > 0 {
                    let room = usize::try_from(room).unwrap_or(usize::MAX);
                    leg.body.push(chunk.slice(..room));
                    leg.kept = self.max_body_bytes;
                }
                leg.truncated = true;
            }
        }
    }
}

fn ts_of(state: &ExchangeState, ex: &ExchangeContext, at: Instant) -> f64 {
    state.epoch + at.saturating_duration_since(ex.started).as_secs_f64()
}

impl ExchangeObserver for CaptureWriter {
    fn on_client_request(
        &self,
        ex: &ExchangeContext,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) {
        if !self.on() {
            return;
        }
        let epoch = ex
            .received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut meta = CaptureWriter::base_meta(ex);
        if let Some(ua) = &ex.user_agent {
            meta.set("ua", MetaValue::Text(ua.clone()));
        }
        self.push(Pending {
            ts: epoch,
            dir: Direction::ClientToProxy,
            head: self.request_head(method, uri, headers),
            body: vec![body.clone()],
            meta,
            size: 0,
        });
        let shard = &self.shards[shard_of(&ex.request_id)];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            ex.request_id.clone(),
            ExchangeState {
                epoch,
                backend_sent: None,
                backend: None,
                client: None,
            },
        );
    }

    fn on_backend_request(
        &self,
        ex: &ExchangeContext,
        attempt: &AttemptInfo,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) {
        let now = Instant::now();
        let Some(ts) = self.with_state(ex, |s| {
            s.backend_sent = Some(now);
            s.backend = None;
            ts_of(s, ex, now)
        }) else {
            return;
        };
        self.push(Pending {
            ts,
            dir: Direction::ProxyToBackend,
            head: self.request_head(&Method::POST, uri, headers),
            body: vec![body.clone()],
            meta: CaptureWriter::backend_meta(ex, attempt),
            size: 0,
        });
    }

    fn on_backend_response_head(
        &self,
        ex: &ExchangeContext,
        attempt: &AttemptInfo,
        status: StatusCode,
        headers: &HeaderMap,
        at: Instant,
    ) {
        let head = self.status_head(status, headers);
        let sse = is_event_stream(headers);
        self.with_state(ex, |s| {
            let leg = ResponseLeg::new(head, status, sse, at);
            let ttfb = at.saturating_duration_since(s.backend_sent.unwrap_or(ex.started));
            self.push_head(
                ts_of(s, ex, at),
                Direction::BackendToProxy,
                &leg,
                CaptureWriter::backend_meta(ex, attempt),
                ttfb,
            );
            s.backend = Some(leg);
        });
    }

    fn on_backend_response_chunk(
        &self,
        ex: &ExchangeContext,
        attempt: &AttemptInfo,
        chunk: &Bytes,
        at: Instant,
    ) {
        self.with_state(ex, |s| {
            let ts = ts_of(s, ex, at);
            if let Some(leg) = s.backend.as_mut() {
                let meta = CaptureWriter::backend_meta(ex, attempt);
                self.chunk(ts, Direction::BackendToProxy, leg, chunk, at, meta);
            }
        });
    }

    fn on_backend_response_end(
        &self,
        ex: &ExchangeContext,
        attempt: &AttemptInfo,
        error: Option<&UpstreamError>,
        at: Instant,
    ) {
        self.with_state(ex, |s| {
            let ts = ts_of(s, ex, at);
            let sent = s.backend_sent.unwrap_or(ex.started);
            let lat = at.saturating_duration_since(sent);
            let meta = CaptureWriter::backend_meta(ex, attempt);
            match s.backend.take() {
                Some(leg) => {
                    let ttfb = leg.head_at.saturating_duration_since(sent);
                    self.push_end(
                        ts,
                        Direction::BackendToProxy,
                        leg,
                        meta,
                        error.map(ToString::to_string),
                        lat,
                        ttfb,
                        at,
                    );
                }
                None => {
                    // No response head: the attempt failed outright.
                    let mut meta = meta;
                    meta.set("lat", ms(lat));
                    meta.set(
                        "err",
                        MetaValue::Text(
                            error.map_or_else(|| "no response".to_owned(), ToString::to_string),
                        ),
                    );
                    self.push(Pending {
                        ts,
                        dir: Direction::BackendToProxy,
                        head: Vec::new(),
                        body: Vec::new(),
                        meta,
                        size: 0,
                    });
                }
            }
        });
    }

    fn on_client_response_head(
        &self,
        ex: &ExchangeContext,
        status: StatusCode,
        headers: &HeaderMap,
        at: Instant,
    ) {
        let head = self.status_head(status, headers);
        let sse = is_event_stream(headers);
        self.with_state(ex, |s| {
            let leg = ResponseLeg::new(head, status, sse, at);
            self.push_head(
                ts_of(s, ex, at),
                Direction::ProxyToClient,
                &leg,
                CaptureWriter::base_meta(ex),
                at.saturating_duration_since(ex.started),
            );
            s.client = Some(leg);
        });
    }

    fn on_client_response_chunk(&self, ex: &ExchangeContext, chunk: &Bytes, at: Instant) {
        self.with_state(ex, |s| {
            let ts = ts_of(s, ex, at);
            if let Some(leg) = s.client.as_mut() {
                self.chunk(
                    ts,
                    Direction::ProxyToClient,
                    leg,
                    chunk,
                    at,
                    CaptureWriter::base_meta(ex),
                );
            }
        });
    }

    fn on_exchange_end(&self, ex: &ExchangeContext, outcome: &ExchangeOutcome) {
        let state = {
            let shard = &self.shards[shard_of(&ex.request_id)];
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&ex.request_id)
        };
        let Some(mut state) = state else {
            return;
        };
        let end = ex.started + outcome.total;
        let ts = ts_of(&state, ex, end);
        let error = match outcome.completion {
            Completion::Completed => None,
            Completion::Incomplete(reason) => Some(
                outcome
                    .error
                    .clone()
                    .unwrap_or_else(|| reason.as_str().to_owned()),
            ),
            _ => Some(outcome.error.clone().unwrap_or_else(|| "failed".into())),
        };
        let meta = CaptureWriter::base_meta(ex);
        match state.client.take() {
            Some(leg) => {
                let ttfb = outcome
                    .ttft
                    .unwrap_or_else(|| leg.head_at.saturating_duration_since(ex.started));
                self.push_end(
                    ts,
                    Direction::ProxyToClient,
                    leg,
                    meta,
                    error,
                    outcome.total,
                    ttfb,
                    end,
                );
            }
            None => {
                let mut meta = meta;
                meta.set("sc", MetaValue::Int(i64::from(outcome.status)));
                meta.set("lat", ms(outcome.total));
                meta.set(
                    "err",
                    MetaValue::Text(error.unwrap_or_else(|| "no response head".into())),
                );
                self.push(Pending {
                    ts,
                    dir: Direction::ProxyToClient,
                    head: Vec::new(),
                    body: Vec::new(),
                    meta,
                    size: 0,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::capture_files;
    use llm_proxy_core::{BackendType, Frontend};

    fn context(id: &str) -> ExchangeContext {
        ExchangeContext {
            request_id: id.into(),
            frontend: Frontend::OpenAiChat,
            received_at: SystemTime::now(),
            started: Instant::now(),
            client_addr: None,
            user_agent: None,
            proxy_user: None,
            session_id: "s".into(),
            requested_model: "m".into(),
            streaming: false,
        }
    }

    fn config(dir: &std::path::Path) -> WireCaptureConfig {
        WireCaptureConfig {
            enabled: true,
            output_dir: dir.to_string_lossy().into_owned(),
            ..WireCaptureConfig::default()
        }
    }

    fn entries(dir: &std::path::Path) -> Vec<Entry> {
        capture_files(dir)
            .unwrap()
            .iter()
            .flat_map(|(p, _)| crate::reader::read_file(p).unwrap().entries)
            .collect()
    }

    #[test]
    fn entries_over_the_byte_budget_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.max_queue_bytes = 1000;
        let handle = start(&config, Vec::new()).unwrap();
        let observer = handle.observer();
        let ex = context("big");
        let headers = HeaderMap::new();
        let uri: Uri = "/v1/chat/completions".parse().unwrap();
        // Larger than the whole budget: never queued.
        observer.on_client_request(
            &ex,
            &Method::POST,
            &uri,
            &headers,
            &Bytes::from(vec![b'x'; 5000]),
        );
        // Small: queued and written.
        observer.on_client_request(
            &context("small"),
            &Method::POST,
            &uri,
            &headers,
            &Bytes::from_static(b"{}"),
        );
        let stats = handle.shutdown();
        assert_eq!(stats.dropped, 1, "{stats:?}");
        assert_eq!(stats.written, 1, "{stats:?}");
        assert_eq!(entries(dir.path()).len(), 1);
    }

    #[test]
    fn a_non_stream_body_is_cut_at_max_body_bytes_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.max_body_bytes = 10;
        let handle = start(&config, Vec::new()).unwrap();
        let observer = handle.observer();
        let ex = context("r1");
        let headers = HeaderMap::new();
        let uri: Uri = "/v1/chat/completions".parse().unwrap();
        observer.on_client_request(
            &ex,
            &Method::POST,
            &uri,
            &headers,
            &Bytes::from_static(b"{}"),
        );
        let attempt = AttemptInfo {
            attempt: 1,
            backend: "b".into(),
            backend_type: BackendType::OpenAi,
            model: "m".into(),
            replaced: false,
            stream_usage_requested: false,
        };
        let now = Instant::now();
        observer.on_backend_request(&ex, &attempt, &uri, &headers, &Bytes::from_static(b"{}"));
        observer.on_backend_response_head(&ex, &attempt, StatusCode::OK, &headers, now);
        for _ in 0..3 {
            observer.on_backend_response_chunk(&ex, &attempt, &Bytes::from_static(b"0123456"), now);
        }
        observer.on_backend_response_end(&ex, &attempt, None, now);
        handle.shutdown();
        let all = entries(dir.path());
        let response = all
            .iter()
            .find(|e| e.dir == Direction::BackendToProxy)
            .unwrap();
        assert!(
            response.data.ends_with(b"\r\n\r\n0123456012"),
            "{:?}",
            String::from_utf8_lossy(&response.data)
        );
        assert_eq!(response.meta.get("trunc"), Some(&MetaValue::Bool(true)));
        assert_eq!(response.meta.get("tb"), Some(&MetaValue::Int(21)));
    }
}
