"""Builds the optional C kernels of the compute core: exact L1 over bytes (common/compute/_l1.c) and exact
top-k selection over integer scores (common/compute/_select.c); pyproject.toml holds everything else.

optional=True: without a C compiler the package still installs, and the engine uses its portable
torch path, which gives identical integers.
"""

from setuptools import Extension, setup

KERNELS = [("common.compute._l1", "common/compute/_l1.c"), ("common.compute._select", "common/compute/_select.c")]
setup(ext_modules=[Extension(name, [src], extra_compile_args=["-O3"], optional=True) for name, src in KERNELS])
