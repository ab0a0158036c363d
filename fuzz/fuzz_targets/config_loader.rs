//! The config loader: TOML text → `Config::from_toml_str` (parse and
//! validate). It reads no file: the existence checks of the files a config
//! names are `Config::check_files`, which this target never calls.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::config::Config;

const FILE: &str = "fuzz.toml";
/// Longest reason a config error may give: errors name the key and quote
/// a short value, they never echo a long one back.
const MAX_REASON_LEN: usize = 300;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(FILE, text) {
        Err(e) => {
            // Errors name their cause: the file, a key (or `line N`), a reason.
            assert_eq!(e.file, FILE);
            assert!(!e.key.is_empty() && !e.reason.trim().is_empty(), "{e:?}");
            assert!(
                e.reason.len() <= MAX_REASON_LEN,
                "config error of {} bytes echoes input: {:.300}",
                e.reason.len(),
                e.reason
            );
        }
        Ok(cfg) => {
            let iss = &cfg.server.issuer;
            assert!(iss.starts_with("https://") && iss.len() > "https://".len());
            assert!(!iss.ends_with('/') && !iss.contains(['?', '#']));
        }
    }
});
