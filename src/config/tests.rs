// One file: the config unit tests, one per rule of `Config::from_raw`, in the
// order of the config reference.
use std::collections::BTreeSet;

use super::raw::*;
use super::*;

/// Key paths of a TOML value: `server.listen`, `issuers[].name`, ...; the
/// free-form `match.claims` map stops the walk.
fn key_paths(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, child) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                if !p.ends_with("match.claims")
                    && p != "introspection.audiences"
                    && p != "server.trust_domains"
                {
                    key_paths(child, &p, out);
                }
            }
        }
        toml::Value::Array(a) => {
            for child in a {
                if child.is_table() {
                    key_paths(child, &format!("{prefix}[]"), out);
                }
            }
        }
        _ => {}
    }
}

/// A RawConfig with every optional part present. Struct literals list every
/// field, so adding a field to the config without updating this (and so the
/// example file) does not compile.
fn full_sample() -> RawConfig {
    RawConfig {
        server: RawServer::default(),
        tokens: RawTokens::default(),
        store: RawStore::default(),
        admin: RawSubjects {
            subjects: vec!["a".into()],
        },
        approvals: RawApprovals {
            ttl: "10m".into(),
            interval: "5s".into(),
            webhook: Some("https://hooks.example.com/tessera".into()),
            webhook_ca: Some("keys/hooks-ca.pem".into()),
            login_issuer: Some("k8s".into()),
            login_client_id: Some("tessera".into()),
            login_client_secret_file: Some("keys/approvals-client-secret".into()),
            approver_claim: "email".into(),
            groups_claim: Some("groups".into()),
            require_mfa: true,
            mfa_amr: vec!["mfa".into()],
            max_auth_age: "15m".into(),
            session_ttl: "1h".into(),
        },
        dev: RawDev {
            generate_missing: false,
        },
        introspection: RawIntrospection {
            subjects: vec!["b".into()],
            audiences: [("b".to_string(), vec!["aud".to_string()])]
                .into_iter()
                .collect(),
        },
        limits: RawLimits::default(),
        dpop: RawDpop { nonce: false },
        audit: RawAudit {
            sink: "file".into(),
            path: Some("audit.jsonl".into()),
            stream_max_len: 100_000,
            timeout: "2s".into(),
        },
        guard: RawGuard {
            enabled: true,
            max_rate: 120,
            learn: true,
            refusal_streak: 10,
            ..RawGuard::default()
        },
        issuers: vec![RawIssuer {
            name: "k8s".into(),
            issuer: "https://k8s".into(),
            audiences: vec!["tessera".into()],
            jwks_uri: Some("https://k8s/jwks".into()),
            ca: Some("ca.pem".into()),
            algorithms: Some(vec!["RS256".into()]),
            single_use: false,
            max_token_lifetime: "24h".into(),
            leeway: "30s".into(),
            jwks_refresh_cooldown: "30s".into(),
            jwks_max_stale: "24h".into(),
            bearer_token_file: Some("token".into()),
        }],
        policies: vec![RawPolicy {
            name: "p".into(),
            owner: Some("o".into()),
            match_: RawMatch {
                issuer: "k8s".into(),
                subject: Some("s".into()),
                claims: [("a".to_string(), "b".to_string())].into_iter().collect(),
            },
            audiences: vec!["aud".into()],
            scopes: vec!["s".into()],
            max_ttl: Some("5m".into()),
            jit_scopes: vec!["s".into()],
            approval_scopes: vec!["s".into()],
            may_act_for: vec!["k8s".into()],
            max_depth: 1,
            require_authorization_details: false,
            require_binding: false,
            approvers: Some(vec!["o".into(), "group:leads".into()]),
            guard: Some(RawPolicyGuard {
                on_rate: Some("approval".into()),
                on_new_audience: Some("approval".into()),
            }),
        }],
    }
}

const EXAMPLE: &str = include_str!("../../config/tessera.example.toml");
const SHIPPED: &str = include_str!("../../config/tessera.toml");

#[test]
fn example_documents_every_key() {
    // Every key Tessera knows is in the example ...
    let sample = toml::Value::try_from(full_sample()).unwrap();
    let mut known = BTreeSet::new();
    key_paths(&sample, "", &mut known);
    let example: toml::Value = toml::from_str(EXAMPLE).unwrap();
    let mut documented = BTreeSet::new();
    key_paths(&example, "", &mut documented);
    let missing: Vec<_> = known.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys missing from the example: {missing:?}"
    );
    // ... and every key in the example is one Tessera knows (deny_unknown_fields).
    let extra: Vec<_> = documented.difference(&known).collect();
    assert!(
        extra.is_empty(),
        "keys in the example Tessera does not know: {extra:?}"
    );
    let _: RawConfig = toml::from_str(EXAMPLE).unwrap();
}

