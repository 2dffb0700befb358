"""Builds the optional C kernels of the compute core: exact L1 over bytes (common/compute/_l1.c), exact
top-k selection over integer scores (common/compute/_select.c), exact ranks beyond the top K
(common/compute/_ranks.c, without fused multiply-adds: its float64 sums round as torch's do) and relu_keep's
map refinement (common/compute/_embed.c); pyproject.toml holds everything else.

optional=True: without a C compiler the package still installs, and the neighbour engine uses its portable
torch path, which gives identical integers. The rank measures and relu_keep's refinement have no portable path:
without _ranks (_embed) the metrics stage (relu_keep) stops with a message that names it.
"""

from setuptools import Extension, setup

KERNELS = [
    ("common.compute._l1", "common/compute/_l1.c", []),
    ("common.compute._select", "common/compute/_select.c", []),
    ("common.compute._ranks", "common/compute/_ranks.c", ["-ffp-contract=off"]),
    ("common.compute._embed", "common/compute/_embed.c", []),
]
setup(ext_modules=[Extension(name, [src], extra_compile_args=["-O3", *flags], optional=True)
                   for name, src, flags in KERNELS])
