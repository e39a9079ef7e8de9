//! [`SqliteStore`]: the default usage store (`./var/usage.sqlite3`).
//!
//! **Durability.** WAL mode with `synchronous = NORMAL`: a committed insert
//! survives a process crash (SIGKILL); on power loss the last few
//! transactions before the most recent checkpoint may be lost, never
//! corrupted. [`UsageStore::flush`] runs a passive WAL checkpoint.
//!
//! **Schema** (`PRAGMA user_version`, versioned idempotent migrations; a
//! newer version than this binary knows is refused with
//! [`UsageError::SchemaTooNew`]):
//! - `records`: one row per record, a real column for every field;
//!   `tool_names` and `backend_reported_usage` as JSON text. Indexed only
//!   by keys that grow with time, so a write touches the right edge of each
//!   index instead of one random page per row (v1 indexed the random
//!   request id and session id; at 1 M rows that cost ≈ 20 of the ≈ 31 µs
//!   of CPU per record): `records_time (timestamp_us, id)`, `UNIQUE`, which
//!   `INSERT OR IGNORE` dedupes on — an id is minted with its request's
//!   `timestamp_us`, so a record stored again (a retried batch) repeats
//!   both —, and `records_session (session_key_us, session_id,
//!   timestamp_us)`.
//! - `sessions`: session id → `key_us`, the timestamp of the first record
//!   of the session the store saw; every row of the session carries it as
//!   `session_key_us`, so a session's rows cluster under the time it
//!   started. A `session_id` filter adds `session_key_us = (SELECT key_us
//!   FROM sessions WHERE session_id = ?)`. Prune drops sessions with no
//!   rows left.
//! - `rollup_keys`: the distinct combinations of the rollup dimensions
//!   (backend_type, backend, model, requested_model, frontend_type,
//!   http_status_code, proxy_user, streaming), each with a small id.
//! - `rollup_hours`: `(hour_us, key_id) → Aggregate` blob, updated in the
//!   same transaction as the inserts.
//! - `deferred`: batches written by [`UsageStore::insert_deferred`] (the
//!   writer, while the machine is busy) as one packed blob each
//!   (`store::packed`) with their time range, their rollups written as for
//!   rows; [`UsageStore::catch_up`] turns the oldest into rows, a batch per
//!   transaction. Scans (below) also decode the batches overlapping their
//!   range; `recent` and `export` index every batch first (a batch per hold
//!   of the writer lock), then take their snapshot while holding it; `prune`
//!   indexes the batches holding records older than its cutoff. A record
//!   found already stored when its batch is indexed was counted twice in the
//!   rollups: its hour is recomputed from rows and remaining batches.
//! - `deferred_unreadable`: batches that did not decode, set aside (and
//!   logged) rather than deleted (batch ids are never reused); their
//!   records stay in the rollups until the rollups are next rebuilt (the
//!   next open finds the counts disagree), and scans skip them meanwhile.
//!   Retention does not prune this table: it is for an operator.
//!
//! **Queries.** At open the hourly rollups are folded into per-day and
//! all-time aggregates per key, kept in memory and updated on every
//! insert. A query whose filter and `group_by` only touch rollup dimensions
//! (not `session_id` / `user_agent`) is answered from: the all-time
//! aggregates (no time filter); in-memory days wholly inside
//! `[start, end]`; hourly rollup rows for whole hours at the edges (and for
//! `hour_of_day` filters); raw rows for the partial edge hours. Other
//! queries scan raw rows, filtered in SQL. Both paths give `==` answers
//! because aggregates merge exactly.
//!
//! **Migrations.** 2 rewrites a version-1 `records` table in time order
//! (SQLite cannot drop the `UNIQUE` of a column in place), filling
//! `sessions` from it: a one-time cost at the first open, about that of
//! copying the table (seconds per million rows); the freed pages are
//! reused by later inserts.
//!
//! **Unreadable files** (not a database, truncated, failing
//! `PRAGMA quick_check`) are moved aside to `<path>.corrupt-<unix_ts>`
//! with their `-wal` / `-shm`, and a new store starts; the
//! [`OpenReport`] says so.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Statement, Transaction, params,
};

use crate::aggregate::Aggregate;
use crate::error::UsageError;
use crate::query::{GroupKey, UsageFilter};
use crate::record::UsageRecord;
use crate::store::packed;
use crate::store::rollup::{
    DAY_US, HOUR_US, HourGroups, RECORD_COLUMNS, RollupKey, SqlValue, decode_tool_names,
    filter_conditions, floor_to, hour_passes, parse_cost_source, parse_outcome, parse_token_source,
    plan, rollups_can_answer,
};
use crate::store::{
    AggregateSet, OpenReport, RecentPage, UsageStore, ensure_parent_dir, move_aside,
};
use crate::time::hour_floor;

/// Schema migrations; version N is reached by applying the first N.
const MIGRATIONS: &[&str] = &[
    // 1: records, rollups.
    "CREATE TABLE IF NOT EXISTS records (
        id TEXT NOT NULL UNIQUE,
        timestamp TEXT NOT NULL,
        timestamp_us INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        turn_number INTEGER NOT NULL,
        backend_type TEXT NOT NULL,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        requested_model TEXT NOT NULL,
        frontend_type TEXT NOT NULL,
        streaming INTEGER NOT NULL,
        verbatim_prompt_tokens INTEGER,
        mutated_prompt_tokens INTEGER,
        verbatim_completion_tokens INTEGER,
        mutated_completion_tokens INTEGER,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL,
        backend_reported_usage TEXT,
        token_source TEXT NOT NULL,
        cost_usd REAL,
        cost_source TEXT NOT NULL,
        http_status_code INTEGER NOT NULL,
        completion_outcome TEXT NOT NULL,
        incomplete_reason TEXT,
        tool_call_count INTEGER NOT NULL,
        tool_names TEXT NOT NULL,
        ttft_ms REAL,
        total_duration_ms REAL NOT NULL,
        proxy_overhead_ms REAL NOT NULL,
        completion_tokens_per_second REAL,
        user_agent TEXT,
        proxy_user TEXT,
        call_purpose TEXT,
        replaced INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS records_timestamp ON records (timestamp_us, id);
    CREATE INDEX IF NOT EXISTS records_session ON records (session_id, timestamp_us);
    CREATE TABLE IF NOT EXISTS rollup_keys (
        id INTEGER PRIMARY KEY,
        backend_type TEXT NOT NULL,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        requested_model TEXT NOT NULL,
        frontend_type TEXT NOT NULL,
        http_status_code INTEGER NOT NULL,
        proxy_user TEXT,
        streaming INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS rollup_hours (
        hour_us INTEGER NOT NULL,
        key_id INTEGER NOT NULL,
        request_count INTEGER NOT NULL,
        aggregate BLOB NOT NULL,
        PRIMARY KEY (hour_us, key_id)
    ) WITHOUT ROWID;",
    // 2: no index on a random key on the write path (see the module docs).
    // Rewrites `records` (a column constraint cannot be dropped in place),
    // in time order; `sessions` from the existing rows.
    "CREATE TABLE sessions (
        session_id TEXT NOT NULL PRIMARY KEY,
        key_us INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO sessions (session_id, key_us)
        SELECT session_id, MIN(timestamp_us) FROM records GROUP BY session_id;
    CREATE TABLE records_v2 (
        id TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        timestamp_us INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        turn_number INTEGER NOT NULL,
        backend_type TEXT NOT NULL,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        requested_model TEXT NOT NULL,
        frontend_type TEXT NOT NULL,
        streaming INTEGER NOT NULL,
        verbatim_prompt_tokens INTEGER,
        mutated_prompt_tokens INTEGER,
        verbatim_completion_tokens INTEGER,
        mutated_completion_tokens INTEGER,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL,
        backend_reported_usage TEXT,
        token_source TEXT NOT NULL,
        cost_usd REAL,
        cost_source TEXT NOT NULL,
        http_status_code INTEGER NOT NULL,
        completion_outcome TEXT NOT NULL,
        incomplete_reason TEXT,
        tool_call_count INTEGER NOT NULL,
        tool_names TEXT NOT NULL,
        ttft_ms REAL,
        total_duration_ms REAL NOT NULL,
        proxy_overhead_ms REAL NOT NULL,
        completion_tokens_per_second REAL,
        user_agent TEXT,
        proxy_user TEXT,
        call_purpose TEXT,
        replaced INTEGER NOT NULL,
        session_key_us INTEGER NOT NULL
    );
    INSERT INTO records_v2
        SELECT r.*, s.key_us FROM records AS r JOIN sessions AS s USING (session_id)
        ORDER BY r.timestamp_us, r.id;
    DROP TABLE records;
    ALTER TABLE records_v2 RENAME TO records;
    CREATE UNIQUE INDEX records_time ON records (timestamp_us, id);
    CREATE INDEX records_session ON records (session_key_us, session_id, timestamp_us);",
    // 3: batches stored packed while the machine is busy, indexed into
    // `records` later (see the module docs); batches that do not decode
    // are set aside, not deleted.
    "CREATE TABLE deferred (
        batch INTEGER PRIMARY KEY AUTOINCREMENT,
        first_us INTEGER NOT NULL,
        last_us INTEGER NOT NULL,
        record_count INTEGER NOT NULL,
        records BLOB NOT NULL
    );
    CREATE TABLE deferred_unreadable (
        batch INTEGER PRIMARY KEY,
        first_us INTEGER NOT NULL,
        last_us INTEGER NOT NULL,
        record_count INTEGER NOT NULL,
        records BLOB NOT NULL,
        error TEXT NOT NULL
    );",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn db_err(e: rusqlite::Error) -> UsageError {
    UsageError::Database(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Record rows.
// ---------------------------------------------------------------------------

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reused encoding buffers of [`insert_record`] (no allocation per row).
#[derive(Default)]
struct RowBuffers {
    usage: Vec<u8>,
    tools: Vec<u8>,
}

/// `value` as JSON in `buf` (cleared first).
fn json_into<'b, T: serde::Serialize + ?Sized>(
    buf: &'b mut Vec<u8>,
    value: &T,
) -> Result<&'b str, UsageError> {
    let enc = |e: &dyn std::fmt::Display| UsageError::Encoding(e.to_string());
    buf.clear();
    serde_json::to_writer(&mut *buf, value).map_err(|e| enc(&e))?;
    std::str::from_utf8(buf).map_err(|e| enc(&e))
}

