//! SPIFFE IDs (client-certificate URI SANs): text → `SpiffeId::parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::identity::spiffe::{SpiffeId, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN};
use tessera_fuzz::{assert_short_error, is_reason_code};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = SpiffeId::parse(s);
    // FromStr and parse agree.
    assert_eq!(s.parse::<SpiffeId>(), parsed);
    match parsed {
        Err(e) => {
            assert_short_error(&e.to_string());
            assert!(is_reason_code(e.reason()));
        }
        Ok(id) => {
            // Nothing is normalised: the ID is the input, and it round-trips.
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
            assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
            assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), s);
            assert!(s.len() <= MAX_SPIFFE_ID_LEN && s.is_ascii());
            let td = id.trust_domain();
            assert!(!td.is_empty() && td.len() <= MAX_TRUST_DOMAIN_LEN);
            assert!(td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
            let path = id.path();
            assert!(path.starts_with('/') && path.len() > 1);
            for seg in path.split('/').skip(1) {
                assert!(
                    !seg.is_empty() && seg != "." && seg != "..",
                    "segment {seg:?}"
                );
                assert!(seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            }
        }
    }
});
