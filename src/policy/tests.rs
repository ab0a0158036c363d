#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use serde_json::json;

fn spec(name: &str, issuer: &str) -> PolicySpec {
    PolicySpec {
        name: name.to_owned(),
        owner: Some("team".to_owned()),
        match_issuer: issuer.to_owned(),
        audiences: vec!["https://api.example.com".to_owned()],
        scopes: vec!["read".to_owned()],
        ..PolicySpec::default()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn scopes(s: &str) -> ScopeSet {
    ScopeSet::parse(s).unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn gh_subject<'a>(sub: &'a str, claims: &'a Map<String, Value>) -> Subject<'a> {
    Subject {
        issuer: "github",
        subject: sub,
        claims: Some(claims),
    }
}

const AUD: &str = "https://api.example.com";

#[test]
fn deny_by_default() {
    let set = PolicySet::compile(vec![]).unwrap();
    let claims = obj(json!({}));
    let s = gh_subject("repo:org/repo:ref:refs/heads/main", &claims);
    assert_eq!(
        set.decide(&s, AUD, &scopes("read")),
        Err(Denial::NoMatchingPolicy)
    );
    assert!(set.matching(&s).is_empty());
}

#[test]
fn subject_and_issuer_matching() {
    let mut p = spec("deploy", "github");
    p.match_subject = Some("repo:org/repo:ref:refs/heads/main".to_owned());
    let set = PolicySet::compile(vec![p]).unwrap();
    let claims = obj(json!({}));
    let ok = gh_subject("repo:org/repo:ref:refs/heads/main", &claims);
    assert_eq!(
        set.decide(&ok, AUD, &scopes("read")).unwrap().name(),
        "deploy"
    );
    for bad in [
        "repo:org/repo:pull_request",
        "repo:OrG/Repo:ref:refs/heads/main",
        "repo:org/repo:ref:refs/heads/main ",
        "repo:org/repo\u{FF1A}ref:refs/heads/main",
        "repo:org/r\u{0435}po:ref:refs/heads/main",
        "repo:org/repo:ref:refs/heads/main\0",
        "",
    ] {
        let s = gh_subject(bad, &claims);
        assert_eq!(
            set.decide(&s, AUD, &scopes("read")),
            Err(Denial::NoMatchingPolicy),
            "{bad:?}"
        );
    }
    // same subject, other issuer
    let other = Subject {
        issuer: "gitlab",
        ..ok
    };
    assert_eq!(
        set.decide(&other, AUD, &scopes("read")),
        Err(Denial::NoMatchingPolicy)
    );
    // issuer names are byte-exact too
    let upper = Subject {
        issuer: "GitHub",
        ..ok
    };
    assert!(set.matching(&upper).is_empty());
}

#[test]
fn no_subject_pattern_requires_non_empty_subject() {
    let set = PolicySet::compile(vec![spec("any", "mtls")]).unwrap();
    let s = Subject {
        issuer: "mtls",
        subject: "spiffe://example.org/agent/demo",
        claims: None,
    };
    assert!(set.decide(&s, AUD, &scopes("read")).is_ok());
    let empty = Subject { subject: "", ..s };
    assert_eq!(
        set.decide(&empty, AUD, &scopes("read")),
        Err(Denial::NoMatchingPolicy)
    );
    assert_eq!(
        set.explain(&empty, AUD, &scopes("read"))[0].outcome,
        VerdictOutcome::SubjectMismatch(SubjectMismatch::EmptySubject)
    );
}

#[test]
fn github_wildcard_does_not_cross_colon() {
    let mut p = spec("org", "github");
    p.match_subject = Some("repo:org/*".to_owned());
    let set = PolicySet::compile(vec![p]).unwrap();
    let claims = obj(json!({}));
    assert!(set.matching(&gh_subject("repo:org/repo", &claims)).len() == 1);
    assert!(set
        .matching(&gh_subject("repo:org/repo:pull_request", &claims))
        .is_empty());
    assert!(set
        .matching(&gh_subject("repo:org/repo:ref:refs/heads/main", &claims))
        .is_empty());
}

#[test]
fn claim_conditions() {
    let mut p = spec("k8s", "cluster");
    p.match_claims = vec![
        ("kubernetes.io/namespace".to_owned(), "prod".to_owned()),
        ("groups".to_owned(), "deployers".to_owned()),
    ];
    let set = PolicySet::compile(vec![p]).unwrap();
    let check = |claims: Value| {
        let claims = obj(claims);
        let s = Subject {
            issuer: "cluster",
            subject: "system:serviceaccount:prod:web",
            claims: Some(&claims),
        };
        set.decide(&s, AUD, &scopes("read")).is_ok()
    };
    assert!(check(json!({
        "kubernetes.io": {"namespace": "prod"},
        "groups": ["viewers", "deployers"]
    })));
    assert!(check(json!({
        "kubernetes.io": {"namespace": "prod"},
        "groups": "deployers"
    })));
    // dotted key is not a path
    assert!(!check(json!({
        "kubernetes.io/namespace": "prod",
        "groups": "deployers"
    })));
    assert!(!check(json!({"kubernetes.io": {"namespace": "prod"}})));
    for bad in [
        json!(null),
        json!(true),
        json!(0),
        json!(""),
        json!([]),
        json!([null, 1, false]),
        json!({"deployers": true}),
        json!("Deployers"),
        json!("deployers "),
        json!("*"),
    ] {
        assert!(
            !check(json!({"kubernetes.io": {"namespace": "prod"}, "groups": bad})),
            "{bad}"
        );
    }
    // mTLS subjects have no claims: claim policies never match them
    let s = Subject {
        issuer: "cluster",
        subject: "x",
        claims: None,
    };
    assert!(set.matching(&s).is_empty());
    assert_eq!(
        set.explain(&s, AUD, &scopes("read"))[0].outcome,
        VerdictOutcome::SubjectMismatch(SubjectMismatch::ClaimsUnavailable)
    );
}

#[test]
fn wildcard_claim_pattern_vs_missing_claim() {
    let mut p = spec("p", "github");
    p.match_claims = vec![("environment".to_owned(), "*".to_owned())];
    let set = PolicySet::compile(vec![p]).unwrap();
    let missing = obj(json!({"sub": "x"}));
    assert!(set.matching(&gh_subject("x", &missing)).is_empty());
    let empty = obj(json!({"environment": ""}));
    assert!(set.matching(&gh_subject("x", &empty)).is_empty());
    let null = obj(json!({"environment": null}));
    assert!(set.matching(&gh_subject("x", &null)).is_empty());
    let present = obj(json!({"environment": "prod"}));
    assert_eq!(set.matching(&gh_subject("x", &present)).len(), 1);
    let star = obj(json!({"environment": "*"}));
    assert_eq!(set.matching(&gh_subject("x", &star)).len(), 1);
}

#[test]
fn claim_values_with_star_are_literal() {
    let mut p = spec("p", "github");
    p.match_claims = vec![("repository".to_owned(), "org/app".to_owned())];
    let set = PolicySet::compile(vec![p]).unwrap();
    for v in ["*", "**", "org/*", "org/**", "*/app"] {
        let c = obj(json!({ "repository": v }));
        assert!(set.matching(&gh_subject("x", &c)).is_empty(), "{v}");
    }
}

#[test]
fn no_mixing_across_policies() {
    let mut a = spec("a", "github");
    a.scopes = strings(&["x"]);
    let mut b = spec("b", "github");
    b.scopes = strings(&["y"]);
    let set = PolicySet::compile(vec![a, b]).unwrap();
    let claims = obj(json!({}));
    let s = gh_subject("sub", &claims);
    assert_eq!(set.decide(&s, AUD, &scopes("x")).unwrap().name(), "a");
    assert_eq!(set.decide(&s, AUD, &scopes("y")).unwrap().name(), "b");
    match set.decide(&s, AUD, &scopes("x y")) {
        Err(Denial::ScopeNotAllowed { refused }) => assert_eq!(refused.len(), 1),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(set.matching(&s).len(), 2);
}

#[test]
fn first_match_wins_and_explain() {
    let mut a = spec("narrow", "github");
    a.scopes = strings(&["read"]);
    a.max_ttl = Some(Duration::from_secs(60));
    let mut b = spec("wide", "github");
    b.scopes = strings(&["read", "write"]);
    b.max_ttl = Some(Duration::from_secs(600));
    let set = PolicySet::compile(vec![a, b]).unwrap();
    let claims = obj(json!({}));
    let s = gh_subject("sub", &claims);
    let p = set.decide(&s, AUD, &scopes("read")).unwrap();
    assert_eq!(p.name(), "narrow");
    assert_eq!(p.max_ttl(), Some(Duration::from_secs(60)));
    assert_eq!(
        set.decide(&s, AUD, &scopes("read write")).unwrap().name(),
        "wide"
    );

    let v = set.explain(&s, AUD, &scopes("read"));
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].outcome, VerdictOutcome::Granted);
    assert!(v[0].selected);
    assert_eq!(v[1].outcome, VerdictOutcome::Granted);
    assert!(!v[1].selected);
    assert!(v[1].to_string().contains("shadowed"));

    let v = set.explain(&s, AUD, &scopes("read write"));
    assert_eq!(
        v[0].outcome,
        VerdictOutcome::ScopesNotAllowed {
            refused: scopes("write")
        }
    );
    assert!(!v[0].selected && v[1].selected);
}

#[test]
fn audience_vs_scope_denial() {
    let mut a = spec("a", "github");
    a.audiences = strings(&["https://one.example.com"]);
    a.scopes = strings(&["read"]);
    let mut b = spec("b", "github");
    b.audiences = strings(&["https://two.example.com"]);
    b.scopes = strings(&["read", "write", "admin"]);
    let set = PolicySet::compile(vec![a, b]).unwrap();
    let claims = obj(json!({}));
    let s = gh_subject("sub", &claims);
    assert_eq!(
        set.decide(&s, "https://three.example.com", &scopes("read")),
        Err(Denial::AudienceNotAllowed)
    );
    assert_eq!(
        set.decide(&s, "", &scopes("read")),
        Err(Denial::AudienceNotAllowed)
    );
    assert_eq!(
        set.decide(&s, "https://one.example.com", &scopes("read write")),
        Err(Denial::ScopeNotAllowed {
            refused: scopes("write")
        })
    );
    assert_eq!(
        set.decide(&s, "https://two.example.com", &scopes("read deploy")),
        Err(Denial::ScopeNotAllowed {
            refused: scopes("deploy")
        })
    );
    assert_eq!(
        set.decide(&s, "https://one.example.com", &ScopeSet::new()),
        Err(Denial::ScopeNotAllowed {
            refused: ScopeSet::new()
        })
    );
    assert_eq!(
        set.decide(&s, "https://two.example.com", &scopes("admin"))
            .unwrap()
            .name(),
        "b"
    );
    assert_eq!(Denial::AudienceNotAllowed.reason(), "audience_not_allowed");
}

#[test]
fn closest_policy_reported_for_scope_denial() {
    let mut a = spec("a", "github");
    a.scopes = strings(&["x"]);
    let mut b = spec("b", "github");
    b.scopes = strings(&["x", "y"]);
    let set = PolicySet::compile(vec![a, b]).unwrap();
    let claims = obj(json!({}));
    let s = gh_subject("sub", &claims);
    assert_eq!(
        set.decide(&s, AUD, &scopes("x y z")),
        Err(Denial::ScopeNotAllowed {
            refused: scopes("z")
        })
    );
}

#[test]
fn scope_patterns_and_accessors() {
    let mut p = spec("p", "github");
    p.scopes = strings(&["repo:read", "deploy:*", "admin"]);
    p.jit_scopes = strings(&["deploy:*"]);
    p.approval_scopes = strings(&["admin"]);
    p.may_act_for = strings(&["mtls", "github"]);
    p.max_depth = 3;
    p.require_binding = true;
    p.require_authorization_details = true;
    let set = PolicySet::compile(vec![p]).unwrap();
    let c = &set.policies()[0];
    let s = |x: &str| Scope::parse(x).unwrap();
    assert!(c.allows_scope(&s("deploy:prod")));
    assert!(!c.allows_scope(&s("deploy:prod:x")));
    assert!(!c.allows_scope(&s("deploy/x")));
    assert!(c.is_jit_scope(&s("deploy:prod")));
    assert!(!c.is_jit_scope(&s("admin")));
    assert!(c.is_approval_scope(&s("admin")));
    assert!(!c.is_approval_scope(&s("repo:read")));
    assert_eq!(c.may_act_for(), ["mtls", "github"]);
    assert_eq!(c.max_depth(), 3);
    assert!(c.require_binding() && c.require_authorization_details());
    assert_eq!(c.owner(), Some("team"));
    assert_eq!(c.issuer(), "github");
    assert_eq!(c.index(), 0);
    assert!(c.allows_audience(AUD));
    assert!(!c.allows_audience("https://api.example.com/"));
    assert!(set.get("p").is_some() && set.get("P").is_none());
}

fn compile_err(p: PolicySpec) -> PolicyError {
    PolicySet::compile(vec![spec("ok", "github"), p]).unwrap_err()
}

#[test]
fn compile_errors_name_the_field() {
    let cases: Vec<(PolicySpec, &str)> = vec![
        (spec("", "github"), "name"),
        (spec("ok", "github"), "name"), // duplicate
        (spec("bad\nname", "github"), "name"),
        (
            PolicySpec {
                owner: Some(String::new()),
                ..spec("p", "github")
            },
            "owner",
        ),
        (spec("p", ""), "match.issuer"),
        (
            PolicySpec {
                match_subject: Some(String::new()),
                ..spec("p", "github")
            },
            "match.subject",
        ),
        (
            PolicySpec {
                match_subject: Some("repo:***".to_owned()),
                ..spec("p", "github")
            },
            "match.subject",
        ),
        (
            PolicySpec {
                match_claims: vec![("a//b".to_owned(), "x".to_owned())],
                ..spec("p", "github")
            },
            "match.claims[\"a//b\"]",
        ),
        (
            PolicySpec {
                match_claims: vec![("env".to_owned(), String::new())],
                ..spec("p", "github")
            },
            "match.claims[\"env\"]",
        ),
        (
            PolicySpec {
                match_claims: vec![
                    ("env".to_owned(), "a".to_owned()),
                    ("env".to_owned(), "b".to_owned()),
                ],
                ..spec("p", "github")
            },
            "match.claims[\"env\"]",
        ),
        (
            PolicySpec {
                audiences: vec![],
                ..spec("p", "github")
            },
            "audiences",
        ),
        (
            PolicySpec {
                audiences: strings(&["a", "***"]),
                ..spec("p", "github")
            },
            "audiences[1]",
        ),
        (
            PolicySpec {
                scopes: vec![],
                ..spec("p", "github")
            },
            "scopes",
        ),
        (
            PolicySpec {
                scopes: strings(&["a", "b", ""]),
                ..spec("p", "github")
            },
            "scopes[2]",
        ),
        (
            PolicySpec {
                jit_scopes: strings(&["read", "write"]),
                ..spec("p", "github")
            },
            "jit_scopes[1]",
        ),
        (
            PolicySpec {
                scopes: strings(&["deploy:*"]),
                approval_scopes: strings(&["deploy:prod"]),
                ..spec("p", "github")
            },
            "approval_scopes[0]",
        ),
        (
            PolicySpec {
                may_act_for: strings(&[""]),
                ..spec("p", "github")
            },
            "may_act_for[0]",
        ),
        (
            PolicySpec {
                max_depth: 0,
                ..spec("p", "github")
            },
            "max_depth",
        ),
        (
            PolicySpec {
                max_depth: 9,
                ..spec("p", "github")
            },
            "max_depth",
        ),
        (
            PolicySpec {
                max_ttl: Some(Duration::ZERO),
                ..spec("p", "github")
            },
            "max_ttl",
        ),
    ];
    for (p, field) in cases {
        let name = p.name.clone();
        let e = compile_err(p);
        assert_eq!(e.field, field, "{e}");
        assert_eq!(e.index, 1);
        assert_eq!(e.policy, name);
        assert!(e.to_string().contains(field), "{e}");
    }
    // limits are inclusive
    assert!(PolicySet::compile(vec![PolicySpec {
        max_depth: MAX_MAX_DEPTH,
        ..spec("p", "github")
    }])
    .is_ok());
    assert_eq!(PolicySpec::default().max_depth, DEFAULT_MAX_DEPTH);
}

#[test]
fn lint_flags_risky_policies() {
    let mut a = spec("wide", "github");
    a.owner = None;
    a.match_subject = Some("repo:org/**".to_owned());
    a.audiences = strings(&["*"]);
    a.scopes = strings(&["read", "**"]);
    let mut b = spec("scoped", "github");
    b.match_claims = vec![("repository_owner".to_owned(), "org".to_owned())];
    let mut c = spec("other", "internal");
    c.match_subject = Some("svc-*".to_owned());
    let set = PolicySet::compile(vec![a, b, c]).unwrap();
    let w = set.lint(&["github"]);
    let kinds: Vec<(&str, &str, LintKind)> = w
        .iter()
        .map(|w| (w.policy.as_str(), w.field.as_str(), w.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("wide", "owner", LintKind::NoOwner),
            ("wide", "match.subject", LintKind::SubjectDoubleStar),
            ("wide", "match.claims", LintKind::SharedIssuerWithoutClaims),
            ("wide", "audiences[0]", LintKind::WildcardAudience),
            ("wide", "scopes[1]", LintKind::WildcardScope),
        ]
    );
    assert!(w[0].to_string().contains("wide"));
    assert!(set.lint(&[]).len() == 4);
}

#[test]
fn lint_any_subject_only_without_subject_and_claims() {
    // no subject pattern, no claim condition: every subject matches
    let open = spec("open", "mtls");
    // either narrowing is enough
    let mut by_subject = spec("by-subject", "mtls");
    by_subject.match_subject = Some("spiffe://example.org/agent/*".to_owned());
    let mut by_claim = spec("by-claim", "k8s");
    by_claim.match_claims = vec![("kubernetes.io/namespace".to_owned(), "ci".to_owned())];
    let set = PolicySet::compile(vec![open, by_subject, by_claim]).unwrap();
    let w = set.lint(&[]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        (w[0].policy.as_str(), w[0].field.as_str(), w[0].kind),
        ("open", "match.subject", LintKind::AnySubject)
    );
    assert_eq!(w[0].kind.as_str(), "any_subject");
    assert!(w[0].to_string().contains("every subject"));
}

#[test]
fn lint_kind_names_are_stable() {
    let all = [
        (LintKind::SubjectDoubleStar, "subject_double_star"),
        (LintKind::WildcardAudience, "wildcard_audience"),
        (LintKind::WildcardScope, "wildcard_scope"),
        (LintKind::NoOwner, "no_owner"),
        (
            LintKind::SharedIssuerWithoutClaims,
            "shared_issuer_without_claims",
        ),
        (LintKind::AnySubject, "any_subject"),
    ];
    for (k, name) in all {
        assert_eq!(k.as_str(), name);
    }
}