fn insert_record(
    stmt: &mut Statement<'_>,
    bufs: &mut RowBuffers,
    r: &UsageRecord,
    session_key_us: i64,
) -> Result<usize, UsageError> {
    let usage = match &r.backend_reported_usage {
        Some(u) => Some(json_into(&mut bufs.usage, u)?),
        None => None,
    };
    // As `encode_tool_names`, without allocating.
    let tools = if r.tool_names.is_empty() {
        "[]"
    } else {
        json_into(&mut bufs.tools, &r.tool_names)?
    };
    stmt.execute(params![
        r.id,
        r.timestamp,
        r.timestamp_us,
        r.session_id,
        r.turn_number,
        r.backend_type,
        r.backend,
        r.model,
        r.requested_model,
        r.frontend_type,
        r.streaming,
        r.verbatim_prompt_tokens.map(to_i64),
        r.mutated_prompt_tokens.map(to_i64),
        r.verbatim_completion_tokens.map(to_i64),
        r.mutated_completion_tokens.map(to_i64),
        to_i64(r.prompt_tokens),
        to_i64(r.completion_tokens),
        to_i64(r.total_tokens),
        usage,
        r.token_source.as_str(),
        r.cost_usd,
        r.cost_source.as_str(),
        r.http_status_code,
        r.completion_outcome.as_str(),
        r.incomplete_reason,
        r.tool_call_count,
        tools,
        r.ttft_ms,
        r.total_duration_ms,
        r.proxy_overhead_ms,
        r.completion_tokens_per_second,
        r.user_agent,
        r.proxy_user,
        r.call_purpose,
        r.replaced,
        session_key_us,
    ])
    .map_err(db_err)
}

fn read_record(row: &Row<'_>) -> Result<UsageRecord, UsageError> {
    fn u(v: Option<i64>) -> Option<u64> {
        v.map(|v| u64::try_from(v).unwrap_or(0))
    }
    let token_source: String = row.get(19).map_err(db_err)?;
    let cost_source: String = row.get(21).map_err(db_err)?;
    let outcome: String = row.get(23).map_err(db_err)?;
    let usage: Option<String> = row.get(18).map_err(db_err)?;
    let tools: String = row.get(26).map_err(db_err)?;
    let json = |e: serde_json::Error| UsageError::Encoding(e.to_string());
    Ok(UsageRecord {
        id: row.get(0).map_err(db_err)?,
        timestamp: row.get(1).map_err(db_err)?,
        timestamp_us: row.get(2).map_err(db_err)?,
        session_id: row.get(3).map_err(db_err)?,
        turn_number: row.get(4).map_err(db_err)?,
        backend_type: row.get(5).map_err(db_err)?,
        backend: row.get(6).map_err(db_err)?,
        model: row.get(7).map_err(db_err)?,
        requested_model: row.get(8).map_err(db_err)?,
        frontend_type: row.get(9).map_err(db_err)?,
        streaming: row.get(10).map_err(db_err)?,
        verbatim_prompt_tokens: u(row.get(11).map_err(db_err)?),
        mutated_prompt_tokens: u(row.get(12).map_err(db_err)?),
        verbatim_completion_tokens: u(row.get(13).map_err(db_err)?),
        mutated_completion_tokens: u(row.get(14).map_err(db_err)?),
        prompt_tokens: u(row.get(15).map_err(db_err)?).unwrap_or(0),
        completion_tokens: u(row.get(16).map_err(db_err)?).unwrap_or(0),
        total_tokens: u(row.get(17).map_err(db_err)?).unwrap_or(0),
        backend_reported_usage: match usage {
            Some(s) => Some(serde_json::from_str(&s).map_err(json)?),
            None => None,
        },
        token_source: parse_token_source(&token_source)?,
        cost_usd: row.get(20).map_err(db_err)?,
        cost_source: parse_cost_source(&cost_source)?,
        http_status_code: row.get(22).map_err(db_err)?,
        completion_outcome: parse_outcome(&outcome)?,
        incomplete_reason: row.get(24).map_err(db_err)?,
        tool_call_count: row.get(25).map_err(db_err)?,
        tool_names: decode_tool_names(&tools)?,
        ttft_ms: row.get(27).map_err(db_err)?,
        total_duration_ms: row.get(28).map_err(db_err)?,
        proxy_overhead_ms: row.get(29).map_err(db_err)?,
        completion_tokens_per_second: row.get(30).map_err(db_err)?,
        user_agent: row.get(31).map_err(db_err)?,
        proxy_user: row.get(32).map_err(db_err)?,
        call_purpose: row.get(33).map_err(db_err)?,
        replaced: row.get(34).map_err(db_err)?,
    })
}

/// `WHERE …` for `filter` (exactly `UsageFilter::matches`), optionally
/// restricted to `timestamp_us` in `range` (inclusive).
fn where_clause(filter: &UsageFilter, range: Option<(i64, i64)>) -> (String, Vec<Value>) {
    let (mut conds, vals) = filter_conditions(filter, range);
    let mut vals: Vec<Value> = vals
        .into_iter()
        .map(|v| match v {
            SqlValue::Text(t) => Value::Text(t),
            SqlValue::Int(i) => Value::Integer(i),
        })
        .collect();
    // What makes `records_session` usable: the session's key.
    if let Some(session) = &filter.session_id {
        conds
            .push("session_key_us = (SELECT key_us FROM sessions WHERE session_id = ?)".to_owned());
        vals.push(Value::Text(session.clone()));
    }
    let sql = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    (sql, vals)
}

// ---------------------------------------------------------------------------
// Rollups.
// ---------------------------------------------------------------------------

/// The in-memory side of the rollups: keys, per-day and all-time
/// aggregates per key.
#[derive(Debug, Default)]
struct Rollups {
    /// Key id (= `rollup_keys.id`) → key.
    keys: Vec<RollupKey>,
    key_ids: HashMap<RollupKey, u32>,
    /// Day start (µs) → key id → aggregate.
    days: BTreeMap<i64, HashMap<u32, Aggregate>>,
    /// Key id → all-time aggregate.
    totals: Vec<Aggregate>,
    /// Stored records.
    record_count: u64,
}

impl Rollups {
    fn add_key(&mut self, key: RollupKey) -> u32 {
        let id = self.keys.len() as u32;
        self.key_ids.insert(key.clone(), id);
        self.keys.push(key);
        self.totals.push(Aggregate::default());
        id
    }

    /// Folds one hour's aggregate of key `id` into the day and the totals.
    fn apply_hour(&mut self, hour_us: i64, id: u32, agg: &Aggregate) {
        let day = hour_us - hour_us.rem_euclid(DAY_US);
        self.days
            .entry(day)
            .or_default()
            .entry(id)
            .or_default()
            .merge(agg);
        if let Some(t) = self.totals.get_mut(id as usize) {
            t.merge(agg);
        }
        self.record_count += agg.request_count;
    }

    fn recompute_totals(&mut self) {
        let mut totals = vec![Aggregate::default(); self.keys.len()];
        let mut count = 0;
        for day in self.days.values() {
            for (id, agg) in day {
                if let Some(t) = totals.get_mut(*id as usize) {
                    t.merge(agg);
                }
                count += agg.request_count;
            }
        }
        self.totals = totals;
        self.record_count = count;
    }
}

// ---------------------------------------------------------------------------
// The store.
// ---------------------------------------------------------------------------

const MAX_IDLE_READERS: usize = 4;

/// Usage records in SQLite, with hourly rollups (see the module docs).
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Held for reading while a query reads the database, and for writing
    /// while a write commits, so memory and database always agree.
    rollups: RwLock<Rollups>,
    /// Session id → `sessions.key_us`, for sessions recently written
    /// (locked after `writer`; cleared when full and on prune).
    session_keys: Mutex<HashMap<String, i64>>,
    /// Records in `deferred` batches (changed only under `writer`).
    deferred: AtomicU64,
}

/// Sessions whose keys the writer remembers (≈ 100 bytes each).
const SESSION_KEYS_CACHED: usize = 100_000;

/// Why opening failed.
enum OpenFailure {
    /// The file is not a readable database: move it aside.
    Unreadable(String),
    /// Anything else: report.
    Error(UsageError),
}

impl From<rusqlite::Error> for OpenFailure {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                OpenFailure::Unreadable(e.to_string())
            }
            _ => OpenFailure::Error(db_err(e)),
        }
    }
}

impl From<UsageError> for OpenFailure {
    fn from(e: UsageError) -> Self {
        OpenFailure::Error(e)
    }
}

