//! The JSON-lines sink: where the audit writer puts each batch's lines.
//!
//! How a batch reaches standard output depends on what standard output is,
//! because the writer waits for it before any token of the batch is handed
//! out, and a hand-off to another thread on every batch costs more CPU than
//! the write itself (two thread wake-ups per batch; see BENCHMARKS.md):
//!
//! - **A pipe or a socket** (a container runtime's log FIFO, journald's
//!   stream socket, `| tee`): the writer writes it itself, non-blocking,
//!   through the runtime's reactor. A reader that stops reading fills the
//!   pipe; the batch then waits (asynchronously, no thread is held) and fails
//!   after the audit timeout like any other sink failure. Bytes of a line
//!   that did not fit are kept and written first next time, so the output
//!   never holds a torn line; whole lines of a refused batch that were not
//!   started are dropped.
//! - **A device that does not block** (`/dev/null`): written inline.
//! - **A terminal, a regular file, anything else**: on the blocking pool, as
//!   a terminal can be paused and a file can stall on its disk.
//!
//! The file sink (`[audit] sink = "file:…"`) always uses the blocking pool.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::store::AuditLine;

use std::os::fd::{AsFd, BorrowedFd};

/// What standard output was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StdoutKind {
    /// A pipe (FIFO): non-blocking writes.
    Fifo,
    /// A stream socket: non-blocking writes.
    StreamSocket,
    /// A device that never blocks (not a terminal): inline writes.
    NonBlockingDevice,
    /// Anything else: the blocking pool.
    Other,
}

/// Classifies `fd` (standard output in production; any descriptor in tests).
pub(crate) fn classify(fd: BorrowedFd<'_>) -> StdoutKind {
    use rustix::fs::FileType;
    let Ok(st) = rustix::fs::fstat(fd) else {
        return StdoutKind::Other;
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Fifo => StdoutKind::Fifo,
        FileType::Socket
            if rustix::net::sockopt::socket_type(fd).ok()
                == Some(rustix::net::SocketType::STREAM) =>
        {
            StdoutKind::StreamSocket
        }
        FileType::CharacterDevice if !std::io::IsTerminal::is_terminal(&fd) => {
            StdoutKind::NonBlockingDevice
        }
        _ => StdoutKind::Other,
    }
}

/// The non-blocking end the writer writes.
enum Conduit {
    Fifo(tokio::net::unix::pipe::Sender),
    Socket(tokio::net::UnixStream),
}

impl Conduit {
    async fn writable(&self) -> std::io::Result<()> {
        match self {
            Conduit::Fifo(p) => p.writable().await,
            Conduit::Socket(s) => s.writable().await,
        }
    }

    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conduit::Fifo(p) => p.try_write(buf),
            Conduit::Socket(s) => s.try_write(buf),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conduit::Fifo(p) => p.as_fd(),
            Conduit::Socket(s) => s.as_fd(),
        }
    }
}

/// A pipe or stream socket written without blocking.
pub(crate) struct PipeLines {
    out: Conduit,
    /// The descriptor's flags before `O_NONBLOCK` was added (restored on drop:
    /// the open file description may be shared with a parent process).
    flags: rustix::fs::OFlags,
    /// Bytes accepted for writing but not yet written.
    pending: Vec<u8>,
    /// Whether the last byte written ended a line.
    at_line_start: bool,
    /// Bytes written so far (where `pending` starts).
    offset: u64,
    /// For each line in `pending` with a `seq`: where it ends (an absolute
    /// byte count), and its `seq`.
    ends: VecDeque<(u64, u64)>,
    /// `seq` of the last line written whole.
    written_seq: u64,
}

