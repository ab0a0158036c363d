#!/usr/bin/env bash
# Checks, without a container engine, that a tessera binary keeps the
# promises of the Dockerfile's runtime stage (gcr.io/distroless/cc-debian12:
# nonroot, USER 65532:65532, configuration and keys mounted read-only at
# /etc/tessera, nothing secret in the image):
#
#   1. shared libraries: every DT_NEEDED library is one the base image has
#   2. glibc version: no symbol version newer than Debian 12's glibc (2.36)
#   3. runs as the image runs it: from /usr/local/bin/tessera in a temporary
#      image root, as uid/gid 65532 with no groups and no capabilities, with
#      TESSERA_CONFIG as its whole environment (no HOME, no PATH), cwd /, and
#      deploy/tessera.toml (paths moved under the image root, loopback ports,
#      memory:// store) in a root-owned /etc/tessera it cannot write. It must
#      answer /healthz and /readyz, map no library outside check 1's list,
#      serve the mounted key, write nothing to /etc/tessera, exit 0 within
#      shutdown_grace + drain_timeout of SIGTERM, and refuse to start when a
#      key is missing or unreadable (nothing is baked in or generated).
#   4. .dockerignore keeps keys, PEM files, target/ and audit files out of
#      the build context and keeps in what the builder stage copies
#
# It does not build the image or pull the base images: it checks the binary
# against what the base image is known to contain, and check 3 runs it on
# this host's libraries (the same as the image's only on Debian 12).
#
# Usage: deploy/check-runtime.sh [path/to/tessera]   (default: target/release/tessera)
# Needs: root (to make the configuration directory root-owned and to drop to
# uid 65532 with setpriv), readelf, setpriv, curl, python3 (>= 3.11), git.
# Exits 0 when every check passes, 1 naming the first check that failed.
set -euo pipefail
set -o errtrace

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -ge 1 ]; then
  BIN=$(realpath -- "$1")
else
  BIN="$REPO/target/release/tessera"
fi

CHECK="setup"
fail() {
  echo "FAIL [$CHECK]: $*" >&2
  exit 1
}
trap 'echo "FAIL [$CHECK]: unexpected error at line $LINENO: $BASH_COMMAND" >&2' ERR
section() {
  CHECK="$1"
  echo
  echo "== $CHECK"
}
ok() { echo "  ok: $*"; }
some() { # the first 8 arguments, then how many more
  local n=$#
  if [ "$n" -le 8 ]; then echo "$*"; else echo "${*:1:8} … ($((n - 8)) more)"; fi
}
info() { echo "     $*"; }

# a <= b as versions (2.9 < 2.36)
version_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n 1)" = "$2" ]; }

[ -f "$BIN" ] && [ -x "$BIN" ] || fail "no executable at $BIN (pass the binary's path)"
[ "$(id -u)" = 0 ] || fail "run as root: check 3 makes the config directory root-owned and drops to uid 65532"
for tool in readelf setpriv curl python3 git; do
  command -v "$tool" >/dev/null || fail "$tool is missing"
done
python3 -c 'import tomllib' 2>/dev/null || fail "python3 >= 3.11 (tomllib) is needed"
SETPRIV=$(command -v setpriv)

WORK=$(mktemp -d /tmp/tessera-runtime.XXXXXX)
chmod 0755 "$WORK"          # uid 65532 must reach the image root below it
ROOT="$WORK/root"           # laid out like the image's file system
PRIV="$WORK/private"        # root only: dev CA, logs, moved-away keys
mkdir -m 0755 "$ROOT"
mkdir -m 0700 "$PRIV"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "tessera runtime-stage check: $BIN"

