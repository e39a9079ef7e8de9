//! [`PostgresStore`]: usage records in PostgreSQL, shared by any number of
//! proxy instances (`usage_tracking.database_url`).
//!
//! **Schema** (table `usage_schema_version`, versioned idempotent
//! migrations run under an advisory lock at open; a newer version than this
//! binary knows is refused with [`UsageError::DatabaseSchemaTooNew`]):
//! - `usage_records`: one row per record, the same columns as the SQLite
//!   store; `id` (collation `C`, so ties order like SQLite) is the primary
//!   key and inserts are `ON CONFLICT (id) DO NOTHING`, so a retried or
//!   replayed batch never duplicates.
//! - `usage_rollup_keys`: the distinct rollup dimensions (as JSON), each
//!   with an id.
//! - `usage_rollups`: `(grain, bucket_us, key_id) → Aggregate` bytes (the
//!   same encoding and latency sketches as SQLite) for hours, days and all
//!   time, updated in the transaction that inserts the records.
//!
//! **Writes** are one transaction per batch: a transaction-scoped advisory
//! lock (instances take turns updating rollups; no deadlocks), one
//! multi-row `INSERT … SELECT FROM unnest(…)` returning the ids actually
//! inserted, then read-merge-write of the touched rollup rows.
//!
//! **Outages.** When a write fails or times out, the batch is appended to
//! the [`SpillJournal`] and `insert` returns: the caller never waits for
//! the database. While the journal holds records, new batches go to its end,
//! and a background thread replays it in order, batch by batch, once the
//! database answers again. A full journal refuses the batch (the tracker
//! keeps it in memory and retries).
//!
//! The replayer holds the writer lock only to read a batch from the journal
//! and to advance it, never while the database works, and pauses briefly
//! between batches, so `insert` (and the tracker's flush behind it) never
//! waits for a replay.
//!
//! **Bad data.** NUL, which PostgreSQL refuses in text, is written as
//! U+FFFD in every text cell. A batch the database refuses for its data
//! (SQLSTATE class 22; class 23 from the records' `INSERT`) is not an
//! outage: it is halved until the refused records are isolated, the others
//! are written, and the refused ones go to `<spill_path>.rejected` (JSON
//! lines; `llm_proxy_usage_database_rejected_total`, one WARN line per
//! batch), so the journal moves on.
//!
//! **Queries** read one `REPEATABLE READ` snapshot, so stats are consistent
//! across instances: all-time rows with no time filter, day rows for whole
//! days, hour rows for whole edge hours, raw rows for partial hours, as in
//! the SQLite store. Filters on `session_id` / `user_agent` scan raw rows.
//!
//! The URL's password never appears in logs, errors or [`UsageStore::describe`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Config, IsolationLevel, NoTls, Row, Transaction};

use crate::aggregate::Aggregate;
use crate::error::UsageError;
use crate::query::{GroupKey, UsageFilter};
use crate::record::UsageRecord;
use crate::store::rollup::{
    DAY_US, HOUR_US, HourGroups, RECORD_COLUMNS, RollupKey, SqlValue, decode_tool_names,
    encode_tool_names, filter_conditions, floor_to, hour_passes, parse_cost_source, parse_outcome,
    parse_token_source, plan, rollups_can_answer,
};
use crate::store::spill::{SpillJournal, append_rejected};
use crate::store::{AggregateSet, OpenReport, RecentPage, UsageStore};
use crate::telemetry;
use crate::time::hour_floor;

/// Schema migrations; version N is reached by applying the first N.
const MIGRATIONS: &[&str] = &[
    // 1: records, rollup keys, rollups.
    r#"CREATE TABLE IF NOT EXISTS usage_records (
        id TEXT COLLATE "C" PRIMARY KEY,
        timestamp TEXT NOT NULL,
        timestamp_us BIGINT NOT NULL,
        session_id TEXT NOT NULL,
        turn_number BIGINT NOT NULL,
        backend_type TEXT NOT NULL,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        requested_model TEXT NOT NULL,
        frontend_type TEXT NOT NULL,
        streaming BOOLEAN NOT NULL,
        verbatim_prompt_tokens BIGINT,
        mutated_prompt_tokens BIGINT,
        verbatim_completion_tokens BIGINT,
        mutated_completion_tokens BIGINT,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        total_tokens BIGINT NOT NULL,
        backend_reported_usage TEXT,
        token_source TEXT NOT NULL,
        cost_usd DOUBLE PRECISION,
        cost_source TEXT NOT NULL,
        http_status_code BIGINT NOT NULL,
        completion_outcome TEXT NOT NULL,
        incomplete_reason TEXT,
        tool_call_count BIGINT NOT NULL,
        tool_names TEXT NOT NULL,
        ttft_ms DOUBLE PRECISION,
        total_duration_ms DOUBLE PRECISION NOT NULL,
        proxy_overhead_ms DOUBLE PRECISION NOT NULL,
        completion_tokens_per_second DOUBLE PRECISION,
        user_agent TEXT,
        proxy_user TEXT,
        call_purpose TEXT,
        replaced BOOLEAN NOT NULL
    );
    CREATE INDEX IF NOT EXISTS usage_records_timestamp ON usage_records (timestamp_us, id);
    CREATE INDEX IF NOT EXISTS usage_records_session ON usage_records (session_id, timestamp_us);
    CREATE TABLE IF NOT EXISTS usage_rollup_keys (
        id SERIAL PRIMARY KEY,
        dims TEXT NOT NULL UNIQUE
    );
    CREATE TABLE IF NOT EXISTS usage_rollups (
        grain INTEGER NOT NULL,
        bucket_us BIGINT NOT NULL,
        key_id INTEGER NOT NULL,
        request_count BIGINT NOT NULL,
        aggregate BYTEA NOT NULL,
        PRIMARY KEY (grain, bucket_us, key_id)
    );"#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The SQL type of each of [`RECORD_COLUMNS`], for `unnest`.
const COLUMN_TYPES: [&str; 35] = [
    "text", "text", "int8", "text", "int8", "text", "text", "text", "text", "text", "bool", "int8",
    "int8", "int8", "int8", "int8", "int8", "int8", "text", "text", "float8", "text", "int8",
    "text", "text", "int8", "text", "float8", "float8", "float8", "float8", "text", "text", "text",
    "bool",
];

/// Advisory lock held by every transaction that writes records or rollups
/// (and by migrations).
const WRITE_LOCK: i64 = 0x6c6c_6d70_7573_6167;

const GRAIN_HOUR: i32 = 0;
const GRAIN_DAY: i32 = 1;
const GRAIN_TOTAL: i32 = 2;

/// Records per replayed batch from the spill journal.
const REPLAY_BATCH: usize = 5_000;
/// Records per export page.
const EXPORT_PAGE: i64 = 2_000;
const MAX_IDLE_READERS: usize = 4;

/// Where and how to reach the database.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/db` (secret: never logged).
    pub url: String,
    /// The spill journal file.
    pub spill_path: PathBuf,
    /// The spill journal's bound in bytes.
    pub spill_max_bytes: u64,
    /// A write taking longer than this fails and spills.
    pub write_timeout: Duration,
    /// A query taking longer than this fails.
    pub read_timeout: Duration,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redacted_url(&self.url))
            .field("spill_path", &self.spill_path)
            .field("spill_max_bytes", &self.spill_max_bytes)
            .finish_non_exhaustive()
    }
}