impl PipeLines {
    /// Takes a duplicate of `fd` (a FIFO or a stream socket, as
    /// [`classify`] found it), makes it non-blocking and registers it with
    /// the reactor. `None` (the caller falls back to the blocking pool) for
    /// any other kind, or when any step fails.
    pub(crate) fn new(fd: BorrowedFd<'_>, kind: StdoutKind) -> Option<Self> {
        if !matches!(kind, StdoutKind::Fifo | StdoutKind::StreamSocket) {
            return None;
        }
        let owned = fd.try_clone_to_owned().ok()?;
        let flags = rustix::fs::fcntl_getfl(&owned).ok()?;
        let out = match kind {
            // Checks that it is a FIFO and sets O_NONBLOCK.
            StdoutKind::Fifo => {
                tokio::net::unix::pipe::Sender::from_owned_fd(owned).map(Conduit::Fifo)
            }
            StdoutKind::StreamSocket => {
                let s = std::os::unix::net::UnixStream::from(owned);
                s.set_nonblocking(true)
                    .and_then(|()| tokio::net::UnixStream::from_std(s))
                    .map(Conduit::Socket)
            }
            StdoutKind::NonBlockingDevice | StdoutKind::Other => return None,
        };
        match out {
            Ok(out) => Some(Self {
                out,
                flags,
                pending: Vec::new(),
                at_line_start: true,
                offset: 0,
                ends: VecDeque::new(),
                written_seq: 0,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "audit lines: stdout cannot be polled; using the blocking pool");
                None
            }
        }
    }

    /// Writes `buf` (whole lines) after whatever a timed-out batch left:
    /// the rest of a started line is finished first; lines not started are
    /// dropped (their batch was refused). Cancel-safe: dropping the future
    /// keeps the unwritten bytes for the next call. The batch is taken, not
    /// copied, when nothing was left.
    #[cfg(test)]
    pub(crate) async fn write(&mut self, buf: Vec<u8>) -> std::io::Result<()> {
        self.write_seq(buf, Vec::new()).await
    }