# --------------------------------------------------------------------------
section "1. shared libraries"
# What gcr.io/distroless/cc-debian12 provides, from the distroless sources
# (base/config.bzl and cc/config.bzl, debian12): the "static" layer
# (base-files, netbase, tzdata, ca-certificates, /etc/passwd with nonroot
# 65532) plus the Debian 12 packages libc6 and libssl3 (the "base" image) and
# libgcc-s1, libstdc++6, libgomp1 and gcc-12-base ("cc"). The sonames are
# those the bookworm amd64 packages ship (dpkg -L): libc6 (glibc 2.36):
# ld-linux-x86-64.so.2, libc, libm, libmvec, libpthread, libdl, librt,
# libresolv, libutil, libanl, libnsl, libBrokenLocale, libthread_db,
# libc_malloc_debug and the NSS modules; libssl3 (OpenSSL 3.0): libssl.so.3,
# libcrypto.so.3; libgcc-s1: libgcc_s.so.1; libstdc++6: libstdc++.so.6;
# libgomp1: libgomp.so.1. NOT there: libz.so.1 (zlib1g is in the debian13 cc
# image only), libzstd, libcrypt.so.1 (libcrypt1), and anything else.
# amd64 only: the list and the loader name are the x86-64 ones.
ALLOWED_LIBS=(
  ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libmvec.so.1 libpthread.so.0
  libdl.so.2 librt.so.1 libresolv.so.2 libutil.so.1 libanl.so.1 libnsl.so.1
  libBrokenLocale.so.1 libthread_db.so.1 libc_malloc_debug.so.0
  libnss_files.so.2 libnss_dns.so.2 libnss_compat.so.2 libnss_hesiod.so.2
  libssl.so.3 libcrypto.so.3
  libgcc_s.so.1 libstdc++.so.6 libgomp.so.1
)
lib_allowed() {
  local l
  for l in "${ALLOWED_LIBS[@]}"; do [ "$l" = "$1" ] && return 0; done
  return 1
}
readelf -h "$BIN" >/dev/null 2>&1 || fail "$BIN is not an ELF file"
machine=$(readelf -h "$BIN" | sed -n 's/^ *Machine: *//p')
[[ $machine == *X86-64* ]] || fail "machine is '$machine': this check knows the amd64 image only"
interp=$(readelf -l "$BIN" | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p')
if [ -n "$interp" ]; then
  [ "$interp" = /lib64/ld-linux-x86-64.so.2 ] \
    || fail "program interpreter $interp is not glibc's /lib64/ld-linux-x86-64.so.2"
  ok "interpreter $interp"
fi
mapfile -t NEEDED < <(readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
if [ "${#NEEDED[@]}" -eq 0 ]; then
  ok "no NEEDED entries (static binary)"
fi
bad=()
for lib in "${NEEDED[@]}"; do
  if lib_allowed "$lib"; then
    info "NEEDED $lib"
  else
    info "NEEDED $lib   <- not in distroless/cc-debian12"
    bad+=("$lib")
  fi
done
[ "${#bad[@]}" -eq 0 ] || fail "needs ${bad[*]}, which the runtime image does not have"
ok "all ${#NEEDED[@]} NEEDED libraries are in distroless/cc-debian12"

# --------------------------------------------------------------------------
section "2. glibc version"
# The symbol versions the binary requires (.gnu.version_r), bounded by what
# Debian 12 ships: glibc 2.36; libgcc_s and libstdc++ from GCC 12 (GCC_12.0.0,
# GLIBCXX_3.4.30, CXXABI_1.3.13); OpenSSL 3.0.
mapfile -t VERS < <(readelf -V --wide "$BIN" \
  | awk '/^Version needs section/ {f=1; next} /^Version (definition|symbols) section/ {f=0} f' \
  | grep -o 'Name: [^ ]*' | awk '{print $2}' | sort -uV || true)
highest() { # family prefix -> highest version of it, or empty
  printf '%s\n' "${VERS[@]}" | sed -n "s/^$1_\([0-9][0-9.]*\)$/\1/p" | sort -V | tail -n 1
}
if printf '%s\n' "${VERS[@]}" | grep -qx 'GLIBC_PRIVATE'; then
  fail "requires GLIBC_PRIVATE symbols (only valid against the exact glibc build it was linked with)"
fi
glibc=$(highest GLIBC)
if [ -z "$glibc" ]; then
  ok "no GLIBC symbol versions required"
else
  info "highest GLIBC_ required: GLIBC_$glibc"
  version_le "$glibc" 2.36 || fail "requires GLIBC_$glibc; Debian 12 (distroless cc-debian12) has glibc 2.36"
  ok "GLIBC_$glibc <= 2.36 (Debian 12)"
fi
for bound in GCC:12.0.0 GLIBCXX:3.4.30 CXXABI:1.3.13 OPENSSL:3.0.99; do
  fam=${bound%%:*} max=${bound#*:}
  v=$(highest "$fam")
  [ -n "$v" ] || continue
  version_le "$v" "$max" || fail "requires ${fam}_$v; Debian 12 has at most ${fam}_${max%.99}"
  ok "highest ${fam}_ required: ${fam}_$v"
done

# --------------------------------------------------------------------------
section "3. runs as the image runs it"
# What is mirrored below must still be what the Dockerfile's runtime stage
# says (and check 1's library list is for this base image).
runtime=$(sed -n '/^FROM .* AS runtime/,$p' "$REPO/Dockerfile")
dockerfile_says() { # ERE, what it means
  grep -qE -- "$1" <<<"$runtime" || fail "the Dockerfile's runtime stage no longer has $2 (/$1/): fix it, or update this script if the change is meant"
}
dockerfile_says '^FROM gcr\.io/distroless/cc-debian12(:|@| )' "the distroless cc-debian12 base"
dockerfile_says '^USER 65532:65532$' "USER 65532:65532"
dockerfile_says '^ENV TESSERA_CONFIG=/etc/tessera/tessera\.toml$' "TESSERA_CONFIG=/etc/tessera/tessera.toml"
dockerfile_says '^COPY --from=builder [^ ]+ /usr/local/bin/tessera$' "the binary at /usr/local/bin/tessera"
dockerfile_says '^ENTRYPOINT \["/usr/local/bin/tessera"\]$' "ENTRYPOINT /usr/local/bin/tessera"
dockerfile_says '^CMD \["serve"\]$' "CMD serve"
for key in listen ops_listen; do
  port=$(sed -n -E "s/^$key = \"[^\"]*:([0-9]+)\"$/\1/p" "$REPO/deploy/tessera.toml")
  [ -n "$port" ] || fail "deploy/tessera.toml has no [server] $key"
  dockerfile_says "^EXPOSE .*\\b$port\\b" "EXPOSE $port (deploy/tessera.toml's $key)"
done
ok "the Dockerfile's runtime stage: distroless cc-debian12, USER 65532:65532, TESSERA_CONFIG, ENTRYPOINT, EXPOSE match"

ETC="$ROOT/etc/tessera"
mkdir -p "$ROOT/usr/local/bin" "$ETC"
install -m 0755 "$BIN" "$ROOT/usr/local/bin/tessera"
IMG_BIN="$ROOT/usr/local/bin/tessera"

read -r API_PORT OPS_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

# The configuration: deploy/tessera.toml with the mount points moved under
# the temporary image root, loopback ports, and the embedded store instead
# of the Sentinel set (the store is not what this checks; memory:// refuses
# revocation_replicas, so those two keys go). Every other line is kept.
CFG="$ETC/tessera.toml"
cp "$REPO/deploy/tessera.toml" "$CFG"
subst() { # ERE, replacement: the line must exist
  grep -qE -- "$1" "$CFG" || fail "deploy/tessera.toml has no line matching /$1/ any more: update this script"
  sed -i -E "s|$1|$2|g" "$CFG"
}
subst '^listen = ".*"$' "listen = \"127.0.0.1:$API_PORT\""
subst '^ops_listen = ".*"$' "ops_listen = \"127.0.0.1:$OPS_PORT\""
subst '^url = "redis.*"$' 'url = "memory://"'
sed -i -E '/^revocation_(replicas|wait) = /d' "$CFG"
subst '"/etc/tessera/' "\"$ROOT/etc/tessera/"
sed -i -E "s|\"/var/run/secrets/|\"$ROOT/var/run/secrets/|g" "$CFG"

# What the configuration refers to, and its timings.
vars=$(python3 - "$CFG" "$ROOT" <<'PY'
import shlex, sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
root = sys.argv[2]
def strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from strings(x)
outside = [p for p in strings(c) if p.startswith("/") and not p.startswith(root + "/")]
if outside:
    sys.exit(f"deploy/tessera.toml names files outside /etc/tessera and /var/run/secrets: {outside}; teach this script where they are mounted")
def secs(d):
    for unit, f in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if d.endswith(unit) and d[: -len(unit)].replace(".", "", 1).isdigit():
            return float(d[: -len(unit)]) * f
    sys.exit(f"cannot read the duration {d!r}: teach this script its form")
s, t = c["server"], c["tokens"]
out = {
    "TLS_CERT": s["tls_cert"], "TLS_KEY": s["tls_key"],
    "SIGNING_DIR": t["signing_keys"], "ALG": t.get("algorithm", "ES256"),
    "GRACE": secs(s.get("shutdown_grace", "1s")), "DRAIN": secs(s.get("drain_timeout", "10s")),
}
for k, v in out.items():
    print(f"{k}={shlex.quote(str(v))}")
print("CA_FILES=(" + " ".join(shlex.quote(p) for p in s.get("client_ca", [])
      + [i["ca"] for i in c.get("issuers", []) if "ca" in i]) + ")")
print("TOKEN_FILES=(" + " ".join(shlex.quote(i["bearer_token_file"]) for i in c.get("issuers", [])
      if "bearer_token_file" in i) + ")")
PY
) || fail "reading the derived configuration (above)"
eval "$vars"

# Material, made by the binary itself. TLS: a throw-away `serve` with
# [dev] generate_missing = true in the private directory writes a dev CA and
# a server certificate for localhost/127.0.0.1. Signing: `keys generate`.
cat >"$PRIV/bootstrap.toml" <<EOF
[server]
listen = "127.0.0.1:0"
ops_listen = "127.0.0.1:0"
issuer = "https://localhost"
tls_cert = "$PRIV/dev/server.pem"
tls_key = "$PRIV/dev/server-key.pem"
client_ca = ["$PRIV/dev/ca.pem"]
shutdown_grace = "0s"
[tokens]
signing_keys = "$PRIV/dev-signing"
[dev]
generate_missing = true
EOF
"$BIN" serve --config "$PRIV/bootstrap.toml" >"$PRIV/bootstrap.out" 2>"$PRIV/bootstrap.err" &
boot=$!
PIDS+=("$boot")
for _ in $(seq 100); do
  [ -s "$PRIV/dev/server.pem" ] && [ -s "$PRIV/dev/ca.pem" ] && break
  kill -0 "$boot" 2>/dev/null || break
  sleep 0.1
done
kill -TERM "$boot" 2>/dev/null || true
wait "$boot" || true
[ -s "$PRIV/dev/server.pem" ] && [ -s "$PRIV/dev/server-key.pem" ] && [ -s "$PRIV/dev/ca.pem" ] \
  || { tail -n 5 "$PRIV/bootstrap.err" >&2; fail "the binary did not generate the development TLS material"; }
install -D -m 0644 "$PRIV/dev/server.pem" "$TLS_CERT"
install -D -m 0644 "$PRIV/dev/server-key.pem" "$TLS_KEY"
for f in "${CA_FILES[@]}"; do
  install -D -m 0644 "$PRIV/dev/ca.pem" "$f"
done
# An issuer's bearer token file (the pod's projected service-account token):
# a placeholder; it is read only when that issuer's keys are fetched.
for f in "${TOKEN_FILES[@]}"; do
  mkdir -p "$(dirname "$f")" && printf 'placeholder-token\n' >"$f"
done
mkdir -p "$SIGNING_DIR"
kid=$("$BIN" keys generate --algorithm "$ALG" --dir "$SIGNING_DIR" | sed -n 's/.*kid \([^ )]*\).*/\1/p')
[ -n "$kid" ] || fail "tessera keys generate printed no kid"

# "Mounted read-only": root-owned, writable by root only, readable by all
# (a Kubernetes Secret volume's default, 0644).
chown -R root:root "$ROOT"
for d in "$ROOT/etc" "$ROOT/var"; do
  [ -d "$d" ] || continue
  find "$d" -type d -exec chmod 0755 {} +
  find "$d" -type f -exec chmod 0644 {} +
done
info "host libraries: glibc $(getconf GNU_LIBC_VERSION | awk '{print $2}') (the image has 2.36)"
info "image root $ROOT: /usr/local/bin/tessera, /etc/tessera (root:root, 0755/0644)"
info "config: deploy/tessera.toml with paths under the image root, API 127.0.0.1:$API_PORT, ops 127.0.0.1:$OPS_PORT, store memory://"
info "signing key kid $kid ($ALG); TLS: development CA and server certificate"

# Start it as the image does: uid/gid 65532, no supplementary groups, no
# inheritable capabilities, TESSERA_CONFIG only (no HOME, no PATH), cwd /.
start_broker() { # stdout file, stderr file -> sets BROKER
  (cd / && exec env -i TESSERA_CONFIG="$CFG" "$SETPRIV" --reuid 65532 --regid 65532 \
    --clear-groups --inh-caps=-all -- "$IMG_BIN" serve) >"$1" 2>"$2" &
  BROKER=$!
  PIDS+=("$BROKER")
}
http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" || true; }
snapshot() { find "$ETC" -printf '%P %y %m %U:%G %s %T@\n' | sort; }

"$SETPRIV" --reuid 65532 --regid 65532 --clear-groups -- test -w "$ETC" \
  && fail "uid 65532 can write $ETC: the layout is wrong"
(cd / && env -i TESSERA_CONFIG="$CFG" "$SETPRIV" --reuid 65532 --regid 65532 --clear-groups \
  --inh-caps=-all -- "$IMG_BIN" config check) >"$PRIV/check.out" 2>&1 \
  || { cat "$PRIV/check.out" >&2; fail "tessera config check rejects the derived configuration"; }
info "config check: $(head -n 1 "$PRIV/check.out" | sed "s|$ROOT||")"

before=$(snapshot)
start_broker "$PRIV/serve.out" "$PRIV/serve.err"
up=""
for _ in $(seq 100); do
  if [ "$(http_code "http://127.0.0.1:$OPS_PORT/healthz")" = 200 ]; then up=1; break; fi
  kill -0 "$BROKER" 2>/dev/null || break
  sleep 0.1
done
[ -n "$up" ] || { tail -n 20 "$PRIV/serve.err" >&2; fail "it did not start (/healthz never answered 200); its stderr is above"; }
ok "started; /healthz 200"
code=$(http_code "http://127.0.0.1:$OPS_PORT/readyz")
[ "$code" = 200 ] || fail "/readyz answered $code, not 200"
ok "/readyz 200"

status=/proc/$BROKER/status
grep -qE '^Uid:\s+65532\s+65532\s+65532\s+65532$' "$status" || fail "not running as uid 65532: $(grep ^Uid: "$status")"
grep -qE '^Gid:\s+65532\s+65532\s+65532\s+65532$' "$status" || fail "not running as gid 65532: $(grep ^Gid: "$status")"
grep -qE '^Groups:\s*$' "$status" || fail "has supplementary groups: $(grep ^Groups: "$status")"
for cap in CapInh CapPrm CapEff CapAmb; do
  grep -qE "^$cap:\s+0+$" "$status" || fail "has capabilities: $(grep "^$cap:" "$status")"
done
env_now=$(tr '\0' '\n' <"/proc/$BROKER/environ")
[ "$env_now" = "TESSERA_CONFIG=$CFG" ] || fail "its environment is not TESSERA_CONFIG alone: $env_now"
[ "$(readlink "/proc/$BROKER/cwd")" = / ] || fail "its cwd is not /"
ok "uid/gid 65532, no groups, no capabilities, env = TESSERA_CONFIG only, cwd /"

# dlopen()ed libraries are not in DT_NEEDED: look at what is mapped.
mapfile -t MAPPED < <(awk '$6 ~ /^\// {print $6}' "/proc/$BROKER/maps" | sort -u)
bad=()
for m in "${MAPPED[@]}"; do
  [ "$m" = "$IMG_BIN" ] && continue
  b=$(basename "$m")
  case "$b" in
    *.so | *.so.*) lib_allowed "$b" || bad+=("$m") ;;
    *) bad+=("$m") ;;
  esac
done
[ "${#bad[@]}" -eq 0 ] || fail "maps files the image does not have or should not need: ${bad[*]}"
ok "maps only $(printf '%s\n' "${MAPPED[@]}" | grep -v "^$IMG_BIN$" | xargs -n1 basename | tr '\n' ' ')"

jwks=$(curl -s -m 2 --cacert "$PRIV/dev/ca.pem" "https://127.0.0.1:$API_PORT/jwks.json" || true)
grep -q "\"kid\":\"$kid\"" <<<"$jwks" || fail "the HTTPS listener's /jwks.json does not publish the mounted key $kid: $jwks"
ok "HTTPS listener up with the mounted certificate; /jwks.json publishes the mounted key"

kill -TERM "$BROKER"
t0=$(date +%s.%N)
if python3 -c "import sys; sys.exit(0 if $GRACE >= 1 else 1)"; then
  sleep 0.3
  code=$(http_code "http://127.0.0.1:$OPS_PORT/readyz")
  [ "$code" = 503 ] || fail "/readyz answered $code during shutdown_grace, not 503"
  ok "SIGTERM: /readyz 503 while draining"
fi
limit=$(python3 -c "print($GRACE + $DRAIN + 1)")
while kill -0 "$BROKER" 2>/dev/null; do
  if python3 -c "import sys,time; sys.exit(0 if time.time() - $t0 > $limit else 1)"; then
    fail "still running ${limit}s after SIGTERM (shutdown_grace ${GRACE}s + drain_timeout ${DRAIN}s + 1s)"
  fi
  sleep 0.1
done
rc=0
wait "$BROKER" || rc=$?
took=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
[ "$rc" = 0 ] || { tail -n 5 "$PRIV/serve.err" >&2; fail "exited $rc after SIGTERM, not 0"; }
ok "SIGTERM: exit 0 after ${took}s (limit ${limit}s = shutdown_grace + drain_timeout + 1s)"
after=$(snapshot)
[ "$before" = "$after" ] || { diff <(echo "$before") <(echo "$after") >&2 || true; fail "the configuration directory changed while it ran"; }
ok "wrote nothing into /etc/tessera"

# Nothing baked in, nothing generated: without a key it must not start.
refuses() { # description, expected text on stderr
  local what=$1 expect=$2 i pre
  pre=$(snapshot)
  start_broker "$PRIV/refuse.out" "$PRIV/refuse.err"
  for i in $(seq 100); do
    kill -0 "$BROKER" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$BROKER" 2>/dev/null; then
    kill -KILL "$BROKER"
    fail "$what: still running after 10 s (a built-in or generated key?)"
  fi
  rc=0
  wait "$BROKER" || rc=$?
  [ "$rc" != 0 ] || fail "$what: exited 0"
  grep -qF -- "$expect" "$PRIV/refuse.err" \
    || { cat "$PRIV/refuse.err" >&2; fail "$what: stderr does not mention '$expect'"; }
  [ "$pre" = "$(snapshot)" ] || fail "$what: it changed the configuration directory"
  ok "refuses $what: exit $rc, $(grep -F -- "$expect" "$PRIV/refuse.err" | head -n 1 | sed "s|$ROOT||g")"
}
key_file=$(find "$SIGNING_DIR" -name '*.pem' | head -n 1)
mv "$key_file" "$PRIV/"
refuses "with no signing key" "$(basename "$SIGNING_DIR")"
mv "$PRIV/$(basename "$key_file")" "$SIGNING_DIR/"
mv "$TLS_KEY" "$PRIV/tls_key"
refuses "with no TLS key" "$TLS_KEY"
mv "$PRIV/tls_key" "$TLS_KEY"
chmod 0600 "$key_file"
refuses "with a signing key uid 65532 cannot read (0600 root)" "Permission denied"
chmod 0644 "$key_file"

# --------------------------------------------------------------------------
section "4. .dockerignore"
# The matching follows Docker's (moby/patternmatcher): patterns are cleaned
# (trailing / dropped, leading / dropped), `*` and `?` do not cross /, `**`
# crosses any number of directories, a pattern that matches a parent
# directory excludes everything below it, `!` re-includes, the last match wins.
PLANTED=(
  keys/dev/ca-key.pem keys/dev/server.pem keys/signing/20260101T000000Z-es256.pem
  keys/signing/20260101T000000Z-es256.next.pem keys/README.md
  secrets/x.pem secrets/tls/server-key.pem secrets/signing/20260101T000000Z-es256.pem
  secrets/tls/server.key secrets/redis-password
  dev-keys/operator-key.pem dev-keys/ca.pem config/local-key.pem src/leaked.pem
  target/release/tessera target/debug/deps/libtessera.rlib fuzz/target/x/y
  tessera.audit.jsonl audit.jsonl var/log/tessera.audit.jsonl tests/out.jsonl
  .git/config
)
mapfile -t TRACKED < <(git -C "$REPO" ls-files)
[ "${#TRACKED[@]}" -gt 0 ] || fail "git ls-files lists nothing (not a checkout?)"
# The builder stage's COPY sources (not --from).
mapfile -t COPY_SRC < <(awk 'toupper($1) == "COPY" && $0 !~ /--from/ {
  for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' "$REPO/Dockerfile")
[ "${#COPY_SRC[@]}" -gt 0 ] || fail "no COPY in the Dockerfile?"

mapfile -t INCLUDED < <(printf '%s\n' "${TRACKED[@]}" "${PLANTED[@]}" | python3 -c '
import os, re, sys

def compile_pattern(p):
    reg, i = "^", 0
    while i < len(p):
        c = p[i]
        if c == "*":
            if p[i + 1 : i + 2] == "*":
                i += 2
                if p[i : i + 1] == "/":
                    i += 1
                reg += ".*" if i >= len(p) else "(.*/)?"
                continue
            reg += "[^/]*"
        elif c == "?":
            reg += "[^/]"
        elif c == "\\" and i + 1 < len(p):
            i += 1
            reg += re.escape(p[i])
        elif c in ".+()|{}$^":
            reg += "\\" + c
        else:
            reg += c
        i += 1
    return re.compile(reg + "$")

patterns = []
for line in open(sys.argv[1], encoding="utf-8"):
    p = line.strip()
    if not p or p.startswith("#"):
        continue
    neg = p.startswith("!")
    if neg:
        p = p[1:].strip()
    p = os.path.normpath(p).lstrip("/") or "."
    patterns.append((neg, compile_pattern(p)))

def excluded(path):
    parents = os.path.dirname(path).split("/") if "/" in path else []
    out = False
    for neg, rx in patterns:
        if neg != out:
            continue
        hit = bool(rx.match(path)) or any(
            rx.match("/".join(parents[: k + 1])) for k in range(len(parents)))
        if hit:
            out = not neg
    return out

for path in sys.stdin.read().split():
    if not excluded(path):
        print(path)
' "$REPO/.dockerignore")
is_included() {
  local p
  for p in "${INCLUDED[@]}"; do [ "$p" = "$1" ] && return 0; done
  return 1
}
leaks=()
for p in "${PLANTED[@]}"; do is_included "$p" && leaks+=("$p"); done
for p in "${TRACKED[@]}"; do
  case "$p" in *.pem | *.jsonl | keys/* | target/*) is_included "$p" && leaks+=("$p") ;; esac
done
[ "${#leaks[@]}" -eq 0 ] || fail "the build context would contain: $(some "${leaks[@]}")"
ok "excluded: all ${#PLANTED[@]} planted paths (keys/, *.pem, *-key.pem, target/, *.jsonl, secrets/, .git/)"
missing=()
nsrc=0
for src in "${COPY_SRC[@]}"; do
  src=${src%/}
  found=0
  for p in "${TRACKED[@]}"; do
    if [ "$p" = "$src" ] || [[ $p == "$src"/* ]]; then
      found=1
      nsrc=$((nsrc + 1))
      is_included "$p" || missing+=("$p")
    fi
  done
  [ "$found" = 1 ] || missing+=("$src (nothing tracked)")
done
[ "${#missing[@]}" -eq 0 ] || fail "the builder stage COPYs files the context would not have: $(some "${missing[@]}")"
ok "included: the $nsrc tracked files the builder stage COPYs (${COPY_SRC[*]})"
kept_out=0
for p in "${TRACKED[@]}"; do is_included "$p" || kept_out=$((kept_out + 1)); done
ok "$kept_out of ${#TRACKED[@]} tracked files are kept out of the context (.git/, .ci/, fuzz/, deploy/, keys/, Dockerfile, .dockerignore)"

CHECK="done"
echo
echo "all 4 checks passed"
