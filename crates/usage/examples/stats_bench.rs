//! Usage-store benchmark: generate realistic records (3 backends, 6
//! models, sessions of ~25 turns, over 60 days; `common::bench_records`), insert them in batches,
//! then time `aggregate` (the `/v1/usage/stats` work) on the SQLite store.
//!
//! ```text
//! cargo run --release -p llm-proxy-usage --example stats_bench -- \
//!     --records 1000000 --path /tmp/x.sqlite3 [--batch 1000] [--runs 20] [--reuse]
//! ```
//!
//! `--reuse` keeps an existing store at `--path` instead of regenerating.
//! `--database-url postgres://…` benchmarks the Postgres store instead (the
//! database should be empty, or hold a previous run's records with `--reuse`).
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its table"
)]

mod common;

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use llm_proxy_usage::query::{GroupKey, UsageFilter};
use llm_proxy_usage::store::postgres::{PostgresOptions, PostgresStore};
use llm_proxy_usage::store::{SqliteStore, UsageStore};

const DAY_US: i64 = 86_400_000_000;
/// 2026-01-01T00:00:00Z.
const START_US: i64 = 1_767_225_600_000_000;
const SPAN_US: i64 = 60 * DAY_US;

struct Args {
    records: usize,
    path: PathBuf,
    batch: usize,
    runs: usize,
    reuse: bool,
    database_url: Option<String>,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        records: 1_000_000,
        path: PathBuf::from("/tmp/usage-bench.sqlite3"),
        batch: 1000,
        runs: 20,
        reuse: false,
        database_url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--records" => args.records = value()?.replace('_', "").parse()?,
            "--path" => args.path = PathBuf::from(value()?),
            "--batch" => args.batch = value()?.parse::<usize>()?.max(1),
            "--runs" => args.runs = value()?.parse::<usize>()?.max(1),
            "--reuse" => args.reuse = true,
            "--database-url" => args.database_url = Some(value()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

fn remove_store_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median, min and max of `runs` timings of `f`.
fn time_runs(
    runs: usize,
    mut f: impl FnMut() -> Result<u64, Box<dyn Error>>,
) -> Result<(f64, f64, f64, u64), Box<dyn Error>> {
    let mut times = Vec::with_capacity(runs);
    let mut matched = 0;
    for _ in 0..runs {
        let t = Instant::now();
        matched = f()?;
        times.push(ms(t.elapsed()));
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok((median, times[0], times[times.len() - 1], matched))
}

/// The store under test, its records, and its bytes on disk (a file store).
type Opened = (Box<dyn UsageStore>, u64, Option<u64>);

fn open_store(args: &Args) -> Result<Opened, Box<dyn Error>> {
    match &args.database_url {
        Some(url) => {
            let spill = std::env::temp_dir()
                .join(format!("stats-bench-spill-{}.jsonl", std::process::id()));
            let (store, _) = PostgresStore::open(PostgresOptions::new(url.clone(), spill))?;
            let n = store.count()?;
            Ok((Box::new(store), n, None))
        }
        None => {
            let (store, report) = SqliteStore::open(&args.path)?;
            let bytes = std::fs::metadata(&args.path).map_or(0, |m| m.len());
            Ok((Box::new(store), report.records, Some(bytes)))
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    if !args.reuse && args.database_url.is_none() {
        remove_store_files(&args.path);
    }
    let (store, _, _) = open_store(&args)?;
    let existing = store.count()?;
    let mut session_probe = None;
    if existing == 0 {
        // Generate in chunks (flat memory), insert in batches.
        const CHUNK: usize = 100_000;
        let chunks = args.records.div_ceil(CHUNK).max(1);
        let chunk_span = SPAN_US / chunks as i64;
        let mut insert_time = Duration::ZERO;
        let mut inserted = 0usize;
        for c in 0..chunks {
            let n = CHUNK.min(args.records - inserted);
            let records = common::bench_records(
                n,
                START_US + c as i64 * chunk_span,
                chunk_span,
                c as u64 + 1,
            );
            if session_probe.is_none() {
                session_probe = records.get(n / 2).map(|r| r.session_id.clone());
            }
            for batch in records.chunks(args.batch) {
                let t = Instant::now();
                store.insert(batch)?;
                insert_time += t.elapsed();
            }
            inserted += n;
            eprint!("\rinserted {inserted}/{}", args.records);
        }
        let t = Instant::now();
        store.flush()?;
        insert_time += t.elapsed();
        eprintln!();
        // A Postgres write that failed would have spilled, not stored.
        let stored = store.count()?;
        if stored != inserted as u64 {
            return Err(format!("only {stored} of {inserted} records reached the store").into());
        }
        println!(
            "insert: {inserted} records in batches of {} in {:.1} s = {:.0} records/s",
            args.batch,
            insert_time.as_secs_f64(),
            inserted as f64 / insert_time.as_secs_f64()
        );
    }
    drop(store);
    let t = Instant::now();
    let (store, records, bytes) = open_store(&args)?;
    match bytes {
        Some(bytes) => println!(
            "open (quick_check + rollup load): {:.0} ms, {records} records, file {:.0} MB",
            ms(t.elapsed()),
            bytes as f64 / 1e6
        ),
        None => println!(
            "open (connect + migrations + count): {:.0} ms, {records} records",
            ms(t.elapsed())
        ),
    }
    let session = match session_probe {
        Some(s) => s,
        None => store
            .recent(&UsageFilter::default(), 1, 0)?
            .records
            .first()
            .map(|r| r.session_id.clone())
            .unwrap_or_default(),
    };
    let newest = store
        .recent(&UsageFilter::default(), 1, 0)?
        .records
        .first()
        .map_or(START_US + SPAN_US, |r| r.timestamp_us);
    let thirty_days = UsageFilter {
        backend: Some("openai".into()),
        model: Some("gpt-4o".into()),
        start_us: Some(newest - 30 * DAY_US + 12_345_678),
        ..UsageFilter::default()
    };
    let cases: Vec<(&str, UsageFilter, Vec<GroupKey>)> = vec![
        ("unfiltered", UsageFilter::default(), vec![]),
        ("backend+model+30 days", thirty_days.clone(), vec![]),
        (
            "30 days, group_by backend,model",
            UsageFilter {
                start_us: thirty_days.start_us,
                ..UsageFilter::default()
            },
            vec![GroupKey::Backend, GroupKey::Model],
        ),
        (
            "session_id",
            UsageFilter {
                session_id: Some(session),
                ..UsageFilter::default()
            },
            vec![],
        ),
    ];
    println!();
    println!(
        "| aggregate ({} runs)               | median ms | min ms | max ms | records matched |",
        args.runs
    );
    println!(
        "|-----------------------------------|----------:|-------:|-------:|----------------:|"
    );
    for (name, filter, group_by) in &cases {
        let (median, min, max, matched) = time_runs(args.runs, || {
            let set = store.aggregate(filter, group_by)?;
            // Finishing (quantiles, JSON-ready shape) is part of the request.
            let stats = llm_proxy_usage::aggregate::finish_stats(&set, filter, group_by);
            Ok(stats.overall.request_count)
        })?;
        println!("| {name:<33} | {median:>9.2} | {min:>6.2} | {max:>6.2} | {matched:>15} |");
    }
    let (median, min, max, total) =
        time_runs(args.runs, || Ok(store.recent(&thirty_days, 100, 0)?.total))?;
    println!(
        "| {:<33} | {median:>9.2} | {min:>6.2} | {max:>6.2} | {total:>15} |",
        "recent (100, backend+model+30d)"
    );
    Ok(())
}
