//! `loadgen`: a small HTTP/1.1 load generator for `bench/run.sh`, with an
//! open-loop (fixed-rate) mode that measures latency from each request's
//! *intended* send time, so a slow response cannot hide the requests that
//! should have been sent meanwhile (no coordinated omission), and exact
//! percentiles (every latency is kept and sorted; a 30 s run at 1,000 req/s
//! is 30,000 numbers).
//!
//! Blocking sockets, one OS thread per connection: a thread sleeps with
//! `nanosleep` (tens of µs late, not tokio's 1 ms timer wheel) until its next
//! slot. The lateness of the generator itself is reported as `send_lag_us`.
//!
//! ```text
//! loadgen --url http://127.0.0.1:PORT/v1/chat/completions --body FILE
//!         [--mode rate|closed|hold] [--rate 1000] [--connections 32]
//!         [--seconds 30] [--warmup 2] [--header 'Name: value']... [--unique]
//! ```
//!
//! `--unique` starts the first `"content":"` of every request with a unique
//! `<connection>-<n> `, so that no cache in the proxy recognises the text.
//!
//! - `rate`: requests start at `rate` per second, spread over `connections`
//!   keep-alive connections (a free connection takes the next slot).
//! - `closed`: each connection sends its next request when the previous one
//!   is done (saturation).
//! - `hold`: each connection sends one request and reads the whole response;
//!   for "N concurrent streams" (`peak_in_flight` says how many were open at once).
//!
//! Prints one JSON object: request counts, `latency_us` (intended send →
//! last byte), `ttfb_us` (intended send → first body byte; for SSE the first
//! event), `service_us` (actual send → last byte), `send_lag_us`, and
//! `events_per_response` (SSE `data:` lines; 0 for JSON).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Rate,
    Closed,
    Hold,
}

struct Args {
    host: String,
    path: String,
    body: Vec<u8>,
    headers: Vec<String>,
    mode: Mode,
    rate: f64,
    connections: usize,
    seconds: f64,
    warmup: f64,
    unique: bool,
}

fn parse_args() -> Result<Args, Error> {
    let mut url = None;
    let mut body_file = None;
    let mut headers = Vec::new();
    let mut mode = Mode::Rate;
    let mut unique = false;
    let (mut rate, mut connections, mut seconds, mut warmup) = (1000.0, 32, 30.0, 2.0);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--body" => body_file = Some(value()?),
            "--header" => headers.push(value()?),
            "--mode" => {
                mode = match value()?.as_str() {
                    "rate" => Mode::Rate,
                    "closed" => Mode::Closed,
                    "hold" => Mode::Hold,
                    other => return Err(format!("unknown mode {other}").into()),
                }
            }
            "--rate" => rate = value()?.parse()?,
            "--connections" => connections = value()?.parse()?,
            "--seconds" => seconds = value()?.parse()?,
            "--warmup" => warmup = value()?.parse()?,
            "--unique" => unique = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
        None => (rest.to_owned(), "/".to_owned()),
    };
    let body = std::fs::read(body_file.ok_or("--body is required")?)?;
    if connections == 0 || rate <= 0.0 {
        return Err("--connections and --rate must be positive".into());
    }
    Ok(Args {
        host,
        path,
        body,
        headers,
        mode,
        rate,
        connections,
        seconds,
        warmup,
        unique,
    })
}

/// One measured request, in µs.
#[derive(Clone, Copy)]
struct Sample {
    latency: u64,
    ttfb: u64,
    service: u64,
    lag: u64,
    events: u32,
}

#[derive(Default)]
struct ThreadResult {
    samples: Vec<Sample>,
    /// Responses completed, warm-up included (for CPU per request).
    completed: u64,
    non_2xx: u64,
    errors: u64,
    last_error: Option<String>,
}

/// What one response looked like.
struct Response {
    status: u16,
    first_byte: Instant,
    events: u32,
    keep_alive: bool,
}

