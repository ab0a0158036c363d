//! Writes the seed corpus under `fuzz/corpus/<target>/` (run from the repo
//! root: `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds`).
//! Tokens and proofs are deterministic (fixed Ed25519 key and clock), so
//! re-running it reproduces the committed files.

use std::path::Path;

use serde_json::json;
use tessera::mint::keyring::{SigningAlgorithm, SigningKey};
use tessera_fuzz::{good_proofs, good_tokens, jwks_bytes};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let te = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
    let mtls = "subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Amtls";
    write(
        "token_request_form",
        "mtls",
        format!("{te}&{mtls}&audience=https%3A%2F%2Fapi&scope=a+b&task=t-1&expires_in=60")
            .as_bytes(),
    );
    write(
        "token_request_form",
        "jwt_actor",
        format!(
            "{te}&subject_token={}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&actor_token=abc.def.ghi&actor_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&resource=https%3A%2F%2Fapi%2Fx&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&approval_id=ap-1",
            good_tokens()[0]
        )
        .as_bytes(),
    );
    write("token_request_form", "details", format!("{te}&{mtls}&audience=https%3A%2F%2Fapi&authorization_details=%5B%7B%22type%22%3A%22payment%22%2C%22actions%22%3A%5B%22initiate%22%5D%7D%5D").as_bytes());
    write(
        "token_request_form",
        "client_credentials",
        b"grant_type=client_credentials&scope=read",
    );

    for (i, t) in good_tokens().iter().enumerate() {
        write("compact_jws", &format!("good{i}"), t.as_bytes());
    }
    write("compact_jws", "garbage", b"eyJhbGciOiJub25lIn0.e30.");

    // sel byte: token (high nibble), segment (bits 2-3), mode (bits 0-1);
    // then one 4-byte edit step.
    for (name, bytes) in [
        ("tamper_text", vec![0x00, 0, 0, 10, b'A']),
        ("tamper_payload", vec![0x15, 5, 0, 3, b'x']),
        ("resign_header", vec![0x12, 0, 0, 2, 0]),
        ("resign_payload", vec![0x23, 1, 0, 8, b' ']),
        (
            "resign_literal",
            vec![0x03, 5, 0, 1, 5, b'"', b'x', b'"', b':', b'1'],
        ),
    ] {
        write("compact_jws_mutated", name, &bytes);
    }

    for (name, id) in [
        ("svid", "spiffe://example.org/ns/prod/sa/agent-1"),
        ("short", "spiffe://td/a"),
        ("dots", "spiffe://a.b-c_d/x.y/-_"),
    ] {
        write("spiffe_id", name, id.as_bytes());
    }

    let example =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tessera.example.toml"))
            .expect("example config");
    write("config_loader", "example", &example);
    write(
        "config_loader",
        "minimal",
        b"[server]\nissuer = \"https://tessera.example\"\nlisten = \"127.0.0.1:8443\"\n",
    );

    write("authorization_details", "payment", br#"[{"type":"payment","actions":["initiate"],"amount":{"currency":"EUR","value":"123.50"}}]"#);
    write(
        "authorization_details",
        "two",
        br#"[{"type":"a","locations":["https://x"]},{"type":"b","datatypes":[1,2.5,null,true]}]"#,
    );
    write(
        "authorization_details",
        "escaped",
        br#"[{"type":"\u0061","t\u0079pe":"dup?"}]"#,
    );

    for (i, p) in good_proofs().iter().enumerate() {
        write("dpop_proof", &format!("good{i}"), p.as_bytes());
    }
    // sel byte: proof (bits 1+), header (even) or payload (odd); then edits.
    for (name, bytes) in [
        ("header", vec![0x00, 0, 0, 3, b' ']),
        ("payload", vec![0x01, 0, 0, 4, b' ']),
        ("resource_payload", vec![0x03, 1, 0, 6, b' ']),
    ] {
        write("dpop_proof_resigned", name, &bytes);
    }

    write("jwks_document", "ed25519", &jwks_bytes());
    let (es, _) = SigningKey::generate(SigningAlgorithm::ES256).expect("es256");
    let (rs, _) = SigningKey::generate(SigningAlgorithm::RS256).expect("rs256");
    let mixed = json!({"keys": [
        es.public_jwk(),
        rs.public_jwk(),
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
    ]});
    write("jwks_document", "mixed", mixed.to_string().as_bytes());
    println!("seeds written");
}