fn open_connection(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // No mmap: mapped pages count as resident memory, and an export of a big
    // store would touch all of them. Reads go through SQLite's page cache,
    // sized per connection (readers: 16 MiB; the writer sets its own).
    conn.execute_batch(
        "PRAGMA mmap_size = 0; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384;",
    )?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens or creates the store at `path` (creating its directory).
    pub fn open(path: impl AsRef<Path>) -> Result<(SqliteStore, OpenReport), UsageError> {
        let path = path.as_ref().to_owned();
        ensure_parent_dir(&path)?;
        let mut report = OpenReport {
            path: path.clone(),
            created: !path.exists(),
            ..OpenReport::default()
        };
        let store = match SqliteStore::try_open(&path, &mut report) {
            Ok(store) => store,
            Err(OpenFailure::Error(e)) => return Err(e),
            Err(OpenFailure::Unreadable(reason)) => {
                let moved = move_aside(&path, &["-wal", "-shm", "-journal"], reason)?;
                report = OpenReport {
                    path: path.clone(),
                    created: true,
                    moved_aside: Some(moved),
                    ..OpenReport::default()
                };
                match SqliteStore::try_open(&path, &mut report) {
                    Ok(store) => store,
                    Err(OpenFailure::Error(e)) => return Err(e),
                    Err(OpenFailure::Unreadable(reason)) => {
                        return Err(UsageError::Database(format!(
                            "a new database at {} is unreadable: {reason}",
                            path.display()
                        )));
                    }
                }
            }
        };
        report.records = store.read_rollups().record_count;
        Ok((store, report))
    }

    fn try_open(path: &Path, report: &mut OpenReport) -> Result<SqliteStore, OpenFailure> {
        let mut conn = open_connection(path)?;
        let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(OpenFailure::Unreadable(format!("quick_check: {check}")));
        }
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(OpenFailure::Error(UsageError::SchemaTooNew {
                path: path.to_owned(),
                found: version,
                supported: SCHEMA_VERSION,
            }));
        }
        if version == 0 {
            // Takes effect only on a new database; bigger pages suit ~0.5 KB rows.
            conn.execute_batch("PRAGMA page_size = 16384;")?;
        }
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenFailure::Error(UsageError::Database(format!(
                "could not switch {} to WAL mode (got {mode})",
                path.display()
            ))));
        }
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; \
             PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 2000;",
        )?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        if version < SCHEMA_VERSION && version > 0 {
            report.migrated_from = Some(version);
        }
        let rollups = match load_rollups(&conn) {
            Ok(r) => r,
            Err(e) => {
                report.rollups_rebuilt = Some(e.to_string());
                rebuild_rollups(&mut conn, path)?
            }
        };
        let deferred: i64 = conn
            .query_row(
                "SELECT COALESCE(SUM(record_count), 0) FROM deferred",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            rollups: RwLock::new(rollups),
            session_keys: Mutex::new(HashMap::new()),
            deferred: AtomicU64::new(u64::try_from(deferred).unwrap_or(0)),
        })
    }

    fn read_rollups(&self) -> RwLockReadGuard<'_, Rollups> {
        self.rollups.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_rollups(&self) -> RwLockWriteGuard<'_, Rollups> {
        self.rollups.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with a pooled read connection (stats never wait behind the
    /// writer's connection).
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, UsageError>,
    ) -> Result<T, UsageError> {
        let pooled = lock(&self.readers).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = open_connection(&self.path).map_err(db_err)?;
                c.execute_batch("PRAGMA query_only = 1;").map_err(db_err)?;
                c
            }
        };
        let result = f(&mut conn);
        let mut pool = lock(&self.readers);
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        result
    }

    /// Aggregates by scanning raw rows only (the reference the rollup path
    /// must equal; also the path for `session_id` / `user_agent`).
    fn aggregate_by_scan(
        conn: &Connection,
        f: &UsageFilter,
        group_by: &[GroupKey],
        range: Option<(i64, i64)>,
        set: &mut AggregateSet,
    ) -> Result<(), UsageError> {
        for_each_record(conn, f, range, "", &mut |r| {
            set.add(r, group_by);
            Ok(true)
        })
    }

    fn aggregate_with_rollups(
        &self,
        rollups: &Rollups,
        conn: &Connection,
        f: &UsageFilter,
        group_by: &[GroupKey],
    ) -> Result<AggregateSet, UsageError> {
        let plan = plan(f);
        let key_match: Vec<bool> = rollups.keys.iter().map(|k| k.matches(f)).collect();
        let group_values: Vec<Vec<String>> = if group_by.is_empty() {
            Vec::new()
        } else {
            rollups
                .keys
                .iter()
                .map(|k| group_by.iter().filter_map(|g| k.value(*g)).collect())
                .collect()
        };
        let mut set = AggregateSet::default();
        let fold = |set: &mut AggregateSet, id: u32, agg: &Aggregate| {
            set.overall.merge(agg);
            if let Some(values) = group_values.get(id as usize) {
                match set.groups.get_mut(values) {
                    Some(g) => g.merge(agg),
                    None => {
                        set.groups.insert(values.clone(), agg.clone());
                    }
                }
            }
        };
        if plan.totals {
            for (id, agg) in rollups.totals.iter().enumerate() {
                if key_match[id] && agg.request_count > 0 {
                    fold(&mut set, id as u32, agg);
                }
            }
        }
        if let Some((from, to)) = plan.days {
            for (day, per_key) in rollups.days.range(from..to) {
                if f.day_of_week
                    .is_some_and(|d| crate::time::day_of_week(*day) != d)
                {
                    continue;
                }
                for (id, agg) in per_key {
                    if key_match.get(*id as usize).copied().unwrap_or(false) {
                        fold(&mut set, *id, agg);
                    }
                }
            }
        }
        if !plan.hours.is_empty() {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hour_us, key_id, aggregate FROM rollup_hours \
                     WHERE hour_us >= ?1 AND hour_us < ?2",
                )
                .map_err(db_err)?;
            for (from, to) in &plan.hours {
                let mut rows = stmt.query(params![from, to]).map_err(db_err)?;
                while let Some(row) = rows.next().map_err(db_err)? {
                    let hour: i64 = row.get(0).map_err(db_err)?;
                    let id: u32 = row.get(1).map_err(db_err)?;
                    if !key_match.get(id as usize).copied().unwrap_or(false)
                        || f.hour_of_day
                            .is_some_and(|h| crate::time::hour_of_day(hour) != h)
                        || f.day_of_week
                            .is_some_and(|d| crate::time::day_of_week(hour) != d)
                    {
                        continue;
                    }
                    let blob = row.get_ref(2).map_err(db_err)?;
                    let bytes = blob
                        .as_blob()
                        .map_err(|e| UsageError::Encoding(e.to_string()))?;
                    fold(&mut set, id, &Aggregate::from_bytes(bytes)?);
                }
            }
        }
        for range in &plan.raw {
            SqliteStore::aggregate_by_scan(conn, f, group_by, Some(*range), &mut set)?;
        }
        Ok(set)
    }

    /// Matching records, counted from rollups where possible.
    fn count_matching(
        &self,
        rollups: &Rollups,
        conn: &Connection,
        f: &UsageFilter,
    ) -> Result<u64, UsageError> {
        if f.is_empty() {
            return Ok(rollups.record_count);
        }
        let count_sql = |range: Option<(i64, i64)>| -> Result<u64, UsageError> {
            let (w, vals) = where_clause(f, range);
            let n: i64 = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM records {w}"),
                    rusqlite::params_from_iter(vals),
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            // `recent` (the caller) reads with no batch deferred.
            Ok(u64::try_from(n).unwrap_or(0))
        };
        if !rollups_can_answer(f, &[]) {
            return count_sql(None);
        }
        let plan = plan(f);
        let key_match: Vec<bool> = rollups.keys.iter().map(|k| k.matches(f)).collect();
        let mut n = 0;
        if plan.totals {
            n += rollups
                .totals
                .iter()
                .enumerate()
                .filter(|(id, _)| key_match[*id])
                .map(|(_, a)| a.request_count)
                .sum::<u64>();
        }
        if let Some((from, to)) = plan.days {
            for (day, per_key) in rollups.days.range(from..to) {
                if f.day_of_week
                    .is_some_and(|d| crate::time::day_of_week(*day) != d)
                {
                    continue;
                }
                n += per_key
                    .iter()
                    .filter(|(id, _)| key_match.get(**id as usize).copied().unwrap_or(false))
                    .map(|(_, a)| a.request_count)
                    .sum::<u64>();
            }
        }
        if !plan.hours.is_empty() {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hour_us, key_id, request_count FROM rollup_hours \
                     WHERE hour_us >= ?1 AND hour_us < ?2",
                )
                .map_err(db_err)?;
            for (from, to) in &plan.hours {
                let mut rows = stmt.query(params![from, to]).map_err(db_err)?;
                while let Some(row) = rows.next().map_err(db_err)? {
                    let hour: i64 = row.get(0).map_err(db_err)?;
                    let id: u32 = row.get(1).map_err(db_err)?;
                    if key_match.get(id as usize).copied().unwrap_or(false) && hour_passes(f, hour)
                    {
                        let c: i64 = row.get(2).map_err(db_err)?;
                        n += u64::try_from(c).unwrap_or(0);
                    }
                }
            }
        }
        for range in &plan.raw {
            n += count_sql(Some(*range))?;
        }
        Ok(n)
    }

    #[cfg(test)]
    fn aggregate_scan_only(
        &self,
        f: &UsageFilter,
        group_by: &[GroupKey],
    ) -> Result<AggregateSet, UsageError> {
        self.with_reader(|conn| {
            let mut set = AggregateSet::default();
            SqliteStore::aggregate_by_scan(conn, f, group_by, None, &mut set)?;
            Ok(set)
        })
    }
}

