"""A mitmdump script for tests: a resolver whose answer changes after the first lookup.

The first lookup of rebind.test answers 127.0.0.1 (allowed by the test policy); every later
lookup answers 127.0.0.2 (refused). A proxy that looked the name up again when connecting
would reach 127.0.0.2.
"""

import ipaddress

import tollgate.mitm.addon as addon

_resolve = addon.resolve
lookups = {"rebind.test": 0}


async def flipping_resolve(host, port, network, timeout=5.0):
    if host == "rebind.test":
        lookups[host] += 1
        return (ipaddress.ip_address("127.0.0.1" if lookups[host] == 1 else "127.0.0.2"),)
    return await _resolve(host, port, network, timeout)


addon.resolve = flipping_resolve