#[test]
fn example_and_shipped_configs_validate() {
    Config::from_toml_str("tessera.example.toml", EXAMPLE).unwrap();
    let c = Config::from_toml_str("tessera.toml", SHIPPED).unwrap();
    assert!(c.dev_generate_missing);
    assert_eq!(c.store.url, "memory://");
}

#[test]
fn empty_config_gets_contract_defaults() {
    let c = Config::from_toml_str("t.toml", "").unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(c.server.issuer, "https://127.0.0.1:8443");
    assert_eq!(c.tokens.default_ttl.as_secs(), 300);
    assert_eq!(c.tokens.max_ttl.as_secs(), 900);
    assert_eq!(c.store.url, "memory://");
    assert_eq!(c.store.options, crate::store::StoreOptions::default());
    assert_eq!(c.store.options.breaker.failures, 5);
    assert_eq!(c.store.options.revocation_replicas, 0);
    assert_eq!(c.approvals_ttl.as_secs(), 600);
    assert_eq!(c.approvals_interval.as_secs(), 5);
    assert!(c.approvals_webhook.is_none());
    assert_eq!(c.audit.sink, AuditSink::Stdout);
    assert_eq!(c.audit.stream_max_len, 100_000);
    assert_eq!(c.audit.timeout.as_secs(), 2);
    assert!(
        !c.dev_generate_missing,
        "only the shipped dev config generates material"
    );
}

#[test]
fn block_cache_is_on_by_default_and_can_be_turned_off() {
    let on = Config::from_toml_str("a.toml", "[store]\nurl = \"redis://r:6379\"\n").unwrap();
    assert!(on.store.options.block_cache);
    let off = Config::from_toml_str(
        "b.toml",
        "[store]\nurl = \"redis://r:6379\"\nblock_cache = false\n",
    )
    .unwrap();
    assert!(!off.store.options.block_cache);
    let e = err_of("[store]\nblock_cache = \"no\"\n");
    assert!(
        e.to_string().contains("line 2") && e.to_string().contains("boolean"),
        "{e}"
    );
}

fn err_of(text: &str) -> ConfigError {
    Config::from_toml_str("bad.toml", text).unwrap_err()
}

#[test]
fn errors_name_file_key_and_reason() {
    let e = err_of("[server]\nlisten = \"nope\"\n");
    assert_eq!(e.file, "bad.toml");
    assert_eq!(e.key, "server.listen");
    assert!(e.to_string().starts_with("bad.toml: server.listen: "));

    // A misspelt key: named as written, with its line and the keys allowed.
    let e = err_of("[server]\nlistn = \"127.0.0.1:1\"\n");
    assert_eq!(e.key, "server.listn");
    assert!(
        e.reason.starts_with("line 2: unknown field `listn`"),
        "{}",
        e.reason
    );
    assert!(e.reason.contains("`listen`"), "{}", e.reason);

    let e = err_of("[tokens]\nalgorithm = \"HS256\"\n");
    assert_eq!(e.key, "tokens.algorithm");

    // default_ttl above max_ttl is capped, not an error (issue 17 item 5);
    // an unparsable one still is.
    let e = err_of("[tokens]\ndefault_ttl = \"20 parsecs\"\n");
    assert_eq!(e.key, "tokens.default_ttl");

    let e = err_of("[store]\nurl = \"postgres://x\"\n");
    assert_eq!(e.key, "store.url");
    let e = err_of("[store]\nrevocation_replicas = 1\n");
    assert_eq!(e.key, "store.revocation_replicas");
    assert!(e.reason.contains("Redis"), "{}", e.reason);
    let e = err_of("[store]\nurl = \"redis://r:6379\"\nrevocation_replicas = 65\n");
    assert_eq!(e.key, "store.revocation_replicas");
    let e = err_of("[store]\nurl = \"redis://r:6379\"\nrevocation_wait = \"11s\"\n");
    assert_eq!(e.key, "store.revocation_wait");
    let e = err_of("[store]\nrevocation_wait = \"0ms\"\n");
    assert_eq!(e.key, "store.revocation_wait");
    let e = err_of("[store]\nbreaker_cooloff = \"10s\"\nbreaker_cooloff_max = \"5s\"\n");
    assert_eq!(e.key, "store.breaker_cooloff_max");
    let e = err_of("[store]\nbreaker_failures = 1001\n");
    assert_eq!(e.key, "store.breaker_failures");

    let e = err_of("[audit]\nsink = \"syslog\"\n");
    assert_eq!(e.key, "audit.sink");
    let e = err_of("[audit]\nsink = \"file\"\n");
    assert_eq!(e.key, "audit.path");
    let e = err_of("[audit]\nstream_max_len = 10\n");
    assert_eq!(e.key, "audit.stream_max_len");
    let e = err_of("[audit]\ntimeout = \"0s\"\n");
    assert_eq!(e.key, "audit.timeout");
}

