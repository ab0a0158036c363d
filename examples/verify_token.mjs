#!/usr/bin/env node
// Verify a Tessera access token in a Node.js resource server, with no
// dependency (node:crypto):
//
//   node examples/verify_token.mjs --jwks jwks.json --issuer ISS \
//       --audience AUD [--client-cert client.pem] < token
//
// The same checks as examples/verify_token.py, in the same order: typ
// at+jwt, the alg allowlist, kid, signature, exact iss, aud, exp/nbf/iat
// with leeway, and the cnf binding (x5t#S256 against the TLS client
// certificate; jkt needs a DPoP proof, not accepted here). In a real
// server, use a maintained JOSE library (e.g. `jose`) with the same
// options; the checks are what matters.
import { createHash, createPublicKey, verify, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";

const ALGORITHMS = { ES256: "sha256", EdDSA: null };
const LEEWAY = 30;

function refuse(reason) {
  process.stderr.write(`refused: ${reason}\n`);
  process.exit(1);
}

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].slice(2)] = process.argv[i + 1];
for (const k of ["jwks", "issuer", "audience"]) if (!args[k]) refuse(`--${k} is required`);
const token = readFileSync(0, "utf8").trim();

const parts = token.split(".");
if (parts.length !== 3) refuse("malformed: not a compact JWS");
const json = (s) => JSON.parse(Buffer.from(s, "base64url").toString("utf8"));
let header, claims;
try {
  header = json(parts[0]);
  claims = json(parts[1]);
} catch (e) {
  refuse(`malformed: ${e.message}`);
}
if (!["at+jwt", "application/at+jwt"].includes(String(header.typ || "").toLowerCase()))
  refuse("typ is not at+jwt: not a Tessera access token");
if (!(header.alg in ALGORITHMS)) refuse("algorithm not allowed");
const jwk = JSON.parse(readFileSync(args.jwks, "utf8")).keys.find((k) => k.kid === header.kid);
if (!jwk) refuse("unknown kid: refetch the JWKS (rate-limited) before refusing");
const key = createPublicKey({ key: jwk, format: "jwk" });
const ok = verify(
  ALGORITHMS[header.alg],
  Buffer.from(`${parts[0]}.${parts[1]}`),
  header.alg === "ES256" ? { key, dsaEncoding: "ieee-p1363" } : key,
  Buffer.from(parts[2], "base64url"),
);
if (!ok) refuse("signature does not verify");

const now = Math.floor(Date.now() / 1000);
for (const c of ["iss", "sub", "aud", "exp", "iat", "jti"]) if (claims[c] === undefined) refuse(`missing ${c}`);
if (claims.iss !== args.issuer) refuse("iss is not the expected issuer");
const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
if (!aud.includes(args.audience)) refuse("aud: the token is for another resource");
if (claims.exp + LEEWAY <= now) refuse("expired");
if (claims.nbf !== undefined && claims.nbf - LEEWAY > now) refuse("not yet valid");
if (claims.iat - LEEWAY > now) refuse("issued in the future");

const cnf = claims.cnf || {};
if (cnf["x5t#S256"] !== undefined) {
  if (!args["client-cert"]) refuse("cnf: the token is bound to a client certificate and none was presented");
  const der = new X509Certificate(readFileSync(args["client-cert"])).raw;
  const thumb = createHash("sha256").update(der).digest("base64url");
  if (thumb !== cnf["x5t#S256"]) refuse("cnf: the presented certificate is not the one the token is bound to");
}
if (cnf.jkt !== undefined) refuse("cnf: a DPoP-bound token needs a DPoP proof of its key");
process.stdout.write(JSON.stringify(claims) + "\n");
