"""Which names the local CA may sign: exactly the destinations the policy intercepts."""

from __future__ import annotations

from tollgate.policy.model import Policy
from tollgate.tls.ca import NameScope


def intercept_scope(policy: Policy) -> NameScope:
    dns = sorted({("*." + d.host if d.wildcard else d.host) for d in policy.destinations
                  if d.host and d.mode == "intercept"})
    ips = sorted({d.cidr for d in policy.destinations if d.cidr is not None and d.mode == "intercept"}, key=str)
    return NameScope(dns=tuple(dns), ip=tuple(ips))