impl PostgresOptions {
    /// Options for `url` with a spill journal at `spill_path` and default
    /// bounds (1 GiB journal, 10 s writes, 60 s queries).
    pub fn new(url: impl Into<String>, spill_path: impl Into<PathBuf>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            spill_path: spill_path.into(),
            spill_max_bytes: 1 << 30,
            write_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// `url` without its password: `postgres://user@host:port/db`.
pub fn redacted_url(url: &str) -> String {
    match Config::from_str(url) {
        Ok(c) => describe_config(&c),
        Err(_) => "postgres://<unparseable url>".to_owned(),
    }
}

fn describe_config(c: &Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let user = c.get_user().unwrap_or("");
    let db = c.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// Checks that `url` is a usable PostgreSQL URL (for config validation);
/// the error never contains the URL.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must start with postgres:// or postgresql://".into());
    }
    Config::from_str(url)
        .map(|_| ())
        .map_err(|e| format!("is not a valid PostgreSQL URL ({e})"))
}

fn pg_err(e: tokio_postgres::Error) -> UsageError {
    UsageError::Database(pg_detail(&e))
}

/// What went wrong, with the server's own words or the OS error.
fn pg_detail(e: &tokio_postgres::Error) -> String {
    let detail = match e.as_db_error() {
        Some(db) => format!("{e}: {db}"),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    };
    format!("postgres: {detail}")
}

/// A read that could not reach the database: the client may retry soon
/// (routes answer 503 with `Retry-After`).
fn unreachable(e: UsageError) -> UsageError {
    match e {
        UsageError::Database(reason) => UsageError::Unavailable {
            reason: format!("usage database unreachable: {reason}"),
            retry_after_secs: 5,
        },
        e => e,
    }
}

/// Why a batch did not commit.
#[derive(Debug)]
enum BatchError {
    /// The database refused the records themselves (SQLSTATE class 22, data
    /// exception, anywhere; class 23, integrity violation, from the records'
    /// `INSERT`, whose only expected conflict is `ON CONFLICT (id) DO
    /// NOTHING`): retrying cannot help.
    Data(UsageError),
    /// Anything else (unreachable, timed out, shutting down): retry later.
    Outage(UsageError),
}

impl From<UsageError> for BatchError {
    fn from(e: UsageError) -> BatchError {
        BatchError::Outage(e)
    }
}

/// Whether `sqlstate` says the data is bad (see [`BatchError::Data`]);
/// `integrity` is set for the records' `INSERT`.
fn is_data_error(sqlstate: &str, integrity: bool) -> bool {
    sqlstate.starts_with("22") || (integrity && sqlstate.starts_with("23"))
}

fn classify(e: tokio_postgres::Error, integrity: bool) -> BatchError {
    let data = e.code().is_some_and(|c| is_data_error(c.code(), integrity));
    if data {
        BatchError::Data(pg_err(e))
    } else {
        BatchError::Outage(pg_err(e))
    }
}

/// Replaces NUL (which PostgreSQL refuses in text) with U+FFFD in every
/// text field of `r` (the JSON cells are built from these fields).
fn scrub_nul(r: &mut UsageRecord) {
    let UsageRecord {
        id,
        timestamp,
        session_id,
        backend_type,
        backend,
        model,
        requested_model,
        frontend_type,
        incomplete_reason,
        tool_names,
        user_agent,
        proxy_user,
        call_purpose,
        ..
    } = r;
    let fields = [
        id,
        timestamp,
        session_id,
        backend_type,
        backend,
        model,
        requested_model,
        frontend_type,
    ]
    .into_iter()
    .chain(
        [incomplete_reason, user_agent, proxy_user, call_purpose]
            .into_iter()
            .filter_map(Option::as_mut),
    )
    .chain(tool_names.iter_mut());
    for s in fields {
        if s.contains('\0') {
            *s = s.replace('\0', "\u{FFFD}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------
// Parameters.
// ---------------------------------------------------------------------------

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            SqlValue::Text(s) => s.to_sql(ty, out),
            SqlValue::Int(i) => i.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <String as ToSql>::accepts(ty) || <i64 as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// One column of a batch, as the array `unnest` takes.
#[derive(Debug)]
enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<bool>),
}

impl ToSql for Column {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Column::Text(v) => v.to_sql(ty, out),
            Column::Int(v) => v.to_sql(ty, out),
            Column::Float(v) => v.to_sql(ty, out),
            Column::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::TEXT_ARRAY | Type::INT8_ARRAY | Type::FLOAT8_ARRAY | Type::BOOL_ARRAY
        )
    }

    to_sql_checked!();
}

/// The columns of `records` in [`RECORD_COLUMNS`] order.
fn record_columns(records: &[UsageRecord]) -> Result<Vec<Column>, UsageError> {
    let n = records.len();
    let mut cols: Vec<Column> = COLUMN_TYPES
        .iter()
        .map(|t| match *t {
            "text" => Column::Text(Vec::with_capacity(n)),
            "int8" => Column::Int(Vec::with_capacity(n)),
            "float8" => Column::Float(Vec::with_capacity(n)),
            _ => Column::Bool(Vec::with_capacity(n)),
        })
        .collect();
    let mismatch = || UsageError::Encoding("record column types out of step".into());
    for r in records {
        let usage = match &r.backend_reported_usage {
            Some(u) => {
                Some(serde_json::to_string(u).map_err(|e| UsageError::Encoding(e.to_string()))?)
            }
            None => None,
        };
        enum Cell {
            T(Option<String>),
            I(Option<i64>),
            F(Option<f64>),
            B(bool),
        }
        use Cell::{B, F, I, T};
        let s = |v: &str| T(Some(v.to_owned()));
        let cells: [Cell; 35] = [
            s(&r.id),
            s(&r.timestamp),
            I(Some(r.timestamp_us)),
            s(&r.session_id),
            I(Some(i64::from(r.turn_number))),
            s(&r.backend_type),
            s(&r.backend),
            s(&r.model),
            s(&r.requested_model),
            s(&r.frontend_type),
            B(r.streaming),
            I(r.verbatim_prompt_tokens.map(to_i64)),
            I(r.mutated_prompt_tokens.map(to_i64)),
            I(r.verbatim_completion_tokens.map(to_i64)),
            I(r.mutated_completion_tokens.map(to_i64)),
            I(Some(to_i64(r.prompt_tokens))),
            I(Some(to_i64(r.completion_tokens))),
            I(Some(to_i64(r.total_tokens))),
            T(usage),
            s(r.token_source.as_str()),
            F(r.cost_usd),
            s(r.cost_source.as_str()),
            I(Some(i64::from(r.http_status_code))),
            s(r.completion_outcome.as_str()),
            T(r.incomplete_reason.clone()),
            I(Some(i64::from(r.tool_call_count))),
            T(Some(encode_tool_names(&r.tool_names)?)),
            F(r.ttft_ms),
            F(Some(r.total_duration_ms)),
            F(Some(r.proxy_overhead_ms)),
            F(r.completion_tokens_per_second),
            T(r.user_agent.clone()),
            T(r.proxy_user.clone()),
            T(r.call_purpose.clone()),
            B(r.replaced),
        ];
        for (col, cell) in cols.iter_mut().zip(cells) {
            match (col, cell) {
                (Column::Text(v), T(x)) => v.push(x),
                (Column::Int(v), I(x)) => v.push(x),
                (Column::Float(v), F(x)) => v.push(x),
                (Column::Bool(v), B(x)) => v.push(x),
                _ => return Err(mismatch()),
            }
        }
    }
    Ok(cols)
}

fn read_record(row: &Row) -> Result<UsageRecord, UsageError> {
    fn u(v: Option<i64>) -> Option<u64> {
        v.map(|v| u64::try_from(v).unwrap_or(0))
    }
    fn small<T: TryFrom<i64>>(v: i64, what: &str) -> Result<T, UsageError> {
        T::try_from(v).map_err(|_| UsageError::Encoding(format!("stored {what} {v} out of range")))
    }
    let usage: Option<String> = row.try_get(18).map_err(pg_err)?;
    let token_source: String = row.try_get(19).map_err(pg_err)?;
    let cost_source: String = row.try_get(21).map_err(pg_err)?;
    let outcome: String = row.try_get(23).map_err(pg_err)?;
    let tools: String = row.try_get(26).map_err(pg_err)?;
    let g = |i: usize| -> Result<i64, UsageError> { row.try_get(i).map_err(pg_err) };
    let go = |i: usize| -> Result<Option<i64>, UsageError> { row.try_get(i).map_err(pg_err) };
    Ok(UsageRecord {
        id: row.try_get(0).map_err(pg_err)?,
        timestamp: row.try_get(1).map_err(pg_err)?,
        timestamp_us: g(2)?,
        session_id: row.try_get(3).map_err(pg_err)?,
        turn_number: small(g(4)?, "turn_number")?,
        backend_type: row.try_get(5).map_err(pg_err)?,
        backend: row.try_get(6).map_err(pg_err)?,
        model: row.try_get(7).map_err(pg_err)?,
        requested_model: row.try_get(8).map_err(pg_err)?,
        frontend_type: row.try_get(9).map_err(pg_err)?,
        streaming: row.try_get(10).map_err(pg_err)?,
        verbatim_prompt_tokens: u(go(11)?),
        mutated_prompt_tokens: u(go(12)?),
        verbatim_completion_tokens: u(go(13)?),
        mutated_completion_tokens: u(go(14)?),
        prompt_tokens: u(Some(g(15)?)).unwrap_or(0),
        completion_tokens: u(Some(g(16)?)).unwrap_or(0),
        total_tokens: u(Some(g(17)?)).unwrap_or(0),
        backend_reported_usage: match usage {
            Some(s) => {
                Some(serde_json::from_str(&s).map_err(|e| UsageError::Encoding(e.to_string()))?)
            }
            None => None,
        },
        token_source: parse_token_source(&token_source)?,
        cost_usd: row.try_get(20).map_err(pg_err)?,
        cost_source: parse_cost_source(&cost_source)?,
        http_status_code: small(g(22)?, "http_status_code")?,
        completion_outcome: parse_outcome(&outcome)?,
        incomplete_reason: row.try_get(24).map_err(pg_err)?,
        tool_call_count: small(g(25)?, "tool_call_count")?,
        tool_names: decode_tool_names(&tools)?,
        ttft_ms: row.try_get(27).map_err(pg_err)?,
        total_duration_ms: row.try_get(28).map_err(pg_err)?,
        proxy_overhead_ms: row.try_get(29).map_err(pg_err)?,
        completion_tokens_per_second: row.try_get(30).map_err(pg_err)?,
        user_agent: row.try_get(31).map_err(pg_err)?,
        proxy_user: row.try_get(32).map_err(pg_err)?,
        call_purpose: row.try_get(33).map_err(pg_err)?,
        replaced: row.try_get(34).map_err(pg_err)?,
    })
}

/// `WHERE …` (with `$n` placeholders from `$first`) for `filter` within
/// `range`, plus `extra` conditions (already numbered).
fn where_clause(
    filter: &UsageFilter,
    range: Option<(i64, i64)>,
    extra: &[String],
) -> (String, Vec<SqlValue>) {
    let (conds, vals) = filter_conditions(filter, range);
    let mut n = 0;
    let mut numbered: Vec<String> = conds
        .iter()
        .map(|c| {
            let mut out = String::with_capacity(c.len() + 4);
            for ch in c.chars() {
                if ch == '?' {
                    n += 1;
                    out.push_str(&format!("${n}"));
                } else {
                    out.push(ch);
                }
            }
            out
        })
        .collect();
    numbered.extend(extra.iter().cloned());
    let sql = if numbered.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", numbered.join(" AND "))
    };
    (sql, vals)
}

