#!/usr/bin/env bash
# Install (or remove) Tollgate's root CA certificate in an internal host's trust stores.
#
#   scripts/install-ca.sh [--cert ca/root-ca.pem] [--name tollgate-root-ca] [--root /]
#                         [--family debian|rhel|alpine] [--java] [--python] [--node]
#                         [--uninstall] [--dry-run]
#
# --root DIR treats DIR as the filesystem root (for images and tests); the distribution's
# update tool then runs only if it exists inside DIR. Idempotent: installing the same
# certificate twice changes nothing. --dry-run prints every action and changes nothing.
set -euo pipefail

CERT="ca/root-ca.pem"
NAME="tollgate-root-ca"
ROOT="/"
FAMILY=""
JAVA=0 PYTHON=0 NODE=0 UNINSTALL=0 DRY=0

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
say() { echo "install-ca: $*"; }
warn() { echo "install-ca: warning: $*" >&2; }
die() { echo "install-ca: error: $*" >&2; exit "${2:-1}"; }
needs_value() {  # needs_value OPTION NUMBER-OF-REMAINING-ARGS NEXT-ARG
  if [ "$2" -lt 2 ] || [ -z "$3" ]; then usage >&2; die "$1 needs a value" 2; fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --cert) needs_value "$1" $# "${2:-}"; CERT="$2"; shift 2 ;;
    --name) needs_value "$1" $# "${2:-}"; NAME="$2"; shift 2 ;;
    --root) needs_value "$1" $# "${2:-}"; ROOT="$2"; shift 2 ;;
    --family) needs_value "$1" $# "${2:-}"; FAMILY="$2"; shift 2 ;;
    --java) JAVA=1; shift ;;
    --python) PYTHON=1; shift ;;
    --node) NODE=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" 2 ;;
  esac
done

# The name becomes a file name in the trust directories: no slashes, no dot files.
case "$NAME" in
  .*|*[!A-Za-z0-9._-]*) die "--name '$NAME' must be letters, digits, '.', '_' or '-' (and not start with '.')" 2 ;;
esac

[ -d "$ROOT" ] || die "--root $ROOT: no such directory" 2
ROOT=$(cd "$ROOT" && pwd -P)
if [ "$ROOT" = / ]; then ROOT=""; fi  # "" for the real root, so "$ROOT/etc" is "/etc"

run() {  # run a command, or only print it with --dry-run
  if [ "$DRY" = 1 ]; then say "would run: $*"; else say "running: $*"; "$@"; fi
}

os_release_value() {  # os_release_value FILE KEY: the value, unquoted and lower-cased (never sourced)
  sed -n "s/^$2=//p" "$1" | tail -n 1 | tr -d "\"'" | tr '[:upper:]' '[:lower:]'
}

detect_family() {
  local release="$ROOT/etc/os-release" id like word
  [ -f "$release" ] || die "cannot detect the distribution: $release is missing; use --family debian|rhel|alpine" 2
  id=$(os_release_value "$release" ID)
  like=$(os_release_value "$release" ID_LIKE)
  # shellcheck disable=SC2086  # split ID and ID_LIKE into words on purpose
  for word in $id $like; do
    case "$word" in
      debian|ubuntu) FAMILY=debian; return ;;
      rhel|fedora|centos|rocky|almalinux) FAMILY=rhel; return ;;
      alpine) FAMILY=alpine; return ;;
    esac
  done
  die "unsupported distribution '${id:-unknown}' (ID_LIKE '${like}') in $release; use --family debian|rhel|alpine" 2
}

[ -n "$FAMILY" ] || detect_family
case "$FAMILY" in
  debian|alpine)
    TARGET="$ROOT/usr/local/share/ca-certificates/$NAME.crt"
    UPDATE=(update-ca-certificates)
    BUNDLE=/etc/ssl/certs/ca-certificates.crt ;;
  rhel)
    TARGET="$ROOT/etc/pki/ca-trust/source/anchors/$NAME.pem"
    UPDATE=(update-ca-trust extract)
    BUNDLE=/etc/pki/tls/certs/ca-bundle.crt ;;
  *) die "unknown --family '$FAMILY'; use debian, rhel or alpine" 2 ;;
esac
INSTALLED="${TARGET#"$ROOT"}"  # the path as seen from inside the root
PROFILE="$ROOT/etc/profile.d/$NAME.sh"
say "family $FAMILY, root ${ROOT:-/}, trust anchor $TARGET"

update_store() {
  local tool="${UPDATE[0]}" inside="" dir
  if [ -z "$ROOT" ]; then
    if [ "$DRY" = 0 ] && ! command -v "$tool" >/dev/null; then
      die "$tool not found; install the ca-certificates package, then run: ${UPDATE[*]}"
    fi
    run "${UPDATE[@]}"
    return
  fi
  # Never rebuild the machine's own store for an image: only the tool inside the root runs.
  for dir in usr/sbin usr/bin sbin bin; do
    if [ -x "$ROOT/$dir/$tool" ]; then inside="$dir/$tool"; break; fi
  done
  if [ -z "$inside" ]; then
    say "would run: ${UPDATE[*]} (not present in $ROOT: run it inside the image)"
  elif [ "$(id -u)" = 0 ] && command -v chroot >/dev/null && [ -x "$ROOT/bin/sh" ]; then
    run chroot "$ROOT" "/$inside" "${UPDATE[@]:1}"  # a real image: update its store, not ours
  else
    run "$ROOT/$inside" "${UPDATE[@]:1}"
  fi
}

