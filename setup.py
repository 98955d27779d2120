"""The one native part: the encoded-layer finder of the DLP inspection (tollgate/dlp/_layers.c).
Optional: where it cannot be built, tollgate/dlp/content.py runs the same in Python (slower)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tollgate.dlp._layers", ["tollgate/dlp/_layers.c"], optional=True,
                             extra_compile_args=["-O3", "-Wall", "-Werror"])])
