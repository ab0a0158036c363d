// One file: test support only (feature `testkit`), the `redis-server` spawners
// for single, Cluster and Sentinel set-ups.
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

impl TlsFiles {
    /// A fresh private CA and a server certificate it signed for
    /// `localhost` and `127.0.0.1` (the address cluster nodes and sentinels
    /// announce), made with rcgen. The CA is the only trust anchor a client
    /// needs ([`TlsFiles::ca_pem`]).
    pub fn generate() -> Result<Self, String> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let e = |e: rcgen::Error| format!("test certificate: {e}");
        let ca_key = KeyPair::generate().map_err(e)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "tessera redis test CA");
        let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
        let key = KeyPair::generate().map_err(e)?;
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(e)?;
        let cert = params
            .signed_by(&key, &Issuer::new(ca, ca_key))
            .map_err(e)?;
        Ok(Self {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
            ca_pem: ca_cert.pem().into_bytes(),
        })
    }
}

/// A private `redis-server` process.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    tls: bool,
    extra: Vec<String>,
    /// `redis-server` configuration file written to the directory and
    /// passed first (a sentinel's, which Sentinel rewrites).
    conf: Option<String>,
    /// Whether readiness is checked with `PING` even with extra arguments.
    ping: bool,
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

/// `Ok(true)` when `redis-server` can run; `Ok(false)` after a loud
/// `SKIPPED` line when it cannot and is not required; `Err` when required.
fn available_or_skip() -> Result<bool, String> {
    if redis_available() {
        return Ok(true);
    }
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
    Ok(false)
}

/// A started server; `Ok(None)` (after a loud `SKIPPED` line on stderr) when
/// `redis-server` is not installed and [`REQUIRE_ENV`] is not `1`; `Err` when
/// it is required but missing, or does not start.
pub fn redis_or_skip() -> Result<Option<RedisServer>, String> {
    if !available_or_skip()? {
        return Ok(None);
    }
    RedisServer::start().map(Some)
}

/// Like [`redis_or_skip`], for a server that keeps its data across a
/// crash (`--appendonly yes --appendfsync always`): a [`RedisServer::kill`]
/// and [`RedisServer::restart`] is an outage, not a data loss.
pub fn persistent_redis_or_skip() -> Result<Option<RedisServer>, String> {
    if !available_or_skip()? {
        return Ok(None);
    }
    RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).map(Some)
}

/// A started [`RedisCluster`] of `masters` nodes, or `Ok(None)` / `Err`
/// exactly as [`redis_or_skip`].
pub fn cluster_or_skip(masters: usize) -> Result<Option<RedisCluster>, String> {
    if !available_or_skip()? {
        return Ok(None);
    }
    RedisCluster::start(masters).map(Some)
}

/// A started [`RedisCluster`] of `masters` nodes with one replica each
/// ([`RedisCluster::start_with_replicas`]), or `Ok(None)` / `Err` exactly as
/// [`redis_or_skip`].
pub fn cluster_with_replicas_or_skip(masters: usize) -> Result<Option<RedisCluster>, String> {
    if !available_or_skip()? {
        return Ok(None);
    }
    RedisCluster::start_with_replicas(masters).map(Some)
}

/// A started [`RedisSentinel`], or `Ok(None)` / `Err` exactly as
/// [`redis_or_skip`].
pub fn sentinel_or_skip() -> Result<Option<RedisSentinel>, String> {
    if !available_or_skip()? {
        return Ok(None);
    }
    RedisSentinel::start().map(Some)
}

/// A started TLS-only [`RedisCluster`] ([`RedisCluster::start_tls`]), or
/// `Ok(None)` / `Err` exactly as [`redis_or_skip`].
pub fn tls_cluster_or_skip(
    masters: usize,
    with_replicas: bool,
    files: &TlsFiles,
) -> Result<Option<RedisCluster>, String> {
    if !available_or_skip()? {
        return Ok(None);
    }
    RedisCluster::start_tls(masters, with_replicas, files).map(Some)
}

