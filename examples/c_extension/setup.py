# Build: pip install membuf && pip install --no-build-isolation .
# (or list membuf in [build-system] requires of your own pyproject.toml)
import membuf
from setuptools import Extension, setup

setup(
    name="blobs",
    version="0.1.0",
    ext_modules=[Extension("blobs", ["blobs.c"], include_dirs=[membuf.get_include()])],
    install_requires=["membuf"],
)
