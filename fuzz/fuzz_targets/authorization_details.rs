//! RFC 9396 `authorization_details`: text → `parse_authorization_details`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tessera::oauth::request::{
    parse_authorization_details, MAX_AUTHORIZATION_DETAILS_BYTES,
    MAX_AUTHORIZATION_DETAILS_ENTRIES, MAX_AUTHORIZATION_DETAILS_TYPE_LEN,
};
use tessera::oauth::ErrorCode;
use tessera_fuzz::is_reason_code;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse_authorization_details(s) {
        Err(e) => {
            assert!(is_reason_code(e.reason), "{:?}", e.reason);
            assert_eq!(e.code, ErrorCode::InvalidAuthorizationDetails);
        }
        Ok(v) => {
            assert!(s.len() <= MAX_AUTHORIZATION_DETAILS_BYTES);
            let arr = v.as_array().expect("accepted details are an array");
            assert!(!arr.is_empty() && arr.len() <= MAX_AUTHORIZATION_DETAILS_ENTRIES);
            for item in arr {
                let t = item.get("type").and_then(Value::as_str).expect("type");
                assert!(!t.is_empty() && t.len() <= MAX_AUTHORIZATION_DETAILS_TYPE_LEN);
            }
            // Kept verbatim: serde_json reads the same value (no duplicate
            // member for the two parsers to disagree about), and what is
            // stored re-parses to itself.
            let plain: Value = serde_json::from_str(s).expect("serde_json agrees");
            assert_eq!(plain, v);
            assert_eq!(parse_authorization_details(&v.to_string()).as_ref(), Ok(&v));
        }
    }
});
