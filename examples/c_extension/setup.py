# Build (README.md): pip install ../.. && pip install 'setuptools>=70.1' &&
# pip install --no-build-isolation .  -- build requirements: pyproject.toml
import membuf
from setuptools import Extension, setup

setup(
    name="blobs",
    version="0.1.0",
    ext_modules=[Extension("blobs", ["blobs.c"], include_dirs=[membuf.get_include()])],
    install_requires=["membuf"],
)