#[test]
fn issuer_errors() {
    let base = "[[issuers]]\nname = \"k\"\nissuer = \"https://k\"\naudiences = [\"t\"]\n";
    assert!(Config::from_toml_str("f", base).is_ok());
    let e = err_of(&format!("{base}algorithms = [\"none\"]\n"));
    assert_eq!(e.key, "issuers[0].algorithms[0]");
    let e = err_of(&format!("{base}algorithms = [\"HS256\"]\n"));
    assert_eq!(e.key, "issuers[0].algorithms[0]");
    let e = err_of("[[issuers]]\nname = \"k\"\nissuer = \"http://k\"\naudiences = [\"t\"]\n");
    assert_eq!(e.key, "issuers[0].issuer");
    let e = err_of("[[issuers]]\nname = \"k\"\nissuer = \"https://k\"\naudiences = []\n");
    assert_eq!(e.key, "issuers[0].audiences");
    let e = err_of("[[issuers]]\nname = \"mtls\"\nissuer = \"https://k\"\naudiences = [\"t\"]\n");
    assert_eq!(e.key, "issuers[0].name");
    let e = err_of(&format!("{base}jwks_uri = \"http://k/jwks\"\n"));
    assert_eq!(e.key, "issuers[0].jwks_uri");
}

#[test]
fn policy_errors() {
    let p = "[[policies]]\nname = \"p\"\nmatch = { issuer = \"nobody\" }\naudiences = [\"a\"]\nscopes = [\"s\"]\n";
    let e = err_of(p);
    assert_eq!(e.key, "policies[0].match.issuer");
    let p = "[[policies]]\nname = \"p\"\nmatch = { issuer = \"mtls\", subject = \"\" }\naudiences = [\"a\"]\nscopes = [\"s\"]\n";
    let e = err_of(p);
    assert_eq!(e.key, "policies");
    assert!(e.reason.contains('p'));
}

/// Issue 17 item 5: `[tokens] max_ttl` is a ceiling. A policy `max_ttl`
/// or a `default_ttl` above it loads (it is capped at minting) and each is
/// a `ttl_capped` warning naming the policy or the key.
#[test]
fn lifetimes_above_tokens_max_ttl_load_with_a_warning_naming_them() {
    let p = "[tokens]\nmax_ttl = \"1m\"\ndefault_ttl = \"5m\"\n[[policies]]\nname = \"long\"\nowner = \"o\"\nmatch = { issuer = \"mtls\", subject = \"spiffe://x/a\" }\naudiences = [\"a\"]\nscopes = [\"s\"]\nmax_ttl = \"1h\"\n[[policies]]\nname = \"short\"\nowner = \"o\"\nmatch = { issuer = \"mtls\", subject = \"spiffe://x/b\" }\naudiences = [\"a\"]\nscopes = [\"s\"]\nmax_ttl = \"30s\"\n";
    let c = Config::from_toml_str("f.toml", p).expect("a ceiling, not a load error");
    let capped: Vec<_> = c
        .warnings()
        .into_iter()
        .filter(|w| w.kind == super::lint::WarningKind::TtlCapped)
        .collect();
    assert_eq!(capped.len(), 2, "{capped:?}");
    assert_eq!(capped[0].key(), "tokens.default_ttl");
    assert_eq!(capped[1].key(), "policies[0].max_ttl");
    assert_eq!(capped[1].policy.as_deref(), Some("long"));
    assert!(capped[1].message.contains("`long`"), "{}", capped[1]);
    assert!(capped[1].message.contains("at most 1m"), "{}", capped[1]);
}

#[test]
fn missing_files_are_named() {
    let mut c = Config::from_toml_str("f.toml", "").unwrap();
    c.server.tls_cert = "/definitely/not/here.pem".into();
    let e = c.check_files().unwrap_err();
    assert_eq!(e.key, "server.tls_cert");
    assert!(e.reason.contains("/definitely/not/here.pem"));
}

