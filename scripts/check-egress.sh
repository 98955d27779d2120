#!/usr/bin/env bash
# Check an internal host's egress through Tollgate: run it after every policy or CA change.
#
#   scripts/check-egress.sh --proxy http://HOST:PORT --allowed URL --denied URL
#                           [--cacert FILE] [--expect-direct-blocked]
#
# PASS/FAIL per check; exit 0 only when every check passes, 1 when one fails, 2 on usage
# errors. Without --cacert, the allowed URL must verify against the system trust store,
# i.e. the Tollgate CA is installed.
set -uo pipefail

PROXY="" ALLOWED="" DENIED="" CACERT="" DIRECT=0
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
usage_error() { usage >&2; echo "check-egress: $*" >&2; exit 2; }
needs_value() {  # needs_value OPTION NUMBER-OF-REMAINING-ARGS NEXT-ARG
  if [ "$2" -lt 2 ] || [ -z "$3" ]; then usage_error "$1 needs a value"; fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --proxy) needs_value "$1" $# "${2:-}"; PROXY="$2"; shift 2 ;;
    --allowed) needs_value "$1" $# "${2:-}"; ALLOWED="$2"; shift 2 ;;
    --denied) needs_value "$1" $# "${2:-}"; DENIED="$2"; shift 2 ;;
    --cacert) needs_value "$1" $# "${2:-}"; CACERT="$2"; shift 2 ;;
    --expect-direct-blocked) DIRECT=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done
if [ -z "$PROXY" ] || [ -z "$ALLOWED" ] || [ -z "$DENIED" ]; then
  usage_error "--proxy, --allowed and --denied are required"
fi
case "$PROXY" in http://?*|https://?*) ;; *) usage_error "--proxy must be a URL like http://HOST:PORT, not '$PROXY'" ;; esac
for url in "$ALLOWED" "$DENIED"; do
  case "$url" in http://?*|https://?*) ;; *) usage_error "'$url' is not an http:// or https:// URL" ;; esac
done
if [ -n "$CACERT" ] && [ ! -r "$CACERT" ]; then usage_error "--cacert $CACERT: no such readable file"; fi
command -v curl >/dev/null || { echo "check-egress: curl not found" >&2; exit 2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/check-egress.XXXXXX") || exit 2
trap 'rm -rf "$TMP"' EXIT

FAILED=0
TLS=()
if [ -n "$CACERT" ]; then TLS=(--cacert "$CACERT"); fi
pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; FAILED=1; }
skip() { echo "SKIP  $*"; }
# Through the proxy only: --noproxy '' overrides any NO_PROXY that would bypass it.
via_proxy() { curl -sS --max-time 20 --noproxy '' --proxy "$PROXY" ${TLS[@]+"${TLS[@]}"} "$@"; }
# Tollgate marks every response it makes itself (a refusal) with this header.
decision_in() { tr -d '\r' < "$1" | sed -n 's/^\(< \)\{0,1\}[Xx]-[Tt]ollgate-[Dd]ecision: *//p' | tail -n 1; }
statuses_in() { tr -d '\r' < "$1" | sed -n 's/^\(< \)\{0,1\}HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\2/p' | tr '\n' ' '; }

# (a) The allowed URL works through the proxy, with the proxy's certificate verified.
code=$(via_proxy -o /dev/null -D "$TMP/allowed.headers" -w '%{http_code}' "$ALLOWED" 2>"$TMP/allowed.err")
rc=$?
decision=$(decision_in "$TMP/allowed.headers")
if [ -n "$decision" ]; then
  fail "allowed: $ALLOWED was refused by the proxy (X-Tollgate-Decision: $decision)"
elif [ "$rc" = 0 ] && [ "$code" != "000" ]; then
  pass "allowed: $ALLOWED answered HTTP $code through the proxy, with the proxy's certificate trusted"
else
  fail "allowed: $ALLOWED failed through the proxy (curl exit $rc): $(tail -n 1 "$TMP/allowed.err")"
  case "$rc" in
    35|51|58|60|77|83|90|91)
      echo "      the Tollgate CA is not trusted here: run scripts/install-ca.sh${CACERT:+ (or check --cacert $CACERT)}" ;;
    *)
      if grep -qi "certificate" "$TMP/allowed.err"; then
        echo "      the Tollgate CA is not trusted here: run scripts/install-ca.sh"
      fi ;;
  esac
fi

# (b) The denied URL gets Tollgate's own 403, at CONNECT or inside the intercepted TLS.
via_proxy -v -o /dev/null "$DENIED" > "$TMP/denied.verbose" 2>&1
decision=$(decision_in "$TMP/denied.verbose")
if grep -Eq '^< HTTP/[0-9.]+ 403' "$TMP/denied.verbose" && [ -n "$decision" ]; then
  pass "denied: $DENIED refused by the proxy with 403 (X-Tollgate-Decision: $decision)"
elif grep -Eq '^< HTTP/[0-9.]+ 403' "$TMP/denied.verbose"; then
  fail "denied: $DENIED answered 403 without X-Tollgate-Decision: the upstream refused it, not Tollgate"
else
  seen=$(statuses_in "$TMP/denied.verbose")
  fail "denied: $DENIED was not refused with 403 by Tollgate (statuses seen: ${seen:-none}; $(grep '^curl:' "$TMP/denied.verbose" | tail -n 1))"
fi

# (c) Optional: without the proxy, the allowed URL is unreachable. Certificates are not
# checked here (-k): any answer at all means the network lets the host bypass Tollgate.
if [ "$DIRECT" = 1 ]; then
  # --noproxy '*' also overrides any *_proxy environment variables.
  direct=$(curl -sS -k -o /dev/null -w '%{http_code}' --connect-timeout 5 --max-time 10 --noproxy '*' "$ALLOWED" 2>/dev/null)
  if [ "${direct:-000}" != "000" ]; then
    fail "direct: $ALLOWED answered HTTP $direct without the proxy (the network must force egress through Tollgate)"
  else
    pass "direct: $ALLOWED is not reachable without the proxy"
  fi
else
  skip "direct: not checked (add --expect-direct-blocked)"
fi
exit "$FAILED"
