"""Builds the optional C kernels: exact L1 over bytes (common/_l1.c) and exact top-k selection over
integer scores (common/_select.c); pyproject.toml holds everything else.

optional=True: without a C compiler the package still installs, and the engine uses its portable
torch path, which gives identical integers.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("common._l1", ["common/_l1.c"], extra_compile_args=["-O3"], optional=True),
                   Extension("common._select", ["common/_select.c"], extra_compile_args=["-O3"], optional=True)])