/// Feeds records matching `f` (within `range`) to `each` in `order` until
/// it returns false.
fn for_each_record(
    conn: &Connection,
    f: &UsageFilter,
    range: Option<(i64, i64)>,
    order: &str,
    each: &mut dyn FnMut(&UsageRecord) -> Result<bool, UsageError>,
) -> Result<(), UsageError> {
    let (w, vals) = where_clause(f, range);
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM records {w} {order}"))
        .map_err(db_err)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(vals))
        .map_err(db_err)?;
    while let Some(row) = rows.next().map_err(db_err)? {
        if !each(&read_record(row)?)? {
            return Ok(());
        }
    }
    if order.is_empty() {
        for_each_deferred(conn, f, range, each)?;
    }
    Ok(())
}

/// The bytes of a deferred batch's `records` column (none when it holds
/// something other than a blob or text: the batch then does not decode).
fn batch_bytes(value: rusqlite::types::ValueRef<'_>) -> &[u8] {
    match value {
        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b,
        _ => &[],
    }
}

/// Feeds the records of `deferred` batches matching `f` (within `range`)
/// to `each`, in batch order, until it returns false. A batch that does not
/// decode is skipped here (its records are in the rollups; catching up sets
/// it aside and logs it).
fn for_each_deferred(
    conn: &Connection,
    f: &UsageFilter,
    range: Option<(i64, i64)>,
    each: &mut dyn FnMut(&UsageRecord) -> Result<bool, UsageError>,
) -> Result<(), UsageError> {
    let (lo, hi) = range.unwrap_or((i64::MIN, i64::MAX));
    let mut stmt = conn
        .prepare_cached(
            "SELECT records FROM deferred WHERE last_us >= ?1 AND first_us <= ?2 ORDER BY batch",
        )
        .map_err(db_err)?;
    let mut rows = stmt.query(params![lo, hi]).map_err(db_err)?;
    while let Some(row) = rows.next().map_err(db_err)? {
        let bytes = batch_bytes(row.get_ref(0).map_err(db_err)?);
        let Ok(records) = packed::decode_batch(bytes) else {
            continue;
        };
        for r in &records {
            if (lo..=hi).contains(&r.timestamp_us) && f.matches(r) && !each(r)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Reads keys and hourly rollups into memory.
fn load_rollups(conn: &Connection) -> Result<Rollups, UsageError> {
    let mut rollups = Rollups::default();
    let mut stmt = conn
        .prepare(
            "SELECT id, backend_type, backend, model, requested_model, frontend_type, \
             http_status_code, proxy_user, streaming FROM rollup_keys ORDER BY id",
        )
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    while let Some(row) = rows.next().map_err(db_err)? {
        let id: i64 = row.get(0).map_err(db_err)?;
        let key = RollupKey {
            backend_type: row.get(1).map_err(db_err)?,
            backend: row.get(2).map_err(db_err)?,
            model: row.get(3).map_err(db_err)?,
            requested_model: row.get(4).map_err(db_err)?,
            frontend_type: row.get(5).map_err(db_err)?,
            http_status_code: row.get(6).map_err(db_err)?,
            proxy_user: row.get(7).map_err(db_err)?,
            streaming: row.get(8).map_err(db_err)?,
        };
        if id != rollups.keys.len() as i64 || rollups.key_ids.contains_key(&key) {
            return Err(UsageError::Encoding(format!(
                "rollup key {id} out of sequence"
            )));
        }
        rollups.add_key(key);
    }
    let mut stmt = conn
        .prepare("SELECT hour_us, key_id, aggregate FROM rollup_hours")
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    while let Some(row) = rows.next().map_err(db_err)? {
        let hour: i64 = row.get(0).map_err(db_err)?;
        let id: u32 = row.get(1).map_err(db_err)?;
        if id as usize >= rollups.keys.len() || hour.rem_euclid(HOUR_US) != 0 {
            return Err(UsageError::Encoding(format!(
                "rollup row ({hour}, {id}) does not match a key or an hour"
            )));
        }
        let blob = row.get_ref(2).map_err(db_err)?;
        let bytes = blob
            .as_blob()
            .map_err(|e| UsageError::Encoding(e.to_string()))?;
        rollups.apply_hour(hour, id, &Aggregate::from_bytes(bytes)?);
    }
    let stored: i64 = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM records) \
             + (SELECT COALESCE(SUM(record_count), 0) FROM deferred)",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if u64::try_from(stored).ok() != Some(rollups.record_count) {
        return Err(UsageError::Encoding(format!(
            "rollups cover {} records, the table holds {stored}",
            rollups.record_count
        )));
    }
    Ok(rollups)
}

/// Moves deferred batch `batch`, which does not decode (`error`), to
/// `deferred_unreadable` (logged at ERROR); returns its record count.
fn set_aside(
    tx: &Connection,
    path: &Path,
    batch: i64,
    error: &UsageError,
) -> Result<u64, UsageError> {
    let count: i64 = tx
        .query_row(
            "SELECT record_count FROM deferred WHERE batch = ?1",
            [batch],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    tracing::error!(
        store = %path.display(), batch, records = count, error = %error,
        "a deferred usage batch does not decode; set aside in table deferred_unreadable \
         (its records stay in the stats until the rollups are next rebuilt)"
    );
    tx.execute(
        "INSERT INTO deferred_unreadable (batch, first_us, last_us, record_count, records, error) \
         SELECT batch, first_us, last_us, record_count, records, ?2 FROM deferred WHERE batch = ?1",
        params![batch, error.to_string()],
    )
    .map_err(db_err)?;
    tx.execute("DELETE FROM deferred WHERE batch = ?1", [batch])
        .map_err(db_err)?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Recomputes every rollup from the raw records and the deferred batches
/// (those that do not decode are set aside first: the rollups then agree
/// with what the store can read).
fn rebuild_rollups(conn: &mut Connection, path: &Path) -> Result<Rollups, UsageError> {
    let tx = conn.transaction().map_err(db_err)?;
    let mut undecodable = Vec::new();
    {
        let mut stmt = tx
            .prepare("SELECT batch, records FROM deferred ORDER BY batch")
            .map_err(db_err)?;
        let mut rows = stmt.query([]).map_err(db_err)?;
        while let Some(row) = rows.next().map_err(db_err)? {
            let bytes = batch_bytes(row.get_ref(1).map_err(db_err)?);
            if let Err(e) = packed::decode_batch(bytes) {
                undecodable.push((row.get::<_, i64>(0).map_err(db_err)?, e));
            }
        }
    }
    for (batch, e) in &undecodable {
        set_aside(&tx, path, *batch, e)?;
    }
    tx.execute_batch("DELETE FROM rollup_hours; DELETE FROM rollup_keys;")
        .map_err(db_err)?;
    let mut rollups = Rollups::default();
    let mut hours: HashMap<(i64, RollupKey), Aggregate> = HashMap::new();
    for_each_record(&tx, &UsageFilter::default(), None, "", &mut |r| {
        hours
            .entry((hour_floor(r.timestamp_us), RollupKey::of(r)))
            .or_default()
            .add(r);
        Ok(true)
    })?;
    let mut sorted: Vec<((i64, RollupKey), Aggregate)> = hours.into_iter().collect();
    sorted.sort_by_key(|((hour, _), _)| *hour);
    for ((hour, key), agg) in sorted {
        let id = match rollups.key_ids.get(&key) {
            Some(id) => *id,
            None => {
                insert_key(&tx, rollups.keys.len() as u32, &key)?;
                rollups.add_key(key)
            }
        };
        tx.execute(
            "INSERT INTO rollup_hours (hour_us, key_id, request_count, aggregate) \
             VALUES (?1, ?2, ?3, ?4)",
            params![hour, id, to_i64(agg.request_count), agg.to_bytes()],
        )
        .map_err(db_err)?;
        rollups.apply_hour(hour, id, &agg);
    }
    tx.commit().map_err(db_err)?;
    Ok(rollups)
}

/// The key of `session` (`sessions.key_us`): the stored one, or
/// `timestamp_us` for a session new to the store.
fn session_key(conn: &Connection, session: &str, timestamp_us: i64) -> Result<i64, UsageError> {
    // A new session (the common case for a session not cached) costs one
    // statement; a known one a second.
    let inserted = conn
        .prepare_cached("INSERT OR IGNORE INTO sessions (session_id, key_us) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![session, timestamp_us]))
        .map_err(db_err)?;
    if inserted == 1 {
        return Ok(timestamp_us);
    }
    conn.prepare_cached("SELECT key_us FROM sessions WHERE session_id = ?1")
        .and_then(|mut s| s.query_row([session], |r| r.get(0)))
        .map_err(db_err)
}

fn insert_key(conn: &Connection, id: u32, k: &RollupKey) -> Result<(), UsageError> {
    conn.prepare_cached(
        "INSERT INTO rollup_keys (id, backend_type, backend, model, requested_model, \
         frontend_type, http_status_code, proxy_user, streaming) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            k.backend_type,
            k.backend,
            k.model,
            k.requested_model,
            k.frontend_type,
            k.http_status_code,
            k.proxy_user,
            k.streaming
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

/// The aggregate of the stored records of one hour and key, from raw rows.
fn hour_from_rows(conn: &Connection, hour: i64, key: &RollupKey) -> Result<Aggregate, UsageError> {
    let mut agg = Aggregate::default();
    for_each_record(
        conn,
        &UsageFilter::default(),
        Some((hour, hour + HOUR_US - 1)),
        "",
        &mut |r| {
            if RollupKey::of(r) == *key {
                agg.add(r);
            }
            Ok(true)
        },
    )?;
    Ok(agg)
}

/// Inserts `records` as rows (`INSERT OR IGNORE`), telling `each` whether
/// each one was new; returns the session keys learnt (to remember once the
/// transaction commits).
fn insert_rows<'r>(
    tx: &Connection,
    known: &HashMap<String, i64>,
    records: &'r [UsageRecord],
    each: &mut dyn FnMut(&'r UsageRecord, bool),
) -> Result<HashMap<&'r str, i64>, UsageError> {
    let mut learnt: HashMap<&str, i64> = HashMap::new();
    let mut bufs = RowBuffers::default();
    let mut stmt = tx
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO records ({RECORD_COLUMNS}, session_key_us) VALUES ({})",
            ["?"; 36].join(", ")
        ))
        .map_err(db_err)?;
    for r in records {
        let session = r.session_id.as_str();
        let key = match known.get(session).or_else(|| learnt.get(session)) {
            Some(k) => *k,
            None => {
                let k = session_key(tx, session, r.timestamp_us)?;
                learnt.insert(session, k);
                k
            }
        };
        each(r, insert_record(&mut stmt, &mut bufs, r, key)? == 1);
    }
    Ok(learnt)
}

/// Remembers session keys committed to the database.
fn remember_sessions(known: &mut HashMap<String, i64>, learnt: HashMap<&str, i64>) {
    if known.len() + learnt.len() > SESSION_KEYS_CACHED {
        known.clear();
    }
    known.extend(learnt.into_iter().map(|(s, k)| (s.to_owned(), k)));
}

/// The aggregates per key of `day`, from its hourly rollup rows.
fn read_day(conn: &Connection, day: i64) -> Result<HashMap<u32, Aggregate>, UsageError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT hour_us, key_id, aggregate FROM rollup_hours \
             WHERE hour_us >= ?1 AND hour_us < ?2",
        )
        .map_err(db_err)?;
    let mut rows = stmt.query(params![day, day + DAY_US]).map_err(db_err)?;
    let mut per_key: HashMap<u32, Aggregate> = HashMap::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        let id: u32 = row.get(1).map_err(db_err)?;
        let blob = row.get_ref(2).map_err(db_err)?;
        // A damaged row is left out (logged), not an error that would undo
        // the write that needed this day: the next open finds the rollups
        // damaged and rebuilds them, and the next write to the hour
        // recomputes it.
        match blob
            .as_blob()
            .map_err(|e| UsageError::Encoding(e.to_string()))
            .and_then(Aggregate::from_bytes)
        {
            Ok(agg) => per_key.entry(id).or_default().merge(&agg),
            Err(e) => {
                let hour: i64 = row.get(0).map_err(db_err)?;
                tracing::warn!(hour_us = hour, key_id = id, error = %e, "damaged usage rollup row left out of the day's aggregates");
            }
        }
    }
    Ok(per_key)
}