/// A started TLS-only [`RedisSentinel`] ([`RedisSentinel::start_tls`]), or
/// `Ok(None)` / `Err` exactly as [`redis_or_skip`].
pub fn tls_sentinel_or_skip(files: &TlsFiles) -> Result<Option<RedisSentinel>, String> {
    if !available_or_skip()? {
        return Ok(None);
    }
    RedisSentinel::start_tls(files).map(Some)
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

/// Writes the server certificate, key and CA where [`RedisServer`] passes
/// them to `redis-server`.
fn write_tls_files(dir: &Path, f: &TlsFiles) -> Result<(), String> {
    for (name, data) in [
        ("server.pem", &f.cert_pem),
        ("server.key", &f.key_pem),
        ("ca.pem", &f.ca_pem),
    ] {
        std::fs::write(dir.join(name), data).map_err(|e| format!("write {name}: {e}"))?;
    }
    Ok(())
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

    /// Starts a server with extra arguments that leave `PING` open
    /// (cluster nodes, replicas), and optionally a configuration file;
    /// plain TCP, or TLS-only when `tls` is given.
    fn start_open_tls(
        tls: Option<&TlsFiles>,
        conf: Option<String>,
        extra: &[&str],
    ) -> Result<Self, String> {
        let dir = temp_dir()?;
        if let Some(f) = tls {
            write_tls_files(&dir, f)?;
        }
        let s = Self {
            port: 0,
            dir,
            child: None,
            tls: tls.is_some(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            conf,
            ping: true,
        };
        if let Some(c) = &s.conf {
            std::fs::write(s.dir.join("server.conf"), c).map_err(|e| format!("write conf: {e}"))?;
        }
        s.start_loop()
    }

    /// Starts a TLS-only server (`--port 0 --tls-port P`, clients not
    /// authenticated) with the given certificate.
    pub fn start_tls(files: &TlsFiles) -> Result<Self, String> {
        Self::start_inner(Some(files), &[])
    }

    fn start_inner(tls: Option<&TlsFiles>, extra: &[&str]) -> Result<Self, String> {
        let dir = temp_dir()?;
        if let Some(f) = tls {
            write_tls_files(&dir, f)?;
        }
        let s = Self {
            port: 0,
            dir,
            child: None,
            tls: tls.is_some(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            conf: None,
            ping: false,
        };
        s.start_loop()
    }

    fn start_loop(mut self) -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            self.port = free_port()?;
            match self.spawn() {
                Ok(()) => return Ok(self),
                Err(e) => {
                    last = e;
                    self.kill();
                }
            }
        }
        Err(format!("redis-server did not start: {last}"))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        if self.conf.is_some() {
            cmd.arg(self.dir.join("server.conf"));
        }
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
        if self.tls && self.ping {
            // a real TLS handshake and PING (a sentinel logs no "Ready" line)
            drop(s);
            return self.command(&["PING"]).is_ok();
        }
        if self.tls || (!self.extra.is_empty() && !self.ping) {
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

    /// Whether the server listens for TLS only.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Runs one command on this server (setup only): over TLS, trusting its
    /// CA, for a TLS server.
    pub fn command(&self, args: &[&str]) -> Result<::redis::Value, String> {
        if !self.tls {
            return command(self.port, args);
        }
        let mut con = connect_tls(self.port, &self.dir.join("ca.pem"))?;
        run(&mut con, self.port, args)
    }

    /// [`RedisServer::command`] for a command that answers text.
    pub fn command_text(&self, args: &[&str]) -> Result<String, String> {
        as_text(args, self.command(args)?)
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

    /// Stops the server process (SIGSTOP): it keeps its connections open
    /// but answers nothing, a replica acknowledges nothing, until
    /// [`RedisServer::resume`].
    pub fn suspend(&self) -> Result<(), String> {
        self.signal("-STOP")
    }

    /// Lets a [suspended](RedisServer::suspend) server run again (SIGCONT).
    pub fn resume(&self) -> Result<(), String> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> Result<(), String> {
        let pid = self
            .child
            .as_ref()
            .ok_or("the server is not running")?
            .id()
            .to_string();
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .map_err(|e| format!("kill {sig} {pid}: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("kill {sig} {pid}: {status}"))
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

/// A synchronous connection to a test server (setup only).
fn connect(port: u16) -> Result<::redis::Connection, String> {
    ::redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))
}

/// How many times a server ran `cmd` (lower case) since it started or
/// since its last `CONFIG RESETSTAT` (`INFO commandstats`).
pub fn command_calls(port: u16, cmd: &str) -> Result<u64, String> {
    let info = command_text(port, &["INFO", "commandstats"])?;
    let prefix = format!("cmdstat_{cmd}:calls=");
    match info.lines().find_map(|l| l.strip_prefix(prefix.as_str())) {
        None => Ok(0),
        Some(rest) => rest
            .split(',')
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unreadable INFO commandstats line for {cmd}")),
    }
}

/// Whether a plain-TCP client gets an answer on `port`: connects, sends
/// `PING` in clear text and reads what comes back (at most 2 s). A TLS-only
/// port answers nothing a client could read as `+PONG` (it closes the
/// connection, or sends a TLS alert): the proof that TLS is really in use.
pub fn plaintext_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A synchronous TLS connection to a test server (`localhost`), trusting
/// the CA in `ca` only (setup only).
fn connect_tls(port: u16, ca: &Path) -> Result<::redis::Connection, String> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pem = std::fs::read(ca).map_err(|e| format!("read {}: {e}", ca.display()))?;
    ::redis::Client::build_with_tls(
        format!("rediss://localhost:{port}"),
        ::redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
    .map_err(|e| format!("cannot connect over TLS to localhost:{port}: {e}"))
}

/// Runs one command on a test server (setup only).
pub fn command(port: u16, args: &[&str]) -> Result<::redis::Value, String> {
    let mut con = connect(port)?;
    run(&mut con, port, args)
}

fn run(con: &mut ::redis::Connection, port: u16, args: &[&str]) -> Result<::redis::Value, String> {
    let _ = con.set_read_timeout(Some(Duration::from_secs(5)));
    let mut cmd = ::redis::cmd(args.first().copied().unwrap_or("PING"));
    for a in args.iter().skip(1) {
        cmd.arg(*a);
    }
    cmd.query(con)
        .map_err(|e| format!("{args:?} on port {port}: {e}"))
}

/// Runs one command that answers text (`INFO`, `CLUSTER INFO`).
pub fn command_text(port: u16, args: &[&str]) -> Result<String, String> {
    as_text(args, command(port, args)?)
}

fn as_text(args: &[&str], v: ::redis::Value) -> Result<String, String> {
    match v {
        ::redis::Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        ::redis::Value::VerbatimString { text, .. } => Ok(text),
        ::redis::Value::SimpleString(s) => Ok(s),
        other => Err(format!("{args:?}: unexpected reply {other:?}")),
    }
}

/// Waits until `ok()` holds, polling; `Err(what)` after `within`.
fn wait_for(within: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while !ok() {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A private Redis Cluster: `n` masters on free ports (optionally each with
/// one replica), each with its own directory, slots split evenly.
/// `cluster-require-full-coverage no`, so the slots of a live master keep
/// working while another is down. Kills its processes on drop.
pub struct RedisCluster {
    /// The masters, in slot order (node `i` holds the `i`-th slot range).
    pub nodes: Vec<RedisServer>,
    /// The replicas: `replicas[i]` replicates `nodes[i]`; empty unless
    /// started with [`RedisCluster::start_with_replicas`].
    pub replicas: Vec<RedisServer>,
}

/// Cluster node timeout of the test cluster (how soon a dead master is
/// marked failed, and a restarted one accepted again).
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1_000;

impl RedisCluster {
    /// Starts `masters` (1..=16) nodes, assigns slots with `CLUSTER
    /// ADDSLOTSRANGE`, joins them with `CLUSTER MEET` and waits until every
    /// node says `cluster_state:ok`.
    pub fn start(masters: usize) -> Result<Self, String> {
        Self::start_inner(masters, false, None)
    }

    /// Like [`RedisCluster::start`], TLS-only: every node listens on its
    /// `tls-port` alone (`port 0`), and the cluster bus and replication are
    /// TLS too (`tls-cluster yes`, `tls-replication yes`), so a client
    /// that does not speak TLS reaches nothing.
    /// With `with_replicas`, each master has a replica as in
    /// [`RedisCluster::start_with_replicas`].
    pub fn start_tls(
        masters: usize,
        with_replicas: bool,
        files: &TlsFiles,
    ) -> Result<Self, String> {
        Self::start_inner(masters, with_replicas, Some(files))
    }

    /// Like [`RedisCluster::start`], and gives each master one replica
    /// (`CLUSTER REPLICATE`, after `CLUSTER MEET`); waits until every
    /// replica is in sync and every master counts its replica.
    pub fn start_with_replicas(masters: usize) -> Result<Self, String> {
        Self::start_inner(masters, true, None)
    }

    fn start_inner(
        masters: usize,
        with_replicas: bool,
        tls: Option<&TlsFiles>,
    ) -> Result<Self, String> {
        if !(1..=16).contains(&masters) {
            return Err("a test cluster has 1 to 16 masters".into());
        }
        let timeout = CLUSTER_NODE_TIMEOUT_MS.to_string();
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &timeout,
            "--cluster-require-full-coverage",
            "no",
        ];
        if tls.is_some() {
            args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
        }
        if with_replicas {
            // a replica's first sync at once, not after the default delay
            args.extend([
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ]);
        }
        let start = |n: usize| -> Result<Vec<RedisServer>, String> {
            (0..n)
                .map(|_| RedisServer::start_open_tls(tls, None, &args))
                .collect()
        };
        let nodes = start(masters)?;
        let replicas = if with_replicas {
            start(masters)?
        } else {
            Vec::new()
        };
        let c = Self { nodes, replicas };
        for (i, n) in c.nodes.iter().enumerate() {
            let from = (i * 16384 / masters).to_string();
            let to = ((i + 1) * 16384 / masters - 1).to_string();
            n.command(&["CLUSTER", "ADDSLOTSRANGE", &from, &to])?;
        }
        for n in c.all().skip(1) {
            c.nodes[0].command(&["CLUSTER", "MEET", "127.0.0.1", &n.port().to_string()])?;
        }
        if with_replicas {
            // A replica must know its master before it may replicate it.
            c.wait_known(START_TIMEOUT)?;
            for (m, r) in c.nodes.iter().zip(&c.replicas) {
                let id = m.command_text(&["CLUSTER", "MYID"])?;
                r.command(&["CLUSTER", "REPLICATE", id.trim()])?;
            }
            wait_for(START_TIMEOUT, "every replica in sync", || {
                c.replicas.iter().all(|r| {
                    r.command_text(&["INFO", "replication"])
                        .is_ok_and(|i| i.contains("master_link_status:up"))
                }) && c.nodes.iter().all(|m| {
                    m.command_text(&["INFO", "replication"])
                        .is_ok_and(|i| i.contains("connected_slaves:1\r\n"))
                })
            })?;
        }
        c.wait_ok(START_TIMEOUT)?;
        Ok(c)
    }

    /// Every node: the masters, then the replicas.
    fn all(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().chain(&self.replicas)
    }

    /// Waits until every node knows every other node.
    fn wait_known(&self, within: Duration) -> Result<(), String> {
        let n = self.nodes.len() + self.replicas.len();
        wait_for(within, "every node to know every node", || {
            self.all().all(|node| {
                node.command_text(&["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains(&format!("cluster_known_nodes:{n}\r\n")))
            })
        })
    }

    /// Waits until every running node says `cluster_state:ok` and knows
    /// every node and every slot.
    pub fn wait_ok(&self, within: Duration) -> Result<(), String> {
        let n = self.nodes.len() + self.replicas.len();
        wait_for(within, "cluster_state:ok on every node", || {
            self.all().all(|node| {
                node.command_text(&["CLUSTER", "INFO"]).is_ok_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_assigned:16384")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains(&format!("cluster_known_nodes:{n}\r\n"))
                })
            })
        })
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…` (`rediss+cluster://…`
    /// for a TLS cluster: add `?ca=` [`RedisCluster::ca_file`] to trust it).
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let scheme = if self.nodes[0].is_tls() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}+cluster://{}", nodes.join(","))
    }

    /// The CA (PEM file) of a TLS cluster's certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.nodes[0].dir().join("ca.pem")
    }

    /// The index of the node that serves `key`.
    pub fn node_for(&self, key: &str) -> Result<usize, String> {
        let slot = match self.nodes[0].command(&["CLUSTER", "KEYSLOT", key])? {
            ::redis::Value::Int(i) => usize::try_from(i).map_err(|e| e.to_string())?,
            other => return Err(format!("CLUSTER KEYSLOT: {other:?}")),
        };
        Ok(slot * self.nodes.len() / 16384)
    }
}

/// A private Redis Sentinel set-up: a primary, one replica and one sentinel
/// (`sentinel monitor m 127.0.0.1 PORT 1`, `down-after-milliseconds` 500,
/// `failover-timeout` 2000). Kills its processes on drop.
pub struct RedisSentinel {
    /// The data nodes: `[0]` starts as the primary, `[1]` as its replica.
    pub nodes: Vec<RedisServer>,
    /// The sentinel.
    pub sentinel: RedisServer,
}

/// The master name the test sentinel monitors.
pub const SENTINEL_MASTER: &str = "m";

impl RedisSentinel {
    /// Starts the primary, the replica (waits until it is in sync) and the
    /// sentinel (waits until it knows the replica).
    pub fn start() -> Result<Self, String> {
        Self::start_inner(None)
    }

    /// Like [`RedisSentinel::start`], TLS-only: the primary, the replica and
    /// the sentinel listen on their `tls-port` alone (`port 0`);
    /// replication and the sentinel's links to the data nodes are TLS
    /// (`tls-replication yes`), so a client that does not speak TLS reaches
    /// nothing.
    pub fn start_tls(files: &TlsFiles) -> Result<Self, String> {
        Self::start_inner(Some(files))
    }

    fn start_inner(tls: Option<&TlsFiles>) -> Result<Self, String> {
        let tls_replication: &[&str] = match tls {
            Some(_) => &["--tls-replication", "yes"],
            None => &[],
        };
        let mut args = vec![
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ];
        args.extend(tls_replication);
        let primary = RedisServer::start_open_tls(tls, None, &args)?;
        let pport = primary.port().to_string();
        let mut args = vec![
            "--replicaof",
            "127.0.0.1",
            &pport,
            "--repl-diskless-load",
            "swapdb",
        ];
        args.extend(tls_replication);
        let replica = RedisServer::start_open_tls(tls, None, &args)?;
        wait_for(START_TIMEOUT, "the replica to sync", || {
            replica
                .command_text(&["INFO", "replication"])
                .is_ok_and(|i| i.contains("master_link_status:up"))
        })?;
        let conf = format!(
            "sentinel monitor {m} 127.0.0.1 {pport} 1\n\
             sentinel down-after-milliseconds {m} 500\n\
             sentinel failover-timeout {m} 2000\n",
            m = SENTINEL_MASTER
        );
        let mut args = vec!["--sentinel"];
        args.extend(tls_replication);
        let sentinel = RedisServer::start_open_tls(tls, Some(conf), &args)?;
        let s = Self {
            nodes: vec![primary, replica],
            sentinel,
        };
        // Promotable: the sentinel has the replica's own INFO (its run id)
        // and sees its link to the primary up.
        wait_for(START_TIMEOUT, "the sentinel to see the replica", || {
            let Ok(::redis::Value::Array(replicas)) =
                s.sentinel
                    .command(&["SENTINEL", "REPLICAS", SENTINEL_MASTER])
            else {
                return false;
            };
            replicas.iter().any(|r| {
                let ::redis::Value::Array(kv) = r else {
                    return false;
                };
                let field = |name: &str| {
                    kv.chunks(2).find_map(|p| match p {
                        [::redis::Value::BulkString(k), ::redis::Value::BulkString(v)]
                            if k.as_slice() == name.as_bytes() =>
                        {
                            Some(String::from_utf8_lossy(v).into_owned())
                        }
                        _ => None,
                    })
                };
                field("flags").as_deref() == Some("slave")
                    && field("master-link-status").as_deref() == Some("ok")
                    && field("runid").is_some_and(|r| !r.is_empty())
            })
        })?;
        Ok(s)
    }

    /// Waits until the replica has applied everything the primary wrote
    /// (replication offsets equal; replication is asynchronous, so what it
    /// has not received is lost in a failover).
    pub fn wait_replicated(&self, within: Duration) -> Result<(), String> {
        let offset = |node: &RedisServer, field: &str| -> Option<u64> {
            let info = node.command_text(&["INFO", "replication"]).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
        };
        let (p, r) = (&self.nodes[0], &self.nodes[1]);
        wait_for(within, "the replica to catch up", || {
            let po = offset(p, "master_repl_offset:");
            po.is_some() && po == offset(r, "slave_repl_offset:")
        })
    }

    /// `redis+sentinel://127.0.0.1:SP/m` (`rediss+sentinel://…` for a TLS
    /// set-up: add `?ca=` [`RedisSentinel::ca_file`] to trust it).
    pub fn url(&self) -> String {
        let scheme = if self.sentinel.is_tls() {
            "rediss"
        } else {
            "redis"
        };
        format!(
            "{scheme}+sentinel://127.0.0.1:{}/{SENTINEL_MASTER}",
            self.sentinel.port()
        )
    }

    /// The CA (PEM file) of a TLS set-up's certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.sentinel.dir().join("ca.pem")
    }

    /// The port of the primary the sentinel names now.
    pub fn primary_port(&self) -> Result<u16, String> {
        match self
            .sentinel
            .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER])?
        {
            ::redis::Value::Array(v) => match v.get(1) {
                Some(::redis::Value::BulkString(p)) => String::from_utf8_lossy(p)
                    .parse()
                    .map_err(|e| format!("bad port: {e}")),
                other => Err(format!("unexpected master address {other:?}")),
            },
            other => Err(format!("unexpected master address {other:?}")),
        }
    }

    /// The index in [`Self::nodes`] of the primary the sentinel names now.
    pub fn primary_index(&self) -> Result<usize, String> {
        let p = self.primary_port()?;
        self.nodes
            .iter()
            .position(|n| n.port() == p)
            .ok_or_else(|| format!("the sentinel names an unknown primary on port {p}"))
    }
}
