//! What each URL form connects to: one server, a Redis Cluster (and its
//! slots, nodes and redirections) or the primary Redis Sentinel names, with
//! TLS material for the `rediss…` forms.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::ConnectionManagerConfig;
use ::redis::cluster::ClusterClientBuilder;
use ::redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use ::redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError, ServerErrorKind, Value,
};

use super::connection::Target;
use super::error::config_error;
use super::url::{host_port, Topology};
use super::RedisStore;
use crate::store::StoreError;

/// Number of slots of a Redis Cluster.
const CLUSTER_SLOTS: u16 = 16384;

/// The cluster slot of a key: CRC16 of its hash tag (the text between the
/// first `{` and the next `}`, when not empty) or of the whole key.
pub(crate) fn cluster_slot(key: &str) -> u16 {
    let k = key.as_bytes();
    let tagged = k.iter().position(|&b| b == b'{').and_then(|s| {
        let rest = &k[s + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&e| e > 0)
            .map(|e| &rest[..e])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(k)) % CLUSTER_SLOTS
}

/// The TLS material of a store URL: the CA that replaces the system roots,
/// if any (no client certificate: Redis `tls-auth-clients no`, or a
/// password).
fn certificates(ca_pem: &[u8]) -> ::redis::TlsCertificates {
    ::redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca_pem.to_vec()),
    }
}

/// `scheme://[userinfo@]node` for one node of a topology URL.
fn node_url(tls: bool, userinfo: &Option<String>, n: &str) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    match userinfo {
        Some(u) => format!("{scheme}://{u}@{n}"),
        None => format!("{scheme}://{n}"),
    }
}

/// The connection target for a `redis(s)+cluster://` URL: every node over
/// TLS when `tls`, trusting `ca_pem` (else the system roots).
pub(super) fn cluster_target(
    t: &Topology,
    tls: bool,
    ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<Target, StoreError> {
    let urls: Vec<String> = t
        .nodes
        .iter()
        .map(|n| node_url(tls, &t.userinfo, n))
        .collect();
    let mut builder = ClusterClientBuilder::new(urls)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // Redirections (MOVED/ASK) and reconnections; every call is
        // bounded by the store timeout anyway.
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100);
    if tls {
        // `rediss://` seeds: every node the cluster names is reached over
        // TLS too (the mode is the client's, not the seed's).
        builder = builder.tls(::redis::TlsMode::Secure);
        if let Some(pem) = ca_pem {
            builder = builder.certs(certificates(pem));
        }
    }
    let client = builder
        .build()
        .map_err(|e| config_error(&format!("bad cluster URL or TLS material ({:?})", e.kind())))?;
    // What the cluster client sends each node (TLS, user, password,
    // database 0), for the connections of its own to one node
    // (`revoke_acked`, the block cache): [`node_client`] keeps all but
    // the address.
    let template = node_url(tls, &t.userinfo, "127.0.0.1:1");
    let node = match ca_pem {
        Some(pem) if tls => Client::build_with_tls(template, certificates(pem))
            .map(|c| c.get_connection_info().clone()),
        _ => template.into_connection_info(),
    }
    .map_err(|e| config_error(&format!("bad credentials or TLS material ({:?})", e.kind())))?;
    Ok(Target::Cluster {
        client,
        node: Box::new(node),
        seeds: t
            .nodes
            .iter()
            .filter_map(|n| host_port(n).map(|(h, p)| (h.to_string(), p)))
            .collect(),
    })
}

