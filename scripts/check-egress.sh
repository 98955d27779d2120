#!/usr/bin/env bash
# Check an internal host's egress through Tollgate: run it after every policy or CA change.
#
#   scripts/check-egress.sh --proxy http://HOST:PORT --allowed URL --denied URL
#                           [--cacert FILE] [--expect-direct-blocked]
#
# PASS/FAIL per check; exit 0 only when every check passes. Without --cacert, the allowed
# URL must verify against the system trust store, i.e. the Tollgate CA is installed.
set -uo pipefail

PROXY="" ALLOWED="" DENIED="" CACERT="" DIRECT=0
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --proxy) PROXY="${2:-}"; shift 2 ;;
    --allowed) ALLOWED="${2:-}"; shift 2 ;;
    --denied) DENIED="${2:-}"; shift 2 ;;
    --cacert) CACERT="${2:-}"; shift 2 ;;
    --expect-direct-blocked) DIRECT=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; echo "check-egress: unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$PROXY" ] || [ -z "$ALLOWED" ] || [ -z "$DENIED" ]; then
  usage >&2; echo "check-egress: --proxy, --allowed and --denied are required" >&2; exit 2
fi

FAILED=0
TLS=()
[ -n "$CACERT" ] && TLS=(--cacert "$CACERT")
pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; FAILED=1; }

code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 --noproxy '' --proxy "$PROXY" "${TLS[@]}" "$ALLOWED" 2>/tmp/check-egress.$$)
if [ "$code" != "000" ]; then
  pass "allowed: $ALLOWED answered HTTP $code through the proxy, with the proxy's certificate trusted"
else
  fail "allowed: $ALLOWED failed through the proxy: $(tail -1 /tmp/check-egress.$$)"
  grep -q "certificate" /tmp/check-egress.$$ && echo "      the Tollgate CA is not trusted here: run scripts/install-ca.sh"
fi

verbose=$(curl -sS -v -o /dev/null --max-time 20 --noproxy '' --proxy "$PROXY" "${TLS[@]}" "$DENIED" 2>&1)
decision=$(printf '%s\n' "$verbose" | tr -d '\r' | sed -n 's/^< [Xx]-[Tt]ollgate-[Dd]ecision: //p' | head -1)
if printf '%s\n' "$verbose" | grep -Eq "^< HTTP/[0-9.]+ 403" && [ -n "$decision" ]; then
  pass "denied: $DENIED refused by the proxy (X-Tollgate-Decision: $decision)"
else
  fail "denied: $DENIED was not refused with 403 by Tollgate"
fi

if [ "$DIRECT" = 1 ]; then
  if curl -sS -o /dev/null --max-time 10 --noproxy '*' "${TLS[@]}" "$ALLOWED" 2>/dev/null; then
    fail "direct: $ALLOWED is reachable without the proxy (the network must force egress through Tollgate)"
  else
    pass "direct: $ALLOWED is not reachable without the proxy"
  fi
else
  echo "SKIP  direct: not checked (add --expect-direct-blocked)"
fi
rm -f /tmp/check-egress.$$
exit "$FAILED"
