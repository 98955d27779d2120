"""A mitmdump script for tests: makes Tollgate's own code raise for chosen host names.

Loaded after addons/tollgate.py (same process, same modules), it wraps gate functions so
that a request for "boom-<stage>.test" raises inside the hook, as a bug would.
"""

import tollgate.mitm.addon as addon

_decide = addon.decide_destination
_check = addon.check_authorities


def _exploding_decide(policy, client, host, port):
    if host.startswith("boom-connect"):
        raise RuntimeError("injected fault in the destination gate")
    return _decide(policy, client, host, port)


def _exploding_check(destination, port, hosts, authority):
    if destination.startswith("boom-request"):
        raise RuntimeError("injected fault in the request gate")
    return _check(destination, port, hosts, authority)


addon.decide_destination = _exploding_decide
addon.check_authorities = _exploding_check
