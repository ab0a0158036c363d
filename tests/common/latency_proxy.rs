//! A TCP proxy that delays what clients send upstream, to make a real
//! server (Redis) look slow without pausing it.
//!
//! Every chunk a client sends is held for `delay ± jitter` (uniform, never
//! negative) before it is forwarded; chunks of one connection keep their
//! order (a chunk is never released before the one before it), so on one
//! connection a long delay also holds back the chunks behind it (head-of-line
//! blocking, as with a slow server). Answers flow back undelayed unless
//! [`LatencyProxy::set_answer_delay`] says otherwise (to hold back a Redis
//! replication stream, whose data flows from the server to the replica).
//! Delays can be changed at any time and apply to chunks read from then on,
//! on every connection. The proxy counts the
//! chunks it forwarded, so a test can see how much traffic reached the
//! server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Default)]
struct Shared {
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    answer_delay_us: AtomicU64,
    forwarded: AtomicU64,
    connections: AtomicU64,
}

pub struct LatencyProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl LatencyProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> LatencyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        s.connections.fetch_add(1, Ordering::Relaxed);
                        pump(client, server, s).await;
                    }
                });
            }
        });
        LatencyProxy {
            port,
            shared,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Holds every chunk sent from now on for `delay` (± the jitter).
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Spreads the delay uniformly over `delay ± jitter`.
    pub fn set_jitter(&self, jitter: Duration) {
        self.shared
            .jitter_us
            .store(jitter.as_micros() as u64, Ordering::SeqCst);
    }

    /// Holds every chunk the server sends from now on for `delay`.
    pub fn set_answer_delay(&self, delay: Duration) {
        self.shared
            .answer_delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Chunks forwarded upstream so far.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Upstream connections opened so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn sample_delay(s: &Shared) -> Duration {
    let d = s.delay_us.load(Ordering::SeqCst) as i64;
    let j = s.jitter_us.load(Ordering::SeqCst) as i64;
    let offset = if j == 0 {
        0
    } else {
        let r = (uuid::Uuid::new_v4().as_u64_pair().0 % (2 * j as u64 + 1)) as i64;
        r - j
    };
    Duration::from_micros((d + offset).max(0) as u64)
}

async fn pump(client: TcpStream, server: TcpStream, s: Arc<Shared>) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = s.clone();
    let down = s.clone();
    let _ = tokio::join!(
        delayed_copy(cr, sw, s.clone(), move || sample_delay(&up), true),
        delayed_copy(
            sr,
            cw,
            s,
            move || Duration::from_micros(down.answer_delay_us.load(Ordering::SeqCst)),
            false
        ),
    );
}

/// Copies `r` to `w`, holding each chunk for `delay()` and keeping order;
/// counts forwarded chunks when `count`.
async fn delayed_copy(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    s: Arc<Shared>,
    delay: impl Fn() -> Duration,
    count: bool,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    // reader -> queue, stamped with its release time
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last = Instant::now();
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let release = (Instant::now() + delay()).max(last);
            last = release;
            if tx.send((release, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    // queue -> writer, each chunk at its release time
    let writer = async move {
        while let Some((release, chunk)) = rx.recv().await {
            tokio::time::sleep_until(release).await;
            if w.write_all(&chunk).await.is_err() {
                break;
            }
            if count {
                s.forwarded.fetch_add(1, Ordering::SeqCst);
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}
