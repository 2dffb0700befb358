"""Builds the optional C kernels of the compute core: exact L1 over bytes (common/compute/_l1.c), exact
top-k selection over integer scores (common/compute/_select.c) and exact ranks beyond the top K
(common/compute/_ranks.c, without fused multiply-adds: its float64 sums round as torch's do); pyproject.toml
holds everything else.

optional=True: without a C compiler the package still installs, and the neighbour engine uses its portable
torch path, which gives identical integers. The rank measures have no portable path: without _ranks the
metrics stage stops with a message that names it.
"""

from setuptools import Extension, setup

KERNELS = [
    ("common.compute._l1", "common/compute/_l1.c", []),
    ("common.compute._select", "common/compute/_select.c", []),
    ("common.compute._ranks", "common/compute/_ranks.c", ["-ffp-contract=off"]),
]
setup(ext_modules=[Extension(name, [src], extra_compile_args=["-O3", *flags], optional=True)
                   for name, src, flags in KERNELS])