/// A keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(host: &str) -> Result<Connection, Error> {
        let stream = TcpStream::connect(host)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Connection {
            reader: BufReader::with_capacity(16 * 1024, stream),
        })
    }

    fn exchange(&mut self, request: &[u8]) -> Result<Response, Error> {
        self.reader.get_mut().write_all(request)?;
        let mut line = String::new();
        self.read_line(&mut line)?;
        let status: u16 = line.split(' ').nth(1).ok_or("no status line")?.parse()?;
        let (mut length, mut chunked, mut keep_alive) = (None, false, true);
        loop {
            line.clear();
            self.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>()?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
        let mut first_byte = None;
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.read_line(&mut line)?;
                let size = line.trim_end().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size, 16)?;
                if size == 0 {
                    loop {
                        line.clear();
                        self.read_line(&mut line)?;
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(&mut body[start..])?;
                first_byte.get_or_insert_with(Instant::now);
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf)?;
            }
        } else if let Some(length) = length {
            body.resize(length, 0);
            if length > 0 {
                // The first byte: whatever the socket already holds.
                self.reader.fill_buf()?;
                first_byte = Some(Instant::now());
            }
            self.reader.read_exact(&mut body)?;
        } else {
            self.reader.read_to_end(&mut body)?;
            keep_alive = false;
        }
        let first_byte = first_byte.unwrap_or_else(Instant::now);
        Ok(Response {
            status,
            first_byte,
            events: count_events(&body),
            keep_alive,
        })
    }

    fn read_line(&mut self, line: &mut String) -> Result<(), Error> {
        if self.reader.read_line(line)? == 0 {
            return Err("connection closed".into());
        }
        Ok(())
    }
}