fn params(vals: &[SqlValue]) -> Vec<&(dyn ToSql + Sync)> {
    vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

// ---------------------------------------------------------------------------
// Database operations (async, on the store's runtime).
// ---------------------------------------------------------------------------

/// Rollup keys by id (ids only grow; a snapshot is cloned into each query).
#[derive(Debug, Clone, Default)]
struct KeyCache {
    by_id: BTreeMap<i32, RollupKey>,
    ids: HashMap<RollupKey, i32>,
    max_id: i32,
}

impl KeyCache {
    fn add(&mut self, id: i32, key: RollupKey) {
        self.ids.insert(key.clone(), id);
        self.by_id.insert(id, key);
        self.max_id = self.max_id.max(id);
    }

    /// Ids of the keys whose records pass the non-time filters of `f`.
    fn matching(&self, f: &UsageFilter) -> Vec<i32> {
        self.by_id
            .iter()
            .filter(|(_, k)| k.matches(f))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Loads keys newer than the snapshot.
    async fn refresh(&mut self, tx: &Transaction<'_>) -> Result<Vec<(i32, RollupKey)>, UsageError> {
        let rows = tx
            .query(
                "SELECT id, dims FROM usage_rollup_keys WHERE id > $1 ORDER BY id",
                &[&self.max_id],
            )
            .await
            .map_err(pg_err)?;
        let mut fresh = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i32 = row.try_get(0).map_err(pg_err)?;
            let dims: String = row.try_get(1).map_err(pg_err)?;
            let key: RollupKey = serde_json::from_str(&dims)
                .map_err(|e| UsageError::Encoding(format!("rollup key {id}: {e}")))?;
            self.add(id, key.clone());
            fresh.push((id, key));
        }
        Ok(fresh)
    }
}

/// A transaction holding the write lock (instances write one at a time).
async fn locked_transaction(client: &mut Client) -> Result<Transaction<'_>, UsageError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await
        .map_err(pg_err)?;
    Ok(tx)
}

