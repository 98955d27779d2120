#!/usr/bin/env bash
# Install (or remove) Tollgate's root CA certificate in an internal host's trust stores.
#
#   scripts/install-ca.sh [--cert ca/root-ca.pem] [--name tollgate-root-ca] [--root /]
#                         [--family debian|rhel|alpine] [--java] [--python] [--node]
#                         [--uninstall] [--dry-run]
#
# --root DIR treats DIR as the filesystem root (for images and tests); the distribution's
# update tool then runs only if it exists inside DIR. Idempotent: installing the same
# certificate twice changes nothing.
set -euo pipefail

CERT="ca/root-ca.pem"
NAME="tollgate-root-ca"
ROOT="/"
FAMILY=""
JAVA=0 PYTHON=0 NODE=0 UNINSTALL=0 DRY=0

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
say() { echo "install-ca: $*"; }
die() { echo "install-ca: error: $*" >&2; exit "${2:-1}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --cert) CERT="${2:?--cert needs a file}"; shift 2 ;;
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --family) FAMILY="${2:?--family needs debian, rhel or alpine}"; shift 2 ;;
    --java) JAVA=1; shift ;;
    --python) PYTHON=1; shift ;;
    --node) NODE=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" 2 ;;
  esac
done

ROOT="${ROOT%/}"  # "" for the real root, so "$ROOT/etc" is "/etc"
[ -d "${ROOT:-/}" ] || die "--root ${ROOT}: no such directory" 2

run() {  # run a command, or only print it with --dry-run
  if [ "$DRY" = 1 ]; then say "would run: $*"; else say "running: $*"; "$@"; fi
}

detect_family() {
  local id="" like="" release="$ROOT/etc/os-release"
  [ -f "$release" ] || die "cannot detect the distribution: $release is missing; use --family" 2
  id=$(. "$release"; echo "${ID:-}")
  like=$(. "$release"; echo "${ID_LIKE:-}")
  case " $id $like " in
    *" alpine "*) echo alpine ;;
    *" debian "*|*" ubuntu "*) echo debian ;;
    *" rhel "*|*" fedora "*|*" centos "*|*" rocky "*|*" almalinux "*) echo rhel ;;
    *) die "unsupported distribution '${id:-unknown}' (ID_LIKE '${like}'); use --family debian|rhel|alpine" 2 ;;
  esac
}

[ -n "$FAMILY" ] || FAMILY=$(detect_family)
case "$FAMILY" in
  debian|alpine) TARGET="$ROOT/usr/local/share/ca-certificates/$NAME.crt"; UPDATE=(update-ca-certificates) ;;
  rhel) TARGET="$ROOT/etc/pki/ca-trust/source/anchors/$NAME.pem"; UPDATE=(update-ca-trust extract) ;;
  *) die "unknown --family '$FAMILY'; use debian, rhel or alpine" 2 ;;
esac
PROFILE="$ROOT/etc/profile.d/$NAME.sh"

update_store() {
  local tool="${UPDATE[0]}"
  if [ -z "$ROOT" ]; then
    command -v "$tool" >/dev/null || die "$tool not found; install the ca-certificates package"
    run "${UPDATE[@]}"
  else
    local inside=""
    for dir in usr/sbin usr/bin sbin bin; do
      [ -x "$ROOT/$dir/$tool" ] && inside="$ROOT/$dir/$tool" && break
    done
    if [ -n "$inside" ]; then run "$inside" "${UPDATE[@]:1}"; else say "not running $tool: not present in $ROOT"; fi
  fi
}

java_cacerts() { echo "${JAVA_CACERTS:-$ROOT/etc/ssl/certs/java/cacerts}"; }

if [ "$UNINSTALL" = 1 ]; then
  if [ -f "$TARGET" ]; then
    run rm -f "$TARGET"
    update_store
  else
    say "not installed: $TARGET"
  fi
  if [ -f "$PROFILE" ]; then run rm -f "$PROFILE"; fi
  if [ "$JAVA" = 1 ] && command -v keytool >/dev/null; then
    run keytool -delete -noprompt -alias "$NAME" -keystore "$(java_cacerts)" -storepass changeit || true
  fi
  exit 0
fi

[ -f "$CERT" ] || die "certificate $CERT not found (run \`tollgate ca init\` on the proxy host, then copy ca/root-ca.pem)" 2
grep -q "PRIVATE KEY" "$CERT" && die "$CERT contains a private key: copy only the certificate (ca/root-ca.pem)" 2
openssl x509 -in "$CERT" -noout 2>/dev/null || die "$CERT is not a PEM certificate" 2
say "certificate: $(openssl x509 -in "$CERT" -noout -subject) sha256 $(openssl x509 -in "$CERT" -noout -fingerprint -sha256 | cut -d= -f2)"

if [ -f "$TARGET" ] && cmp -s "$CERT" "$TARGET"; then
  say "already installed: $TARGET"
else
  run mkdir -p "$(dirname "$TARGET")"
  run install -m 0644 "$CERT" "$TARGET"
  update_store
fi

if [ "$JAVA" = 1 ]; then
  if command -v keytool >/dev/null; then
    if keytool -list -alias "$NAME" -keystore "$(java_cacerts)" -storepass changeit >/dev/null 2>&1; then
      say "already in the Java truststore $(java_cacerts)"
    else
      run keytool -importcert -noprompt -alias "$NAME" -file "$CERT" -keystore "$(java_cacerts)" -storepass changeit
    fi
  else
    say "warning: keytool not found; Java trust store not changed"
  fi
fi

if [ "$PYTHON" = 1 ] || [ "$NODE" = 1 ]; then
  case "$FAMILY" in
    rhel) BUNDLE=/etc/pki/tls/certs/ca-bundle.crt ;;
    *) BUNDLE=/etc/ssl/certs/ca-certificates.crt ;;
  esac
  CONTENT="# Written by Tollgate's install-ca.sh: trust the egress proxy's CA.\n"
  if [ "$PYTHON" = 1 ]; then
    # requests/certifi carry their own bundle and ignore the system store unless told.
    CONTENT+="export REQUESTS_CA_BUNDLE=$BUNDLE\nexport SSL_CERT_FILE=$BUNDLE\n"
  fi
  if [ "$NODE" = 1 ]; then
    CONTENT+="export NODE_EXTRA_CA_CERTS=${TARGET#"$ROOT"}\n"
  fi
  if [ "$DRY" = 1 ]; then
    say "would write $PROFILE"
  else
    mkdir -p "$(dirname "$PROFILE")"
    printf "%b" "$CONTENT" > "$PROFILE"
    chmod 0644 "$PROFILE"
    say "wrote $PROFILE (new login shells pick it up)"
  fi
fi
say "done"
