"""Buffers on real distributed engines, loopback only: Dask (a LocalCluster of
two worker processes) and Ray (a local head node).

* Dask: membuf registers sizeof and a serializer by itself (the `dask.sizeof`
  entry point, src/membuf/_dask.py); the memory travels as one out-of-band
  frame over the Buffer on every path, the scheduler's protocol-4
  connections included, and comes back as a Buffer with its format, shape
  and read-only flag.
* Ray: pickle protocol 5 out-of-band: ray.get returns a read-only Buffer
  over the object store's shared memory.

Missing Dask or Ray skips these tests with the reason, unless
MEMBUF_REQUIRE_DISTRIBUTED=1 (.ci/distributed.sh sets it), where it fails.
An engine that is installed but cannot start here skips with the reason.
"""

import hashlib
import importlib
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

import membuf

REQUIRED = os.environ.get("MEMBUF_REQUIRE_DISTRIBUTED") == "1"


def need(module):
    """Import a module; a missing one skips (fails under MEMBUF_REQUIRE_DISTRIBUTED=1)."""
    if REQUIRED:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed "
                               "(pip install 'membuf[distributed]')")


def digest(b):
    return hashlib.sha256(b.tobytes()).hexdigest()


def pattern(n):
    """n bytes, not all equal (so contents are checked, not just sizes)."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def wrap(data, readonly=True, fmt="B", shape=None):
    """A Buffer over a bytearray (holding an export of it), with a layout."""
    if shape is None:
        return membuf.from_buffer(bytearray(data), readonly=readonly, format=fmt)
    return membuf.from_buffer(bytearray(data), readonly=readonly, format=fmt, shape=shape)


# ---------------------------------------------------------------------------
# registration: no user code, nothing before Dask is used
# ---------------------------------------------------------------------------


def run_python(code):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_membuf_imports_no_dask():
    out = run_python("""
        import sys, membuf
        print(sorted(m for m in sys.modules
                     if m.split('.')[0] in ('dask', 'distributed', 'ray', 'msgpack', 'tornado')
                     or m == 'membuf._dask'))
    """)
    assert out.strip() == "[]"


def test_entry_point_is_declared():
    need("dask")
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="dask.sizeof") if ep.name == "membuf"]
    assert ep.value == "membuf._dask:register_sizeof"


def test_sizeof_is_nbytes():
    need("dask")
    from dask.sizeof import sizeof

    buf = wrap(pattern(3 << 20))
    assert sizeof(buf) == buf.nbytes == 3 << 20
    typed = wrap(pattern(8 * 12), fmt="d", shape=(3, 4))
    assert sizeof(typed) == 96
    assert sizeof([buf, typed]) >= buf.nbytes + typed.nbytes


def test_registration_needs_no_user_call():
    """A fresh process that only imports distributed finds membuf's
    serializer (the scheduler and the workers are such processes)."""
    need("distributed")
    out = run_python("""
        import distributed
        from distributed.protocol.serialize import dask_serialize, dask_deserialize
        from dask.sizeof import sizeof
        import membuf
        print(dask_serialize.dispatch(membuf.Buffer).__module__,
              dask_deserialize.dispatch(membuf.Buffer).__module__)
        buf = membuf.from_address(membuf.address_of(b"abcd"), 4)
        print(sizeof(buf))
    """)
    assert out.split() == ["membuf._dask", "membuf._dask", "4"]


# ---------------------------------------------------------------------------
# the frames themselves: a memoryview over the Buffer, on every protocol path
# ---------------------------------------------------------------------------

LAYOUTS = {
    "bytes": ("B", None, 4096),
    "double-2d": ("d", (16, 32), 8 * 16 * 32),
    "int32-0dim": ("i", (), 4),
    "empty": ("h", (0, 5), 0),
}


@pytest.mark.parametrize("readonly", [True, False], ids=["readonly", "writable"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_serialize_sends_the_memory_out_of_band(layout, readonly):
    need("distributed")
    from distributed.protocol import deserialize, serialize

    fmt, shape, n = LAYOUTS[layout]
    buf = wrap(pattern(n), readonly=readonly, fmt=fmt, shape=shape)
    header, frames = serialize(buf)
    assert header["serializer"] == "dask"
    assert len(frames) == 1
    (frame,) = frames
    assert isinstance(frame, memoryview) and frame.nbytes == buf.nbytes
    if n:
        assert membuf.address_of(frame) == buf.address  # the frame *is* the memory
    assert buf.exports >= 1  # and holds an export while distributed sends it
    with pytest.raises(BufferError):
        buf.release()
    back = deserialize(header, frames)
    assert type(back) is membuf.Buffer
    assert (back.format, back.shape, back.readonly) == (buf.format, buf.shape, buf.readonly)
    assert back.tobytes() == buf.tobytes()  # (== compares doubles: NaN != NaN)
    del frame, frames, back
    buf.release()


def test_writable_original_follows_the_received_memory():
    """As with pickle: a writable Buffer comes back writable over writable
    frames, read-only over read-only ones; a read-only one stays read-only."""
    need("distributed")
    from distributed.protocol import deserialize, serialize

    rw = wrap(pattern(64), readonly=False, fmt="i", shape=(4, 4))
    header, frames = serialize(rw)
    raw = bytes(frames[0])
    assert not deserialize(header, [bytearray(raw)]).readonly
    assert deserialize(header, [raw]).readonly
    ro = wrap(pattern(64), readonly=True, fmt="i", shape=(4, 4))
    header, _ = serialize(ro)
    assert deserialize(header, [bytearray(raw)]).readonly


def test_strided_buffer_travels_as_a_c_order_copy():
    need("distributed")
    from distributed.protocol import deserialize, serialize

    buf = wrap(pattern(64), fmt="B")[::2]
    assert not buf.c_contiguous
    header, frames = serialize(buf)
    assert header["sub-header"].get("copied") is True
    back = deserialize(header, frames)
    assert back.tobytes() == buf.tobytes() and back.shape == (32,)


def test_scheduler_protocol_4_messages_carry_the_frame_out_of_band():
    """Connections to the scheduler pickle with protocol 4: without membuf's
    serializer a Buffer is copied in-band there.  With it, the message's
    frame is the Buffer's memory."""
    need("distributed")
    from distributed.protocol import dumps, loads, serialize
    from distributed.protocol.serialize import Serialize

    n = 1 << 20
    buf = wrap(pattern(n), fmt="d", shape=(n // 8,))
    # what happens without membuf's serializer: pickle protocol 4, in-band
    header, frames = serialize(buf, serializers=("pickle",), context={"pickle-protocol": 4})
    assert len(frames) == 1 and len(frames[0]) > n
    # the message path, as the scheduler's connections set it up
    frames = dumps({"op": "x", "data": Serialize(buf)},
                   context={"pickle-protocol": 4, "compression": None})
    shared = [f for f in frames if isinstance(f, memoryview) and f.nbytes == n
              and membuf.address_of(f) == buf.address]
    assert len(shared) == 1
    assert sum(len(f) for f in frames if f is not shared[0]) < 4096  # only headers in-band
    msg = loads(frames)
    back = msg["data"]
    assert type(back) is membuf.Buffer and back.shape == (n // 8,)
    assert back.tobytes() == buf.tobytes()


# ---------------------------------------------------------------------------
# a real LocalCluster: two worker processes, loopback only
# ---------------------------------------------------------------------------


def make_on_worker(n, readonly):
    """Runs on a worker: a Buffer over memory the worker allocated."""
    import membuf as m

    backing = bytearray((bytes(range(256)) * (n // 256 + 1))[:n])
    return m.from_address(m.address_of(backing), n, readonly=readonly, owner=backing)


def describe_on_worker(b):
    import hashlib as h

    import membuf as m

    return (type(b).__name__, b.format, b.shape, b.readonly,
            h.sha256(b.tobytes()).hexdigest(), isinstance(b, m.Buffer))


def retype_on_worker(b):
    """A typed Buffer built on the worker from the one it received."""
    import membuf as m

    return m.from_buffer(b, format="d", shape=(b.nbytes // 64, 8))


@pytest.fixture(scope="module")
def dask_client():
    need("distributed")
    import cloudpickle
    from distributed import Client, LocalCluster

    # the workers cannot import this test module: send its functions by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
    except Exception as exc:  # noqa: BLE001
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        print(f"dask LocalCluster cannot start here: {exc!r}")
        pytest.skip(f"dask LocalCluster cannot start here: {exc}")
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


N = 4 << 20  # 4 MiB: large enough to be a frame of its own everywhere


def test_dask_task_argument(dask_client):
    buf = wrap(pattern(N), fmt="i", shape=(N // 4,))
    fut = dask_client.submit(describe_on_worker, buf, pure=False)
    assert fut.result() == ("Buffer", "i", (N // 4,), True, digest(buf), True)


@pytest.mark.parametrize("direct", [False, True], ids=["via-scheduler", "direct"])
@pytest.mark.parametrize("readonly", [True, False], ids=["readonly", "writable"])
def test_dask_result_gather(dask_client, direct, readonly):
    fut = dask_client.submit(make_on_worker, N, readonly, pure=False)
    fut2 = dask_client.submit(retype_on_worker, fut, pure=False)
    got, typed = dask_client.gather([fut, fut2], direct=direct)
    assert type(got) is membuf.Buffer and type(typed) is membuf.Buffer
    assert got == pattern(N)
    assert got.nbytes == N and got.format == "B"
    assert got.readonly or not readonly  # read-only stays read-only
    assert (typed.format, typed.shape, typed.nbytes) == ("d", (N // 64, 8), N)
    assert typed.tobytes() == pattern(N)
    # sizeof on the worker is nbytes: the scheduler knows the real size
    sizes = dask_client.nbytes(summary=False)
    assert sizes[fut.key] == N and sizes[fut2.key] == N


def test_dask_future_result_and_worker_to_worker(dask_client):
    workers = sorted(dask_client.scheduler_info()["workers"])
    assert len(workers) == 2
    fut = dask_client.submit(make_on_worker, N, False, workers=[workers[0]], pure=False)
    # the second task runs on the other worker: the Buffer moves between workers
    fut2 = dask_client.submit(describe_on_worker, fut, workers=[workers[1]], pure=False)
    name, fmt, shape, _, sha, is_buffer = fut2.result()
    assert (name, fmt, shape, is_buffer) == ("Buffer", "B", (N,), True)
    assert sha == hashlib.sha256(pattern(N)).hexdigest()
    res = fut.result()
    assert type(res) is membuf.Buffer and res == pattern(N)


# ---------------------------------------------------------------------------
# Ray: put/get and a task round trip over the object store's memory
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    ray = need("ray")
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20,
                 log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001
        print(f"ray cannot start here: {exc!r}")
        pytest.skip(f"ray cannot start here: {exc}")
    try:
        yield ray
    finally:
        ray.shutdown()


def mapping_of(address):
    """The /proc/self/maps line whose range holds address."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return line.strip()
    return None


def assert_over_the_object_store(got, original):
    assert type(got) is membuf.Buffer
    assert got.address != original.address
    assert got.readonly  # the object store's memory is read-only to readers
    with pytest.raises(TypeError, match="read-only"):
        memoryview(got).cast("B")[0] = 0
    line = mapping_of(got.address)
    assert line is not None
    # a shared mapping (the plasma store's), not the private heap
    perms = line.split()[1]
    assert perms[3] == "s", line


def test_ray_put_get_is_zero_copy_from_the_store(ray_session):
    ray = ray_session
    n = 8 << 20  # above Ray's inline limit: stored in the shared-memory object store
    buf = wrap(pattern(n), readonly=False, fmt="q", shape=(n // 8,))
    ref = ray.put(buf)
    got = ray.get(ref)
    assert (got.format, got.shape) == ("q", (n // 8,))
    assert got.tobytes() == buf.tobytes()
    assert_over_the_object_store(got, buf)
    # a second get maps the same memory again: no copy per get
    again = ray.get(ref)
    assert again.address == got.address


def test_ray_task_round_trip(ray_session):
    ray = ray_session
    n = 8 << 20

    @ray.remote
    def describe(b):
        import hashlib as h
        return (type(b).__name__, b.format, b.shape, b.readonly,
                h.sha256(b.tobytes()).hexdigest())

    @ray.remote
    def echo(b):
        return b

    buf = wrap(pattern(n), readonly=False, fmt="d", shape=(n // 64, 8))
    assert ray.get(describe.remote(buf)) == ("Buffer", "d", (n // 64, 8), True,
                                             hashlib.sha256(pattern(n)).hexdigest())
    got = ray.get(echo.remote(buf))
    assert (got.format, got.shape) == ("d", (n // 64, 8))
    assert got.tobytes() == buf.tobytes()
    assert_over_the_object_store(got, buf)


def test_ray_pickles_out_of_band():
    """What Ray relies on: protocol 5 with a buffer_callback hands the memory
    out as a PickleBuffer, and loading wraps the frame it is given."""
    buf = wrap(pattern(4096))
    frames = []
    header = pickle.dumps(buf, protocol=5, buffer_callback=frames.append)
    assert len(header) < 200 and len(frames) == 1
    frame = bytes(frames[0].raw())
    back = pickle.loads(header, buffers=[frame])
    assert back.address == membuf.address_of(frame) and back.readonly