async fn migrate(client: &mut Client, database: &str) -> Result<Option<i64>, UsageError> {
    let tx = locked_transaction(client).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS usage_schema_version (version BIGINT NOT NULL)")
        .await
        .map_err(pg_err)?;
    let found: Option<i64> = tx
        .query_opt("SELECT max(version) FROM usage_schema_version", &[])
        .await
        .map_err(pg_err)?
        .and_then(|r| r.get(0));
    let version = found.unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(UsageError::DatabaseSchemaTooNew {
            database: database.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for sql in MIGRATIONS.iter().skip(version.max(0) as usize) {
        tx.batch_execute(sql).await.map_err(pg_err)?;
    }
    if version < SCHEMA_VERSION {
        tx.execute("DELETE FROM usage_schema_version", &[])
            .await
            .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO usage_schema_version (version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok((version > 0 && version < SCHEMA_VERSION).then_some(version))
}

/// Feeds records matching `f` within `range` to `each` (in `order`) until
/// it returns false, reading through a portal (never all rows at once).
async fn scan(
    tx: &Transaction<'_>,
    f: &UsageFilter,
    range: Option<(i64, i64)>,
    order: &str,
    each: &mut (dyn FnMut(UsageRecord) -> bool + Send),
) -> Result<(), UsageError> {
    let (w, vals) = where_clause(f, range, &[]);
    let stmt = tx
        .prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM usage_records {w} {order}"
        ))
        .await
        .map_err(pg_err)?;
    let portal = tx.bind(&stmt, &params(&vals)).await.map_err(pg_err)?;
    loop {
        let rows = tx.query_portal(&portal, 5_000).await.map_err(pg_err)?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in &rows {
            if !each(read_record(row)?) {
                return Ok(());
            }
        }
    }
}

/// The aggregate of the stored records of one rollup bucket and key.
async fn bucket_from_rows(
    tx: &Transaction<'_>,
    grain: i32,
    bucket: i64,
    key: &RollupKey,
) -> Result<Aggregate, UsageError> {
    let range = match grain {
        GRAIN_HOUR => Some((bucket, bucket + HOUR_US - 1)),
        GRAIN_DAY => Some((bucket, bucket + DAY_US - 1)),
        _ => None,
    };
    let mut agg = Aggregate::default();
    scan(tx, &UsageFilter::default(), range, "", &mut |r| {
        if RollupKey::of(&r) == *key {
            agg.add(&r);
        }
        true
    })
    .await?;
    Ok(agg)
}

/// Rollup rows to merge: `(grain, bucket_us, key_id) → delta`.
type RollupDeltas = HashMap<(i32, i64, i32), Aggregate>;

/// Merges `deltas` into the stored rollup rows (read, merge, upsert).
async fn merge_rollups(
    tx: &Transaction<'_>,
    deltas: RollupDeltas,
    keys: &KeyCache,
) -> Result<(), UsageError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut g = Vec::with_capacity(deltas.len());
    let mut b = Vec::with_capacity(deltas.len());
    let mut k = Vec::with_capacity(deltas.len());
    for (grain, bucket, key) in deltas.keys() {
        g.push(*grain);
        b.push(*bucket);
        k.push(*key);
    }
    let rows = tx
        .query(
            "SELECT r.grain, r.bucket_us, r.key_id, r.aggregate FROM usage_rollups r \
             JOIN unnest($1::int4[], $2::int8[], $3::int4[]) AS t(g, b, k) \
             ON r.grain = t.g AND r.bucket_us = t.b AND r.key_id = t.k",
            &[&g, &b, &k],
        )
        .await
        .map_err(pg_err)?;
    let mut merged = deltas;
    for row in rows {
        let id: (i32, i64, i32) = (
            row.try_get(0).map_err(pg_err)?,
            row.try_get(1).map_err(pg_err)?,
            row.try_get(2).map_err(pg_err)?,
        );
        let bytes: &[u8] = row.try_get(3).map_err(pg_err)?;
        let stored = Aggregate::from_bytes(bytes);
        let Some(delta) = merged.get_mut(&id) else {
            continue;
        };
        match stored {
            Ok(mut m) => {
                m.merge(delta);
                *delta = m;
            }
            // A damaged rollup row is recomputed from the raw rows (which
            // include this batch).
            Err(e) => {
                let key = keys.by_id.get(&id.2).ok_or_else(|| {
                    UsageError::Database(format!("rollup row for unknown key {}", id.2))
                })?;
                tracing::warn!(error = %e, grain = id.0, bucket_us = id.1, "damaged usage rollup row recomputed");
                *delta = bucket_from_rows(tx, id.0, id.1, key).await?;
            }
        }
    }
    put_rollups(tx, merged).await
}

/// Upserts whole rollup rows.
async fn put_rollups(tx: &Transaction<'_>, rows: RollupDeltas) -> Result<(), UsageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (mut g, mut b, mut k, mut n, mut a) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((grain, bucket, key), agg) in rows {
        g.push(grain);
        b.push(bucket);
        k.push(key);
        n.push(to_i64(agg.request_count));
        a.push(agg.to_bytes());
    }
    tx.execute(
        "INSERT INTO usage_rollups (grain, bucket_us, key_id, request_count, aggregate) \
         SELECT * FROM unnest($1::int4[], $2::int8[], $3::int4[], $4::int8[], $5::bytea[]) \
         ON CONFLICT (grain, bucket_us, key_id) DO UPDATE \
         SET request_count = EXCLUDED.request_count, aggregate = EXCLUDED.aggregate",
        &[&g, &b, &k, &n, &a],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// Adds `agg` (of hour `hour`, key `id`) to the hour, day and all-time rows.
fn add_delta(deltas: &mut RollupDeltas, hour: i64, id: i32, agg: &Aggregate) {
    let day = floor_to(hour, DAY_US);
    for k in [
        (GRAIN_HOUR, hour, id),
        (GRAIN_DAY, day, id),
        (GRAIN_TOTAL, 0, id),
    ] {
        deltas.entry(k).or_default().merge(agg);
    }
}

/// One batch in one transaction; returns the rollup keys it created.
async fn write_batch(
    client: &mut Client,
    records: &[UsageRecord],
    mut keys: KeyCache,
) -> Result<KeyCache, BatchError> {
    let tx = locked_transaction(client).await?;
    keys.refresh(&tx).await?;
    let cols = record_columns(records).map_err(BatchError::Data)?;
    let unnest: Vec<String> = COLUMN_TYPES
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", i + 1))
        .collect();
    let sql = format!(
        "INSERT INTO usage_records ({RECORD_COLUMNS}) SELECT * FROM unnest({}) \
         ON CONFLICT (id) DO NOTHING RETURNING id",
        unnest.join(", ")
    );
    let refs: Vec<&(dyn ToSql + Sync)> = cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    let rows = tx.query(&sql, &refs).await.map_err(|e| classify(e, true))?;
    let mut inserted: HashSet<String> = HashSet::with_capacity(rows.len());
    for row in rows {
        inserted.insert(row.try_get(0).map_err(pg_err)?);
    }
    // Group the records actually inserted (the first of equal ids) by hour and key.
    let mut fresh = HourGroups::default();
    for r in records {
        if inserted.remove(&r.id) {
            fresh.add(r);
        }
    }
    let mut deltas = RollupDeltas::new();
    for ((hour, key), agg) in fresh.into_groups() {
        let key = key.to_key();
        let id = match keys.ids.get(&key) {
            Some(id) => *id,
            None => {
                let dims = serde_json::to_string(&key)
                    .map_err(|e| BatchError::Data(UsageError::Encoding(e.to_string())))?;
                let row = tx
                    .query_one(
                        "INSERT INTO usage_rollup_keys (dims) VALUES ($1) \
                         ON CONFLICT (dims) DO UPDATE SET dims = EXCLUDED.dims RETURNING id",
                        &[&dims],
                    )
                    .await
                    .map_err(|e| classify(e, false))?;
                let id: i32 = row.try_get(0).map_err(pg_err)?;
                keys.add(id, key);
                id
            }
        };
        add_delta(&mut deltas, hour, id, &agg);
    }
    merge_rollups(&tx, deltas, &keys).await?;
    tx.commit().await.map_err(pg_err)?;
    Ok(keys)
}

/// A read-only snapshot transaction.
async fn snapshot(client: &mut Client) -> Result<Transaction<'_>, UsageError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_err)
}

/// The rollup rows a plan reads: `(grain, from, to)`, buckets in `[from, to)`.
fn rollup_sources(plan: &crate::store::rollup::Plan) -> Vec<(i32, i64, i64)> {
    let mut sources = Vec::new();
    if plan.totals {
        sources.push((GRAIN_TOTAL, 0, 1));
    }
    if let Some((from, to)) = plan.days {
        sources.push((GRAIN_DAY, from, to));
    }
    for (from, to) in &plan.hours {
        sources.push((GRAIN_HOUR, *from, *to));
    }
    sources
}

/// Whether a rollup bucket passes the hour-of-day / day-of-week filters.
fn bucket_passes(f: &UsageFilter, grain: i32, bucket: i64) -> bool {
    match grain {
        GRAIN_HOUR => hour_passes(f, bucket),
        GRAIN_DAY => f
            .day_of_week
            .is_none_or(|d| crate::time::day_of_week(bucket) == d),
        _ => true,
    }
}

async fn aggregate_in(
    tx: &Transaction<'_>,
    keys: &KeyCache,
    f: &UsageFilter,
    group_by: &[GroupKey],
) -> Result<AggregateSet, UsageError> {
    let mut set = AggregateSet::default();
    if !rollups_can_answer(f, group_by) {
        scan(tx, f, None, "", &mut |r| {
            set.add(&r, group_by);
            true
        })
        .await?;
        return Ok(set);
    }
    let plan = plan(f);
    let matching = keys.matching(f);
    let group_values: HashMap<i32, Vec<String>> = keys
        .by_id
        .iter()
        .map(|(id, k)| (*id, group_by.iter().filter_map(|g| k.value(*g)).collect()))
        .collect();
    let fold = |set: &mut AggregateSet, id: i32, agg: &Aggregate| {
        set.overall.merge(agg);
        if !group_by.is_empty()
            && let Some(values) = group_values.get(&id)
        {
            match set.groups.get_mut(values) {
                Some(g) => g.merge(agg),
                None => {
                    set.groups.insert(values.clone(), agg.clone());
                }
            }
        }
    };
    let sources = rollup_sources(&plan);
    for (grain, from, to) in sources {
        let rows = tx
            .query(
                "SELECT bucket_us, key_id, aggregate FROM usage_rollups \
                 WHERE grain = $1 AND bucket_us >= $2 AND bucket_us < $3 AND key_id = ANY($4) \
                 ORDER BY bucket_us, key_id",
                &[&grain, &from, &to, &matching],
            )
            .await
            .map_err(pg_err)?;
        for row in rows {
            let bucket: i64 = row.try_get(0).map_err(pg_err)?;
            let id: i32 = row.try_get(1).map_err(pg_err)?;
            if bucket_passes(f, grain, bucket) {
                let bytes: &[u8] = row.try_get(2).map_err(pg_err)?;
                fold(&mut set, id, &Aggregate::from_bytes(bytes)?);
            }
        }
    }
    for range in &plan.raw {
        scan(tx, f, Some(*range), "", &mut |r| {
            set.add(&r, group_by);
            true
        })
        .await?;
    }
    Ok(set)
}

/// The single number `sql` answers.
async fn query_count(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, UsageError> {
    let row = tx.query_one(sql, params).await.map_err(pg_err)?;
    let n: i64 = row.try_get(0).map_err(pg_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

async fn count_sql(
    tx: &Transaction<'_>,
    f: &UsageFilter,
    range: Option<(i64, i64)>,
) -> Result<u64, UsageError> {
    let (w, vals) = where_clause(f, range, &[]);
    let sql = format!("SELECT COUNT(*) FROM usage_records {w}");
    query_count(tx, &sql, &params(&vals)).await
}

async fn count_all(tx: &Transaction<'_>) -> Result<u64, UsageError> {
    query_count(
        tx,
        "SELECT COALESCE(SUM(request_count), 0)::int8 FROM usage_rollups WHERE grain = $1",
        &[&GRAIN_TOTAL],
    )
    .await
}

/// Matching records, counted from rollups where possible.
async fn count_matching(
    tx: &Transaction<'_>,
    keys: &KeyCache,
    f: &UsageFilter,
) -> Result<u64, UsageError> {
    if f.is_empty() {
        return count_all(tx).await;
    }
    if !rollups_can_answer(f, &[]) {
        return count_sql(tx, f, None).await;
    }
    let plan = plan(f);
    let matching = keys.matching(f);
    let sources = rollup_sources(&plan);
    let mut n = 0u64;
    for (grain, from, to) in sources {
        let rows = tx
            .query(
                "SELECT bucket_us, SUM(request_count)::int8 FROM usage_rollups \
                 WHERE grain = $1 AND bucket_us >= $2 AND bucket_us < $3 AND key_id = ANY($4) \
                 GROUP BY bucket_us",
                &[&grain, &from, &to, &matching],
            )
            .await
            .map_err(pg_err)?;
        for row in rows {
            let bucket: i64 = row.try_get(0).map_err(pg_err)?;
            if bucket_passes(f, grain, bucket) {
                let c: i64 = row.try_get(1).map_err(pg_err)?;
                n += u64::try_from(c).unwrap_or(0);
            }
        }
    }
    for range in &plan.raw {
        n += count_sql(tx, f, Some(*range)).await?;
    }
    Ok(n)
}

async fn prune_in(
    client: &mut Client,
    before_us: i64,
    mut keys: KeyCache,
) -> Result<u64, UsageError> {
    let tx = locked_transaction(client).await?;
    let removed = tx
        .execute(
            "DELETE FROM usage_records WHERE timestamp_us < $1",
            &[&before_us],
        )
        .await
        .map_err(pg_err)?;
    if removed == 0 {
        tx.commit().await.map_err(pg_err)?;
        return Ok(0);
    }
    keys.refresh(&tx).await?;
    let key_id = |k: &RollupKey| {
        keys.ids
            .get(k)
            .copied()
            .ok_or_else(|| UsageError::Database("record with an unknown rollup key".into()))
    };
    let hour = hour_floor(before_us);
    let day = floor_to(before_us, DAY_US);
    tx.execute(
        "DELETE FROM usage_rollups WHERE (grain = $1 AND bucket_us < $2) \
         OR (grain = $3 AND bucket_us < $4) OR grain = $5",
        &[&GRAIN_HOUR, &hour, &GRAIN_DAY, &day, &GRAIN_TOTAL],
    )
    .await
    .map_err(pg_err)?;
    let mut rows = RollupDeltas::new();
    if hour < before_us {
        // The partial hour, from its remaining records.
        let mut by_key: HashMap<RollupKey, Aggregate> = HashMap::new();
        scan(
            &tx,
            &UsageFilter::default(),
            Some((hour, hour + HOUR_US - 1)),
            "",
            &mut |r| {
                by_key.entry(RollupKey::of(&r)).or_default().add(&r);
                true
            },
        )
        .await?;
        tx.execute(
            "DELETE FROM usage_rollups WHERE grain = $1 AND bucket_us = $2",
            &[&GRAIN_HOUR, &hour],
        )
        .await
        .map_err(pg_err)?;
        for (k, agg) in by_key {
            rows.insert((GRAIN_HOUR, hour, key_id(&k)?), agg);
        }
        put_rollups(&tx, std::mem::take(&mut rows)).await?;
    }
    if day < before_us {
        // The partial day, from its remaining hours.
        let hours = tx
            .query(
                "SELECT key_id, aggregate FROM usage_rollups \
                 WHERE grain = $1 AND bucket_us >= $2 AND bucket_us < $3",
                &[&GRAIN_HOUR, &day, &(day + DAY_US)],
            )
            .await
            .map_err(pg_err)?;
        tx.execute(
            "DELETE FROM usage_rollups WHERE grain = $1 AND bucket_us = $2",
            &[&GRAIN_DAY, &day],
        )
        .await
        .map_err(pg_err)?;
        for row in hours {
            let id: i32 = row.try_get(0).map_err(pg_err)?;
            let bytes: &[u8] = row.try_get(1).map_err(pg_err)?;
            rows.entry((GRAIN_DAY, day, id))
                .or_default()
                .merge(&Aggregate::from_bytes(bytes)?);
        }
        put_rollups(&tx, std::mem::take(&mut rows)).await?;
    }
    // All-time rows, from the days.
    let days = tx
        .query(
            "SELECT key_id, aggregate FROM usage_rollups WHERE grain = $1",
            &[&GRAIN_DAY],
        )
        .await
        .map_err(pg_err)?;
    for row in days {
        let id: i32 = row.try_get(0).map_err(pg_err)?;
        let bytes: &[u8] = row.try_get(1).map_err(pg_err)?;
        rows.entry((GRAIN_TOTAL, 0, id))
            .or_default()
            .merge(&Aggregate::from_bytes(bytes)?);
    }
    put_rollups(&tx, rows).await?;
    tx.commit().await.map_err(pg_err)?;
    Ok(removed)
}

// ---------------------------------------------------------------------------
// The store.
// ---------------------------------------------------------------------------

/// Usage records in PostgreSQL, with a local spill journal (see the module docs).
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    config: Config,
    database: String,
    options: PostgresOptions,
    readers: Mutex<Vec<Client>>,
    writer: Mutex<Writer>,
    keys: Mutex<KeyCache>,
    migrated: AtomicBool,
    stopping: AtomicBool,
}

/// Records the database refused as bad data, and the first refusal.
#[derive(Debug, Default)]
struct Rejected {
    records: Vec<UsageRecord>,
    error: Option<String>,
}

struct Writer {
    client: Option<Client>,
    spill: SpillJournal,
    /// The database is failing (logged once per outage).
    failing: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.inner.database)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, runs migrations and starts the spill replayer. An
    /// unreachable database is not an error (records spill until it
    /// answers); a schema newer than this binary's is.
    pub fn open(options: PostgresOptions) -> Result<(PostgresStore, OpenReport), UsageError> {
        let mut config = Config::from_str(&options.url).map_err(|e| {
            UsageError::Database(format!(
                "usage_tracking.database_url is not a valid PostgreSQL URL ({e})"
            ))
        })?;
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("llm-proxy");
        let database = describe_config(&config);
        // Before the runtime: an error return must not drop a runtime
        // inside the caller's.
        let spill = SpillJournal::open(&options.spill_path, options.spill_max_bytes)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("usage-postgres")
            .enable_all()
            .build()
            .map_err(|e| UsageError::Database(format!("cannot start the postgres runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let store = PostgresStore {
            inner: Arc::new(Inner {
                runtime: Mutex::new(Some(runtime)),
                handle,
                config,
                database,
                options: options.clone(),
                readers: Mutex::new(Vec::new()),
                writer: Mutex::new(Writer {
                    client: None,
                    spill,
                    failing: false,
                }),
                keys: Mutex::new(KeyCache::default()),
                migrated: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
            }),
        };
        let mut report = OpenReport {
            path: options.spill_path.clone(),
            ..OpenReport::default()
        };
        match store.inner.migrate() {
            Ok(from) => report.migrated_from = from,
            Err(e @ UsageError::DatabaseSchemaTooNew { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(database = %store.inner.database, error = %e,
                    "usage database unavailable at start; records spill to the journal until it answers");
            }
        }
        {
            let w = lock(&store.inner.writer);
            if !w.spill.is_empty() {
                tracing::info!(records = w.spill.records(), journal = %w.spill.path().display(),
                    "usage spill journal holds records; replaying");
            }
        }
        if store.inner.migrated.load(Ordering::SeqCst) {
            report.records = store.count().unwrap_or(0);
        }
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("usage-pg-replay".into())
            .spawn(move || replay_loop(weak))
            .map_err(|e| UsageError::Database(format!("cannot start the spill replayer: {e}")))?;
        Ok((store, report))
    }

    /// Records waiting in the spill journal.
    pub fn spilled(&self) -> u64 {
        lock(&self.inner.writer).spill.records()
    }

    /// Runs the migrations again (they are idempotent); returns the version
    /// migrated from, if any.
    pub fn migrate(&self) -> Result<Option<i64>, UsageError> {
        self.inner.migrate()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        lock(&self.inner.readers).clear();
        {
            let mut w = lock(&self.inner.writer);
            w.client = None;
            w.spill.release();
        }
        if let Some(rt) = lock(&self.inner.runtime).take() {
            // Safe in any context (also inside another runtime).
            rt.shutdown_background();
        }
    }
}

fn replay_loop(weak: Weak<Inner>) {
    let mut wait = Duration::from_millis(200);
    loop {
        let mut slept = Duration::ZERO;
        while slept < wait {
            let step = Duration::from_millis(50).min(wait - slept);
            std::thread::sleep(step);
            slept += step;
            match weak.upgrade() {
                Some(inner) if !inner.stopping.load(Ordering::SeqCst) => {}
                _ => return,
            }
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        match inner.replay_some() {
            // A short pause between batches lets `insert` take its turn.
            Ok(Some(true)) => wait = Duration::from_millis(10),
            Ok(None) => wait = Duration::from_millis(200),
            Ok(Some(false)) => {
                wait = Duration::from_millis(200);
                let mut w = lock(&inner.writer);
                if w.failing {
                    w.failing = false;
                    tracing::info!(database = %inner.database, "usage database back; spill journal replayed");
                }
            }
            Err(e) => {
                inner.note_write_error(&mut lock(&inner.writer), &e);
                wait = Duration::from_secs(1);
            }
        }
    }
}

impl Inner {
    /// Runs `fut` on the store's runtime and waits for it (at most `timeout`).
    fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, UsageError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let out = tokio::time::timeout(timeout, fut).await;
            let _ = tx.send(out);
        });
        match rx.recv() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(UsageError::Database(format!(
                "{}: no answer within {timeout:?}",
                self.database
            ))),
            Err(_) => Err(UsageError::Database("the usage store is shut down".into())),
        }
    }

    fn connect(&self) -> Result<Client, UsageError> {
        let config = self.config.clone();
        let database = self.database.clone();
        self.run(Duration::from_secs(10), async move {
            let (client, conn) = config.connect(NoTls).await.map_err(|e| {
                UsageError::Database(format!("cannot connect to {database}: {}", pg_detail(&e)))
            })?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "usage database connection ended");
                }
            });
            Ok::<Client, UsageError>(client)
        })?
    }

    fn migrate(&self) -> Result<Option<i64>, UsageError> {
        let mut client = self.connect()?;
        let database = self.database.clone();
        let from = self.run(self.options.write_timeout * 3, async move {
            migrate(&mut client, &database).await
        })??;
        self.migrated.store(true, Ordering::SeqCst);
        Ok(from)
    }

    fn ensure_migrated(&self) -> Result<(), UsageError> {
        if self.migrated.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.migrate().map(|_| ())
    }

    /// Writes one batch in one transaction with the connection in `slot`
    /// (connecting if there is none; a live one is left there).
    fn write_once(
        &self,
        slot: &mut Option<Client>,
        records: &[UsageRecord],
    ) -> Result<(), BatchError> {
        self.ensure_migrated()?;
        let mut client = match slot.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect()?,
        };
        let keys = lock(&self.keys).clone();
        let mut batch = records.to_vec();
        batch.iter_mut().for_each(scrub_nul);
        let (client, result) = self.run(self.options.write_timeout, async move {
            let r = write_batch(&mut client, &batch, keys).await;
            (client, r)
        })?;
        if !client.is_closed() {
            *slot = Some(client);
        }
        let keys = result?;
        let mut cache = lock(&self.keys);
        if keys.max_id > cache.max_id {
            *cache = keys;
        }
        Ok(())
    }

    /// Writes `records`; when the database refuses some as bad data, halves
    /// the batch until they are isolated and returns them (with the first
    /// refusal) after writing all the others. An outage is an error (halves
    /// already committed are skipped when the batch is written again).
    fn write(
        &self,
        slot: &mut Option<Client>,
        records: &[UsageRecord],
    ) -> Result<Rejected, UsageError> {
        match self.write_once(slot, records) {
            Ok(()) => Ok(Rejected::default()),
            Err(BatchError::Outage(e)) => Err(e),
            Err(BatchError::Data(e)) if records.len() <= 1 => Ok(Rejected {
                records: records.to_vec(),
                error: Some(e.to_string()),
            }),
            Err(BatchError::Data(_)) => {
                let (left, right) = records.split_at(records.len() / 2);
                let mut out = self.write(slot, left)?;
                let more = self.write(slot, right)?;
                out.records.extend(more.records);
                out.error = out.error.or(more.error);
                Ok(out)
            }
        }
    }

    /// Sets refused records aside in `<spill_path>.rejected` (one WARN line
    /// per batch).
    fn reject(&self, rejected: Rejected) {
        if rejected.records.is_empty() {
            return;
        }
        let n = rejected.records.len();
        metrics::counter!(telemetry::DATABASE_REJECTED_TOTAL).increment(n as u64);
        let error = rejected.error.unwrap_or_default();
        match append_rejected(&self.options.spill_path, &rejected.records) {
            Ok(file) => tracing::warn!(database = %self.database, records = n,
                file = %file.display(), error = %error,
                "usage database refused records as bad data; set aside"),
            Err(e) => {
                metrics::counter!(telemetry::RECORDS_DROPPED_TOTAL, "reason" => "rejected")
                    .increment(n as u64);
                tracing::error!(database = %self.database, records = n, error = %error,
                    write_error = %e,
                    "usage database refused records as bad data and they could not be set aside; dropped");
            }
        }
    }

    fn note_write_error(&self, w: &mut Writer, e: &UsageError) {
        metrics::counter!(telemetry::DATABASE_WRITE_ERRORS_TOTAL).increment(1);
        if !w.failing {
            w.failing = true;
            tracing::error!(database = %self.database, error = %e,
                journal = %w.spill.path().display(),
                "usage database write failed; spilling records to the journal until it answers");
        } else {
            tracing::debug!(error = %e, "usage database still failing");
        }
    }

    /// Replays one batch from the journal: `None` when it was empty, else
    /// whether more wait. The writer lock is not held while the database
    /// works (`insert` must never wait for it); the batch stays in the
    /// journal until written, so meanwhile new batches queue behind it, and
    /// only this thread advances the journal.
    fn replay_some(&self) -> Result<Option<bool>, UsageError> {
        let (records, offset, lines, mut slot) = {
            let mut w = lock(&self.writer);
            if w.spill.is_empty() {
                return Ok(None);
            }
            let (records, offset, lines) = w.spill.peek(REPLAY_BATCH)?;
            (records, offset, lines, w.client.take())
        };
        let written = if records.is_empty() {
            Ok(Rejected::default())
        } else {
            self.write(&mut slot, &records)
        };
        let mut w = lock(&self.writer);
        if w.client.is_none() && !self.stopping.load(Ordering::SeqCst) {
            w.client = slot;
        }
        self.reject(written?);
        w.spill.advance(offset, lines)?;
        Ok(Some(!w.spill.is_empty()))
    }

    /// Runs `op` with a pooled read connection.
    fn read<T, F, Fut>(&self, op: F) -> Result<T, UsageError>
    where
        T: Send + 'static,
        F: FnOnce(Client, KeyCache) -> Fut,
        Fut: Future<Output = (Client, Result<(T, KeyCache), UsageError>)> + Send + 'static,
    {
        self.ensure_migrated()?;
        let pooled = lock(&self.readers).pop();
        let client = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().map_err(unreachable)?,
        };
        let keys = lock(&self.keys).clone();
        let (client, result) = self.run(self.options.read_timeout, op(client, keys))?;
        let closed = client.is_closed();
        if !closed {
            let mut pool = lock(&self.readers);
            if pool.len() < MAX_IDLE_READERS {
                pool.push(client);
            }
        }
        // A connection lost under the query: the database went away.
        let (value, keys) = result.map_err(|e| if closed { unreachable(e) } else { e })?;
        let mut cache = lock(&self.keys);
        if keys.max_id > cache.max_id {
            *cache = keys;
        }
        Ok(value)
    }
}

