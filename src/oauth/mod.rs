//! The OAuth wire layer: parse RFC requests into types ([`request`]) and map
//! outcomes to RFC 6749 error responses in exactly one place ([`error`]).

pub(crate) mod error;
pub mod request;

pub use error::{ErrorCode, OAuthError};
pub use request::{TokenRequest, TokenType};