/// The connection target for a `redis(s)+sentinel://` URL: the sentinels
/// and the primary they name over TLS when `tls`, trusting `ca_pem` (else
/// the system roots); the URL's credentials are for the data nodes.
pub(super) fn sentinel_target(
    t: &Topology,
    tls: bool,
    ca_pem: Option<&[u8]>,
    config: &ConnectionManagerConfig,
) -> Result<Target, StoreError> {
    let sentinels = t.nodes.iter().filter_map(|n| host_port(n)).map(|(h, p)| {
        if tls {
            ConnectionAddr::TcpTls {
                host: h.to_string(),
                port: p,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(h.to_string(), p)
        }
    });
    let mut b = SentinelClientBuilder::new(sentinels, &t.path, SentinelServerType::Master)
        .map_err(|e| config_error(&format!("bad sentinel URL ({:?})", e.kind())))?;
    if t.userinfo.is_some() {
        let info = node_url(false, &t.userinfo, "127.0.0.1:1")
            .into_connection_info()
            .map_err(|e| config_error(&format!("bad credentials in URL ({:?})", e.kind())))?;
        let redis = info.redis_settings();
        if let Some(u) = redis.username() {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = redis.password() {
            b = b.set_client_to_redis_password(p);
        }
    }
    if tls {
        b = b
            .set_client_to_sentinel_tls_mode(::redis::TlsMode::Secure)
            .set_client_to_redis_tls_mode(::redis::TlsMode::Secure);
        if let Some(pem) = ca_pem {
            b = b
                .set_client_to_sentinel_certificates(certificates(pem))
                .set_client_to_redis_certificates(certificates(pem));
        }
    }
    let client = b.build().map_err(|e| {
        config_error(&format!(
            "bad sentinel URL or TLS material ({:?})",
            e.kind()
        ))
    })?;
    Ok(Target::Sentinel {
        sentinel: Arc::new(tokio::sync::Mutex::new(client)),
        config: config.clone(),
    })
}

impl RedisStore {
    /// The target for a `redis://` or `rediss://` URL (checked by
    /// [`StoreUrl::parse`]; `ca_pem` only with `rediss://`).
    pub(super) fn single_target(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        config: &ConnectionManagerConfig,
    ) -> Result<Target, StoreError> {
        let client = match ca_pem {
            Some(pem) => Client::build_with_tls(url, certificates(&pem)),
            None => Client::open(url),
        }
        .map_err(|e| config_error(&format!("bad URL or TLS material ({:?})", e.kind())))?;
        Ok(Target::Single {
            client,
            config: config.clone(),
        })
    }
}

/// A client for one node, `host:port`, with what the URL gives every node
/// (`node`: credentials, database and, for `rediss+cluster://`, TLS with
/// the URL's CA); only the address is replaced.
pub(crate) fn node_client(
    host: &str,
    port: u16,
    node: &ConnectionInfo,
) -> ::redis::RedisResult<Client> {
    let addr = match node.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_string(), port),
    };
    Client::open(node.clone().set_addr(addr))
}

/// Why a `CLUSTER SLOTS` answer names no master to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NoMaster {
    /// Not the shape `CLUSTER SLOTS` answers.
    #[error("unexpected answer")]
    UnexpectedAnswer,
    /// The master announces no usable host (set `cluster-announce-ip`).
    #[error("the master of the revocation slot announces no address")]
    NoAddress,
    /// The master announces no port above 0.
    #[error("the master of the revocation slot announces no port")]
    NoPort,
    /// No range holds the slot.
    #[error("no master serves the revocation slot")]
    Unserved,
}

/// The master of `slot` in a `CLUSTER SLOTS` answer (`[start, end,
/// [host, port, id, …], replicas…]` per range), or why there is none to
/// connect to.
pub(crate) fn slot_master(slots: &Value, slot: u16) -> Result<(String, u16), NoMaster> {
    let Value::Array(ranges) = slots else {
        return Err(NoMaster::UnexpectedAnswer);
    };
    for range in ranges {
        let Value::Array(item) = range else {
            continue;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(master)) =
            (item.first(), item.get(1), item.get(2))
        else {
            continue;
        };
        if !(*start..=*end).contains(&i64::from(slot)) {
            continue;
        }
        let Value::Array(m) = master else {
            return Err(NoMaster::UnexpectedAnswer);
        };
        let host = match m.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => String::new(),
        };
        // Empty, NULL or "?": the node does not know where it is reachable
        // (set cluster-announce-ip); a wildcard is not an address.
        if host.is_empty() || matches!(host.as_str(), "?" | "0.0.0.0" | "::") {
            return Err(NoMaster::NoAddress);
        }
        let port = match m.get(1) {
            Some(Value::Int(p)) => u16::try_from(*p).ok().filter(|p| *p > 0),
            _ => None,
        };
        return port.map(|p| (host, p)).ok_or(NoMaster::NoPort);
    }
    Err(NoMaster::Unserved)
}

/// Where a `MOVED` or `ASK` answer (alone or in a pipeline) sends the
/// command, and whether it was `ASK`. An empty host means the host of the
/// node that answered (`asked`).
pub(crate) fn redirection(e: &RedisError, asked: &str) -> Option<((String, u16), bool)> {
    let errors = e.clone().into_server_errors()?;
    errors.iter().find_map(|(_, s)| {
        let ask = match s.kind()? {
            ServerErrorKind::Moved => false,
            ServerErrorKind::Ask => true,
            _ => return None,
        };
        let addr = s.details()?.split_ascii_whitespace().nth(1)?;
        let (host, port) = host_port(addr)?;
        let host = match host {
            "" => asked,
            "?" => return None,
            h => h,
        };
        Some(((host.to_string(), port), ask))
    })
}