impl UsageStore for PostgresStore {
    fn describe(&self) -> String {
        self.inner.database.clone()
    }

    fn insert(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut w = lock(&self.inner.writer);
        if w.spill.is_empty() {
            let mut slot = w.client.take();
            let written = self.inner.write(&mut slot, records);
            w.client = slot;
            match written {
                Ok(rejected) => {
                    self.inner.reject(rejected);
                    return Ok(());
                }
                Err(e) => self.inner.note_write_error(&mut w, &e),
            }
        }
        // Behind the journal's records, in order.
        w.spill.append(records)
    }

    fn recent(
        &self,
        filter: &UsageFilter,
        limit: usize,
        offset: usize,
    ) -> Result<RecentPage, UsageError> {
        let f = filter.clone();
        self.inner.read(move |mut c, mut keys| async move {
            let r = async {
                let tx = snapshot(&mut c).await?;
                keys.refresh(&tx).await?;
                let total = count_matching(&tx, &keys, &f).await?;
                let mut records = Vec::new();
                if limit > 0 && (offset as u64) < total {
                    let (w, vals) = where_clause(&f, None, &[]);
                    let n = vals.len();
                    let sql = format!(
                        "SELECT {RECORD_COLUMNS} FROM usage_records {w} \
                         ORDER BY timestamp_us DESC, id DESC LIMIT ${} OFFSET ${}",
                        n + 1,
                        n + 2
                    );
                    let (lim, off) = (to_i64(limit as u64), to_i64(offset as u64));
                    let mut p = params(&vals);
                    p.push(&lim);
                    p.push(&off);
                    for row in tx.query(&sql, &p).await.map_err(pg_err)? {
                        records.push(read_record(&row)?);
                    }
                }
                tx.commit().await.map_err(pg_err)?;
                Ok((RecentPage { records, total }, keys))
            }
            .await;
            (c, r)
        })
    }

