//! The key schema of the Redis store: every key name is made here.
//!
//! `P` is the configured prefix (`[A-Za-z0-9_.-]{1,32}`, so it never holds a
//! `{` and the hash tag is always the one shown). `H(x)` is
//! `hex(sha256(x))`: identifiers from users (subjects, jti, task and grant
//! ids, namespaces) never appear raw in a key name, so no value can collide
//! with another key type, inject a pattern or grow a key. Keys are built only
//! by the `key_*` functions below; `KEYS`/`SCAN` are never used.
//!
//! | key | type | TTL | written by |
//! |-----|------|-----|------------|
//! | `P:{rev}:e:<kind>:H(value)` | string `"<revoked_at> <expires_at>"` | `EXAT expires_at` (the max of all revocations of it) | revoke script |
//! | `P:{rev}:feed` | stream, fields `k v r x`, `MAXLEN ~` [`FEED_MAXLEN`] | `EXPIREAT` the latest entry's `expires_at` (refreshed on each write, only ever extended) | revoke script |
//! | `P:{rev}:blk:H(subject)` | string `until` | `EXAT until` (the max) | block script; unblock script deletes it |
//! | `P:{rev}:epoch` | string `ID AT new\|recovered` (the data epoch, [`crate::store::epoch`]) | none | `SET NX` by the first broker; `SET` by `tessera store recover` |
//! | `P:{rev}:blocks` | hash subject → until (for `tessera blocks list`; ended ones pruned) | `EXPIREAT` the latest block's end (only ever extended) | block, unblock and list scripts |
//! | `P:rp:H(len(ns) ‖ ns ‖ id)` | string `1` | `EXAT expires_at` | `SET NX EXAT` |
//! | `P:{g:H(subject)}:gr:H(id)` | hash `j` (grant JSON), `r` (uses left or `u`), `x` (expires_at) | `EXAT expires_at` | grant create script; consume script decrements `r` |
//! | `P:{g:H(subject)}:idx` | set of `H(id)` of the subject's grants | `EXPIREAT` the latest grant's expiry (only ever extended) | grant create / consume / revoke scripts |
//! | `P:{gx}:id:H(id)` | string subject | `EXAT expires_at` | grant pointer script |
//! | `P:{gx}:all` | sorted set id → expires_at | `EXPIREAT` the latest grant's expiry | grant pointer script |
//! | `P:{ap}:a:H(id)` | hash `j` (approval JSON as created), `s` (state), `p` (last poll), `x` (expires_at), `r` (requester), `h` (request hash), `b`/`t`/`w` (decided by, at, reason) | `EXAT expires_at + APPROVAL_RETAIN_SECS` | approval create script; decide and poll scripts change `s`, `p`, `b`, `t`, `w` |
//! | `P:{ap}:all` | sorted set id → expires_at + retention | `EXPIREAT` the latest (only ever extended) | approval create script |
//! | `P:{ap}:rq:H(requester)` | sorted set id → expires_at (the requester's live approvals, for the cap) | `EXPIREAT` the latest | approval create script |
//! | `P:{ap}:rh:H(len(requester) ‖ requester ‖ request hash)` | hash `i` (id), `d` (`H(id)`) of the latest approval of that request by that requester (asking twice while it is pending finds it) | `EXPIREAT expires_at` | approval create script |
//! | `P:{gd:H(identity)}:s` | hash: the anomaly guard's state of one identity (window, buckets, learned rate, streak; `guard.rs`) | 7 days (at least) after its last exchange (the TTL is refreshed once per keep/16, to keep + keep/16) | guard script |
//! | `P:{gd:H(identity)}:a` | sorted set: the identity's known audiences (digests), at most `max_audiences` | as the hash | guard script |
//! | `P:{audit}:stream` | stream, field `rec` (one sealed audit record, JSON), `MAXLEN ~ [audit] stream_max_len` | [`AUDIT_STREAM_IDLE_TTL`] after the last append (refreshed by each) | audit append script (records past their chain's checkpoint only) |
//! | `P:{audit}:checkpoint` | hash node → `"seq hash"` of the chain's last record in the stream (at most [`crate::store::MAX_AUDIT_CHECKPOINTS`] nodes) | [`AUDIT_STREAM_IDLE_TTL`] after the last append | audit append script, atomically with the `XADD`s |
//! | `P:{audit}:checkpoint:t` | sorted set node → time of its last append (prunes the checkpoints idle past the TTL, then the oldest past the cap) | as above | audit append script |
//!
//! Why the hash tags: all revocation keys and the feed share the tag `{rev}`,
//! so the revoke script (entry + feed) touches one cluster slot. Each
//! subject's grants and their index share `{g:H(subject)}`, so consume, which
//! reads the index and then every grant in it, is one slot (the script builds
//! the grant keys from the index; they are in the slot of `KEYS[1]` by
//! construction). The id → subject pointers and the global list share `{gx}`
//! (written by one script). A grant therefore spans two slots: the pointer is
//! written first (refusing an id already used by another subject), then the
//! grant; a pointer left behind by a failed create points at nothing.
//!
//! The grant create and consume scripts touch grant keys they did not
//! declare in `KEYS` (they are only known from the index, inside the
//! script). Redis Cluster formally wants every key declared; what Redis 7
//! checks is that each key the script touches is served by the node
//! (`non local key` otherwise), and later versions also that it is in the
//! declared slot (without `allow-cross-slot-keys`). Built as `KEYS[1]`'s
//! prefix (an `ARGV`) followed by a hex digest, these keys are always in the
//! slot of `KEYS[1]`, so both checks pass. While that slot migrates, a key
//! already moved is "non local" to the script: it fails (503), it never
//! reads a half-moved slot (declared keys would get `ASK`/`TRYAGAIN`, also a
//! 503). Declaring them would cost a round trip before every consume (read
//! the index, then run the script on what it named), for no change in
//! atomicity; `cluster_tests` checks the slots by CRC16 and under `MONITOR`,
//! and runs the conformance suite on a real cluster. Pipelines stay in one
//! slot too:
//! the one exception, reading grants of many subjects, issues one command
//! per grant on a cluster.
//!
//! Approvals share the tag `{ap}`: the create script (record and the
//! three indexes, plus the record the same-request index names, built from
//! the prefix and its digest as for grants) is one slot, and decide and poll
//! touch the record alone.
//!
//! Timestamps from the caller (`now`) are checked against the stored
//! `expires_at` on every read (defence in depth even if a TTL was lost); TTLs
//! use the Redis server's clock.
//!
//! [`AUDIT_STREAM_IDLE_TTL`]: super::AUDIT_STREAM_IDLE_TTL
//! [`FEED_MAXLEN`]: super::FEED_MAXLEN

