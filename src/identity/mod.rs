//! Who is calling: SPIFFE IDs ([`spiffe`]), client-certificate identities
//! ([`peer`]) and OIDC issuers ([`oidc`]). Identity comes only from
//! cryptography: a verified TLS client certificate or a verified signature.

pub mod dpop;
pub mod login;
pub mod oidc;
pub mod own;
pub mod peer;
pub mod spiffe;