impl Rollups {
    /// Replaces the in-memory aggregates of `day` (read by [`read_day`]);
    /// the caller then recomputes the totals.
    fn replace_day(&mut self, day: i64, per_key: HashMap<u32, Aggregate>) {
        if per_key.is_empty() {
            self.days.remove(&day);
        } else {
            self.days.insert(day, per_key);
        }
    }
}

/// Rollup rows a write transaction changed, applied to memory once it commits.
struct RollupDelta {
    new_keys: Vec<RollupKey>,
    touched: Vec<(i64, u32, Aggregate)>,
}

impl SqliteStore {
    /// Writes the rollup rows of `fresh` (new keys get the next ids; each
    /// touched hour is read, merged and written back).
    fn rollup_delta(
        &self,
        tx: &Connection,
        fresh: HourGroups<'_>,
    ) -> Result<RollupDelta, UsageError> {
        let mut new_keys: Vec<RollupKey> = Vec::new();
        let fresh = fresh.into_groups();
        let mut touched: Vec<(i64, u32, RollupKey, Aggregate)> = Vec::with_capacity(fresh.len());
        {
            let known = self.read_rollups();
            let mut new_ids: HashMap<RollupKey, u32> = HashMap::new();
            for ((hour, key), agg) in fresh {
                let key = key.to_key();
                let id = match known.key_ids.get(&key).or_else(|| new_ids.get(&key)) {
                    Some(id) => *id,
                    None => {
                        let id = (known.keys.len() + new_keys.len()) as u32;
                        insert_key(tx, id, &key)?;
                        new_ids.insert(key.clone(), id);
                        new_keys.push(key.clone());
                        id
                    }
                };
                touched.push((hour, id, key, agg));
            }
        }
        let mut get = tx
            .prepare_cached("SELECT aggregate FROM rollup_hours WHERE hour_us = ?1 AND key_id = ?2")
            .map_err(db_err)?;
        let mut put = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO rollup_hours (hour_us, key_id, request_count, aggregate) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(db_err)?;
        for (hour, id, key, agg) in &touched {
            let stored: Option<Vec<u8>> = get
                .query_row(params![*hour, *id], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            let merged = match stored.map(|b| Aggregate::from_bytes(&b)) {
                None => agg.clone(),
                Some(Ok(mut m)) => {
                    m.merge(agg);
                    m
                }
                // A damaged rollup row is recomputed from the raw rows
                // (which include this batch).
                Some(Err(_)) => hour_from_rows(tx, *hour, key)?,
            };
            put.execute(params![
                *hour,
                *id,
                to_i64(merged.request_count),
                merged.to_bytes()
            ])
            .map_err(db_err)?;
        }
        Ok(RollupDelta {
            new_keys,
            touched: touched
                .into_iter()
                .map(|(hour, id, _, agg)| (hour, id, agg))
                .collect(),
        })
    }

    /// Commits `tx` and applies `delta` to memory, holding the rollups so
    /// readers never see the database and memory disagree.
    fn commit(&self, tx: Transaction<'_>, delta: RollupDelta) -> Result<(), UsageError> {
        let mut rollups = self.write_rollups();
        tx.commit().map_err(db_err)?;
        for key in delta.new_keys {
            rollups.add_key(key);
        }
        for (hour, id, agg) in &delta.touched {
            rollups.apply_hour(*hour, *id, agg);
        }
        Ok(())
    }

    fn forget_deferred(&self, n: u64) {
        let _ = self
            .deferred
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                Some(d.saturating_sub(n))
            });
    }

    /// Indexes the oldest deferred batch (or batch `only`) into `records`,
    /// in one transaction; false when there is none. A record already
    /// stored (deferred twice) was counted twice in the rollups: its hour
    /// is recomputed from the rows and the batches still deferred.
    fn unpack(&self, conn: &mut Connection, only: Option<i64>) -> Result<bool, UsageError> {
        let mut session_keys = lock(&self.session_keys);
        let tx = conn.transaction().map_err(db_err)?;
        let oldest: Option<(i64, Result<Vec<UsageRecord>, UsageError>)> = tx
            .query_row(
                "SELECT batch, records FROM deferred WHERE ?1 IS NULL OR batch = ?1 \
                 ORDER BY batch LIMIT 1",
                [only],
                |r| Ok((r.get(0)?, packed::decode_batch(batch_bytes(r.get_ref(1)?)))),
            )
            .optional()
            .map_err(db_err)?;
        let Some((batch, decoded)) = oldest else {
            if only.is_none() {
                self.deferred.store(0, Ordering::SeqCst);
            }
            return Ok(false);
        };
        let records = match decoded {
            Ok(records) => records,
            Err(e) => {
                let count = set_aside(&tx, &self.path, batch, &e)?;
                tx.commit().map_err(db_err)?;
                self.forget_deferred(count);
                return Ok(true);
            }
        };
        let mut twice: HashSet<(i64, RollupKey)> = HashSet::new();
        let learnt = insert_rows(&tx, &session_keys, &records, &mut |r, inserted| {
            if !inserted {
                twice.insert((hour_floor(r.timestamp_us), RollupKey::of(r)));
            }
        })?;
        tx.execute("DELETE FROM deferred WHERE batch = ?1", [batch])
            .map_err(db_err)?;
        let mut days = BTreeSet::new();
        // Read before the commit: nothing after it may fail.
        for (hour, key) in &twice {
            let id = self
                .read_rollups()
                .key_ids
                .get(key)
                .copied()
                .ok_or_else(|| {
                    UsageError::Database("deferred record with an unknown rollup key".into())
                })?;
            let agg = hour_from_rows(&tx, *hour, key)?;
            tx.execute(
                "INSERT OR REPLACE INTO rollup_hours (hour_us, key_id, request_count, aggregate) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![*hour, id, to_i64(agg.request_count), agg.to_bytes()],
            )
            .map_err(db_err)?;
            days.insert(floor_to(*hour, DAY_US));
        }
        let reread: Vec<(i64, HashMap<u32, Aggregate>)> = days
            .into_iter()
            .map(|day| read_day(&tx, day).map(|per_key| (day, per_key)))
            .collect::<Result<_, _>>()?;
        let mut rollups = self.write_rollups();
        tx.commit().map_err(db_err)?;
        self.forget_deferred(records.len() as u64);
        if !reread.is_empty() {
            for (day, per_key) in reread {
                rollups.replace_day(day, per_key);
            }
            rollups.recompute_totals();
        }
        drop(rollups);
        remember_sessions(&mut session_keys, learnt);
        Ok(true)
    }

    /// Runs `f` in a read transaction that sees no deferred batch: when a
    /// first snapshot has some, indexes them, a batch per hold of the writer
    /// lock, and takes the snapshot while holding it. With `rollups`, `f` also gets the rollups,
    /// held for reading until it returns (the writer's commits wait: keep
    /// `f` short); without, no lock is held while `f` runs. (The tracker has
    /// its writer thread do the indexing first: see
    /// `UsageQueries::wait_for_deferred`.)
    fn with_settled_reader<T>(
        &self,
        rollups: bool,
        f: impl FnOnce(&Transaction<'_>, Option<&Rollups>) -> Result<T, UsageError>,
    ) -> Result<T, UsageError> {
        self.with_reader(|conn| {
            // Nothing deferred in a snapshot: read it without the writer lock.
            {
                let held = rollups.then(|| self.read_rollups());
                let tx = conn.transaction().map_err(db_err)?;
                let deferred: i64 = tx
                    .query_row("SELECT COUNT(*) FROM deferred", [], |r| r.get(0))
                    .map_err(db_err)?;
                if deferred == 0 {
                    return f(&tx, held.as_deref());
                }
            }
            loop {
                let mut writer = lock(&self.writer);
                if self.deferred.load(Ordering::SeqCst) > 0 && self.unpack(&mut writer, None)? {
                    continue;
                }
                let held = rollups.then(|| self.read_rollups());
                let tx = conn.transaction().map_err(db_err)?;
                // The first read fixes the snapshot.
                tx.query_row("SELECT COUNT(*) FROM deferred", [], |r| r.get::<_, i64>(0))
                    .map_err(db_err)?;
                drop(writer);
                return f(&tx, held.as_deref());
            }
        })
    }
}

