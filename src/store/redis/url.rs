//! The store URL ([`StoreUrl`]): its forms and rules, checked without I/O.

/// A store URL that breaks a rule: the message states the rule, never the
/// URL (which may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// `#…` after the URL.
    #[error("URL fragments (such as #insecure) are not accepted")]
    Fragment,
    /// A query parameter other than `ca=<path>`.
    #[error(
        "the only URL parameter accepted is ca=<path> (TLS is chosen by \
         the scheme: rediss://, rediss+cluster://, rediss+sentinel://)"
    )]
    Parameter,
    /// Not one of the six schemes.
    #[error(
        "URL must start with redis://, rediss://, redis+cluster://, \
         rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
    )]
    Scheme,
    /// `?ca=` on a scheme without TLS.
    #[error(
        "a CA (?ca=) is only used with rediss://, rediss+cluster:// or \
         rediss+sentinel://"
    )]
    CaWithoutTls,
    /// A scheme inside the node list.
    #[error(
        "a store URL has one scheme; its nodes are host:port (TLS or not is \
         said once, for every node: rediss+cluster:// or rediss+sentinel://)"
    )]
    SchemeInNodes,
    /// A node that is not `host:port`.
    #[error("every node must be host:port (comma-separated, port required)")]
    Node,
    /// More than [`MAX_URL_NODES`] nodes.
    #[error("at most 16 nodes in a store URL")]
    TooManyNodes,
    /// A path on a cluster URL (the scheme is named).
    #[error("a {0} URL has no path (a cluster has only database 0)")]
    ClusterPath(&'static str),
    /// A Sentinel URL without a valid master name (the scheme is named).
    #[error("a {0} URL ends in /mastername (1-64 of [A-Za-z0-9_.-])")]
    MasterName(&'static str),
    /// Several nodes on a single-server scheme.
    #[error(
        "several nodes need rediss+cluster:// or rediss+sentinel:// \
         (redis+cluster:// or redis+sentinel:// without TLS)"
    )]
    SeveralNodes,
}

/// Splits our own `?ca=` parameter off the URL; any other parameter or a
/// fragment (`#insecure`) is refused.
fn split_url(url: &str) -> Result<(String, Option<String>), UrlError> {
    if url.contains('#') {
        return Err(UrlError::Fragment);
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut ca = None;
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("ca", path)) if !path.is_empty() => ca = Some(path.to_string()),
                _ => return Err(UrlError::Parameter),
            }
        }
    }
    Ok((base.to_string(), ca))
}

/// Most nodes (cluster seeds or sentinels) a store URL may list.
pub const MAX_URL_NODES: usize = 16;

/// The parts of `redis+cluster://[user:password@]h:p,h:p[,…]` or
/// `redis+sentinel://[user:password@]h:p[,h:p…]/mastername`.
pub(super) struct Topology {
    /// `user:password` (as written, percent-encoded), for the data nodes.
    pub(super) userinfo: Option<String>,
    /// `host:port`, each.
    pub(super) nodes: Vec<String>,
    /// What follows the first `/` (the master name for Sentinel).
    pub(super) path: String,
}

fn parse_topology(rest: &str) -> Result<Topology, UrlError> {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let mut nodes = Vec::new();
    for n in hosts.split(',') {
        let ok = host_port(n).is_some_and(|(h, _)| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
        });
        if !ok {
            return Err(UrlError::Node);
        }
        nodes.push(n.to_string());
    }
    if nodes.len() > MAX_URL_NODES {
        return Err(UrlError::TooManyNodes);
    }
    Ok(Topology {
        userinfo,
        nodes,
        path: path.to_string(),
    })
}

/// Which servers a store URL names.
pub(super) enum UrlKind {
    /// `redis://` / `rediss://`: one server.
    Single,
    /// `redis+cluster://` / `rediss+cluster://`: the seed nodes.
    Cluster(Topology),
    /// `redis+sentinel://` / `rediss+sentinel://`: the sentinels and the
    /// master name.
    Sentinel(Topology),
}

/// A store URL, checked without I/O: the one owner of the URL rules, used
/// by [`RedisStore::new`](super::RedisStore::new) and by the configuration (`config check` refuses
/// what `serve` would). `rediss…` means TLS on every connection the URL
/// leads to: each cluster node (the seeds and every node the cluster names),
/// each sentinel and the primary the sentinels name; there is no form with
/// TLS on some of them only.
pub struct StoreUrl {
    /// The URL without our `?ca=`.
    pub(super) base: String,
    /// The `?ca=` path, when given.
    pub(super) ca_path: Option<String>,
    /// Whether every connection is TLS.
    pub(super) tls: bool,
    pub(super) kind: UrlKind,
}