use super::RedisStore;
use crate::store::RevocationKind;

/// `hex(sha256(x))` (64 lowercase hex digits).
pub(super) fn h(x: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, x);
    let mut out = String::with_capacity(64);
    for b in d.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// `H(len(a) ‖ a ‖ b)` (the length as 8 bytes big-endian): a digest of two
/// strings that no other pair shares.
fn h_pair(a: &str, b: &str) -> String {
    let mut buf = Vec::with_capacity(8 + a.len() + b.len());
    buf.extend_from_slice(&(a.len() as u64).to_be_bytes());
    buf.extend_from_slice(a.as_bytes());
    buf.extend_from_slice(b.as_bytes());
    h(&buf)
}

impl RedisStore {
    // ---- keys (the only places key names are made) ----

    pub(crate) fn key_revocation(&self, kind: RevocationKind, value: &str) -> String {
        format!(
            "{}:{{rev}}:e:{}:{}",
            self.prefix,
            kind.as_str(),
            h(value.as_bytes())
        )
    }

    pub(crate) fn key_feed(&self) -> String {
        format!("{}:{{rev}}:feed", self.prefix)
    }

    /// What every block key starts with (the block cache tracks it).
    pub(super) fn key_block_prefix(&self) -> String {
        format!("{}:{{rev}}:blk:", self.prefix)
    }

    pub(crate) fn key_block(&self, subject: &str) -> String {
        self.key_block_prefix() + &h(subject.as_bytes())
    }

    /// The block index (subject → until), for listing. Not under the block
    /// prefix: the block cache does not track it.
    pub(crate) fn key_block_index(&self) -> String {
        format!("{}:{{rev}}:blocks", self.prefix)
    }

    /// A session record (approval pages): `H(len(ns) ‖ ns ‖ id)`.
    pub(crate) fn key_session(&self, ns: &str, id: &str) -> String {
        format!("{}:ss:{}", self.prefix, h_pair(ns, id))
    }

    pub(crate) fn key_replay(&self, namespace: &str, id: &str) -> String {
        format!("{}:rp:{}", self.prefix, h_pair(namespace, id))
    }

    /// The prefix of a subject's grant keys (ends with `:gr:`).
    pub(crate) fn key_grant_prefix(&self, subject: &str) -> String {
        format!("{}:{{g:{}}}:gr:", self.prefix, h(subject.as_bytes()))
    }

    pub(crate) fn key_grant(&self, subject: &str, id: &str) -> String {
        format!("{}{}", self.key_grant_prefix(subject), h(id.as_bytes()))
    }

    pub(crate) fn key_grant_index(&self, subject: &str) -> String {
        format!("{}:{{g:{}}}:idx", self.prefix, h(subject.as_bytes()))
    }

    pub(crate) fn key_approval(&self, id: &str) -> String {
        format!("{}{}", self.key_approval_prefix(), h(id.as_bytes()))
    }

    /// What every approval record key starts with (then `H(id)`).
    pub(super) fn key_approval_prefix(&self) -> String {
        format!("{}:{{ap}}:a:", self.prefix)
    }

    pub(crate) fn key_approval_all(&self) -> String {
        format!("{}:{{ap}}:all", self.prefix)
    }

    pub(crate) fn key_approval_requester(&self, requester: &str) -> String {
        format!("{}:{{ap}}:rq:{}", self.prefix, h(requester.as_bytes()))
    }

    /// The pending approval of one request by one requester (for asking
    /// twice): `H(len(requester) ‖ requester ‖ request_hash)`.
    pub(crate) fn key_approval_request(&self, requester: &str, request_hash: &str) -> String {
        format!(
            "{}:{{ap}}:rh:{}",
            self.prefix,
            h_pair(requester, request_hash)
        )
    }

    pub(crate) fn key_grant_pointer(&self, id: &str) -> String {
        format!("{}:{{gx}}:id:{}", self.prefix, h(id.as_bytes()))
    }

    pub(crate) fn key_grant_all(&self) -> String {
        format!("{}:{{gx}}:all", self.prefix)
    }

    pub(crate) fn key_audit_stream(&self) -> String {
        format!("{}:{{audit}}:stream", self.prefix)
    }

    pub(crate) fn key_audit_checkpoints(&self) -> String {
        format!("{}:{{audit}}:checkpoint", self.prefix)
    }

    pub(crate) fn key_audit_checkpoint_times(&self) -> String {
        format!("{}:{{audit}}:checkpoint:t", self.prefix)
    }

    pub(crate) fn key_epoch(&self) -> String {
        format!("{}:{{rev}}:epoch", self.prefix)
    }
}