    fn aggregate(
        &self,
        filter: &UsageFilter,
        group_by: &[GroupKey],
    ) -> Result<AggregateSet, UsageError> {
        let f = filter.clone();
        let g = group_by.to_vec();
        self.inner.read(move |mut c, mut keys| async move {
            let r = async {
                let tx = snapshot(&mut c).await?;
                keys.refresh(&tx).await?;
                let set = aggregate_in(&tx, &keys, &f, &g).await?;
                tx.commit().await.map_err(pg_err)?;
                Ok((set, keys))
            }
            .await;
            (c, r)
        })
    }

    fn export(
        &self,
        filter: &UsageFilter,
        sink: &mut dyn FnMut(&UsageRecord) -> bool,
    ) -> Result<u64, UsageError> {
        // Keyset pages in `(timestamp_us, id)` order: bounded memory, and
        // the sink runs between queries.
        let mut after: Option<(i64, String)> = None;
        let mut fed = 0;
        loop {
            let f = filter.clone();
            let cursor = after.clone();
            let page: Vec<UsageRecord> = self.inner.read(move |c, keys| async move {
                let r = async {
                    let n = filter_conditions(&f, None).1.len();
                    let extra: Vec<String> = cursor
                        .as_ref()
                        .map(|_| format!("(timestamp_us, id) > (${}, ${})", n + 1, n + 2))
                        .into_iter()
                        .collect();
                    let (w, mut vals) = where_clause(&f, None, &extra);
                    if let Some((ts, id)) = cursor {
                        vals.push(SqlValue::Int(ts));
                        vals.push(SqlValue::Text(id));
                    }
                    let sql = format!(
                        "SELECT {RECORD_COLUMNS} FROM usage_records {w} \
                         ORDER BY timestamp_us, id LIMIT {EXPORT_PAGE}"
                    );
                    let rows = c.query(&sql, &params(&vals)).await.map_err(pg_err)?;
                    let records = rows
                        .iter()
                        .map(read_record)
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((records, keys))
                }
                .await;
                (c, r)
            })?;
            let full = page.len() as i64 == EXPORT_PAGE;
            for r in &page {
                fed += 1;
                if !sink(r) {
                    return Ok(fed);
                }
            }
            match page.last() {
                Some(last) if full => after = Some((last.timestamp_us, last.id.clone())),
                _ => return Ok(fed),
            }
        }
    }

