# The extension module; the metadata is in pyproject.toml.  membuf must be
# importable at build time (it is in [build-system] requires).
import membuf
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sqlite_blobs",
            ["sqlite_blobs.c"],
            include_dirs=[membuf.get_include()],
            libraries=["sqlite3"],  # the system libsqlite3 (libsqlite3-dev)
            extra_compile_args=["-std=c11"],
        )
    ],
)
