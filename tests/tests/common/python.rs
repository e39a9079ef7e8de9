//! Running the Python SDK scripts of `tests/py` with the venv's interpreter.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest a script may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate is inside the workspace")
        .to_path_buf()
}

/// The Python interpreter that has the SDKs; fails (never skips) without one.
pub fn python() -> PathBuf {
    let hint = "run `scripts/test.sh` (it creates .venv with tests/py/requirements.txt)";
    if let Some(p) = std::env::var_os("LLM_PROXY_TEST_PYTHON") {
        // A relative path is taken from the workspace root (cargo runs tests in `tests/`).
        let p = workspace_root().join(p);
        assert!(
            p.exists(),
            "LLM_PROXY_TEST_PYTHON={} does not exist; {hint}",
            p.display()
        );
        return p;
    }
    let p = workspace_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "no Python for the SDK tests: LLM_PROXY_TEST_PYTHON is unset and {} does not exist; {hint}",
        p.display()
    );
    p
}

/// What the script did.
pub struct Outcome {
    /// `None` when it was killed after [`SCRIPT_TIMEOUT`].
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `python script arg` with a deadline (blocking; call from `spawn_blocking`).
pub fn run_script(python: &Path, script: &Path, arg: &str) -> Outcome {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg(arg)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PYTHONUNBUFFERED", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    // Keep the SDKs hermetic: no proxies, no credentials or URLs from the environment.
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_AUTH_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `tests/py/<script> arg` on a blocking thread and fails the test
/// unless it exits 0 within [`SCRIPT_TIMEOUT`] and prints `marker`; returns
/// the outcome (its stdout and stderr make a good failure report).
pub async fn run_passing(script: &str, arg: String, marker: &str) -> Outcome {
    let python = python();
    let path = workspace_root().join("tests/py").join(script);
    assert!(path.exists(), "{} is missing", path.display());
    let outcome = tokio::task::spawn_blocking(move || run_script(&python, &path, &arg))
        .await
        .expect("script runner");
    let report = outcome.report();
    match outcome.status {
        None => panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}\n{report}"),
        Some(status) => assert!(status.success(), "{script} failed ({status})\n{report}"),
    }
    assert!(
        outcome.stdout.contains(marker),
        "{script} did not print {marker:?}\n{report}"
    );
    outcome
}

impl Outcome {
    /// stdout and stderr, for assertion messages.
    pub fn report(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}
