//! DPoP proofs at the broker: the shared implementation lives in
//! [`crate::dpop`] (also used by resource servers through
//! [`crate::verify`]).

pub use crate::dpop::*;
