//! Usage-store write benchmark: what the tracker's `usage-writer` thread
//! pays per record. Inserts realistic records (random UUID-like request
//! ids, 3 backends / 6 models, ~25-turn sessions, timestamps rising at
//! ~15 000 records/s, i.e. a saturated proxy) into a fresh SQLite store in
//! a temp dir, in batches as the tracker writes them (`insert` + `flush`
//! per batch), and prints µs per record per 100 000 records: wall time (insert, flush) and
//! the thread's CPU time (without I/O waits).
//!
//! ```text
//! cargo run --release -p llm-proxy-usage --example insert_bench -- \
//!     [--records 1000000] [--batch 10000] [--rate 15000] [--dir /tmp]
//! ```
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its table"
)]

mod common;

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use llm_proxy_usage::store::{SqliteStore, UsageStore};

/// 2026-01-01T00:00:00Z.
const START_US: i64 = 1_767_225_600_000_000;
const CHUNK: usize = 100_000;

struct Args {
    records: usize,
    batch: usize,
    rate: f64,
    dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        records: 1_000_000,
        batch: 10_000,
        rate: 15_000.0,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--records" => args.records = value()?.replace('_', "").parse()?,
            "--batch" => args.batch = value()?.parse::<usize>()?.max(1),
            "--rate" => args.rate = value()?.parse::<f64>()?.max(1.0),
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// CPU time of this thread so far (ns; `/proc/thread-self/schedstat`,
/// 0 where unavailable): the writer's own cost, without I/O waits.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let path = dir.path().join("usage.sqlite3");
    let (store, _) = SqliteStore::open(&path)?;
    let chunk_span = (CHUNK as f64 / args.rate * 1e6) as i64;
    println!(
        "insert_bench: {} records, batches of {}, {:.0} records/s of timestamps, {}",
        args.records,
        args.batch,
        args.rate,
        path.display()
    );
    println!();
    println!("| records         | µs/record | insert µs | flush µs | CPU µs | file MB |");
    println!("|-----------------|----------:|----------:|---------:|-------:|--------:|");
    let mut inserted = 0usize;
    let mut total = Duration::ZERO;
    let mut c = 0u64;
    let mut rows: Vec<f64> = Vec::new();
    while inserted < args.records {
        let n = CHUNK.min(args.records - inserted);
        let records = common::bench_records(n, START_US + c as i64 * chunk_span, chunk_span, c + 1);
        let (mut ins, mut fl) = (Duration::ZERO, Duration::ZERO);
        let cpu0 = thread_cpu_ns();
        for batch in records.chunks(args.batch) {
            let t = Instant::now();
            store.insert(batch)?;
            let t2 = Instant::now();
            store.flush()?;
            ins += t2 - t;
            fl += t2.elapsed();
        }
        let cpu = (thread_cpu_ns() - cpu0) as f64 / 1e3 / n as f64;
        let per = (ins + fl).as_secs_f64() * 1e6 / n as f64;
        rows.push(per);
        total += ins + fl;
        let mb = std::fs::metadata(&path).map_or(0, |m| m.len()) as f64 / 1e6;
        println!(
            "| {:>7}–{:<7} | {per:>9.2} | {:>9.2} | {:>8.2} | {cpu:>6.2} | {mb:>7.0} |",
            inserted,
            inserted + n,
            ins.as_secs_f64() * 1e6 / n as f64,
            fl.as_secs_f64() * 1e6 / n as f64,
        );
        inserted += n;
        c += 1;
    }
    let stored = store.count()?;
    if stored != inserted as u64 {
        return Err(format!("only {stored} of {inserted} records stored").into());
    }
    println!();
    println!(
        "first 100k: {:.2} µs/record; last 100k: {:.2} µs/record; all: {:.2} µs/record",
        rows.first().copied().unwrap_or(0.0),
        rows.last().copied().unwrap_or(0.0),
        total.as_secs_f64() * 1e6 / inserted.max(1) as f64
    );
    eprintln!("(store files removed with the temp dir)");
    Ok(())
}
