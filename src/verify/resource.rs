//! OAuth 2.0 Protected Resource Metadata (RFC 9728) for a resource server
//! that accepts Tessera tokens.
//!
//! A [`ProtectedResource`] names the resource (its identifier, an https
//! URL: for an MCP server, the server's own URL, which is also the `aud`
//! its tokens must carry, RFC 8707), the authorization servers that issue
//! its tokens (the Tessera issuer), the scopes it understands and whether
//! it requires DPoP-bound tokens. Given to
//! [`super::VerifierBuilder::protected_resource`], it is published at
//! [`ProtectedResource::metadata_paths`] (the axum feature serves it with
//! [`super::metadata_router`]) and every refusal of the extractor points
//! to it with `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728
//! §5.1), so a client that only knows the resource's URL can find where to
//! get a token.

use serde_json::{json, Value};

use super::BuildError;

/// The well-known path of RFC 9728 §3.
///
/// ```
/// assert_eq!(tessera::verify::PROTECTED_RESOURCE_WELL_KNOWN, "/.well-known/oauth-protected-resource");
/// ```
pub const PROTECTED_RESOURCE_WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// Longest resource identifier or authorization server URL accepted.
const MAX_URL_LEN: usize = 2048;

/// Most entries in `scopes_supported` (and `authorization_servers`).
const MAX_ENTRIES: usize = 256;

/// A protected resource's metadata (RFC 9728 §2).
///
/// ```
/// use tessera::verify::ProtectedResource;
/// let r = ProtectedResource::new("https://mcp.example.com/mcp")?
///     .authorization_server("https://tessera.example.com")
///     .scopes_supported(["tickets:read", "tickets:write"]);
/// assert_eq!(r.metadata_url(), "https://mcp.example.com/.well-known/oauth-protected-resource/mcp");
/// let doc = r.document();
/// assert_eq!(doc["resource"], "https://mcp.example.com/mcp");
/// assert_eq!(doc["authorization_servers"][0], "https://tessera.example.com");
/// assert_eq!(doc["bearer_methods_supported"][0], "header");
/// assert!(doc.get("dpop_bound_access_tokens_required").is_none());
/// # Ok::<(), tessera::verify::BuildError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResource {
    resource: String,
    /// `https://authority` of the resource.
    origin: String,
    /// The resource's path (`""` for none or `/`).
    path: String,
    authorization_servers: Vec<String>,
    scopes_supported: Vec<String>,
    dpop_required: bool,
    resource_name: Option<String>,
}

/// `(origin, path)` of an https URL without credentials, query or fragment,
/// whose characters may all appear in a quoted-string parameter.
fn split_https(url: &str) -> Option<(&str, &str)> {
    if url.len() > MAX_URL_LEN
        || url
            .bytes()
            .any(|b| !(0x21..=0x7e).contains(&b) || b == b'"' || b == b'\\')
    {
        return None;
    }
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') || url.contains(['?', '#']) {
        return None;
    }
    Some((&url[..url.len() - path.len()], path))
}

/// Whether `s` is an RFC 6749 §3.3 scope token (1*NQCHAR).
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

impl ProtectedResource {
    /// Metadata for the resource identified by `resource`: an https URL
    /// without credentials, query or fragment (RFC 9728 §1.2).
    ///
    /// # Errors
    /// [`BuildError::InvalidResource`] for anything else.
    ///
    /// ```
    /// use tessera::verify::ProtectedResource;
    /// assert!(ProtectedResource::new("http://mcp.example.com").is_err());
    /// assert!(ProtectedResource::new("https://mcp.example.com/mcp#x").is_err());
    /// assert!(ProtectedResource::new("https://user@mcp.example.com").is_err());
    /// assert!(ProtectedResource::new("https://mcp.example.com/a\"b").is_err());
    /// assert!(ProtectedResource::new("https://127.0.0.1:8445/mcp").is_ok());
    /// ```
    pub fn new(resource: impl Into<String>) -> Result<Self, BuildError> {
        let resource: String = resource.into();
        let (origin, path) = split_https(&resource).ok_or(BuildError::InvalidResource)?;
        let path = if path == "/" { "" } else { path };
        Ok(ProtectedResource {
            origin: origin.to_owned(),
            path: path.to_owned(),
            resource,
            authorization_servers: Vec::new(),
            scopes_supported: Vec::new(),
            dpop_required: false,
            resource_name: None,
        })
    }

    /// Adds an authorization server (an issuer URL, RFC 8414). A verifier
    /// given metadata without one fills in its own issuer.
    #[must_use]
    pub fn authorization_server(mut self, issuer: impl Into<String>) -> Self {
        self.authorization_servers.push(issuer.into());
        self
    }

    /// The scopes this resource understands (`scopes_supported`).
    #[must_use]
    pub fn scopes_supported<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes_supported = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Requires DPoP-bound tokens (RFC 9449): the verifier then refuses
    /// every token without `cnf.jkt`, the metadata says
    /// `dpop_bound_access_tokens_required: true` and the challenges use the
    /// `DPoP` scheme.
    ///
    /// ```
    /// let r = tessera::verify::ProtectedResource::new("https://api.example.com")?.require_dpop(true);
    /// assert_eq!(r.document()["dpop_bound_access_tokens_required"], true);
    /// assert!(r.document()["dpop_signing_alg_values_supported"].as_array().is_some_and(|a| !a.is_empty()));
    /// # Ok::<(), tessera::verify::BuildError>(())
    /// ```
    #[must_use]
    pub fn require_dpop(mut self, required: bool) -> Self {
        self.dpop_required = required;
        self
    }

