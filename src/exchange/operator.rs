//! What an operator may ask for, checked in one place: the admin API
//! refuses what these refuse, and the CLI runs the same checks before any
//! round trip (bad usage, exit 2, even with the broker down).

use std::time::Duration;

use crate::identity::spiffe::SpiffeId;
use crate::oauth::request::valid_task;
use crate::store::RevocationKind;

/// Longest revocation value (a jti, subject, task or grant id).
pub const MAX_VALUE_LEN: usize = 2048;

/// Shortest kill-switch block.
pub const MIN_BLOCK: Duration = Duration::from_secs(1);
/// Longest kill-switch block.
pub const MAX_BLOCK: Duration = Duration::from_secs(365 * 24 * 3600);

/// The syntax of an identity an operator names (a revocation or block
/// subject, a grant's subject): a `spiffe://` ID must be a valid SPIFFE ID;
/// anything else (a DNS name, an OIDC `sub` such as
/// `system:serviceaccount:ci:deployer`) is 1..=[`MAX_VALUE_LEN`] bytes with
/// no white space and no control or format characters. Identities Tessera
/// issues tokens for never hold those, so such input is a typo or a paste
/// gone wrong.
pub fn check_identity(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("an identity cannot be empty".into());
    }
    if s.len() > MAX_VALUE_LEN {
        return Err(format!("an identity is at most {MAX_VALUE_LEN} bytes"));
    }
    if s.len() >= 9 && s[..9].eq_ignore_ascii_case("spiffe://") {
        return SpiffeId::parse(s)
            .map(|_| ())
            .map_err(|e| format!("`{s}` is not a valid SPIFFE ID: {e}"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || crate::text::is_terminal_unsafe(*c))
    {
        return Err(format!(
            "`{}` is not an identity: it holds {} (a SPIFFE ID, a DNS name or an OIDC subject has none)",
            s.escape_debug(),
            if c.is_whitespace() { "white space" } else { "a control character" }
        ));
    }
    Ok(())
}

/// The value of a revocation of `kind`: a jti is a UUID (Tessera issues no
/// other), a task id is `[A-Za-z0-9._:-]{1,128}`, a grant id is a UUID, a
/// subject passes [`check_identity`].
pub fn check_revocation(kind: RevocationKind, value: &str) -> Result<(), String> {
    match kind {
        RevocationKind::Jti if uuid::Uuid::parse_str(value).is_err() => Err(format!(
            "`{}` is not a jti issued by Tessera (a UUID)",
            value.escape_debug()
        )),
        RevocationKind::Grant if uuid::Uuid::parse_str(value).is_err() => Err(format!(
            "`{}` is not a grant id (a UUID)",
            value.escape_debug()
        )),
        RevocationKind::Task if !valid_task(value) => Err(format!(
            "`{}` is not a task id: 1..=128 of [A-Za-z0-9._:-]",
            value.escape_debug()
        )),
        RevocationKind::Subject => check_identity(value),
        _ => Ok(()),
    }
}

/// A kill-switch duration (`--block-for`): a duration within
/// [`MIN_BLOCK`]..=[`MAX_BLOCK`].
pub fn parse_block_for(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s).map_err(|e| format!("--block-for: {e}"))?;
    if d < MIN_BLOCK || d > MAX_BLOCK {
        return Err(format!(
            "--block-for `{s}` is out of range: a block lasts 1s to 365d (to lift one early: \
             tessera unblock --subject …)"
        ));
    }
    Ok(d)
}

/// Longest a JIT grant may live.
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(24 * 3600);

/// A JIT grant's lifetime (`--ttl`): a duration within 1s..=24h.
pub fn check_grant_ttl(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s).map_err(|e| format!("--ttl: {e}"))?;
    if d < Duration::from_secs(1) || d > MAX_GRANT_TTL {
        return Err(format!(
            "--ttl `{s}` is out of range: a grant lives 1s to 24h"
        ));
    }
    Ok(d)
}

/// How long [`revoke_and_block`] waits for the revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// In force on the primary (the anomaly guard, inside an exchange).
    Primary,
    /// Then waits (boundedly) for the configured replicas to acknowledge
    /// it (an operator, who is told whether it is durable).
    Replicas,
}

/// What [`revoke_and_block`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedAndBlocked {
    /// The revocation as written, with its durability.
    pub revoked: crate::store::Revoked,
    /// Until when new exchanges are refused (a longer block already in
    /// force stays and is reported), when a block was asked for.
    pub blocked_until: Option<u64>,
}

