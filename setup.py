"""Builds the optional compiled fast path (``proxy/redis/_fastc.pyx``); everything else is in
pyproject.toml. Without a C compiler the extension is skipped and veil runs the same Python
fast path (``proxy.redis.fast``) -- slower at high pipeline depth, identical in behaviour."""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # building from an sdist without Cython: the Python fast path only
    extensions = []
else:
    extensions = cythonize(
        [Extension("proxy.redis._fastc", ["proxy/redis/_fastc.pyx"], optional=True)],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )

setup(ext_modules=extensions)