java_cacerts() { echo "${JAVA_CACERTS:-$ROOT/etc/ssl/certs/java/cacerts}"; }
java_fingerprint() {  # SHA-256 of the certificate under our alias, or nothing
  keytool -exportcert -rfc -alias "$NAME" -keystore "$(java_cacerts)" -storepass changeit 2>/dev/null \
    | openssl x509 -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2 || true
}

# ---- uninstall -------------------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
  if [ -f "$TARGET" ]; then
    run rm -f "$TARGET"
    update_store
  else
    say "not installed: $TARGET"
  fi
  if [ -f "$PROFILE" ]; then run rm -f "$PROFILE"; fi
  if [ "$JAVA" = 1 ]; then
    if ! command -v keytool >/dev/null; then
      warn "keytool not found; Java trust store not changed"
    elif [ -n "$(java_fingerprint)" ]; then
      run keytool -delete -noprompt -alias "$NAME" -keystore "$(java_cacerts)" -storepass changeit
    else
      say "not in the Java trust store $(java_cacerts)"
    fi
  fi
  say "done"
  exit 0
fi

# ---- check the certificate -------------------------------------------------------------
command -v openssl >/dev/null || die "openssl not found: it is needed to check the certificate"
[ -f "$CERT" ] || die "certificate $CERT not found (run \`tollgate ca init\` on the proxy host, then copy ca/root-ca.pem)" 2
if grep -q "PRIVATE KEY" "$CERT"; then
  die "$CERT contains a private key: copy only the certificate (ca/root-ca.pem), never the key" 2
fi
openssl x509 -inform PEM -in "$CERT" -noout 2>/dev/null || die "$CERT is not a PEM certificate" 2
FINGERPRINT=$(openssl x509 -in "$CERT" -noout -fingerprint -sha256 | cut -d= -f2)
say "certificate $CERT: $(openssl x509 -in "$CERT" -noout -subject), sha256 $FINGERPRINT"
openssl x509 -in "$CERT" -noout -checkend 0 >/dev/null 2>&1 || warn "$CERT has expired"
openssl x509 -in "$CERT" -noout -text 2>/dev/null | grep -q "CA:TRUE" \
  || warn "$CERT is not a CA certificate (no CA:TRUE): clients will not accept it as a root"

# ---- system store ----------------------------------------------------------------------
if [ -f "$TARGET" ] && cmp -s "$CERT" "$TARGET"; then
  say "already installed: $TARGET"
else
  if [ -e "$TARGET" ]; then say "replacing a different certificate at $TARGET"; fi
  run mkdir -p "$(dirname "$TARGET")"
  run cp "$CERT" "$TARGET.tmp.$$"
  run chmod 0644 "$TARGET.tmp.$$"
  run mv -f "$TARGET.tmp.$$" "$TARGET"
  update_store
fi

# ---- Java ------------------------------------------------------------------------------
if [ "$JAVA" = 1 ]; then
  if ! command -v keytool >/dev/null; then
    warn "keytool not found; Java trust store not changed"
  elif [ ! -f "$(java_cacerts)" ]; then
    warn "no Java trust store at $(java_cacerts) (set JAVA_CACERTS); Java trust store not changed"
  else
    current=$(java_fingerprint)
    if [ "$current" = "$FINGERPRINT" ]; then
      say "already in the Java trust store $(java_cacerts)"
    else
      if [ -n "$current" ]; then
        run keytool -delete -noprompt -alias "$NAME" -keystore "$(java_cacerts)" -storepass changeit
      fi
      run keytool -importcert -noprompt -alias "$NAME" -file "$CERT" -keystore "$(java_cacerts)" -storepass changeit
    fi
  fi
fi

# ---- Python and Node -------------------------------------------------------------------
if [ "$PYTHON" = 1 ]; then
  say "python: requests and many tools use certifi's bundle; point them at the system bundle:"
  say "python:   export REQUESTS_CA_BUNDLE=$BUNDLE SSL_CERT_FILE=$BUNDLE"
  if command -v python3 >/dev/null && python3 -m certifi >/dev/null 2>&1; then
    say "python: certifi is installed here ($(python3 -m certifi 2>/dev/null)); it does not read the system store"
  fi
fi
if [ "$NODE" = 1 ]; then
  say "node: Node.js ignores the system store; add to /etc/environment: NODE_EXTRA_CA_CERTS=$INSTALLED"
fi
if [ "$PYTHON" = 1 ] || [ "$NODE" = 1 ]; then
  CONTENT="# Written by Tollgate's install-ca.sh: trust the egress proxy's CA. Removed by --uninstall."
  if [ "$PYTHON" = 1 ]; then
    CONTENT+=$'\n'"export REQUESTS_CA_BUNDLE=$BUNDLE"$'\n'"export SSL_CERT_FILE=$BUNDLE"
  fi
  if [ "$NODE" = 1 ]; then
    CONTENT+=$'\n'"export NODE_EXTRA_CA_CERTS=$INSTALLED"
  fi
  if [ -f "$PROFILE" ] && [ "$(cat "$PROFILE")" = "$CONTENT" ]; then
    say "already up to date: $PROFILE"
  elif [ "$DRY" = 1 ]; then
    say "would write $PROFILE"
  else
    mkdir -p "$(dirname "$PROFILE")"
    printf '%s\n' "$CONTENT" > "$PROFILE.tmp.$$"
    chmod 0644 "$PROFILE.tmp.$$"
    mv -f "$PROFILE.tmp.$$" "$PROFILE"
    say "wrote $PROFILE (new login shells pick it up)"
  fi
fi
say "done"
