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

_approval_for = addon.ConnState.approval_for


def _forgetful_approval_for(self, address):
    # As if a bug lost the approval between the CONNECT decision and the upstream connection.
    if address and str(address[0]).startswith("boom-upstream"):
        return None
    return _approval_for(self, address)


addon.ConnState.approval_for = _forgetful_approval_for
