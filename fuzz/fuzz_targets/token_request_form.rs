//! `/token` body: `application/x-www-form-urlencoded` bytes → `parse_form`
//! → `token_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tessera::oauth::request::{
    parse_authorization_details, parse_form, token_request, valid_task, MAX_FORM_PARAMS,
};
use tessera::oauth::ErrorCode;
use tessera_fuzz::is_reason_code;

const MAX_TOKEN: usize = 8192;

fuzz_target!(|body: &[u8]| {
    let form = match parse_form(body) {
        Ok(f) => f,
        Err(e) => {
            assert!(is_reason_code(e.reason), "{:?}", e.reason);
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            return;
        }
    };
    // Bounded: at most MAX_FORM_PARAMS pairs in all.
    assert!(form.values().map(Vec::len).sum::<usize>() <= MAX_FORM_PARAMS);

    // Round trip: re-encoding what was decoded and decoding again gives the
    // same names and values, in the same order per name.
    let mut re = String::new();
    for (k, vs) in &form {
        for v in vs {
            if !re.is_empty() {
                re.push('&');
            }
            re.push_str(&utf8_percent_encode(k, NON_ALPHANUMERIC).to_string());
            re.push('=');
            re.push_str(&utf8_percent_encode(v, NON_ALPHANUMERIC).to_string());
        }
    }
    let again = parse_form(re.as_bytes()).expect("a re-encoded form parses");
    assert_eq!(again, form);

    match token_request(&form, MAX_TOKEN) {
        Err(e) => assert!(is_reason_code(e.reason), "{:?}", e.reason),
        Ok(req) => {
            // Parameters never repeat (RFC 6749 §3.2), but for the targets.
            for (k, vs) in &form {
                assert!(
                    vs.len() <= 1 || k == "audience" || k == "resource",
                    "repeated {k} accepted"
                );
            }
            assert!(req
                .subject_token
                .as_ref()
                .is_none_or(|t| t.len() <= MAX_TOKEN));
            assert!(req
                .actor_token
                .as_ref()
                .is_none_or(|t| t.len() <= MAX_TOKEN));
            assert!(req.task.as_deref().is_none_or(valid_task));
            assert!(req
                .expires_in
                .is_none_or(|e| e > 0 && e <= tessera::oauth::request::MAX_EXPIRES_IN));
            assert!(req.actor_token.is_some() == req.actor_token_type.is_some());
            if let Some(d) = &req.authorization_details {
                let again =
                    parse_authorization_details(&d.to_string()).expect("accepted details re-parse");
                assert_eq!(&again, d);
            }
            assert!(req.dpop.is_none(), "only the route sets dpop");
        }
    }
});
