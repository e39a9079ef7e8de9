//! [`PgCluster`]: a private PostgreSQL cluster for one test binary.
//!
//! `initdb` + `pg_ctl` from the installed PostgreSQL (`/usr/lib/postgresql/
//! <newest>/bin`, or `$LLM_PROXY_PG_BIN`), trust authentication, listening on
//! `127.0.0.1:<free port>` only, data in a fresh temporary directory. When
//! running as root the server runs as user `postgres` (initdb refuses root).
//! Missing binaries are an error, never a skip: a test that needs Postgres
//! fails loudly on a machine without it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Something went wrong starting or stopping the cluster.
#[derive(Debug, thiserror::Error)]
#[error("test PostgreSQL cluster: {0}")]
pub struct PgClusterError(pub String);

/// A running private PostgreSQL cluster; dropping it stops the server and
/// removes its data directory.
#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The newest installed PostgreSQL `bin` directory.
pub fn pg_bin_dir() -> Result<PathBuf, PgClusterError> {
    if let Some(dir) = std::env::var_os("LLM_PROXY_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            PgClusterError(format!(
                "PostgreSQL is not installed (/usr/lib/postgresql: {e}); \
                 install it (apt-get install postgresql) or set LLM_PROXY_PG_BIN"
            ))
        })?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        PgClusterError(
            "no /usr/lib/postgresql/*/bin/initdb; install PostgreSQL (apt-get install postgresql)"
                .into(),
        )
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl PgCluster {
    /// Creates and starts a new cluster on a free loopback port.
    pub fn start() -> Result<PgCluster, PgClusterError> {
        let bin = pg_bin_dir()?;
        let as_postgres = is_root();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "llm-proxy-pg-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| PgClusterError(format!("create {}: {e}", dir.display())))?;
        let port = {
            let l = TcpListener::bind("127.0.0.1:0")
                .map_err(|e| PgClusterError(format!("find a free port: {e}")))?;
            l.local_addr()
                .map_err(|e| PgClusterError(e.to_string()))?
                .port()
        };
        let mut cluster = PgCluster {
            bin,
            dir,
            port,
            as_postgres,
            running: false,
        };
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&cluster.dir))?;
        }
        let data = cluster.data_dir();
        let mut init = cluster.command("initdb");
        init.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(&mut init)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Starts the (stopped) server again on the same port.
    pub fn start_server(&mut self) -> Result<(), PgClusterError> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60",
            self.port,
            self.dir.display()
        );
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-o", &opts, "-w", "-t", "30", "-l"])
            .arg(self.dir.join("server.log"))
            .arg("start");
        run(&mut c)?;
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop_server(&mut self) -> Result<(), PgClusterError> {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        run(&mut c)?;
        self.running = false;
        Ok(())
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's working directory (data, log, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `db` (user `postgres`, no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, PgClusterError> {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U"])
            .arg("postgres")
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c"])
            .arg(format!("CREATE DATABASE \"{name}\""));
        run(&mut c)?;
        Ok(self.url(name))
    }

    /// Runs one SQL command in database `db` with `psql`; returns its
    /// unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PgClusterError> {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-U",
            "postgres",
            "-p",
            &self.port.to_string(),
            "-d",
            db,
            "-c",
            sql,
        ]);
        run(&mut c)
    }
}

fn run(c: &mut Command) -> Result<String, PgClusterError> {
    let out = c
        .output()
        .map_err(|e| PgClusterError(format!("cannot run {c:?}: {e}")))?;
    if !out.status.success() {
        return Err(PgClusterError(format!(
            "{c:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop_server();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