/// The warnings of a config text: `(key, kind)`.
fn warnings_of(text: &str) -> Vec<(String, &'static str)> {
    Config::from_toml_str("w.toml", text)
        .unwrap()
        .warnings()
        .iter()
        .map(|w| (w.key(), w.kind.as_str()))
        .collect()
}

const GH: &str = "[[issuers]]\nname = \"gh\"\nissuer = \"https://token.actions.githubusercontent.com\"\naudiences = [\"tessera\"]\n";
const K8S: &str =
    "[[issuers]]\nname = \"k8s\"\nissuer = \"https://k8s.example\"\naudiences = [\"tessera\"]\n";

fn policy(matcher: &str, extra: &str) -> String {
    format!("[[policies]]\nname = \"p\"\nowner = \"alice\"\nmatch = {matcher}\naudiences = [\"https://api\"]\nscopes = [\"read\"]\n{extra}")
}

#[test]
fn shipped_and_example_configs_have_no_warnings() {
    let c = Config::from_toml_str("tessera.toml", SHIPPED).unwrap();
    assert_eq!(c.warnings(), vec![]);
    let c = Config::from_toml_str("tessera.example.toml", EXAMPLE).unwrap();
    assert_eq!(c.warnings(), vec![]);
}

#[test]
fn warns_shared_issuer_without_claims() {
    let text = format!(
        "{GH}{}",
        policy("{ issuer = \"gh\", subject = \"repo:org/app:*\" }", "")
    );
    assert_eq!(
        warnings_of(&text),
        vec![(
            "policies[0].match.claims".to_string(),
            "shared_issuer_without_claims"
        )]
    );
    let w = &Config::from_toml_str("config/x.toml", &text)
        .unwrap()
        .warnings()[0];
    assert_eq!(
        w.to_string(),
        "config/x.toml: policies[0] \"p\".match.claims: issuer `gh` (https://token.actions.githubusercontent.com) is shared by every GitHub Actions workflow of every repository; add a claim condition such as repository_owner"
    );
    // negative: a claim condition pins the tenant; a private issuer is fine
    let text = format!(
        "{GH}{}",
        policy(
            "{ issuer = \"gh\", subject = \"repo:org/app:*\", claims = { repository_owner = \"org\" } }",
            ""
        )
    );
    assert_eq!(warnings_of(&text), vec![]);
    let text = format!(
        "{K8S}{}",
        policy(
            "{ issuer = \"k8s\", subject = \"system:serviceaccount:ci:*\" }",
            ""
        )
    );
    assert_eq!(warnings_of(&text), vec![]);
}

#[test]
fn shared_issuer_rule_is_by_url() {
    use super::lint::shared_issuer;
    assert!(shared_issuer("https://token.actions.githubusercontent.com").is_some());
    assert!(shared_issuer("https://token.actions.githubusercontent.com/").is_some());
    assert!(shared_issuer("https://gitlab.com").is_some());
    assert!(shared_issuer("https://accounts.google.com").is_some());
    // an enterprise-specific GitHub issuer or a self-managed GitLab is not shared
    assert!(shared_issuer("https://token.actions.githubusercontent.com/acme").is_none());
    assert!(shared_issuer("https://gitlab.acme.example").is_none());
}

#[test]
fn warns_any_subject() {
    let text = policy("{ issuer = \"mtls\" }", "");
    assert_eq!(
        warnings_of(&text),
        vec![("policies[0].match.subject".to_string(), "any_subject")]
    );
    let text = policy(
        "{ issuer = \"mtls\", subject = \"spiffe://x/agent/*\" }",
        "",
    );
    assert_eq!(warnings_of(&text), vec![]);
}

#[test]
fn warns_double_star_subject() {
    let text = policy("{ issuer = \"mtls\", subject = \"spiffe://x/**\" }", "");
    assert_eq!(
        warnings_of(&text),
        vec![(
            "policies[0].match.subject".to_string(),
            "subject_double_star"
        )]
    );
    let w = Config::from_toml_str("w.toml", &text).unwrap().warnings();
    assert!(w[0].message.contains("`spiffe://x/**`"), "{}", w[0].message);
    let text = policy("{ issuer = \"mtls\", subject = \"spiffe://x/*\" }", "");
    assert_eq!(warnings_of(&text), vec![]);
}

