//! The Lua scripts of the Redis store, one `scripts/*.lua` file each. Every
//! script runs after the common prelude ([`LUA_EXTEND`]), which defines
//! `extend` and `now`; [`script`] joins them.

use ::redis::Script;

/// Lua helper: extends a key's expiry to `t` (never shortens it; gives a key
/// without one an expiry of at least a second from now).
pub(super) const LUA_EXTEND: &str = include_str!("scripts/extend.lua");

/// KEYS: entry, feed. ARGV: revoked_at, expires_at, kind, value, maxlen.
/// Returns the feed id.
pub(super) const LUA_REVOKE: &str = include_str!("scripts/revoke.lua");

/// KEYS: block key, block index. ARGV: until, subject.
/// Returns the until in force (the longer of the two), 0 when already past.
/// The index (subject → until) is what `tessera blocks list` reads: block
/// keys are hashes of the subject. It is pruned of ended blocks here once it
/// holds more than
/// [`BLOCK_INDEX_PRUNE`](super::revocations::BLOCK_INDEX_PRUNE) fields, and
/// on every listing.
pub(super) const LUA_BLOCK: &str = include_str!("scripts/block.lua");

/// KEYS: block key, block index. ARGV: subject. Returns 1 when a live block
/// was lifted. Deleting the key is what tells every replica's block cache
/// (Redis's invalidation of it on their tracking connections).
pub(super) const LUA_UNBLOCK: &str = include_str!("scripts/unblock.lua");

/// KEYS: block index. Returns `subject, until, ...` of the live blocks and
/// removes the ended ones.
pub(super) const LUA_BLOCKS_LIST: &str = include_str!("scripts/blocks_list.lua");

/// KEYS: pointer, all. ARGV: subject, id, expires_at, max total.
/// 1 stored, 0 already expired, -1 id used by another subject, -2 full.
pub(super) const LUA_GRANT_POINTER: &str = include_str!("scripts/grant_pointer.lua");

/// KEYS: grant, index. ARGV: H(id), json, remaining ('u' = unlimited),
/// expires_at, max per subject, grant key prefix.
/// 1 stored, 0 already expired, -1 exists, -2 subject full.
pub(super) const LUA_GRANT_CREATE: &str = include_str!("scripts/grant_create.lua");

/// KEYS: grant, index. ARGV: H(id). 1 when the grant existed.
pub(super) const LUA_GRANT_REVOKE: &str = include_str!("scripts/grant_revoke.lua");

/// KEYS: index. ARGV: grant key prefix, now, subject, audience, has task
/// ('1'/'0'), task, scopes…. Returns nil or {json, remaining before}.
pub(super) const LUA_GRANT_CONSUME: &str = include_str!("scripts/grant_consume.lua");

/// KEYS: record, all, requester index, same-request index. ARGV: id, json,
/// expires_at, keep_until, requester, request hash, created_at (caller's
/// now), max per requester, max total, record key prefix (`P:{ap}:a:`),
/// `H(id)`.
/// Returns {'1'} stored, {'0'} already gone, {'-1'} exists, {'-2'} requester
/// full, {'-3'} store full, {'=', id} the same request is already pending as
/// `id`. The pending approval named by the same-request index is read from
/// its record key, built from the prefix and the digest the index holds (in
/// the slot of `{ap}` by construction, like the grant keys of the consume
/// script).
pub(super) const LUA_APPROVAL_CREATE: &str = include_str!("scripts/approval_create.lua");

/// KEYS: record. ARGV: new state, by, at (caller's now), reason, retention.
/// Returns 'ok', 'missing', 'expired' or the current (non-pending) state.
pub(super) const LUA_APPROVAL_DECIDE: &str = include_str!("scripts/approval_decide.lua");

/// KEYS: record. ARGV: requester, request hash, interval, now (caller's),
/// retention. Returns {outcome} or {'redeemed', json, by, at, reason}.
pub(super) const LUA_APPROVAL_POLL: &str = include_str!("scripts/approval_poll.lua");

/// KEYS: audit stream, checkpoints (hash node -> "seq hash"), checkpoint
/// times (sorted set node -> last write). ARGV: node, max_len, idle ttl,
/// most checkpoints, then (seq, hash, record) for each record in order.
/// Appends the records past the node's checkpoint and moves it: a batch sent
/// again, or landing late, is never appended twice. Returns how many were
/// appended.
pub(super) const LUA_AUDIT_APPEND: &str = include_str!("scripts/audit_append.lua");

pub(super) fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_EXTEND}{body}"))
}
