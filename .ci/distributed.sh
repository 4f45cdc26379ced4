#!/usr/bin/env bash
# Dask, Ray and the consumer table: installs the engines and consumers into
# the virtual environment it runs in (membuf itself must be installed there
# already, as .ci/run does), then runs their tests, which may not skip for a
# missing engine here (MEMBUF_REQUIRE_DISTRIBUTED=1), and the benchmark's smoke
# run (no speed asserted).  Loopback networking only.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== distributed: installing dask[distributed], ray, pyarrow, pillow, numpy, cffi"
python -m pip install --quiet 'dask[distributed]>=2024.1' 'ray>=2.9' 'pyarrow>=14' 'pillow>=10' \
    'numpy>=1.24' 'cffi>=1.15' 'pytest>=7'
python -c "import dask, distributed, ray; print('dask', dask.__version__, 'ray', ray.__version__)"

echo "== distributed: the dask.sizeof entry point is installed with membuf"
python -c "
from importlib.metadata import entry_points
assert any(ep.value == 'membuf._dask:register_sizeof' for ep in entry_points(group='dask.sizeof')), \
    'membuf is installed without its dask.sizeof entry point: reinstall it'
"

echo "== distributed: tests (LocalCluster of 2 processes, Ray head node, consumer table)"
MEMBUF_REQUIRE_DISTRIBUTED=1 python -m pytest -q -ra tests/test_distributed.py tests/test_consumers_table.py

echo "== distributed: benchmark smoke run (asserts arrival, not speed)"
python benchmarks/distributed.py --smoke