/// The one "revoke and block" sequence (admin API and anomaly guard): the
/// block first, then the revocation, so that replicas that acknowledge the
/// revocation hold the block too, and a failure between the two leaves the
/// identity blocked (new exchanges refused) rather than revoked and free to
/// mint again. `block_until: None` revokes only. A store failure at either
/// step is returned; nothing after it is attempted.
pub async fn revoke_and_block(
    stores: &crate::store::Stores,
    revocation: crate::store::Revocation,
    block_until: Option<u64>,
    ack: Ack,
) -> Result<RevokedAndBlocked, crate::store::StoreError> {
    let mut blocked_until = None;
    if let Some(until) = block_until {
        let held = stores
            .revocations
            .block_subject(&revocation.value, until)
            .await?;
        blocked_until = Some(held.max(until));
    }
    let revoked = match ack {
        Ack::Replicas => stores.revocations.revoke_acked(revocation).await?,
        Ack::Primary => crate::store::Revoked {
            cursor: stores.revocations.revoke(revocation).await?,
            replicas: None,
        },
    };
    Ok(RevokedAndBlocked {
        revoked,
        blocked_until,
    })
}

/// What a recovery restored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// Revocations re-applied.
    pub revocations: usize,
    /// Revocations left out: every token they covered has expired.
    pub expired: usize,
    /// Blocks re-applied.
    pub blocks: usize,
    /// Blocks left out: already over.
    pub blocks_over: usize,
    /// The new data epoch.
    pub epoch: String,
}

/// Restores after the store lost its data ([`crate::store::epoch`]):
/// re-applies every revocation of `plan` that can still cover a live token
/// (recorded less than the tokens' longest lifetime ago; kept as long
/// as when first made) and every block not yet over, then writes a new
/// `recovered` epoch so every broker serves again. The store's lost-data
/// refusal is lifted for these calls only. An empty plan is `--accept-loss`.
pub async fn restore(
    stores: &crate::store::Stores,
    plan: &crate::audit::restore::RestorePlan,
    exchanger: &super::Exchanger,
    now: u64,
) -> Result<RestoreReport, String> {
    use crate::store::Revocation;
    crate::store::epoch::recovering(async {
        let mut report = RestoreReport::default();
        for r in &plan.revocations {
            let kind = r.kind;
            check_revocation(kind, &r.value)?;
            let expires_at = exchanger.revocation_expiry(r.revoked_at);
            if expires_at <= now {
                report.expired += 1;
                continue;
            }
            stores
                .revocations
                .revoke(Revocation {
                    kind,
                    value: r.value.clone(),
                    revoked_at: r.revoked_at.min(now),
                    expires_at,
                })
                .await
                .map_err(|e| e.to_string())?;
            report.revocations += 1;
        }
        for b in &plan.blocks {
            check_identity(&b.subject)?;
            if b.until <= now {
                report.blocks_over += 1;
                continue;
            }
            stores
                .revocations
                .block_subject(&b.subject, b.until)
                .await
                .map_err(|e| e.to_string())?;
            report.blocks += 1;
        }
        report.epoch = stores
            .health
            .rearm_epoch()
            .await
            .map_err(|e| e.to_string())?;
        Ok(report)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        for ok in [
            "spiffe://example.org/agent/demo",
            "payments.example.com",
            "system:serviceaccount:ci:deployer",
            "alice@example.com",
            "repo:acme/app:ref:refs/heads/main",
        ] {
            assert_eq!(check_identity(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("not a spiffe id", "white space"),
            ("spiffe://example.org", "SPIFFE"),
            ("spiffe://Example.org/agent", "SPIFFE"),
            ("spiffe://example.org/agent/../x", "SPIFFE"),
            ("SPIFFE://example.org/a b", "SPIFFE"),
            ("agent\u{202e}", "control"),
            ("agent\t", "white space"),
        ] {
            let e = check_identity(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(check_identity(&"a".repeat(MAX_VALUE_LEN + 1)).is_err());
    }

    #[test]
    fn revocation_values() {
        let id = uuid::Uuid::new_v4().to_string();
        assert!(check_revocation(RevocationKind::Jti, &id).is_ok());
        assert!(check_revocation(RevocationKind::Jti, "nope")
            .unwrap_err()
            .contains("UUID"));
        assert!(check_revocation(RevocationKind::Grant, "nope").is_err());
        assert!(check_revocation(RevocationKind::Task, "deploy-42").is_ok());
        assert!(check_revocation(RevocationKind::Task, "a b").is_err());
        assert!(check_revocation(RevocationKind::Subject, "not a spiffe id").is_err());
    }

    #[test]
    fn block_durations() {
        assert_eq!(parse_block_for("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_block_for("1s"), Ok(Duration::from_secs(1)));
        let e = parse_block_for("0s").unwrap_err();
        assert!(
            e.contains("out of range") && e.contains("1s to 365d"),
            "{e}"
        );
        assert!(parse_block_for("500ms")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_block_for("366d")
            .unwrap_err()
            .contains("out of range"));
        assert!(!parse_block_for("30x").unwrap_err().contains("out of range"));
        assert_eq!(check_grant_ttl("10m"), Ok(Duration::from_secs(600)));
        assert!(check_grant_ttl("0s").unwrap_err().contains("1s to 24h"));
        assert!(check_grant_ttl("25h").unwrap_err().contains("1s to 24h"));
        assert!(check_grant_ttl("10x").unwrap_err().contains("not a unit"));
    }
}