#[test]
fn warns_wildcard_audience_and_scope() {
    let text = "[[policies]]\nname = \"p\"\nowner = \"o\"\nmatch = { issuer = \"mtls\", subject = \"a\" }\naudiences = [\"https://api\", \"*\"]\nscopes = [\"read\", \"**\", \"deploy:*\"]\n";
    assert_eq!(
        warnings_of(text),
        vec![
            ("policies[0].audiences[1]".to_string(), "wildcard_audience"),
            ("policies[0].scopes[1]".to_string(), "wildcard_scope"),
        ]
    );
    let w = Config::from_toml_str("w.toml", text).unwrap().warnings();
    assert!(w[0].message.starts_with("`*` allows"), "{}", w[0].message);
    assert!(w[1].message.starts_with("`**` allows"), "{}", w[1].message);
}

#[test]
fn warns_no_owner() {
    let text = "[[policies]]\nname = \"p\"\nmatch = { issuer = \"mtls\", subject = \"a\" }\naudiences = [\"x\"]\nscopes = [\"s\"]\n";
    assert_eq!(
        warnings_of(text),
        vec![("policies[0].owner".to_string(), "no_owner")]
    );
    assert_eq!(
        warnings_of(&text.replace("name = \"p\"\n", "name = \"p\"\nowner = \"o\"\n")),
        vec![]
    );
}

#[test]
fn warns_long_issuer_token_lifetime() {
    let text = format!("{K8S}max_token_lifetime = \"48h\"\n");
    assert_eq!(
        warnings_of(&text),
        vec![(
            "issuers[0].max_token_lifetime".to_string(),
            "long_issuer_token_lifetime"
        )]
    );
    let w = Config::from_toml_str("w.toml", &text).unwrap().warnings();
    assert_eq!(w[0].policy, None);
    assert!(
        w[0].to_string()
            .starts_with("w.toml: issuers[0].max_token_lifetime: `2d`"),
        "{}",
        w[0]
    );
    // the default (24h) and shorter are fine
    assert_eq!(warnings_of(K8S), vec![]);
    assert_eq!(
        warnings_of(&format!("{K8S}max_token_lifetime = \"1h\"\n")),
        vec![]
    );
}

#[test]
fn guard_is_off_by_default_and_checked() {
    let c = Config::from_toml_str("t.toml", "").unwrap();
    assert!(!c.guard.enabled);
    assert!(crate::exchange::guard::Guard::new(&c.guard).is_none());
    let c = Config::from_toml_str(
        "t.toml",
        "[guard]\nenabled = true\nmax_rate = 5\nwindow = \"10s\"\non_new_audience = \"approval\"\n\
         [[policies]]\nname = \"p\"\nmatch = { issuer = \"mtls\" }\naudiences = [\"a\"]\nscopes = [\"s\"]\n\
         guard = { on_rate = \"revoke\" }\n",
    )
    .unwrap();
    use crate::exchange::guard::GuardAction as A;
    assert_eq!(c.guard.window, 10);
    assert_eq!(c.guard.actions.on_new_audience, A::Approval);
    let p = c.guard.policies["p"];
    assert_eq!((p.on_rate, p.on_new_audience), (A::Revoke, A::Approval));
    let e = err_of("[guard]\non_rate = \"panic\"\n");
    assert_eq!(e.key, "guard.on_rate");
    let e = err_of("[guard]\nwindow = \"0s\"\n");
    assert_eq!(e.key, "guard.window");
    let e = err_of("[guard]\nmax_identities = 0\n");
    assert_eq!(e.key, "guard.max_identities");
    let e = err_of(
        "[[policies]]\nname = \"p\"\nmatch = { issuer = \"mtls\" }\naudiences = [\"a\"]\nscopes = [\"s\"]\nguard = { on_new_audience = \"maybe\" }\n",
    );
    assert_eq!(e.key, "policies[0].guard.on_new_audience");
}

/// `Limits::default()` (used where no config file exists: test servers,
/// the example resource server) says what an empty `[limits]` says.
#[test]
fn limits_default_matches_the_config_defaults() {
    let parsed = Config::from_toml_str("empty.toml", "").unwrap().limits;
    assert_eq!(
        format!("{:?}", super::Limits::default()),
        format!("{parsed:?}")
    );
}

