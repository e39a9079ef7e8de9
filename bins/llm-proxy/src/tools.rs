//! `inspect` and `replay`: flags → the wire-capture crate → stdout. The
//! logic lives in `llm_proxy_wire_capture::{inspect, replay}`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use llm_proxy_wire_capture::Direction;
use llm_proxy_wire_capture::inspect::{self, Filter, InspectOptions};
use llm_proxy_wire_capture::replay::{self, ReplayOptions};

use crate::cli::{InspectArgs, ReplayArgs};

/// The largest `--slow-threshold` (a day).
const MAX_SLOW_THRESHOLD: Duration = Duration::from_secs(24 * 3600);

fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "llm-proxy: {message}");
    ExitCode::from(2)
}

/// `llm-proxy inspect`: exit 0, 1 when `--detect-issues` found issues, 2 on errors.
pub fn inspect(args: &InspectArgs) -> ExitCode {
    let mut directions = Vec::new();
    for d in &args.directions {
        match Direction::parse(d) {
            Some(d) => directions.push(d),
            None => {
                return fail(&format!(
                    "--direction {d:?}: expected 0-3 or client_request, client_response, backend_request, backend_response"
                ));
            }
        }
    }
    let slow_threshold = match Duration::try_from_secs_f64(args.slow_threshold) {
        Ok(d) if d <= MAX_SLOW_THRESHOLD => d,
        _ => return fail("--slow-threshold: expected seconds from 0 to 86400"),
    };
    let opts = InspectOptions {
        detect_issues: args.detect_issues,
        analyze: args.analyze,
        timeline: args.timeline,
        status_summary: args.status_summary,
        track_request: args.track_request.clone(),
        json: args.json,
        slow_threshold,
        filter: Filter {
            directions,
            backend: args.backend.clone(),
            session: args.session.clone(),
            since: args.since,
            until: args.until,
        },
    };
    match inspect::inspect_paths(&args.files, &opts) {
        Ok((text, found)) => {
            out(&text);
            if found {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// `llm-proxy replay`: exit 0 when everything matched, 1 on a mismatch, 2 on errors.
pub fn replay(args: &ReplayArgs) -> ExitCode {
    let loaded = match inspect::load(&args.files) {
        Ok(l) => l,
        Err(e) => return fail(&e.to_string()),
    };
    for (f, d) in &loaded.damage {
        let _ = writeln!(std::io::stderr().lock(), "llm-proxy: {}: {d}", f.display());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        if args.serve_backend {
            let addr = match format!("{}:{}", args.host, args.port).parse() {
                Ok(a) => a,
                Err(e) => return fail(&format!("--host/--port: {e}")),
            };
            let server = match replay::serve_backend(&loaded.entries, addr).await {
                Ok(s) => s,
                Err(e) => return fail(&e.to_string()),
            };
            out(&format!(
                "replay backend listening on http://{} ({} captured exchanges)\n",
                server.addr, server.exchanges
            ));
            tokio::select! {
                _ = server.wait() => {}
                _ = stop_signal() => {}
            }
            return ExitCode::SUCCESS;
        }
        let Some(proxy_url) = args.proxy_url.clone() else {
            return fail("--proxy-url or --serve-backend is required");
        };
        if !(args.speed == 0.0 || (args.speed.is_finite() && args.speed >= replay::MIN_SPEED)) {
            return fail("--speed: expected 0 (as fast as possible) or a number >= 0.001");
        }
        let mut headers = Vec::new();
        for h in &args.headers {
            match h.split_once(':') {
                Some((k, v)) => headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned())),
                None => return fail(&format!("--header {h:?}: expected NAME: VALUE")),
            }
        }
        let opts = ReplayOptions {
            proxy_url,
            speed: args.speed,
            headers,
        };
        match replay::replay_client(&loaded.entries, &opts).await {
            Ok(report) => {
                out(&if args.json {
                    report.json()
                } else {
                    report.text()
                });
                if report.mismatches() == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => fail(&e.to_string()),
        }
    })
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
