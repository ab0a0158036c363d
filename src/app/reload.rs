//! What a configuration reload changes: the diff its audit record and log
//! line name, and the keys that cannot change without a restart.

use super::Snapshot;
use crate::config::Config;

/// What a reload changed, for its audit record and log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadDiff {
    /// Policies added, by name.
    pub policies_added: Vec<String>,
    /// Policies removed, by name.
    pub policies_removed: Vec<String>,
    /// Policies whose settings changed, by name.
    pub policies_changed: Vec<String>,
    /// Issuers added, by name.
    pub issuers_added: Vec<String>,
    /// Issuers removed, by name.
    pub issuers_removed: Vec<String>,
    /// Issuers whose settings changed (verifier and JWKS cache rebuilt).
    pub issuers_changed: Vec<String>,
    /// Signing keys added to the JWK Set, by kid.
    pub keys_added: Vec<String>,
    /// Signing keys removed from the JWK Set, by kid.
    pub keys_removed: Vec<String>,
    /// The kid that signs, when it changed.
    pub signing_kid: Option<String>,
}

impl std::fmt::Display for ReloadDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = |v: &[String]| v.join(",");
        write!(
            f,
            "policies +[{}] -[{}] ~[{}]; issuers +[{}] -[{}] ~[{}]; keys +[{}] -[{}]",
            l(&self.policies_added),
            l(&self.policies_removed),
            l(&self.policies_changed),
            l(&self.issuers_added),
            l(&self.issuers_removed),
            l(&self.issuers_changed),
            l(&self.keys_added),
            l(&self.keys_removed),
        )?;
        if let Some(k) = &self.signing_kid {
            write!(f, "; signing kid now {k}")?;
        }
        Ok(())
    }
}

impl ReloadDiff {
    pub(super) fn between(old: &Snapshot, new: &Snapshot) -> ReloadDiff {
        fn by_name<'a, T: std::fmt::Debug + 'a>(
            old: impl Iterator<Item = (&'a str, &'a T)>,
            new: impl Iterator<Item = (&'a str, &'a T)>,
        ) -> (Vec<String>, Vec<String>, Vec<String>) {
            let old: std::collections::BTreeMap<&str, String> =
                old.map(|(n, v)| (n, format!("{v:?}"))).collect();
            let new: std::collections::BTreeMap<&str, String> =
                new.map(|(n, v)| (n, format!("{v:?}"))).collect();
            let added = new
                .keys()
                .filter(|k| !old.contains_key(*k))
                .map(|k| k.to_string())
                .collect();
            let removed = old
                .keys()
                .filter(|k| !new.contains_key(*k))
                .map(|k| k.to_string())
                .collect();
            let changed = new
                .iter()
                .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
                .map(|(k, _)| k.to_string())
                .collect();
            (added, removed, changed)
        }
        let (pa, pr, pc) = by_name(
            old.config.policies.iter().map(|p| (p.name.as_str(), p)),
            new.config.policies.iter().map(|p| (p.name.as_str(), p)),
        );
        let (ia, ir, ic) = by_name(
            old.config.issuers.iter().map(|i| (i.name.as_str(), i)),
            new.config.issuers.iter().map(|i| (i.name.as_str(), i)),
        );
        let kids = |s: &Snapshot| -> Vec<String> {
            s.keyring
                .keys()
                .iter()
                .map(|k| k.kid().to_string())
                .collect()
        };
        let (ok, nk) = (kids(old), kids(new));
        let old_signing = old.keyring.signing_key().kid();
        let new_signing = new.keyring.signing_key().kid();
        ReloadDiff {
            policies_added: pa,
            policies_removed: pr,
            policies_changed: pc,
            issuers_added: ia,
            issuers_removed: ir,
            issuers_changed: ic,
            keys_added: nk.iter().filter(|k| !ok.contains(k)).cloned().collect(),
            keys_removed: ok.iter().filter(|k| !nk.contains(k)).cloned().collect(),
            signing_kid: (old_signing != new_signing).then(|| new_signing.to_string()),
        }
    }
}

/// The settings a reload cannot change (the listeners, TLS material, the
/// store, the audit sink and the connection limits are built once at
/// start): the keys that differ between `old` and `new`. A reload that
/// changes any of them is refused as a whole.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    // `key`, then the field path read from both configurations.
    macro_rules! restart_only {
        ($($key:literal => $($field:ident).+;)*) => {$(
            if format!("{:?}", old.$($field).+) != format!("{:?}", new.$($field).+) {
                out.push($key);
            }
        )*};
    }
    restart_only! {
        "server.listen" => server.listen;
        "server.ops_listen" => server.ops_listen;
        "server.issuer" => server.issuer;
        "server.tls_cert" => server.tls_cert;
        "server.tls_key" => server.tls_key;
        "server.client_ca" => server.client_ca;
        "server.trust_domains" => server.trust_domains;
        "server.max_clock_step" => server.max_clock_step;
        "server.clock_quarantine" => server.clock_quarantine;
        "server.shutdown_grace" => server.shutdown_grace;
        "server.drain_timeout" => server.drain_timeout;
        "server.worker_threads" => server.worker_threads;
        "store.url" => store.url;
        "store.prefix" => store.prefix;
        "store.timeout" => store.timeout;
        "audit.sink" => audit.sink;
        "audit.stream_max_len" => audit.stream_max_len;
        "audit.timeout" => audit.timeout;
        "limits.max_body_bytes" => limits.max_body_bytes;
        "limits.max_token_bytes" => limits.max_token_bytes;
        "limits.handshake_timeout" => limits.handshake_timeout;
        "limits.header_read_timeout" => limits.header_read_timeout;
        "limits.request_timeout" => limits.request_timeout;
        "limits.max_connections" => limits.max_connections;
        "limits.peer_rate" => limits.peer_rate;
        "limits.peer_burst" => limits.peer_burst;
        "dev.generate_missing" => dev_generate_missing;
    }
    // A field added to one of these sections later is caught here, by
    // section, until it gets its own line above.
    for (section, a, b) in [
        (
            "server",
            format!("{:?}", old.server),
            format!("{:?}", new.server),
        ),
        (
            "store",
            format!("{:?}", old.store),
            format!("{:?}", new.store),
        ),
        (
            "audit",
            format!("{:?}", old.audit),
            format!("{:?}", new.audit),
        ),
        (
            "limits",
            format!("{:?}", old.limits),
            format!("{:?}", new.limits),
        ),
    ] {
        if a != b && !out.iter().any(|k| k.starts_with(section)) {
            out.push(section);
        }
    }
    out
}
