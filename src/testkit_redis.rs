//! Test support: a private `redis-server` per test, on a free port of
//! 127.0.0.1 (never 6379), in its own temporary directory, persisting
//! nothing. It can be killed (SIGKILL, like a crash) and restarted on the same
//! port. Not used by the broker itself.
//!
//! Tests start one with [`require_redis!`](crate::require_redis): when
//! `redis-server` is not installed it prints a loud `SKIPPED` line and returns
//! from the test, unless `TESSERA_REQUIRE_REDIS=1`, in which case the test
//! fails.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server has to answer before the start fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports are tried when a start fails (a port race).
pub const START_ATTEMPTS: usize = 5;
/// Environment variable that turns a missing `redis-server` into a failure.
pub const REQUIRE_ENV: &str = "TESSERA_REQUIRE_REDIS";

/// Files for a TLS-only server (PEM).
#[derive(Clone)]
pub struct TlsFiles {
    /// Server certificate chain.
    pub cert_pem: Vec<u8>,
    /// Server private key.
    pub key_pem: Vec<u8>,
    /// CA that redis-server is told about (`--tls-ca-cert-file`).
    pub ca_pem: Vec<u8>,
}

/// A private `redis-server` process.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    tls: bool,
    extra: Vec<String>,
}

/// Whether `redis-server` can be run.
pub fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the environment demands Redis-backed tests run.
pub fn redis_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// A started server; `Ok(None)` (after a loud `SKIPPED` line on stderr) when
/// `redis-server` is not installed and [`REQUIRE_ENV`] is not `1`; `Err` when
/// it is required but missing, or does not start.
pub fn redis_or_skip() -> Result<Option<RedisServer>, String> {
    if !redis_available() {
        if redis_required() {
            return Err(format!(
                "redis-server is not installed but {REQUIRE_ENV}=1 demands the Redis tests"
            ));
        }
        // Straight to the process's stderr: the test harness captures
        // `eprintln!` of passing tests, and this line must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: redis-server not installed (set {REQUIRE_ENV}=1 to fail instead) ***"
        );
        return Ok(None);
    }
    RedisServer::start().map(Some)
}

/// Starts a private Redis server for this test, or skips the test (returns
/// from it) when `redis-server` is missing and not required; panics when it
/// is required, or does not start.
#[macro_export]
macro_rules! require_redis {
    () => {
        match $crate::testkit_redis::redis_or_skip() {
            Ok(Some(server)) => server,
            Ok(None) => return,
            Err(e) => panic!("{}", e),
        }
    };
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn temp_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("tessera-redis-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

impl RedisServer {
    /// Starts a plain-TCP server on a free port.
    pub fn start() -> Result<Self, String> {
        Self::start_inner(None, &[])
    }

    /// Starts a plain-TCP server with extra `redis-server` arguments (for
    /// example `["--requirepass", "…"]`). A server with a password is only
    /// known to be ready once it accepts connections.
    pub fn start_with(extra: &[&str]) -> Result<Self, String> {
        Self::start_inner(None, extra)
    }

    /// Starts a TLS-only server (`--port 0 --tls-port P`, clients not
    /// authenticated) with the given certificate.
    pub fn start_tls(files: &TlsFiles) -> Result<Self, String> {
        Self::start_inner(Some(files), &[])
    }

    fn start_inner(tls: Option<&TlsFiles>, extra: &[&str]) -> Result<Self, String> {
        let dir = temp_dir()?;
        if let Some(f) = tls {
            for (name, data) in [
                ("server.pem", &f.cert_pem),
                ("server.key", &f.key_pem),
                ("ca.pem", &f.ca_pem),
            ] {
                std::fs::write(dir.join(name), data).map_err(|e| format!("write {name}: {e}"))?;
            }
        }
        let mut s = Self {
            port: 0,
            dir,
            child: None,
            tls: tls.is_some(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            s.port = free_port()?;
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => {
                    last = e;
                    s.kill();
                }
            }
        }
        Err(format!("redis-server did not start: {last}"))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(["--daemonize", "no"]);
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.dir.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &port]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "redis-server exited: {status}; log: {}",
                        self.log()
                    ));
                }
            }
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server did not answer; log: {}", self.log()))
    }

    /// Whether the server answers: `PING` for plain TCP; for TLS, that it
    /// accepts connections and logged that it is ready.
    fn answers(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        if self.tls || !self.extra.is_empty() {
            // the whole log: a replica logs its sync after this line
            return std::fs::read_to_string(self.dir.join("redis.log"))
                .is_ok_and(|l| l.contains("Ready to accept connections"));
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// `redis://127.0.0.1:P` (or `rediss://localhost:P` for a TLS server,
    /// so the certificate's DNS name matches).
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server with SIGKILL (a crash: nothing is saved) and waits
    /// for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server (if running) and starts a fresh, empty one on the
    /// same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("redis.log"));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
