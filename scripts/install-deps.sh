#!/usr/bin/env bash
# Install what Kafscale needs to build and run (no args) or to run its tests
# (--test). Idempotent: when everything is present it does nothing at all
# (no apt-get update, no network), so CI stays quick.
#
#   scripts/install-deps.sh          build + runtime dependencies
#   scripts/install-deps.sh --test   the above + test tools, clients, etcd, s3rver
#
# Debian/Ubuntu only (apt). Run as root, or as a user with sudo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="$ROOT/.tools"          # project-local npm tools (git-ignored)
S3RVER_VERSION="3.7.1"

BUILD_PKGS=(
  gcc make pkg-config
  libsqlite3-dev
  libprotobuf-c-dev protobuf-c-compiler
  libcurl4-openssl-dev libssl-dev libjson-c-dev libmicrohttpd-dev
)
TEST_PKGS=(
  clang libclang-rt-14-dev
  kcat librdkafka-dev
  python3-confluent-kafka python3-kafka python3-pytest python3-botocore python3-prometheus-client
  etcd-server etcd-client   # etcd + etcdctl: cluster-mode tests start their own clusters
  protobuf-compiler         # protoc --decode/--encode: independent reader of etcd records
  valgrind
)
# Installed when the distribution has them (apt-cache policy shows a
# candidate); the tests fall back to something else when they are missing.
OPTIONAL_TEST_PKGS=(
  awscli                    # /usr/bin/aws lists S3 objects in tests (fallback: botocore)
)

want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-deps: unknown argument '$arg' (use --test or nothing)" >&2; exit 2 ;;
  esac
done

log() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: ERROR: %s\n' "$*" >&2; exit 1; }

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian/Ubuntu (apt) only"

pkgs=("${BUILD_PKGS[@]}")
if [[ $want_test -eq 1 ]]; then pkgs+=("${TEST_PKGS[@]}" "${OPTIONAL_TEST_PKGS[@]}"); fi

# An optional package is wanted only if apt knows a version of it.
has_candidate() {
  local c
  c="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')"
  [[ -n "$c" && "$c" != "(none)" ]]
}
is_optional() {
  local o
  for o in "${OPTIONAL_TEST_PKGS[@]}"; do [[ "$o" == "$1" ]] && return 0; done
  return 1
}

# --- which Debian packages are missing? (one dpkg-query call) --------------
declare -A installed=()
while read -r name status; do
  [[ "$status" == "installed" ]] && installed["$name"]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${pkgs[@]}" 2>/dev/null || true)

missing=()
optional_later=()   # optional packages apt does not know yet (lists may be stale)
for p in "${pkgs[@]}"; do
  [[ -n "${installed[$p]:-}" ]] && continue
  if [[ $want_test -eq 1 ]] && is_optional "$p"; then
    if has_candidate "$p"; then missing+=("$p"); else optional_later+=("$p"); fi
  else
    missing+=("$p")
  fi
done

# --- npm tools (test only) --------------------------------------------------
need_s3rver=0
if [[ $want_test -eq 1 ]]; then
  s3pkg="$TOOLS_DIR/node_modules/s3rver/package.json"
  if [[ ! -f "$s3pkg" ]] || ! grep -q "\"version\": *\"$S3RVER_VERSION\"" "$s3pkg"; then
    need_s3rver=1
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
      # Debian's nodejs + npm; only when no node/npm is on PATH at all (a
      # NodeSource nodejs already bundles npm and conflicts with Debian's npm).
      command -v node >/dev/null 2>&1 || missing+=(nodejs)
      missing+=(npm)
    fi
  fi
fi

if [[ ${#missing[@]} -eq 0 && $need_s3rver -eq 0 ]]; then
  if [[ $want_test -eq 1 ]]; then
    log "all build and test dependencies are already installed"
  else
    log "all build dependencies are already installed"
  fi
  exit 0
fi

# --- apt-get, with root/sudo handling and waiting for the dpkg lock ---------
SUDO=()
if [[ ${#missing[@]} -gt 0 && $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
    log "not root: using sudo for apt-get"
  else
    die "missing packages: ${missing[*]}
  Not root and sudo is not available. As root, run:
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
  fi
fi

LOCK_WAIT_SECONDS="${KAFSCALE_APT_LOCK_WAIT:-900}"

# Run an apt-get command; if another apt/dpkg holds the lock (e.g. a
# background update), wait for it instead of failing.
apt_run() {
  local out rc deadline
  deadline=$(( $(date +%s) + LOCK_WAIT_SECONDS ))
  out="$(mktemp)"
  while :; do
    set +e
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get \
      -q -o DPkg::Lock::Timeout=60 "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    set -e
    if [[ $rc -ne 0 ]] && grep -qiE 'could not get lock|unable to lock|is another process using it' "$out"; then
      if (( $(date +%s) >= deadline )); then
        rm -f "$out"
        die "apt/dpkg lock still held after ${LOCK_WAIT_SECONDS}s; is another apt-get running?"
      fi
      log "apt/dpkg lock is held by another process; waiting..."
      sleep 5
      continue
    fi
    rm -f "$out"
    return "$rc"
  done
}

if [[ ${#missing[@]} -gt 0 ]]; then
  log "missing packages: ${missing[*]}"
  t0=$(date +%s)
  log "running apt-get update (once)"
  if ! apt_run update; then
    log "WARNING: apt-get update reported errors; trying to install anyway"
  fi
  # With fresh package lists an optional package may now be available.
  for p in "${optional_later[@]+"${optional_later[@]}"}"; do
    if has_candidate "$p"; then
      missing+=("$p")
    else
      log "optional package $p is not available here; tests use their fallback"
    fi
  done
  log "installing: ${missing[*]}"
  apt_run install -y --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"
  # Verify: a package that apt silently skipped is an error, not a surprise later.
  still=()
  for p in "${missing[@]}"; do
    s="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
    [[ "$s" == "installed" ]] || still+=("$p")
  done
  [[ ${#still[@]} -eq 0 ]] || die "still not installed after apt-get: ${still[*]}"
  log "apt packages installed in $(( $(date +%s) - t0 ))s"
fi

if [[ $need_s3rver -eq 1 ]]; then
  command -v npm >/dev/null 2>&1 || die "npm is still not available; cannot install s3rver"
  log "installing npm s3rver@$S3RVER_VERSION into $TOOLS_DIR"
  t0=$(date +%s)
  mkdir -p "$TOOLS_DIR"
  [[ -f "$TOOLS_DIR/package.json" ]] || printf '{ "name": "kafscale-tools", "private": true }\n' > "$TOOLS_DIR/package.json"
  npm install --prefix "$TOOLS_DIR" --no-audit --no-fund --loglevel=error \
    "s3rver@$S3RVER_VERSION" || die "npm install s3rver@$S3RVER_VERSION failed"
  [[ -f "$TOOLS_DIR/node_modules/s3rver/bin/s3rver.js" ]] \
    || die "s3rver installed but $TOOLS_DIR/node_modules/s3rver/bin/s3rver.js is missing"
  log "s3rver installed in $(( $(date +%s) - t0 ))s"
fi

log "done"
