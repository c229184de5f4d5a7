"""Only the optional C accelerator of the term codec; everything else is in setup.cfg.

`optional=True`: without a C compiler or Python headers the build goes on without it, and
pykv uses its pure-Python codec (`PYKV_CODEC=c` then fails with an explanation)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pykv.term._speedups", ["pykv/term/_speedups.c"], optional=True,
                             extra_compile_args=["-O2"])])