    /// A human-readable name (`resource_name`).
    #[must_use]
    pub fn resource_name(mut self, name: impl Into<String>) -> Self {
        self.resource_name = Some(name.into());
        self
    }

    /// The resource identifier.
    #[must_use]
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Whether DPoP-bound tokens are required.
    #[must_use]
    pub fn dpop_required(&self) -> bool {
        self.dpop_required
    }

    /// The authorization servers (after [`super::VerifierBuilder::build`]:
    /// never empty).
    #[must_use]
    pub fn authorization_servers(&self) -> &[String] {
        &self.authorization_servers
    }

    /// The path the metadata is served at, RFC 9728 §3.1: the well-known
    /// path with the resource's path appended (`/.well-known/oauth-protected-resource/mcp`
    /// for `https://host/mcp`).
    ///
    /// ```
    /// use tessera::verify::ProtectedResource;
    /// assert_eq!(ProtectedResource::new("https://h/")?.metadata_path(), "/.well-known/oauth-protected-resource");
    /// assert_eq!(ProtectedResource::new("https://h/a/b")?.metadata_path(), "/.well-known/oauth-protected-resource/a/b");
    /// # Ok::<(), tessera::verify::BuildError>(())
    /// ```
    #[must_use]
    pub fn metadata_path(&self) -> String {
        format!("{PROTECTED_RESOURCE_WELL_KNOWN}{}", self.path)
    }

    /// Every path the metadata is served at: [`Self::metadata_path`] and,
    /// for a resource with a path, the bare well-known path too (clients
    /// that only know the host look there).
    ///
    /// ```
    /// let r = tessera::verify::ProtectedResource::new("https://h/mcp")?;
    /// assert_eq!(r.metadata_paths(), ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"]);
    /// # Ok::<(), tessera::verify::BuildError>(())
    /// ```
    #[must_use]
    pub fn metadata_paths(&self) -> Vec<String> {
        let mut paths = vec![self.metadata_path()];
        if !self.path.is_empty() {
            paths.push(PROTECTED_RESOURCE_WELL_KNOWN.to_owned());
        }
        paths
    }

    /// The metadata's URL, as `resource_metadata` in challenges names it.
    #[must_use]
    pub fn metadata_url(&self) -> String {
        format!("{}{}", self.origin, self.metadata_path())
    }

    /// The metadata document (RFC 9728 §2).
    #[must_use]
    pub fn document(&self) -> Value {
        let mut doc = json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported":
                crate::dpop::DPOP_ALGS.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        });
        if !self.scopes_supported.is_empty() {
            doc["scopes_supported"] = json!(self.scopes_supported);
        }
        if self.dpop_required {
            doc["dpop_bound_access_tokens_required"] = json!(true);
        }
        if let Some(n) = &self.resource_name {
            doc["resource_name"] = json!(n);
        }
        doc
    }

    /// Checks what the builder methods accepted unchecked, and fills in the
    /// verifier's issuer when no authorization server was named.
    pub(crate) fn finish(mut self, issuer: &str) -> Result<Self, BuildError> {
        if self.authorization_servers.is_empty() {
            self.authorization_servers.push(issuer.to_owned());
        }
        let servers_ok = self.authorization_servers.len() <= MAX_ENTRIES
            && self
                .authorization_servers
                .iter()
                .all(|s| split_https(s).is_some());
        let scopes_ok = self.scopes_supported.len() <= MAX_ENTRIES
            && self.scopes_supported.iter().all(|s| is_scope_token(s));
        let name_ok = self
            .resource_name
            .as_ref()
            .is_none_or(|n| n.len() <= 256 && !n.chars().any(char::is_control));
        if servers_ok && scopes_ok && name_ok {
            Ok(self)
        } else {
            Err(BuildError::InvalidResource)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn verify_resource_metadata_paths_follow_rfc9728() {
        let r = ProtectedResource::new("https://127.0.0.1:8445/mcp").unwrap();
        assert_eq!(
            r.metadata_url(),
            "https://127.0.0.1:8445/.well-known/oauth-protected-resource/mcp"
        );
        let r = ProtectedResource::new("https://api.example.com").unwrap();
        assert_eq!(
            r.metadata_url(),
            "https://api.example.com/.well-known/oauth-protected-resource"
        );
        assert_eq!(r.metadata_paths().len(), 1);
        for bad in [
            "",
            "https://",
            "https:///x",
            "https://h/x?y=1",
            "https://h/ x",
            "https://h/x\\y",
            "ftp://h",
        ] {
            assert!(ProtectedResource::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verify_resource_metadata_checks_scopes_and_servers() {
        let r = ProtectedResource::new("https://h/mcp").unwrap();
        let done = r.clone().finish("https://issuer").unwrap();
        assert_eq!(done.authorization_servers(), ["https://issuer"]);
        let doc = done.document();
        assert_eq!(doc["resource"], "https://h/mcp");
        assert!(doc.get("scopes_supported").is_none());
        assert!(r
            .clone()
            .scopes_supported(["a b"])
            .finish("https://i")
            .is_err());
        assert!(r
            .clone()
            .scopes_supported(["a\"b"])
            .finish("https://i")
            .is_err());
        assert!(r
            .clone()
            .authorization_server("http://plain")
            .finish("https://i")
            .is_err());
        let ok = r
            .scopes_supported(["tickets:read"])
            .resource_name("Tickets")
            .finish("https://i")
            .unwrap();
        assert_eq!(ok.document()["scopes_supported"][0], "tickets:read");
        assert_eq!(ok.document()["resource_name"], "Tickets");
    }
}