/// SSE `data:` lines in a body.
fn count_events(body: &[u8]) -> u32 {
    let mut n = 0;
    let mut at_line_start = true;
    for (i, b) in body.iter().enumerate() {
        if at_line_start && body[i..].starts_with(b"data:") {
            n += 1;
        }
        at_line_start = *b == b'\n';
    }
    n
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

struct Shared {
    args: Args,
    request: Vec<u8>,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    next_slot: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

/// The request bytes for `body` (Content-Length and extra headers included).
fn render_request(args: &Args, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        args.path,
        args.host,
        body.len()
    );
    for header in &args.headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    if args.mode == Mode::Hold {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    request
}

/// `body` with `<thread>-<n> ` at the start of its first `"content":"` string.
fn unique_body(body: &[u8], thread: usize, n: u64) -> Vec<u8> {
    const MARK: &[u8] = b"\"content\":\"";
    match body.windows(MARK.len()).position(|w| w == MARK) {
        Some(i) => {
            let at = i + MARK.len();
            let mut out = body[..at].to_vec();
            out.extend_from_slice(format!("{thread}-{n} ").as_bytes());
            out.extend_from_slice(&body[at..]);
            out
        }
        None => body.to_vec(),
    }
}

fn worker(shared: &Shared, thread: usize) -> ThreadResult {
    let mut result = ThreadResult::default();
    let mut sent_count = 0u64;
    let mut connection: Option<Connection> = None;
    let period = Duration::from_secs_f64(1.0 / shared.args.rate);
    loop {
        let intended = match shared.args.mode {
            Mode::Rate => {
                let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
                let at = shared.start + period.mul_f64(slot as f64);
                if at >= shared.end {
                    break;
                }
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                at
            }
            Mode::Closed => {
                let now = Instant::now();
                if now >= shared.end {
                    break;
                }
                now
            }
            Mode::Hold => return result,
        };
        let owned;
        let request = if shared.args.unique {
            sent_count += 1;
            owned = render_request(
                &shared.args,
                &unique_body(&shared.args.body, thread, sent_count),
            );
            &owned
        } else {
            &shared.request
        };
        let sent = Instant::now();
        let outcome = match connection.as_mut() {
            Some(c) => c.exchange(request),
            None => Connection::open(&shared.args.host).and_then(|mut c| {
                let r = c.exchange(request);
                connection = Some(c);
                r
            }),
        };
        let done = Instant::now();
        match outcome {
            Ok(response) => {
                result.completed += 1;
                if !response.keep_alive {
                    connection = None;
                }
                if !(200..300).contains(&response.status) {
                    result.non_2xx += 1;
                }
                if intended >= shared.measure_from {
                    result.samples.push(Sample {
                        latency: micros(done - intended),
                        ttfb: micros(response.first_byte.saturating_duration_since(intended)),
                        service: micros(done - sent),
                        lag: micros(sent.saturating_duration_since(intended)),
                        events: response.events,
                    });
                }
            }
            Err(error) => {
                connection = None;
                result.errors += 1;
                result.last_error = Some(error.to_string());
                if shared.args.mode != Mode::Rate {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    result
}

/// For `hold`: one request on a new connection (`Connection: close`), read to
/// the end; it counts as in flight from its first response bytes to its last.
fn hold_worker(shared: &Shared) -> ThreadResult {
    let mut result = ThreadResult::default();
    let sent = Instant::now();
    let outcome = Connection::open(&shared.args.host).and_then(|mut c| {
        c.reader.get_mut().write_all(&shared.request)?;
        // Wait for the head and the first bytes, then count this stream as open.
        c.reader.fill_buf()?;
        let open = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak_in_flight.fetch_max(open, Ordering::Relaxed);
        let first = Instant::now();
        let mut rest = Vec::new();
        let read = c.reader.read_to_end(&mut rest);
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        read?;
        let ok = rest.starts_with(b"HTTP/1.1 2");
        Ok((first, ok, count_events(&rest)))
    });
    let done = Instant::now();
    match outcome {
        Ok((first, ok, events)) => {
            result.completed += 1;
            if !ok {
                result.non_2xx += 1;
            }
            result.samples.push(Sample {
                latency: micros(done - sent),
                ttfb: micros(first - sent),
                service: micros(done - sent),
                lag: 0,
                events,
            });
        }
        Err(error) => {
            result.errors += 1;
            result.last_error = Some(error.to_string());
        }
    }
    result
}

fn percentiles(mut values: Vec<u64>) -> String {
    if values.is_empty() {
        return "null".to_owned();
    }
    values.sort_unstable();
    let at = |p: f64| {
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    };
    let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
    format!(
        r#"{{"p50":{},"p90":{},"p99":{},"p999":{},"max":{},"mean":{:.1}}}"#,
        at(50.0),
        at(90.0),
        at(99.0),
        at(99.9),
        values[values.len() - 1],
        mean
    )
}

fn main() -> Result<(), Error> {
    let args = parse_args()?;
    let request = render_request(&args, &args.body);
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let connections = args.connections;
    let mode = args.mode;
    let shared = Arc::new(Shared {
        args,
        request,
        start,
        measure_from,
        end,
        next_slot: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        peak_in_flight: AtomicUsize::new(0),
    });
    let mut threads = Vec::with_capacity(connections);
    for thread in 0..connections {
        let shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                if shared.args.mode == Mode::Hold {
                    hold_worker(&shared)
                } else {
                    worker(&shared, thread)
                }
            })?;
        threads.push(thread);
    }
    let mut total = ThreadResult::default();
    for thread in threads {
        let r = thread.join().map_err(|_| "a load thread panicked")?;
        total.samples.extend(r.samples);
        total.completed += r.completed;
        total.non_2xx += r.non_2xx;
        total.errors += r.errors;
        if r.last_error.is_some() {
            total.last_error = r.last_error;
        }
    }
    let measured = if mode == Mode::Hold {
        (Instant::now() - start).as_secs_f64()
    } else {
        (end - measure_from).as_secs_f64()
    };
    let n = total.samples.len();
    let events = if n == 0 {
        0.0
    } else {
        total
            .samples
            .iter()
            .map(|s| f64::from(s.events))
            .sum::<f64>()
            / n as f64
    };
    let mode_name = match mode {
        Mode::Rate => "rate",
        Mode::Closed => "closed",
        Mode::Hold => "hold",
    };
    let last_error = match &total.last_error {
        Some(e) => format!("{:?}", e.replace('"', "'")),
        None => "null".to_owned(),
    };
    let json = format!(
        concat!(
            r#"{{"tool":"loadgen","mode":"{}","connections":{},"target_rps":{},"duration_s":{:.3},"#,
            r#""requests":{},"rps":{:.1},"completed_incl_warmup":{},"non_2xx":{},"errors":{},"last_error":{},"#,
            r#""peak_in_flight":{},"events_per_response":{:.2},"#,
            r#""latency_us":{},"ttfb_us":{},"service_us":{},"send_lag_us":{}}}"#
        ),
        mode_name,
        connections,
        if mode == Mode::Rate {
            format!("{}", shared.args.rate)
        } else {
            "null".to_owned()
        },
        measured,
        n,
        n as f64 / measured,
        total.completed,
        total.non_2xx,
        total.errors,
        last_error,
        shared.peak_in_flight.load(Ordering::Relaxed),
        events,
        percentiles(total.samples.iter().map(|s| s.latency).collect()),
        percentiles(total.samples.iter().map(|s| s.ttfb).collect()),
        percentiles(total.samples.iter().map(|s| s.service).collect()),
        percentiles(total.samples.iter().map(|s| s.lag).collect()),
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}")?;
    Ok(())
}
