"""Tollgate for `mitmdump -s addons/tollgate.py --set tollgate_policy=FILE --set confdir=ca`.

This file is only glue: the addon lives in the tollgate package. Prefer `tollgate run`,
which loads the same addon without mitmproxy's script hot-reload.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too

from tollgate.mitm.addon import Tollgate  # noqa: E402

addons = [Tollgate()]