#[test]
fn trust_domains_are_validated() {
    let e = err_of("[server]\ntrust_domains = { \"Example.ORG\" = [\"ca.pem\"] }\n");
    assert!(
        e.to_string()
            .contains("server.trust_domains.\"Example.ORG\"")
            && e.to_string().contains("trust domain name"),
        "{e}"
    );
    let e = err_of("[server]\ntrust_domains = { \"example.org\" = [] }\n");
    assert!(e.to_string().contains("1 to 16 CA files"), "{e}");
    let c = Config::from_toml_str(
        "t.toml",
        "[server]\ntrust_domains = { \"example.org\" = [\"a.pem\"], \"partner.org\" = [\"b.pem\", \"c.pem\"] }\n",
    )
    .unwrap();
    assert_eq!(c.server.trust_domains.len(), 2);
    assert!(c
        .referenced_files()
        .iter()
        .any(|(k, p)| k == "server.trust_domains.\"partner.org\"[1]" && p.ends_with("c.pem")));
}

#[test]
fn upstream_and_clock_trust_keys_have_defaults_and_bounds() {
    let base = "[[issuers]]\nname = \"k\"\nissuer = \"https://k\"\naudiences = [\"t\"]\n";
    let c = Config::from_toml_str("f", base).unwrap();
    assert_eq!(c.issuers[0].jwks_refresh_cooldown.as_secs(), 30);
    assert_eq!(c.issuers[0].jwks_max_stale.as_secs(), 24 * 3600);
    assert_eq!(c.server.max_clock_step.as_secs(), 5);
    assert_eq!(c.server.clock_quarantine.as_secs(), 60);

    let c = Config::from_toml_str(
        "f",
        &format!("{base}jwks_refresh_cooldown = \"2s\"\njwks_max_stale = \"10m\"\n"),
    )
    .unwrap();
    assert_eq!(c.issuers[0].jwks_refresh_cooldown.as_secs(), 2);
    assert_eq!(c.issuers[0].jwks_max_stale.as_secs(), 600);

    for (extra, key) in [
        (
            "jwks_refresh_cooldown = \"0s\"",
            "issuers[0].jwks_refresh_cooldown",
        ),
        (
            "jwks_refresh_cooldown = \"2h\"",
            "issuers[0].jwks_refresh_cooldown",
        ),
        ("jwks_max_stale = \"30s\"", "issuers[0].jwks_max_stale"),
        ("jwks_max_stale = \"8d\"", "issuers[0].jwks_max_stale"),
    ] {
        let e = err_of(&format!("{base}{extra}\n"));
        assert_eq!(e.key, key, "{extra}");
        assert!(e.reason.contains("out of bounds"), "{}", e.reason);
    }
    for (text, key) in [
        (
            "[server]\nmax_clock_step = \"500ms\"\n",
            "server.max_clock_step",
        ),
        (
            "[server]\nmax_clock_step = \"2h\"\n",
            "server.max_clock_step",
        ),
        (
            "[server]\nclock_quarantine = \"0s\"\n",
            "server.clock_quarantine",
        ),
        (
            "[server]\nclock_quarantine = \"1d\"\n",
            "server.clock_quarantine",
        ),
    ] {
        assert_eq!(err_of(text).key, key, "{text}");
    }
}

/// The container's configuration (`deploy/tessera.toml`) validates and
/// raises no warning.
#[test]
fn deploy_config_validates_without_warnings() {
    let c = Config::from_toml_str(
        "deploy/tessera.toml",
        include_str!("../../deploy/tessera.toml"),
    )
    .unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    assert!(c.store.url.starts_with("redis+sentinel://"));
}

/// `[server] worker_threads`: 0 (the default) is one per CPU the process
/// may use; an explicit count is kept; more than the bound is refused with
/// the key named.
#[test]
fn worker_threads_default_explicit_and_bound() {
    let c = Config::from_toml_str("t.toml", "").unwrap();
    assert_eq!(c.server.worker_threads, 0);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(c.server.threads(), cpus);
    let c = Config::from_toml_str("t.toml", "[server]\nworker_threads = 1\n").unwrap();
    assert_eq!(c.server.threads(), 1);
    let c = Config::from_toml_str("t.toml", "[server]\nworker_threads = 1024\n").unwrap();
    assert_eq!(c.server.threads(), 1024);
    let e = err_of("[server]\nworker_threads = 1025\n");
    assert_eq!(e.key, "server.worker_threads");
    assert!(e.reason.contains("more than 1024"), "{e}");
    // Not a count at all: refused by the parser, naming the key and line.
    let e = err_of("[server]\nworker_threads = -1\n");
    assert_eq!(e.key, "server.worker_threads");
    assert!(e.reason.starts_with("line 2: "), "{e}");
}

