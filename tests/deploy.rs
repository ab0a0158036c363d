//! The Kubernetes deployment (deploy/kubernetes/) and the deploy config,
//! checked without a cluster: the ConfigMap is deploy/tessera.toml
//! verbatim, the manifests keep the security promises (non-root,
//! read-only root filesystem, no capabilities, probes on the ops port, the
//! service-account issuer's RBAC), the schema validator accepts them, and
//! `config check --no-files` accepts the deploy config without its secrets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::docs::{read, repo};

const MANIFESTS: [&str; 7] = [
    "namespace.yaml",
    "rbac.yaml",
    "configmap.yaml",
    "deployment.yaml",
    "service.yaml",
    "pdb.yaml",
    "networkpolicy.yaml",
];

#[test]
fn configmap_is_the_deploy_config_verbatim() {
    let cm = read("deploy/kubernetes/configmap.yaml");
    let body = cm
        .split("  tessera.toml: |\n")
        .nth(1)
        .expect("data.tessera.toml as a block scalar");
    let unindented: String = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        unindented,
        read("deploy/tessera.toml"),
        "copy deploy/tessera.toml into deploy/kubernetes/configmap.yaml"
    );
    let k = read("deploy/kubernetes/kustomization.yaml");
    for m in MANIFESTS {
        assert!(k.contains(&format!("  - {m}")), "{m} not in kustomization");
    }
}

#[test]
fn manifests_keep_the_security_promises() {
    let d = read("deploy/kubernetes/deployment.yaml");
    for must in [
        "runAsNonRoot: true",
        "runAsUser: 65532",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "type: RuntimeDefault",
        "path: /readyz\n              port: ops",
        "path: /healthz\n              port: ops",
        "secretName: tessera-tls",
        "secretName: tessera-signing",
        "name: tessera-config",
        "serviceAccountName: tessera",
    ] {
        assert!(d.contains(must), "deployment.yaml lacks `{must}`");
    }
    // the ports the config listens on are the ones the manifests name
    let cfg = tessera::config::Config::load(&repo().join("deploy/tessera.toml")).unwrap();
    let port = |a: &str| a.rsplit(':').next().unwrap().to_string();
    let ops = port(&cfg.server.ops_listen.to_string());
    let api = port(&cfg.server.listen.to_string());
    assert!(d.contains(&format!("containerPort: {ops}")), "{ops}");
    assert!(d.contains(&format!("containerPort: {api}")), "{api}");
    // the deploy config's mount points are the Deployment's
    for (_, p) in cfg.referenced_files() {
        let p = p.display().to_string();
        assert!(
            p.starts_with("/etc/tessera/tls/")
                || p.starts_with("/etc/tessera/signing")
                || p.starts_with("/var/run/secrets/kubernetes.io/serviceaccount/"),
            "{p} is not mounted by deployment.yaml"
        );
    }
    // the service-account issuer: RBAC for its JWKS, the pod's own token
    let rbac = read("deploy/kubernetes/rbac.yaml");
    assert!(rbac.contains("name: system:service-account-issuer-discovery"));
    assert!(rbac.contains("kind: ClusterRoleBinding"));
    let k8s = cfg.issuers.iter().find(|i| i.name == "k8s").unwrap();
    assert_eq!(
        k8s.bearer_token_file.as_deref(),
        Some(std::path::Path::new(
            "/var/run/secrets/kubernetes.io/serviceaccount/token"
        ))
    );
    assert!(read("deploy/kubernetes/pdb.yaml").contains("kind: PodDisruptionBudget"));
    let np = read("deploy/kubernetes/networkpolicy.yaml");
    assert!(np.contains("policyTypes: [\"Ingress\", \"Egress\"]"));
}

/// The docs' deployment checks, as CI runs them.
#[test]
fn deploy_checks_run_without_secrets_or_a_cluster() {
    let bin = env!("CARGO_BIN_EXE_tessera");
    let o = std::process::Command::new(bin)
        .args([
            "config",
            "check",
            "--no-files",
            "--deny-warnings",
            "--config",
            "deploy/tessera.toml",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("--no-files"), "{out}");
    // without --no-files the same config fails here, naming a mount point
    let o = std::process::Command::new(bin)
        .args(["config", "check", "--config", "deploy/tessera.toml"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/etc/tessera/"));

    // the schema validator (pip kubernetes-validate, bundled schemas)
    let files: Vec<String> = MANIFESTS
        .iter()
        .map(|m| format!("deploy/kubernetes/{m}"))
        .collect();
    match std::process::Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(&files)
        .current_dir(repo())
        .output()
    {
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named")
            && std::env::var("TESSERA_REQUIRE_KUBE_VALIDATE").as_deref() != Ok("1") =>
        {
            eprintln!(
                "SKIPPED: kubernetes-validate not installed: pip install kubernetes-validate (.ci/run does)"
            )
        }
        Ok(o) => assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if std::env::var("TESSERA_REQUIRE_KUBE_VALIDATE").as_deref() == Ok("1") => {
            panic!("kubernetes-validate: {e}")
        }
        Err(e) => eprintln!(
            "SKIPPED: kubernetes-validate not installed ({e}): pip install kubernetes-validate (.ci/run does)"
        ),
    }
}
