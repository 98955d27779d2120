"""The native part of the DLP inspection (tollgate/dlp/_native.c): the encoded-layer finder
and the number-shape gate. Optional: where it cannot be built, the same is done in Python and
hyperscan, slower."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tollgate.dlp._native", ["tollgate/dlp/_native.c"], optional=True,
                             extra_compile_args=["-O3", "-Wall", "-Werror"])])