impl UsageStore for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn insert(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut conn = lock(&self.writer);
        let mut session_keys = lock(&self.session_keys);
        let tx = conn.transaction().map_err(db_err)?;
        // Insert, grouping the records actually inserted by (hour, key).
        let mut fresh = HourGroups::default();
        let learnt = insert_rows(&tx, &session_keys, records, &mut |r, inserted| {
            if inserted {
                fresh.add(r);
            }
        })?;
        let delta = self.rollup_delta(&tx, fresh)?;
        self.commit(tx, delta)?;
        remember_sessions(&mut session_keys, learnt);
        Ok(())
    }

    fn insert_deferred(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(db_err)?;
        let mut fresh = HourGroups::default();
        let mut blob = Vec::with_capacity(records.len() * 256);
        packed::begin_batch(&mut blob);
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for r in records {
            packed::push_record(&mut blob, r);
            fresh.add(r);
            first = first.min(r.timestamp_us);
            last = last.max(r.timestamp_us);
        }
        tx.prepare_cached(
            "INSERT INTO deferred (first_us, last_us, record_count, records) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| s.execute(params![first, last, records.len() as i64, blob]))
        .map_err(db_err)?;
        let delta = self.rollup_delta(&tx, fresh)?;
        self.commit(tx, delta)?;
        self.deferred
            .fetch_add(records.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    fn catch_up(&self, budget: Duration) -> Result<u64, UsageError> {
        let started = Instant::now();
        let mut conn = lock(&self.writer);
        while self.deferred.load(Ordering::SeqCst) > 0 {
            if !self.unpack(&mut conn, None)? || started.elapsed() >= budget {
                break;
            }
        }
        Ok(self.deferred.load(Ordering::SeqCst))
    }

    fn deferred(&self) -> u64 {
        self.deferred.load(Ordering::SeqCst)
    }

    fn recent(
        &self,
        filter: &UsageFilter,
        limit: usize,
        offset: usize,
    ) -> Result<RecentPage, UsageError> {
        // Pages are read in time order from rows: deferred batches are
        // indexed first.
        self.with_settled_reader(true, |tx, rollups| {
            let rollups = rollups.ok_or_else(|| UsageError::Database("no rollups".into()))?;
            let total = self.count_matching(rollups, tx, filter)?;
            let mut records = Vec::new();
            if limit > 0 && (offset as u64) < total {
                let (w, mut vals) = where_clause(filter, None);
                vals.push(Value::Integer(to_i64(limit as u64)));
                vals.push(Value::Integer(to_i64(offset as u64)));
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT {RECORD_COLUMNS} FROM records {w} \
                     ORDER BY timestamp_us DESC, id DESC LIMIT ? OFFSET ?"
                    ))
                    .map_err(db_err)?;
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(vals))
                    .map_err(db_err)?;
                while let Some(row) = rows.next().map_err(db_err)? {
                    records.push(read_record(row)?);
                }
            }
            Ok(RecentPage { records, total })
        })
    }

    fn aggregate(
        &self,
        filter: &UsageFilter,
        group_by: &[GroupKey],
    ) -> Result<AggregateSet, UsageError> {
        if !rollups_can_answer(filter, group_by) {
            return self.with_reader(|conn| {
                let tx = conn.transaction().map_err(db_err)?;
                let mut set = AggregateSet::default();
                SqliteStore::aggregate_by_scan(&tx, filter, group_by, None, &mut set)?;
                Ok(set)
            });
        }
        let rollups = self.read_rollups();
        self.with_reader(|conn| {
            let tx = conn.transaction().map_err(db_err)?;
            self.aggregate_with_rollups(&rollups, &tx, filter, group_by)
        })
    }

    fn export(
        &self,
        filter: &UsageFilter,
        sink: &mut dyn FnMut(&UsageRecord) -> bool,
    ) -> Result<u64, UsageError> {
        // One read transaction: a consistent snapshot, streamed row by row
        // in time order (deferred batches are indexed first).
        self.with_settled_reader(false, |tx, _| {
            let mut fed = 0;
            for_each_record(tx, filter, None, "ORDER BY timestamp_us, id", &mut |r| {
                fed += 1;
                Ok(sink(r))
            })?;
            Ok(fed)
        })
    }

    fn prune(&self, before_us: i64) -> Result<u64, UsageError> {
        let mut conn = lock(&self.writer);
        // Deferred batches holding records to prune are indexed first
        // (batches are recent: deferred while the machine was busy).
        let old: Vec<i64> = conn
            .prepare("SELECT batch FROM deferred WHERE first_us < ?1 ORDER BY batch")
            .and_then(|mut s| {
                s.query_map([before_us], |r| r.get(0))?
                    .collect::<Result<_, _>>()
            })
            .map_err(db_err)?;
        for batch in old {
            self.unpack(&mut conn, Some(batch))?;
        }
        let tx = conn.transaction().map_err(db_err)?;
        let removed = tx
            .execute("DELETE FROM records WHERE timestamp_us < ?1", [before_us])
            .map_err(db_err)?;
        if removed == 0 {
            tx.commit().map_err(db_err)?;
            return Ok(0);
        }
        // Sessions without records left (a later record of one starts it
        // afresh, with a new key).
        lock(&self.session_keys).clear();
        tx.execute(
            "DELETE FROM sessions WHERE key_us < ?1 AND NOT EXISTS (SELECT 1 FROM records \
             WHERE session_key_us = sessions.key_us AND records.session_id = sessions.session_id)",
            [before_us],
        )
        .map_err(db_err)?;
        let partial_hour = hour_floor(before_us);
        tx.execute(
            "DELETE FROM rollup_hours WHERE hour_us < ?1",
            [partial_hour],
        )
        .map_err(db_err)?;
        let keys = self.read_rollups().keys.clone();
        if partial_hour < before_us {
            tx.execute(
                "DELETE FROM rollup_hours WHERE hour_us = ?1",
                [partial_hour],
            )
            .map_err(db_err)?;
            let mut by_key: HashMap<RollupKey, Aggregate> = HashMap::new();
            for_each_record(
                &tx,
                &UsageFilter::default(),
                Some((partial_hour, partial_hour + HOUR_US - 1)),
                "",
                &mut |r| {
                    by_key.entry(RollupKey::of(r)).or_default().add(r);
                    Ok(true)
                },
            )?;
            let ids: HashMap<&RollupKey, usize> =
                keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
            for (key, agg) in by_key {
                // Every stored record's key is known.
                let id = ids.get(&key).copied().ok_or_else(|| {
                    UsageError::Database("record with an unknown rollup key".into())
                })?;
                tx.execute(
                    "INSERT INTO rollup_hours (hour_us, key_id, request_count, aggregate) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        partial_hour,
                        id as i64,
                        to_i64(agg.request_count),
                        agg.to_bytes()
                    ],
                )
                .map_err(db_err)?;
            }
        }
        // Memory: drop whole days, recompute the partial day from its hours
        // (read before the commit: nothing after it may fail).
        let partial_day = floor_to(before_us, DAY_US);
        let partial = if partial_day < before_us {
            Some(read_day(&tx, partial_day)?)
        } else {
            None
        };
        let mut rollups = self.write_rollups();
        tx.commit().map_err(db_err)?;
        rollups.days = rollups.days.split_off(&partial_day);
        if let Some(per_key) = partial {
            rollups.replace_day(partial_day, per_key);
        }
        rollups.recompute_totals();
        Ok(removed as u64)
    }

    fn flush(&self) -> Result<(), UsageError> {
        let conn = lock(&self.writer);
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(db_err)
    }

    fn count(&self) -> Result<u64, UsageError> {
        Ok(self.read_rollups().record_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, synthetic_records};
    use crate::store::rollup::Plan;

    fn temp_store() -> (tempfile::TempDir, PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var").join("usage.sqlite3");
        let (store, report) = SqliteStore::open(&path).unwrap();
        assert!(report.created && report.problem().is_none());
        (dir, path, store)
    }

    #[test]
    fn sqlite_store_conforms() {
        let (_dir, _path, store) = temp_store();
        conformance::check_all(&store).unwrap();
    }

    #[test]
    fn sqlite_store_persists_across_reopen() {
        let (_dir, path, store) = temp_store();
        drop(store);
        conformance::check_reopen(&mut || {
            SqliteStore::open(&path).map(|(s, _)| Box::new(s) as Box<dyn UsageStore>)
        })
        .unwrap();
    }

    #[test]
    fn rollup_and_scan_paths_agree() {
        let (_dir, _path, store) = temp_store();
        let start = 1_767_571_200_000_000 + 5 * HOUR_US + 123; // 2026-01-05T05:00Z
        let records = synthetic_records(3000, start, 9 * DAY_US, 3);
        for chunk in records.chunks(256) {
            store.insert(chunk).unwrap();
        }
        let mut rng = conformance::SplitMix::new(9);
        let span = 11 * DAY_US;
        for i in 0..150 {
            let mut f = UsageFilter::default();
            let a = start - DAY_US + (rng.unit() * span as f64) as i64;
            let b = a + (rng.unit() * (span / (1 + (i % 5) as i64)) as f64) as i64;
            match i % 6 {
                0 => f.start_us = Some(a),
                1 => f.end_us = Some(b),
                2 => f.start_us = Some(floor_to(a, DAY_US)),
                _ => {
                    f.start_us = Some(if i % 4 == 0 { floor_to(a, HOUR_US) } else { a });
                    f.end_us = Some(b);
                }
            }
            if i % 3 == 0 {
                f.backend = Some(["openai", "anthropic", "openrouter"][i % 3].into());
            }
            if i % 7 == 0 {
                f.hour_of_day = Some((i % 24) as u8);
            }
            if i % 5 == 0 {
                f.day_of_week = Some((i % 7) as u8);
            }
            if i % 8 == 0 {
                f.http_status_code = Some(200);
                f.proxy_user = Some("bob".into());
            }
            let group_by: &[GroupKey] = match i % 4 {
                0 => &[],
                1 => &[GroupKey::Model],
                2 => &[GroupKey::Streaming, GroupKey::HttpStatusCode],
                _ => &[
                    GroupKey::ProxyUser,
                    GroupKey::RequestedModel,
                    GroupKey::FrontendType,
                ],
            };
            let fast = store.aggregate(&f, group_by).unwrap();
            let slow = store.aggregate_scan_only(&f, group_by).unwrap();
            assert_eq!(fast, slow, "filter {f:?} group_by {group_by:?}");
            let n = records.iter().filter(|r| f.matches(r)).count() as u64;
            assert_eq!(fast.overall.request_count, n);
            assert_eq!(store.recent(&f, 1, 0).unwrap().total, n, "{f:?}");
        }
    }

    #[test]
    fn plans_use_days_hours_and_raw_edges() {
        let day = 20_000 * DAY_US;
        let f = |s: Option<i64>, e: Option<i64>| UsageFilter {
            start_us: s,
            end_us: e,
            ..UsageFilter::default()
        };
        assert!(plan(&UsageFilter::default()).totals);
        let p = plan(&f(Some(day + 5), Some(day + 3 * DAY_US + 2 * HOUR_US + 7)));
        assert_eq!(p.days, Some((day + DAY_US, day + 3 * DAY_US)));
        assert_eq!(
            p.hours,
            vec![
                (day + HOUR_US, day + DAY_US),
                (day + 3 * DAY_US, day + 3 * DAY_US + 2 * HOUR_US)
            ]
        );
        assert_eq!(
            p.raw,
            vec![
                (day + 5, day + HOUR_US - 1),
                (
                    day + 3 * DAY_US + 2 * HOUR_US,
                    day + 3 * DAY_US + 2 * HOUR_US + 7
                )
            ]
        );
        let p = plan(&f(Some(day), Some(day + DAY_US - 1)));
        assert_eq!(
            (p.days, p.hours.len(), p.raw.len()),
            (Some((day, day + DAY_US)), 0, 0)
        );
        let p = plan(&f(Some(day + 10), Some(day + 20)));
        assert_eq!(p.raw, vec![(day + 10, day + 20)]);
        assert!(plan(&f(Some(day + 20), Some(day + 10))) == Plan::default());
    }

    #[test]
    fn unreadable_files_are_moved_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.sqlite3");
        {
            let (store, _) = SqliteStore::open(&path).unwrap();
            store
                .insert(&synthetic_records(200, 1_767_571_200_000_000, DAY_US, 1))
                .unwrap();
            store.flush().unwrap();
        }
        let good = std::fs::read(&path).unwrap();
        let wal = {
            let mut p = path.as_os_str().to_owned();
            p.push("-wal");
            PathBuf::from(p)
        };
        let mut garbage = b"this is not a database at all, just text".repeat(200);
        garbage.truncate(5000);
        for bad in [
            good[..good.len() / 3].to_vec(),
            garbage,
            good[..50].to_vec(),
        ] {
            let _ = std::fs::remove_file(&wal);
            std::fs::write(&path, &bad).unwrap();
            let (store, report) = SqliteStore::open(&path).unwrap();
            let moved = report.moved_aside.clone().expect("moved aside");
            assert!(report.problem().is_some(), "{report:?}");
            assert_eq!(
                std::fs::read(&moved.moved_to).unwrap(),
                bad,
                "file kept as is"
            );
            assert!(
                moved
                    .moved_to
                    .to_string_lossy()
                    .contains("usage.sqlite3.corrupt-")
            );
            assert_eq!(store.count().unwrap(), 0);
            store.insert(&synthetic_records(3, 0, 1000, 5)).unwrap();
            assert_eq!(store.count().unwrap(), 3);
        }
    }

    #[test]
    fn newer_schema_is_refused_and_the_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.sqlite3");
        drop(SqliteStore::open(&path).unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        assert!(matches!(
            SqliteStore::open(&path),
            Err(UsageError::SchemaTooNew { found, .. }) if found == SCHEMA_VERSION + 1
        ));
        assert!(path.exists());
    }

    /// Rewrites a current store file into exactly what version 1 wrote
    /// (its schema text, `UNIQUE` id, v1 indexes; rollup tables unchanged).
    fn downgrade_to_v1(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "DROP INDEX records_time; DROP INDEX records_session; \
             ALTER TABLE records RENAME TO records_new;",
        )
        .unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO records ({RECORD_COLUMNS}) SELECT {RECORD_COLUMNS} FROM records_new \
             ORDER BY random(); DROP TABLE records_new; DROP TABLE sessions; \
             DROP TABLE deferred; DROP TABLE deferred_unreadable; PRAGMA user_version = 1;"
        ))
        .unwrap();
    }

    fn schema_objects(path: &Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn version_1_stores_are_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.sqlite3");
        let start = 1_767_571_200_000_000;
        let records = synthetic_records(2000, start, 3 * DAY_US, 11);
        let session = records[700].session_id.clone();
        let filters = [
            UsageFilter::default(),
            UsageFilter {
                session_id: Some(session.clone()),
                ..UsageFilter::default()
            },
            UsageFilter {
                backend: Some("openai".into()),
                start_us: Some(start + DAY_US + 77),
                ..UsageFilter::default()
            },
        ];
        let snapshot = |store: &SqliteStore| {
            let mut out = Vec::new();
            for f in &filters {
                let recent = store.recent(f, 5000, 0).unwrap();
                let stats = store.aggregate(f, &[GroupKey::Model]).unwrap();
                let mut exported = Vec::new();
                store
                    .export(f, &mut |r| {
                        exported.push(r.clone());
                        true
                    })
                    .unwrap();
                out.push((recent.total, recent.records, stats, exported));
            }
            out
        };
        let want = {
            let (store, _) = SqliteStore::open(&path).unwrap();
            store.insert(&records).unwrap();
            store.flush().unwrap();
            snapshot(&store)
        };
        assert!(want[1].0 > 1, "the session filter matches several records");
        downgrade_to_v1(&path);
        let v1 = schema_objects(&path);
        assert!(
            v1.contains(&"sqlite_autoindex_records_1".to_owned()),
            "{v1:?}"
        );
        assert!(!v1.contains(&"sessions".to_owned()), "{v1:?}");

        let (store, report) = SqliteStore::open(&path).unwrap();
        assert_eq!(report.migrated_from, Some(1));
        assert!(report.rollups_rebuilt.is_none(), "{report:?}");
        assert_eq!(report.records, 2000);
        assert!(
            snapshot(&store) == want,
            "recent, stats and export unchanged"
        );
        let scanned = store
            .aggregate_scan_only(&UsageFilter::default(), &[GroupKey::Model])
            .unwrap();
        assert!(scanned == want[0].2, "rollups equal a raw scan");
        // Still one row per record id; new sessions and old ones grow.
        store.insert(&records[..100]).unwrap();
        let more = synthetic_records(50, start + 4 * DAY_US, HOUR_US, 12);
        let mut again = more.clone();
        again[0].session_id = session.clone();
        store.insert(&again).unwrap();
        assert_eq!(store.count().unwrap(), 2050);
        let f = UsageFilter {
            session_id: Some(session),
            ..UsageFilter::default()
        };
        assert_eq!(store.recent(&f, 1, 0).unwrap().total, want[1].0 + 1);
        assert_eq!(store.recent(&f, 1, 0).unwrap().records[0], again[0]);
        drop(store);
        let now = schema_objects(&path);
        assert!(
            !now.iter()
                .any(|n| n.starts_with("sqlite_autoindex_records")),
            "{now:?}"
        );
        assert!(now.contains(&"records_time".to_owned()) && now.contains(&"sessions".to_owned()));
        let (store, report) = SqliteStore::open(&path).unwrap();
        assert_eq!((report.migrated_from, report.records), (None, 2050));
        drop(store);
    }

    #[test]
    fn session_filters_use_the_session_index() {
        let (_dir, _path, store) = temp_store();
        store
            .insert(&synthetic_records(10, 1_767_571_200_000_000, HOUR_US, 2))
            .unwrap();
        store
            .with_reader(|conn| {
                let f = UsageFilter {
                    session_id: Some("x".into()),
                    ..UsageFilter::default()
                };
                let (w, vals) = where_clause(&f, None);
                let mut stmt = conn
                    .prepare(&format!(
                        "EXPLAIN QUERY PLAN SELECT id FROM records {w} ORDER BY timestamp_us DESC"
                    ))
                    .unwrap();
                let plan: Vec<String> = stmt
                    .query_map(rusqlite::params_from_iter(vals), |r| r.get(3))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert!(
                    plan.iter().any(|p| p.contains("records_session")),
                    "{plan:?}"
                );
                assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn damaged_rollups_are_rebuilt_from_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.sqlite3");
        let records = synthetic_records(500, 1_767_571_200_000_000, 2 * DAY_US, 4);
        let want = {
            let (store, _) = SqliteStore::open(&path).unwrap();
            store.insert(&records).unwrap();
            store
                .aggregate(&UsageFilter::default(), &[GroupKey::Model])
                .unwrap()
        };
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute("UPDATE rollup_hours SET aggregate = x'00'", [])
                .unwrap();
        }
        let (store, report) = SqliteStore::open(&path).unwrap();
        assert!(report.rollups_rebuilt.is_some());
        assert_eq!(report.records, 500);
        assert_eq!(
            store
                .aggregate(&UsageFilter::default(), &[GroupKey::Model])
                .unwrap(),
            want
        );
    }

    /// A store over `records`, every batch of `batch` records deferred.
    fn deferred_store(
        records: &[UsageRecord],
        batch: usize,
    ) -> (tempfile::TempDir, PathBuf, SqliteStore) {
        let (dir, path, store) = temp_store();
        for chunk in records.chunks(batch) {
            store.insert_deferred(chunk).unwrap();
        }
        assert_eq!(store.deferred(), records.len() as u64);
        (dir, path, store)
    }

    fn sorted(records: &[UsageRecord]) -> Vec<UsageRecord> {
        let mut sorted = records.to_vec();
        sorted.sort_by(|x, y| (x.timestamp_us, &x.id).cmp(&(y.timestamp_us, &y.id)));
        sorted
    }

    #[test]
    fn deferred_batches_answer_every_query_before_and_after_they_are_indexed() {
        let records = synthetic_records(
            1500,
            1_767_571_200_000_000 + 17,
            3 * DAY_US + 5 * HOUR_US,
            11,
        );
        // Out of order across batches.
        let mut shuffled = records.clone();
        shuffled.rotate_left(600);
        let (_dir, _path, store) = deferred_store(&shuffled, 256);
        let want = sorted(&records);
        // Stats merge the packed batches (rollups, and raw rows at the edges).
        conformance::check_aggregates(&store, &want).unwrap();
        assert_eq!(store.deferred(), 1500, "stats index nothing");
        // A slice indexes at least one batch.
        let left = store.catch_up(Duration::ZERO).unwrap();
        assert_eq!(left, 1500 - 256);
        conformance::check_aggregates(&store, &want).unwrap();
        // Recent and export read rows in time order: they index the rest.
        conformance::check_queries(&store, &want).unwrap();
        assert_eq!(store.deferred(), 0);
        assert_eq!(store.catch_up(Duration::from_secs(1)).unwrap(), 0);
        store
            .with_reader(|conn| {
                let rows: i64 = conn
                    .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
                    .map_err(db_err)?;
                assert_eq!(rows, 1500);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_record_deferred_twice_counts_once_when_indexed() {
        let records = synthetic_records(900, 1_767_571_200_000_000, 2 * DAY_US, 12);
        let (_dir, _path, store) = temp_store();
        store.insert(&records[..300]).unwrap();
        // Again: one stored as a row already, one twice in the same batch.
        let mut batch = records[300..].to_vec();
        batch.push(records[5].clone());
        batch.push(records[400].clone());
        store.insert_deferred(&batch).unwrap();
        assert_eq!(store.count().unwrap(), 902, "counted twice until indexed");
        assert_eq!(store.catch_up(Duration::from_secs(10)).unwrap(), 0);
        conformance::check_aggregates(&store, &sorted(&records)).unwrap();
        conformance::check_queries(&store, &sorted(&records)).unwrap();
    }

    #[test]
    fn deferred_batches_survive_a_reopen_and_a_prune() {
        let records = synthetic_records(1200, 1_767_571_200_000_000 + 3, 4 * DAY_US, 13);
        let (_dir, path, store) = deferred_store(&records[..800], 100);
        store.insert(&records[800..]).unwrap();
        store.flush().unwrap();
        drop(store);
        let (store, report) = SqliteStore::open(&path).unwrap();
        assert_eq!(report.records, 1200);
        assert!(report.rollups_rebuilt.is_none(), "{report:?}");
        assert_eq!(store.deferred(), 800);
        let want = sorted(&records);
        conformance::check_aggregates(&store, &want).unwrap();
        // Prune in the middle of an hour: batches with older records are
        // indexed first, the others stay deferred.
        let cut = want[500].timestamp_us + 1;
        let removed = want.iter().filter(|r| r.timestamp_us < cut).count() as u64;
        assert_eq!(store.prune(cut).unwrap(), removed);
        let remaining: Vec<UsageRecord> =
            want.into_iter().filter(|r| r.timestamp_us >= cut).collect();
        assert!(
            store.deferred() > 0 && store.deferred() < 800,
            "{}",
            store.deferred()
        );
        conformance::check_aggregates(&store, &remaining).unwrap();
        conformance::check_queries(&store, &remaining).unwrap();
    }

    #[test]
    fn a_deferred_batch_that_does_not_decode_is_set_aside() {
        let records = synthetic_records(300, 1_767_571_200_000_000, DAY_US, 14);
        let (_dir, path, store) = deferred_store(&records, 100);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute("UPDATE deferred SET records = x'ff00ff' WHERE batch = (SELECT MIN(batch) FROM deferred)", [])
                .unwrap();
            // Not even a blob: the same.
            conn.execute(
                "UPDATE deferred SET records = 'text' WHERE batch = (SELECT MAX(batch) FROM deferred)",
                [],
            )
            .unwrap();
        }
        // Stats skip them (their records stay in the rollups) until indexed.
        assert_eq!(store.count().unwrap(), 300);
        store
            .aggregate(
                &UsageFilter {
                    user_agent: Some("x".into()),
                    ..UsageFilter::default()
                },
                &[],
            )
            .unwrap();
        assert_eq!(store.catch_up(Duration::from_secs(10)).unwrap(), 0);
        let page = store
            .recent(
                &UsageFilter {
                    user_agent: Some("nobody".into()),
                    ..UsageFilter::default()
                },
                10,
                0,
            )
            .unwrap();
        assert_eq!(page.total, 0);
        let conn = Connection::open(&path).unwrap();
        let (count, error): (i64, String) = conn
            .query_row(
                "SELECT SUM(record_count), MIN(error) FROM deferred_unreadable",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(count, 200);
        assert!(!error.is_empty());
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 100);
        drop(store);
        // At the next open the rollups no longer match the rows: rebuilt.
        let (_store, report) = SqliteStore::open(&path).unwrap();
        assert!(report.rollups_rebuilt.is_some());
        assert_eq!(report.records, 100);
    }

    #[test]
    fn a_rollup_rebuild_sets_aside_deferred_batches_that_do_not_decode() {
        let records = synthetic_records(300, 1_767_571_200_000_000, DAY_US, 15);
        let (_dir, path, store) = deferred_store(&records, 100);
        drop(store);
        {
            let conn = Connection::open(&path).unwrap();
            // A damaged batch, and a damaged rollup row that makes the
            // next open rebuild the rollups.
            conn.execute(
                "UPDATE deferred SET records = x'01' WHERE batch = (SELECT MAX(batch) FROM deferred)",
                [],
            )
            .unwrap();
            conn.execute("UPDATE rollup_hours SET aggregate = x'00'", [])
                .unwrap();
        }
        let (store, report) = SqliteStore::open(&path).unwrap();
        assert!(report.rollups_rebuilt.is_some(), "{report:?}");
        assert_eq!(report.records, 200);
        assert_eq!(store.deferred(), 200);
        conformance::check_aggregates(&store, &sorted(&records[..200])).unwrap();
        drop(store);
        let (store, report) = SqliteStore::open(&path).unwrap();
        assert!(report.rollups_rebuilt.is_none(), "{report:?}");
        assert_eq!(report.records, 200);
        conformance::check_queries(&store, &sorted(&records[..200])).unwrap();
        // A second unreadable batch does not replace the first one set aside
        // (batch ids are never reused).
        store.insert_deferred(&records[200..210]).unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE deferred SET records = x'02' WHERE batch = (SELECT MAX(batch) FROM deferred)",
            [],
        )
        .unwrap();
        let (store, _) = SqliteStore::open(&path).unwrap();
        assert_eq!(store.catch_up(Duration::from_secs(10)).unwrap(), 0);
        let set_aside: i64 = conn
            .query_row("SELECT COUNT(*) FROM deferred_unreadable", [], |r| r.get(0))
            .unwrap();
        assert_eq!(set_aside, 2);
    }
}
