//! Who is calling: SPIFFE IDs ([`spiffe`]), client-certificate identities
//! ([`peer`]) and OIDC issuers ([`oidc`]). Identity comes only from
//! cryptography: a verified TLS client certificate or a verified signature.

pub(crate) mod dpop;
pub mod login;
pub(crate) mod oidc;
pub(crate) mod own;
pub mod peer;
pub mod spiffe;

pub use oidc::IssuerConfig;