/// The store URL as logged and printed: user information hidden, the rest
/// (scheme, hosts, database, master name) kept for diagnosis.
#[test]
fn store_urls_are_shown_without_credentials() {
    use crate::config::redacted_url;
    for (url, shown) in [
        ("memory://", "memory://"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (
            "redis://:hunter2@127.0.0.1:6379",
            "redis://***@127.0.0.1:6379",
        ),
        (
            "rediss://app:hunter2@redis.internal:6380/2",
            "rediss://***@redis.internal:6380/2",
        ),
        (
            "redis+cluster://app:hunter2@h1:7000,h2:7001",
            "redis+cluster://***@h1:7000,h2:7001",
        ),
        (
            "redis+sentinel://app:hu@nter2@s1:26379/main",
            "redis+sentinel://***@s1:26379/main",
        ),
        ("redis://h:1/0?x=a@b", "redis://h:1/0?x=a@b"),
        ("not a url", "not a url"),
    ] {
        assert_eq!(redacted_url(url), shown, "{url}");
        assert!(!redacted_url(url).contains("nter2"), "{url}");
    }
}

/// Values the parser refuses name the key (its full path, arrays indexed)
/// and the line; syntax errors, which have no key, name the line.
#[test]
fn parse_errors_name_the_key_and_the_line() {
    for (text, key, reason) in [
        (
            "[server]\nworker_threads = -1\n",
            "server.worker_threads",
            "line 2: invalid value: integer `-1`, expected u32",
        ),
        (
            "[store]\nblock_cache = \"no\"\n",
            "store.block_cache",
            "line 2: invalid type: string \"no\", expected a boolean",
        ),
        (
            "[[issuers]]\nname = 3\n",
            "issuers[0].name",
            "line 2: invalid type: integer `3`",
        ),
        (
            "[[policies]]\nname = \"p\"\nmatch = { issuer = 1 }\n",
            "policies[0].match.issuer",
            "line 3: invalid type: integer `1`",
        ),
        (
            "[limits]\nmax_connections = \"many\"\n",
            "limits.max_connections",
            "line 2: invalid type: string \"many\"",
        ),
        ("x = [\n", "line 2", "invalid array"),
    ] {
        let e = err_of(text);
        assert_eq!(e.key, key, "{text}");
        assert!(e.reason.starts_with(reason), "{text}: {e}");
        assert!(
            e.to_string().starts_with(&format!("bad.toml: {key}: ")),
            "{e}"
        );
    }
    // A 5,000-character misspelt key comes back cut, not whole.
    let long = "k".repeat(5000);
    let e = err_of(&format!("[server]\n{long} = 1\n"));
    assert!(e.key.starts_with("server.kkk"), "{}", e.key);
    assert!(e.key.len() <= MAX_ERROR_REASON_LEN, "{}", e.key.len());
    assert!(e.reason.len() <= MAX_ERROR_REASON_LEN, "{}", e.reason.len());
    assert!(
        e.reason.starts_with("line 2: unknown field"),
        "{}",
        e.reason
    );
}

/// Issue 18: the store owns its prefix and timeout rules and the config
/// applies them, so a prefix the Redis backend refuses at start-up (a
/// 40-character one) is refused here, naming the key, not reported later
/// as a store outage.
#[test]
fn store_settings_are_checked_by_the_store_rule() {
    let long = "p".repeat(40);
    let e = err_of(&format!("[store]\nprefix = \"{long}\"\n"));
    assert_eq!(e.key, "store.prefix");
    assert!(e.reason.contains("40 characters"), "{}", e.reason);
    assert_eq!(
        crate::store::check_prefix(&long).map_err(|e| e.to_string()),
        Err(e.reason.clone())
    );
    assert!(crate::store::check_prefix(&"p".repeat(crate::store::MAX_PREFIX_LEN)).is_ok());
    let e = err_of("[store]\nprefix = \"a b\"\n");
    assert_eq!(e.key, "store.prefix");
    let e = err_of("[store]\ntimeout = \"31s\"\n");
    assert_eq!(e.key, "store.timeout");
    assert!(e.reason.contains("at most 30s"), "{}", e.reason);
}

/// `[store] url` over TLS to a cluster or through Sentinel (issue 17 item
/// 7): the `rediss+cluster://` and `rediss+sentinel://` forms load (with a
/// `?ca=` file that `config check` looks for); a mixed or ambiguous form is
/// refused at load, naming the rule, never the password.
#[test]
fn store_url_tls_forms_load_and_mixed_forms_are_refused() {
    for url in [
        "rediss+cluster://app:pw-1@n1:7000,n2:7001",
        "rediss+sentinel://s1:26379,s2:26379/main",
        "rediss+cluster://n1:7000?ca=/etc/tessera/redis-ca.pem",
        "redis+cluster://n1:7000",
        "rediss://r:6380?ca=/etc/tessera/redis-ca.pem",
    ] {
        let c = Config::from_toml_str("t.toml", &format!("[store]\nurl = \"{url}\"\n")).unwrap();
        assert_eq!(c.store.url, url);
    }
    let c = Config::from_toml_str(
        "t.toml",
        "[store]\nurl = \"rediss+sentinel://s1:26379/m?ca=/etc/tessera/redis-ca.pem\"\n",
    )
    .unwrap();
    assert!(c
        .referenced_files()
        .iter()
        .any(|(k, p)| k == "store.url (?ca=)" && p.ends_with("redis-ca.pem")));
    for (url, why) in [
        ("redis+cluster://rediss://:pw-1@n1:7000", "one scheme"),
        (
            "rediss+cluster://:pw-1@n1:7000,redis://n2:7001",
            "one scheme",
        ),
        (
            "redis+cluster://:pw-1@n1:7000?ca=/ca.pem",
            "only used with rediss",
        ),
        (
            "redis+sentinel://:pw-1@s1:26379/m?ca=/ca.pem",
            "only used with rediss",
        ),
        (
            "rediss+cluster://:pw-1@n1:7000?tls=true",
            "TLS is chosen by the scheme",
        ),
        ("rediss+sentinel://:pw-1@s1:26379/m#insecure", "fragments"),
        ("rediss://:pw-1@n1:7000,n2:7001", "several nodes"),
        ("rediss+sentinel://:pw-1@s1:26379", "mastername"),
        ("redis+tls://:pw-1@n1:7000", "must start with memory://"),
    ] {
        let e = err_of(&format!("[store]\nurl = \"{url}\"\n"));
        assert_eq!(e.key, "store.url", "{url}");
        assert!(e.reason.contains(why), "{url}: {e}");
        assert!(!e.to_string().contains("pw-1"), "{e}");
    }
}

#[test]
fn approval_login_and_approvers_are_validated_together() {
    let corp = "[[issuers]]\nname = \"corp\"\nissuer = \"https://login.example.com\"\naudiences = [\"tessera-approvals\"]\n";
    let login = "[approvals]\nlogin_issuer = \"corp\"\nlogin_client_id = \"tessera-approvals\"\n";
    let pol = |extra: &str| policy("{ issuer = \"mtls\", subject = \"spiffe://td/a\" }", extra);
    // approvers need a login issuer
    let e = err_of(&format!("{corp}{}", pol("approvers = [\"bob\"]\n")));
    assert_eq!(e.key, "policies[0].approvers");
    // group: entries need groups_claim; empty lists and names are refused
    let e = err_of(&format!(
        "{login}{corp}{}",
        pol("approvers = [\"group:leads\"]\n")
    ));
    assert_eq!(e.key, "policies[0].approvers[0]");
    let e = err_of(&format!("{login}{corp}{}", pol("approvers = []\n")));
    assert_eq!(e.key, "policies[0].approvers");
    // the client id must be an audience of the login issuer
    let e = err_of(&format!(
        "[approvals]\nlogin_issuer = \"corp\"\nlogin_client_id = \"other\"\n{corp}"
    ));
    assert_eq!(e.key, "approvals.login_client_id");
    let e = err_of(&format!("[approvals]\nlogin_issuer = \"nope\"\n{corp}"));
    assert_eq!(e.key, "approvals.login_issuer");
    let e = err_of("[approvals]\nlogin_client_id = \"x\"\n");
    assert_eq!(e.key, "approvals.login_client_id");
    let e = err_of(&format!("{login}session_ttl = \"2h\"\n{corp}"));
    assert_eq!(e.key, "approvals.session_ttl");
    let e = err_of(&format!("{login}mfa_amr = []\n{corp}"));
    assert_eq!(e.key, "approvals.mfa_amr");
    // a valid one
    let c = Config::from_toml_str(
        "ok.toml",
        &format!(
            "{login}groups_claim = \"groups\"\n{corp}{}",
            pol("approvers = [\"bob@example.com\", \"group:leads\"]\n")
        ),
    )
    .unwrap();
    let l = c.approvals_login.unwrap();
    assert_eq!((l.approver_claim.as_str(), l.require_mfa), ("email", true));
    assert_eq!(l.max_auth_age.as_secs(), 900);
    assert_eq!(
        c.policy_approvers["p"],
        vec!["bob@example.com", "group:leads"]
    );
}