    fn prune(&self, before_us: i64) -> Result<u64, UsageError> {
        let mut w = lock(&self.inner.writer);
        self.inner.ensure_migrated()?;
        let mut client = match w.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.inner.connect()?,
        };
        let keys = lock(&self.inner.keys).clone();
        let (client, result) =
            self.inner
                .run(self.inner.options.write_timeout * 6, async move {
                    let r = prune_in(&mut client, before_us, keys).await;
                    (client, r)
                })?;
        if !client.is_closed() {
            w.client = Some(client);
        }
        result
    }

    fn flush(&self) -> Result<(), UsageError> {
        // Committed batches are durable in the database, spilled ones in
        // the (synced) journal.
        Ok(())
    }

    fn count(&self) -> Result<u64, UsageError> {
        self.inner.read(move |mut c, keys| async move {
            let r = async {
                let tx = snapshot(&mut c).await?;
                let n = count_all(&tx).await?;
                tx.commit().await.map_err(pg_err)?;
                Ok((n, keys))
            }
            .await;
            (c, r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, synthetic_records};
    use llm_proxy_testkit::PgCluster;

    const START_US: i64 = 1_767_608_243_456_000;

    fn cluster_with(dbs: &[&str]) -> (PgCluster, Vec<String>) {
        let cluster = PgCluster::start().expect("PostgreSQL is needed for these tests");
        let urls = dbs
            .iter()
            .map(|d| cluster.create_database(d).unwrap())
            .collect();
        (cluster, urls)
    }

    fn open(url: &str, dir: &tempfile::TempDir, name: &str) -> PostgresStore {
        let mut o = PostgresOptions::new(url, dir.path().join(name));
        o.write_timeout = Duration::from_secs(5);
        PostgresStore::open(o).unwrap().0
    }

    /// Waits (at most 30 s) until the spill journal is empty.
    fn wait_replayed(store: &PostgresStore, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while store.spilled() > 0 {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn postgres_store_conforms() {
        let (_cluster, urls) = cluster_with(&["conform"]);
        let dir = tempfile::tempdir().unwrap();
        let store = open(&urls[0], &dir, "spill.jsonl");
        conformance::check_all(&store).unwrap();
        assert_eq!(store.spilled(), 0);
    }

    #[test]
    fn postgres_store_persists_across_reopen() {
        let (_cluster, urls) = cluster_with(&["reopen"]);
        let dir = tempfile::tempdir().unwrap();
        conformance::check_reopen(&mut || {
            Ok(Box::new(open(&urls[0], &dir, "spill.jsonl")) as Box<dyn UsageStore>)
        })
        .unwrap();
    }

    #[test]
    fn two_stores_on_one_database_see_the_same_totals() {
        let (_cluster, urls) = cluster_with(&["shared"]);
        let dir = tempfile::tempdir().unwrap();
        let a = open(&urls[0], &dir, "a.jsonl");
        let b = open(&urls[0], &dir, "b.jsonl");
        let records = synthetic_records(900, START_US, 2 * DAY_US, 9);
        let (left, right): (Vec<_>, Vec<_>) = records
            .iter()
            .cloned()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        let left: Vec<UsageRecord> = left.into_iter().map(|(_, r)| r).collect();
        let right: Vec<UsageRecord> = right.into_iter().map(|(_, r)| r).collect();
        for chunk in 0..3 {
            a.insert(&left[chunk * 150..(chunk + 1) * 150]).unwrap();
            b.insert(&right[chunk * 150..(chunk + 1) * 150]).unwrap();
        }
        conformance::check_queries(&a, &records).unwrap();
        conformance::check_queries(&b, &records).unwrap();
    }

    #[test]
    fn migrations_run_twice_and_a_newer_schema_is_refused() {
        let (cluster, urls) = cluster_with(&["migrate"]);
        let dir = tempfile::tempdir().unwrap();
        let store = open(&urls[0], &dir, "spill.jsonl");
        assert_eq!(store.migrate().unwrap(), None);
        assert_eq!(store.migrate().unwrap(), None);
        store
            .insert(&synthetic_records(10, START_US, HOUR_US, 1))
            .unwrap();
        drop(store);
        let again = open(&urls[0], &dir, "spill.jsonl");
        assert_eq!(again.count().unwrap(), 10);
        drop(again);
        cluster
            .psql("migrate", "UPDATE usage_schema_version SET version = 99")
            .unwrap();
        let err =
            PostgresStore::open(PostgresOptions::new(&urls[0], dir.path().join("s2"))).unwrap_err();
        assert!(
            matches!(
                err,
                UsageError::DatabaseSchemaTooNew {
                    found: 99,
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("99") && msg.contains("usage_tracking.database_url"),
            "{msg}"
        );
        // The refused database is untouched.
        assert_eq!(
            cluster
                .psql("migrate", "SELECT count(*) FROM usage_records")
                .unwrap()
                .trim(),
            "10"
        );
    }

    #[test]
    fn an_outage_spills_and_replays_every_record_exactly_once() {
        let (mut cluster, urls) = cluster_with(&["outage"]);
        let dir = tempfile::tempdir().unwrap();
        let store = open(&urls[0], &dir, "spill.jsonl");
        let records = synthetic_records(600, START_US, DAY_US, 5);
        store.insert(&records[..200]).unwrap();
        cluster.stop_server().unwrap();
        let started = std::time::Instant::now();
        store.insert(&records[200..400]).unwrap();
        store.insert(&records[390..450]).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(store.spilled(), 260);
        assert!(dir.path().join("spill.jsonl").metadata().unwrap().len() > 0);
        assert!(store.count().is_err(), "the database is down");
        cluster.start_server().unwrap();
        // New batches queue behind the journal, in order.
        store.insert(&records[450..]).unwrap();
        wait_replayed(&store, "journal never replayed");
        conformance::check_queries(&store, &records).unwrap();
        let ids = cluster
            .psql(
                "outage",
                "SELECT count(*) || ' ' || count(DISTINCT id) FROM usage_records",
            )
            .unwrap();
        assert_eq!(ids.trim(), "600 600");
        assert_eq!(
            std::fs::metadata(dir.path().join("spill.jsonl"))
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn nul_in_client_text_is_stored_and_later_records_flow() {
        let (cluster, urls) = cluster_with(&["nul"]);
        let dir = tempfile::tempdir().unwrap();
        let store = open(&urls[0], &dir, "spill.jsonl");
        let records = synthetic_records(30, START_US, HOUR_US, 11);
        let mut bad = records[0].clone();
        bad.requested_model = "gpt\0-4o".into();
        bad.session_id = "user\0x".into();
        bad.user_agent = Some("ua\0".into());
        bad.tool_names = vec!["t\0".into()];
        store.insert(std::slice::from_ref(&bad)).unwrap();
        store.insert(&records[1..]).unwrap();
        assert_eq!(store.spilled(), 0, "nothing queues behind the record");
        assert_eq!(store.count().unwrap(), 30);
        let row = cluster
            .psql(
                "nul",
                &format!(
                    "SELECT requested_model || '|' || session_id || '|' || user_agent \
                     FROM usage_records WHERE id = '{}'",
                    bad.id
                ),
            )
            .unwrap();
        assert_eq!(row.trim(), "gpt\u{FFFD}-4o|user\u{FFFD}x|ua\u{FFFD}");
        assert!(!dir.path().join("spill.jsonl.rejected").exists());
    }

    #[test]
    fn data_errors_are_classified_apart_from_outages() {
        assert!(is_data_error("22021", false)); // invalid byte sequence (NUL)
        assert!(is_data_error("22003", true)); // numeric value out of range
        assert!(is_data_error("23514", true)); // check violation
        assert!(!is_data_error("23505", false)); // a rollup upsert: not the records
        assert!(!is_data_error("08006", true)); // connection failure
        assert!(!is_data_error("40001", true)); // serialization failure
        assert!(!is_data_error("57P01", true)); // admin shutdown
    }

    #[test]
    fn refused_records_are_set_aside_and_replay_moves_on() {
        let (mut cluster, urls) = cluster_with(&["refused"]);
        let dir = tempfile::tempdir().unwrap();
        let store = open(&urls[0], &dir, "spill.jsonl");
        cluster
            .psql(
                "refused",
                "ALTER TABLE usage_records ADD CONSTRAINT no_bad CHECK (requested_model <> 'bad')",
            )
            .unwrap();
        let mut records = synthetic_records(400, START_US, DAY_US, 12);
        for i in [3, 150, 151, 377] {
            records[i].requested_model = "bad".into();
        }
        // Written directly: the good ones are stored, the bad ones set aside.
        store.insert(&records[..100]).unwrap();
        assert_eq!(store.spilled(), 0);
        // Replayed from the journal after an outage: the same.
        cluster.stop_server().unwrap();
        store.insert(&records[100..300]).unwrap();
        assert_eq!(store.spilled(), 200);
        cluster.start_server().unwrap();
        store.insert(&records[300..]).unwrap();
        wait_replayed(&store, "replay stalled on refused records");
        assert_eq!(store.count().unwrap(), 396);
        let text = std::fs::read_to_string(dir.path().join("spill.jsonl.rejected")).unwrap();
        let rejected: Vec<UsageRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want: Vec<UsageRecord> = [3, 150, 151, 377]
            .iter()
            .map(|i| records[*i].clone())
            .collect();
        assert_eq!(rejected, want);
    }

    #[test]
    fn insert_does_not_wait_for_a_replay_in_flight() {
        let (_cluster, urls) = cluster_with(&["inflight"]);
        let dir = tempfile::tempdir().unwrap();
        let mut o = PostgresOptions::new(&urls[0], dir.path().join("spill.jsonl"));
        o.write_timeout = Duration::from_secs(60);
        let store = PostgresStore::open(o).unwrap().0;
        let records = synthetic_records(300, START_US, DAY_US, 13);
        // Another session holds the write lock: the replay will wait on it.
        let mut blocker = store.inner.connect().unwrap();
        blocker = store
            .inner
            .run(Duration::from_secs(10), async move {
                blocker
                    .execute("SELECT pg_advisory_lock($1)", &[&WRITE_LOCK])
                    .await
                    .unwrap();
                blocker
            })
            .unwrap();
        lock(&store.inner.writer)
            .spill
            .append(&records[..100])
            .unwrap();
        // Wait until the replayer is blocked inside its database write.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (c, waiting) = store
                .inner
                .run(Duration::from_secs(10), async move {
                    let n: i64 = blocker
                        .query_one(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    (blocker, n)
                })
                .unwrap();
            blocker = c;
            if waiting > 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "replay never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        // An insert meanwhile goes behind the journal at once.
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            let store = &store;
            let records = &records;
            s.spawn(move || {
                let r = store.insert(&records[100..200]);
                let _ = tx.send(r);
            });
            let got = rx.recv_timeout(Duration::from_secs(20));
            assert!(
                matches!(got, Ok(Ok(()))),
                "insert waited for the replay: {got:?}"
            );
            assert_eq!(store.spilled(), 200);
            // Release the database; everything arrives, in order.
            drop(blocker);
        });
        store.insert(&records[200..]).unwrap();
        wait_replayed(&store, "journal never replayed");
        conformance::check_queries(&store, &records).unwrap();
    }

    #[test]
    fn the_password_never_shows() {
        let url = "postgres://proxy:s3cret@127.0.0.1:1/usage";
        assert_eq!(redacted_url(url), "postgres://proxy@127.0.0.1:1/usage");
        let o = PostgresOptions::new(url, "/tmp/x");
        assert!(!format!("{o:?}").contains("s3cret"));
        assert!(check_url("mysql://x").is_err());
        assert!(check_url(url).is_ok());
    }
}