    /// [`PipeLines::write`], knowing where each line of `buf` ends and its
    /// `seq` (`ends`, relative to `buf`), so [`PipeLines::written_seq`] is
    /// the `seq` of the last line written whole, even after a cancel.
    pub(crate) async fn write_seq(
        &mut self,
        buf: Vec<u8>,
        ends: Vec<(usize, u64)>,
    ) -> std::io::Result<()> {
        let base = if self.at_line_start {
            self.pending = buf;
            self.ends.clear();
            self.offset
        } else {
            let end = self
                .pending
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.pending.len(), |i| i + 1);
            self.pending.truncate(end);
            let kept_to = self.offset + end as u64;
            self.ends.retain(|(e, _)| *e <= kept_to);
            self.pending.extend_from_slice(&buf);
            kept_to
        };
        for (e, seq) in ends {
            self.ends.push_back((base + e as u64, seq));
        }
        while !self.pending.is_empty() {
            match self.out.try_write(&self.pending) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "stdout accepted no bytes",
                    ))
                }
                Ok(n) => {
                    self.at_line_start = self.pending[n - 1] == b'\n';
                    self.pending.drain(..n);
                    self.offset += n as u64;
                    while let Some(&(e, seq)) = self.ends.front() {
                        if e > self.offset {
                            break;
                        }
                        self.written_seq = seq;
                        self.ends.pop_front();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.out.writable().await?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for PipeLines {
    fn drop(&mut self) {
        let _ = rustix::fs::fcntl_setfl(self.out.fd(), self.flags);
    }
}

/// The line sink the writer owns.
pub(crate) enum Lines {
    Off,
    /// Standard output on the blocking pool.
    Stdout,
    /// Standard output when it is a device that never blocks.
    Inline(std::fs::File),
    /// Standard output when it is a pipe or socket.
    Pipe(PipeLines),
    File(Arc<Mutex<std::fs::File>>),
}

impl Lines {
    /// The sink for standard output, chosen by what it is.
    pub(crate) fn stdout() -> Self {
        let out = std::io::stdout();
        let fd = out.as_fd();
        let kind = classify(fd);
        let lines = match kind {
            StdoutKind::Fifo | StdoutKind::StreamSocket => {
                PipeLines::new(fd, kind).map(Lines::Pipe)
            }
            StdoutKind::NonBlockingDevice => fd
                .try_clone_to_owned()
                .ok()
                .map(|o| Lines::Inline(std::fs::File::from(o))),
            StdoutKind::Other => None,
        };
        let lines = lines.unwrap_or(Lines::Stdout);
        tracing::debug!(?kind, how = lines.how(), "audit lines: standard output");
        lines
    }

    /// How lines are written (for logs and tests).
    pub(crate) fn how(&self) -> &'static str {
        match self {
            Lines::Off => "off",
            Lines::Stdout => "blocking pool",
            Lines::Inline(_) => "inline",
            Lines::Pipe(_) => "non-blocking pipe",
            Lines::File(_) => "file, blocking pool",
        }
    }

    /// Writes the records of `recs` (one chain, in `seq` order) that are
    /// past `written` (the `seq` of the last record this sink holds), then
    /// moves `written`. A batch written again after a failure, or a write
    /// that finished after its caller gave up (the blocking pool keeps
    /// going), never puts a record in twice: the check and the write happen
    /// under the sink's lock. `Err` names the cause.
    pub(crate) async fn write(
        &mut self,
        recs: &[AuditLine],
        written: &Arc<AtomicU64>,
    ) -> Result<(), LinesError> {
        let from = written.load(Ordering::SeqCst);
        let Some(last) = recs.last().map(|r| r.seq) else {
            return Ok(());
        };
        if last <= from {
            return Ok(());
        }
        let r = match self {
            Lines::Off => Ok(()),
            Lines::Pipe(p) => {
                let from = from.max(p.written_seq);
                let (buf, ends) = join_lines(recs, from);
                let r = p.write_seq(buf, ends).await;
                written.fetch_max(p.written_seq, Ordering::SeqCst);
                r
            }
            Lines::Inline(f) => {
                let (buf, _) = join_lines(recs, from);
                f.write_all(&buf)
            }
            Lines::Stdout => {
                let recs = recs.to_vec();
                let written = written.clone();
                on_blocking_pool(move || {
                    let mut out = std::io::stdout().lock();
                    let (buf, _) = join_lines(&recs, written.load(Ordering::SeqCst));
                    out.write_all(&buf).and_then(|_| out.flush())?;
                    written.fetch_max(last, Ordering::SeqCst);
                    Ok(())
                })
                .await
            }
            Lines::File(f) => {
                let f = f.clone();
                let recs = recs.to_vec();
                let written = written.clone();
                on_blocking_pool(move || {
                    let mut f = f
                        .lock()
                        .map_err(|_| std::io::Error::other("audit file lock poisoned"))?;
                    let (buf, _) = join_lines(&recs, written.load(Ordering::SeqCst));
                    if buf.is_empty() {
                        return Ok(());
                    }
                    let before = f.metadata()?.len();
                    let r = f.write_all(&buf).and_then(|_| f.flush());
                    if r.is_err() {
                        // Leave no partial line behind.
                        let _ = f.set_len(before);
                    } else {
                        written.fetch_max(last, Ordering::SeqCst);
                    }
                    r
                })
                .await
            }
        };
        if r.is_ok() {
            written.fetch_max(last, Ordering::SeqCst);
        }
        r.map_err(LinesError)
    }
}

/// A line sink (stdout, a file, a pipe) refused a batch.
#[derive(Debug, thiserror::Error)]
#[error("audit lines: {0}")]
pub(crate) struct LinesError(std::io::Error);

/// The lines of `recs` past `from`, newline-terminated, and where each
/// ends in the buffer with its `seq`.
fn join_lines(recs: &[AuditLine], from: u64) -> (Vec<u8>, Vec<(usize, u64)>) {
    let mut buf = Vec::with_capacity(recs.len() * 512);
    let mut ends = Vec::with_capacity(recs.len());
    for r in recs.iter().filter(|r| r.seq > from) {
        buf.extend_from_slice(r.line.as_bytes());
        buf.push(b'\n');
        ends.push((buf.len(), r.seq));
    }
    (buf, ends)
}

/// Runs a blocking write on the blocking pool.
async fn on_blocking_pool(
    f: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("writer task failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = std::io::pipe().unwrap();
        (
            std::fs::File::from(std::os::fd::OwnedFd::from(r)),
            std::fs::File::from(std::os::fd::OwnedFd::from(w)),
        )
    }

    #[test]
    fn classifies_pipes_devices_and_files() {
        let (r, w) = pipe();
        assert_eq!(classify(w.as_fd()), StdoutKind::Fifo);
        assert_eq!(classify(r.as_fd()), StdoutKind::Fifo);
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        assert_eq!(classify(null.as_fd()), StdoutKind::NonBlockingDevice);
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("a")).unwrap();
        assert_eq!(classify(f.as_fd()), StdoutKind::Other);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(classify(a.as_fd()), StdoutKind::StreamSocket);
        let d = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert_eq!(classify(d.as_fd()), StdoutKind::Other);
    }

    #[tokio::test]
    async fn a_pipe_gets_every_line_and_the_flags_are_restored() {
        let (mut r, w) = pipe();
        let before = rustix::fs::fcntl_getfl(&w).unwrap();
        assert!(!before.contains(rustix::fs::OFlags::NONBLOCK));
        let mut p = PipeLines::new(w.as_fd(), StdoutKind::Fifo).unwrap();
        assert!(rustix::fs::fcntl_getfl(&w)
            .unwrap()
            .contains(rustix::fs::OFlags::NONBLOCK));
        p.write(b"one\ntwo\n".to_vec()).await.unwrap();
        drop(p);
        assert_eq!(rustix::fs::fcntl_getfl(&w).unwrap(), before);
        drop(w);
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "one\ntwo\n");
    }

    /// A reader that stops: the write waits without holding a thread and is
    /// cut by the caller's timeout; the next write finishes the torn line,
    /// drops the refused batch's unstarted lines, and writes its own.
    #[tokio::test]
    async fn a_full_pipe_times_out_and_never_leaves_a_torn_line() {
        let (r, w) = pipe();
        let cap = rustix::pipe::fcntl_getpipe_size(&w).unwrap();
        let mut p = PipeLines::new(w.as_fd(), StdoutKind::Fifo).unwrap();
        // Lines of 100 bytes, more than the pipe holds, so one is torn.
        let line = |c: u8| {
            let mut l = vec![c; 99];
            l.push(b'\n');
            l
        };
        let big: Vec<u8> = (0..(cap / 100 + 50))
            .flat_map(|i| line(b'a' + (i % 20) as u8))
            .collect();
        let cut =
            tokio::time::timeout(std::time::Duration::from_millis(200), p.write(big.clone())).await;
        assert!(cut.is_err(), "a full pipe must not complete the batch");
        assert!(!p.at_line_start, "the pipe filled mid-line");
        // A reader drains in the background while the next batch is written.
        let reader = std::thread::spawn(move || {
            let mut r = r;
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            all
        });
        p.write(b"next\n".to_vec()).await.unwrap();
        drop(p);
        drop(w);
        let all = reader.join().unwrap();
        assert_eq!(all.len() % 100, 5, "whole 100-byte lines, then \"next\\n\"");
        let body = &all[..all.len() - 5];
        for l in body.chunks(100) {
            assert_eq!(l[99], b'\n');
            assert!(l[..99].iter().all(|&b| b == l[0]), "a line was torn");
        }
        assert!(body.len() < big.len(), "unstarted lines were dropped");
        assert!(body.len() >= cap, "everything the pipe took was kept");
        assert!(all.ends_with(b"next\n"));
    }

    #[tokio::test]
    async fn a_stream_socket_gets_every_line() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut p = PipeLines::new(a.as_fd(), StdoutKind::StreamSocket).unwrap();
        assert!(matches!(p.out, Conduit::Socket(_)));
        p.write(b"one\n".to_vec()).await.unwrap();
        p.write(b"two\n".to_vec()).await.unwrap();
        drop(p);
        drop(a);
        let mut got = String::new();
        b.read_to_string(&mut got).unwrap();
        assert_eq!(got, "one\ntwo\n");
    }

    #[tokio::test]
    async fn a_closed_reader_is_an_error_not_a_hang() {
        let (r, w) = pipe();
        let mut p = PipeLines::new(w.as_fd(), StdoutKind::Fifo).unwrap();
        drop(r);
        let e = p.write(b"x\n".to_vec()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