/// The schemes a Redis store URL may have: `(scheme, TLS)`.
const SCHEMES: [(&str, bool); 6] = [
    ("redis://", false),
    ("rediss://", true),
    ("redis+cluster://", false),
    ("rediss+cluster://", true),
    ("redis+sentinel://", false),
    ("rediss+sentinel://", true),
];

impl StoreUrl {
    /// Parses `url`; the error is the rule it breaks, never the URL (which
    /// may hold a password).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (base, ca_path) = split_url(url)?;
        let Some(&(scheme, tls)) = SCHEMES.iter().find(|(s, _)| base.starts_with(s)) else {
            return Err(UrlError::Scheme);
        };
        if ca_path.is_some() && !tls {
            return Err(UrlError::CaWithoutTls);
        }
        let rest = &base[scheme.len()..];
        if rest.contains("://") {
            return Err(UrlError::SchemeInNodes);
        }
        let kind = match scheme {
            "redis+cluster://" | "rediss+cluster://" => {
                let t = parse_topology(rest)?;
                if !t.path.is_empty() {
                    return Err(UrlError::ClusterPath(scheme));
                }
                UrlKind::Cluster(t)
            }
            "redis+sentinel://" | "rediss+sentinel://" => {
                let t = parse_topology(rest)?;
                let name = t.path.as_str();
                if name.is_empty()
                    || name.len() > 64
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                {
                    return Err(UrlError::MasterName(scheme));
                }
                UrlKind::Sentinel(t)
            }
            _ => {
                let authority = rest.split(['/', '?']).next().unwrap_or("");
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                if host.contains(',') {
                    return Err(UrlError::SeveralNodes);
                }
                UrlKind::Single
            }
        };
        Ok(Self {
            base,
            ca_path,
            tls,
            kind,
        })
    }

    /// Whether every connection is TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The `?ca=` file, when given.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.ca_path.as_ref().map(std::path::PathBuf::from)
    }
}

/// `host:port` split, an IPv6 host's brackets dropped; `None` without a
/// port above 0.
pub(crate) fn host_port(s: &str) -> Option<(&str, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let p = p.parse::<u16>().ok().filter(|p| *p > 0)?;
    Some((h.trim_start_matches('[').trim_end_matches(']'), p))
}

#[cfg(test)]
mod tests {
    use super::{StoreUrl, UrlError};

    /// `config check` and start-up print these messages: the typed errors
    /// keep the texts the rules had as strings.
    #[test]
    fn url_errors_state_the_rule_as_before() {
        let cases: &[(&str, UrlError, &str)] = &[
            ("redis://h:1#x", UrlError::Fragment, "URL fragments (such as #insecure) are not accepted"),
            ("rediss://h:1?tls=1", UrlError::Parameter, "the only URL parameter accepted is ca=<path> (TLS is chosen by the scheme: rediss://, rediss+cluster://, rediss+sentinel://)"),
            ("http://h:1", UrlError::Scheme, "URL must start with redis://, rediss://, redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://"),
            ("redis://h:1?ca=/x", UrlError::CaWithoutTls, "a CA (?ca=) is only used with rediss://, rediss+cluster:// or rediss+sentinel://"),
            ("redis+cluster://rediss://h:1", UrlError::SchemeInNodes, "a store URL has one scheme; its nodes are host:port (TLS or not is said once, for every node: rediss+cluster:// or rediss+sentinel://)"),
            ("redis+cluster://h", UrlError::Node, "every node must be host:port (comma-separated, port required)"),
            ("redis+cluster://h:1/0", UrlError::ClusterPath("redis+cluster://"), "a redis+cluster:// URL has no path (a cluster has only database 0)"),
            ("rediss+sentinel://h:1", UrlError::MasterName("rediss+sentinel://"), "a rediss+sentinel:// URL ends in /mastername (1-64 of [A-Za-z0-9_.-])"),
            ("redis://a:1,b:2", UrlError::SeveralNodes, "several nodes need rediss+cluster:// or rediss+sentinel:// (redis+cluster:// or redis+sentinel:// without TLS)"),
        ];
        for (url, want, text) in cases {
            let got = StoreUrl::parse(url).err();
            assert_eq!(got.as_ref(), Some(want), "{url}");
            assert_eq!(want.to_string(), *text);
        }
        let many = (1..=17)
            .map(|i| format!("h{i}:1"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            StoreUrl::parse(&format!("redis+cluster://{many}")).err(),
            Some(UrlError::TooManyNodes)
        );
        assert_eq!(
            UrlError::TooManyNodes.to_string(),
            "at most 16 nodes in a store URL"
        );
    }
}
