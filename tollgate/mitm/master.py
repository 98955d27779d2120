"""Build the mitmproxy master that ``tollgate run`` drives.

Tollgate's addon takes the place of mitmproxy's ScriptLoader in the default addon chain:
after proxyauth (so verified users are known) and before next_layer and tlsconfig (so the
SNI check runs before any upstream TLS). With no ScriptLoader there is no hot reload.
"""

from __future__ import annotations

from mitmproxy import addons, master, options
from mitmproxy.addons import errorcheck, script, termlog

from tollgate.mitm.addon import Tollgate


def build_master(opts: options.Options) -> tuple[master.Master, Tollgate]:
    m = master.Master(opts, with_termlog=False)
    m.addons.add(termlog.TermLog())  # `quiet` sets its verbosity to warnings, in `tollgate run`
    chain = addons.default_addons()
    position = next(i for i, a in enumerate(chain) if isinstance(a, script.ScriptLoader))
    tollgate = Tollgate()
    chain[position] = tollgate
    m.addons.add(*chain)
    m.addons.add(errorcheck.ErrorCheck())
    return m, tollgate
