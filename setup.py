"""Builds the optional exact-L1 byte kernel (common/_l1.c); pyproject.toml holds everything else.

optional=True: without a C compiler the package still installs, and the engine uses its portable
torch path, which gives identical integers.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("common._l1", ["common/_l1.c"], extra_compile_args=["-O3"], optional=True)])
