"""Subinterpreters: membuf inside interpreters created with CPython's private
subinterpreter modules (_xxsubinterpreters on 3.11 and 3.12, _interpreters
on 3.13+, concurrent.interpreters on 3.14 as a last resort).

Every test runs its scenario in a child process
(subprocess.run([sys.executable, "-c", code], timeout=60)): a crash is a
failed test, and a hang (a deadlock between two thread states of one
thread) is a failed test that says so, never a hung suite.  Inside the
child, the scenario runs in a subinterpreter; what it observes goes back
to the test as lines written with os.write(1, ...) (one file descriptor
for every interpreter of the process; each interpreter has its own
sys.stdout).

Two kinds of subinterpreter:

* "legacy": shares the main interpreter's GIL, like every subinterpreter
  of 3.11 and Py_NewInterpreter() (mod_wsgi, embedding applications).
  membuf supports these: everything below must work there, exactly as in
  the main interpreter.
* "isolated" (3.12+): its own GIL and its own object allocator.  membuf's
  type, free list and C API table are one per process, so the module
  supports subinterpreters that share the GIL only
  (Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED, also CPython's default for a
  multi-phase module without that slot): CPython refuses to load it there
  with a clean ImportError ("module membuf._membuf does not support loading
  in subinterpreters").  The test accepts that, or (should membuf ever
  support a per-interpreter GIL) an import that works and a scenario that
  passes.

In a development environment with an editable install (meson-python), the
package's import hook rebuilds the extension with subprocess, which
isolated subinterpreters forbid; the child then pins `import membuf` in
every subinterpreter to the very files the child's main interpreter loaded
(the same extension module, as from a wheel).
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

import membuf

TIMEOUT = 60


def _safe_find_spec(name):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


SUBINTERPRETER_MODULE = next(
    (name for name in ("_interpreters", "_xxsubinterpreters", "concurrent.interpreters")
     if _safe_find_spec(name) is not None),
    None,
)

pytestmark = pytest.mark.skipif(
    SUBINTERPRETER_MODULE is None,
    reason="this Python has no subinterpreter module (_xxsubinterpreters, _interpreters "
           "or concurrent.interpreters)",
)

needs_own_gil = pytest.mark.skipif(
    sys.version_info < (3, 12),
    reason="CPython 3.11 has no per-interpreter GIL: all its subinterpreters share the main "
           "GIL (the legacy kind, tested everywhere else in this file)",
)

# ---------------------------------------------------------------------------
# The compat helper, run in the child's main interpreter and at the top of
# every subinterpreter: create(kind), run(interp, code), destroy(interp),
# current_id(), API_NAME.
# ---------------------------------------------------------------------------

COMPAT = r'''
import os as _os, sys as _sys


class SubinterpreterError(Exception):
    """The code run in a subinterpreter raised; the message is its exception."""


def _compat():
    try:
        import _interpreters as api  # 3.13+
    except ImportError:
        api = None
    if api is not None:
        run_string = getattr(api, "run_string", None) or api.exec

        def create(kind):
            # "legacy": the main GIL is shared; "isolated": its own GIL.
            return api.create(kind)

        def run(interp, code):
            failure = run_string(interp, code)  # None, or a snapshot of the exception
            if failure is not None:
                raise SubinterpreterError(getattr(failure, "errdisplay", None)
                                          or failure.formatted)

        def current_id(_get_current=api.get_current):
            current = _get_current()
            return int(current[0] if isinstance(current, tuple) else current)

        return "_interpreters", create, run, api.destroy, current_id
    try:
        import _xxsubinterpreters as api  # 3.11, 3.12
    except ImportError:
        api = None
    if api is not None:
        def create(kind):
            if _sys.version_info >= (3, 12):
                return api.create(isolated=(kind == "isolated"))
            if kind == "isolated":
                raise NotImplementedError("3.11 has no per-interpreter GIL")
            # 3.11's isolated=True (the default) still shares the GIL but
            # forbids threads, fork and subprocess: False is Py_NewInterpreter().
            return api.create(isolated=False)

        def run(interp, code):
            try:
                api.run_string(interp, code)
            except api.RunFailedError as exc:
                raise SubinterpreterError(str(exc)) from None

        def current_id(_get_current=api.get_current):
            return int(_get_current())

        return "_xxsubinterpreters", create, run, api.destroy, current_id
    from concurrent import interpreters as api  # 3.14: only isolated ones

    def create(kind):
        if kind != "isolated":
            raise NotImplementedError("concurrent.interpreters creates isolated interpreters only")
        return api.create()

    def run(interp, code):
        try:
            interp.exec(code)
        except api.ExecutionFailed as exc:
            raise SubinterpreterError(str(exc)) from None

    def current_id(_get_current=api.get_current):
        return int(_get_current().id)

    return "concurrent.interpreters", create, run, lambda interp: interp.close(), current_id


API_NAME, create, run, destroy, current_id = _compat()


def say(*words):
    # One line on file descriptor 1, shared by every interpreter.
    _os.write(1, (" ".join(str(w) for w in words) + "\n").encode())
'''


def _pin_membuf_import():
    """Code that makes `import membuf` load the files this process's membuf
    came from, when it came through meson-python's editable hook (which
    calls subprocess, forbidden in isolated subinterpreters)."""
    if "editable" not in type(membuf.__spec__.loader).__module__:
        return ""
    package_dir = os.path.dirname(membuf.__file__)
    extension_dir = os.path.dirname(membuf._membuf.__file__)
    return textwrap.dedent(f'''
        import importlib.util as _util, sys as _sys
        class _PinnedMembuf:
            @staticmethod
            def find_spec(name, path=None, target=None):
                if name != "membuf":
                    return None
                return _util.spec_from_file_location(
                    name, {membuf.__file__!r},
                    submodule_search_locations=[{package_dir!r}, {extension_dir!r}])
        _sys.meta_path.insert(0, _PinnedMembuf)
    ''')


SUB_PRELUDE_TEMPLATE = '''
import ctypes, functools, gc, os, pickle, sys
import membuf
INTERP = current_id()
memory = ctypes.create_string_buffer(b"abcdefghijklmnop", 16)
ADDRESS = ctypes.addressof(memory)
calls = []

def on_release(tag="buf", _current_id=current_id, _say=say):
    # Counts its calls and says in which interpreter it runs.
    calls.append(tag)
    _say("released", tag, "in", "own" if _current_id() == INTERP else "OTHER", "interpreter")
'''


SAY_ONLY = '''
import os as _os

def say(*words):
    _os.write(1, (" ".join(str(w) for w in words) + "\\n").encode())
'''


def sub_code(body, prelude=True, compat=True):
    """The text a subinterpreter runs: the compat helper (or just say()),
    the import pin and (by default) a prelude with 16 bytes of ctypes memory
    and a counting on_release(); then body."""
    parts = [COMPAT if compat else SAY_ONLY, _pin_membuf_import()]
    if prelude:
        parts.append(SUB_PRELUDE_TEMPLATE)
    parts.append(textwrap.dedent(body))
    return "\n".join(parts)


def run_child(driver):
    """Run driver (the child's main-interpreter code, after the compat
    helper) in a fresh process; return its stdout lines and stderr.  A
    hang or a crash fails the test with everything the child said."""
    script = COMPAT + _pin_membuf_import() + textwrap.dedent(driver)
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"the child process hung: no exit within {TIMEOUT} s (a deadlock?)\n"
                    f"--- its stdout so far:\n{out}\n--- its stderr so far:\n{err}",
                    pytrace=False)
    if result.returncode != 0:
        pytest.fail(f"the child process failed with exit status {result.returncode}\n"
                    f"--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}", pytrace=False)
    return result.stdout.splitlines(), result.stderr


def in_subinterpreter(body, kind="legacy", prelude=True):
    """Driver: create a subinterpreter of `kind`, run body in it, destroy it;
    "SUBINTERPRETER DONE" / "DESTROYED" mark the two steps."""
    return f'''
interp = create({kind!r})
try:
    run(interp, {sub_code(body, prelude)!r})
    say("SUBINTERPRETER DONE")
finally:
    destroy(interp)
say("DESTROYED")
'''


def run_in_subinterpreter(body, kind="legacy", prelude=True):
    return run_child(in_subinterpreter(body, kind, prelude))


# ---------------------------------------------------------------------------
# The basics
# ---------------------------------------------------------------------------


def test_create_read_and_release_in_a_subinterpreter():
    """In a subinterpreter that shares the main GIL, from_address, memoryview
    and release() work as in the main interpreter: the Python on_release runs
    exactly once, in that subinterpreter."""
    lines, stderr = run_in_subinterpreter('''
        buf = membuf.from_address(ADDRESS, 16, on_release=on_release)
        say("read", bytes(memoryview(buf)[:8]).decode(), buf.nbytes, buf.readonly)
        with memoryview(buf) as view:
            say("view", view.obj is buf, buf.exports)
        buf.release()
        buf.release()  # a no-op
        say("calls", len(calls), "released", buf.released)
        try:
            memoryview(buf)
        except ValueError:
            say("refused after release")
    ''')
    assert stderr == ""
    assert lines == [
        "read abcdefgh 16 True",
        "view True 1",
        "released buf in own interpreter",
        "calls 1 released True",
        "refused after release",
        "SUBINTERPRETER DONE",
        "DESTROYED",
    ]


def test_slices_and_deferred_release_in_a_subinterpreter():
    """Slices share the memory and keep their parent's export in a
    subinterpreter too; a deferred release completes when the last view and
    the last slice are gone, exactly once."""
    lines, stderr = run_in_subinterpreter('''
        buf = membuf.from_address(ADDRESS, 16, on_release=on_release)
        part = buf[2:6]
        view = memoryview(part)
        say("slice", bytes(view).decode(), part.address - buf.address)
        try:
            buf.release()
        except BufferError:
            say("strict release refused")
        buf.release(defer=True)
        say("deferred", len(calls))
        del view
        say("view gone", len(calls))
        del part
        say("slice gone", len(calls), buf.released)
    ''')
    assert stderr == ""
    assert lines == [
        "slice cdef 2",
        "strict release refused",
        "deferred 0",
        "view gone 0",
        "released buf in own interpreter",
        "slice gone 1 True",
        "SUBINTERPRETER DONE",
        "DESTROYED",
    ]


def test_pickle_protocol_5_in_a_subinterpreter():
    """Pickle round-trips a Buffer inside a subinterpreter: in-band (a copy)
    and protocol 5 out-of-band (the same memory, holding an export of the
    original until the rebuilt Buffer is released)."""
    lines, stderr = run_in_subinterpreter('''
        buf = membuf.from_address(ADDRESS, 16, on_release=on_release)
        for protocol in (4, 5):
            copy = pickle.loads(pickle.dumps(buf, protocol=protocol))
            say("in-band", protocol, type(copy).__name__, copy == buf,
                copy.address != buf.address, copy.readonly)
            copy.release()
        frames = []
        header = pickle.dumps(buf, protocol=5, buffer_callback=frames.append)
        same = pickle.loads(header, buffers=frames)
        say("out-of-band", len(frames), same.address == buf.address, same == buf, buf.exports)
        del frames
        try:
            buf.release()
        except BufferError:
            say("original held by the rebuilt Buffer")
        same.release()
        buf.release()
        say("calls", len(calls))
    ''')
    assert stderr == ""
    assert lines == [
        "in-band 4 Buffer True True True",
        "in-band 5 Buffer True True True",
        "out-of-band 1 True True 2",
        "original held by the rebuilt Buffer",
        "released buf in own interpreter",
        "calls 1",
        "SUBINTERPRETER DONE",
        "DESTROYED",
    ]


# ---------------------------------------------------------------------------
# DLPack
# ---------------------------------------------------------------------------

# The stable-ABI build cannot tell which thread holds a subinterpreter's GIL
# (the 3.11 limited API has no PyGILState_Check and no unchecked thread-state
# getter), so its __dlpack__ refuses outside the main interpreter rather
# than risk a deadlock; test_abi3_build_refuses_dlpack_in_a_subinterpreter
# checks that refusal.
ABI3 = bool(membuf._membuf.LIMITED_API)
DLPACK_IN_SUBINTERPRETERS = pytest.mark.skipif(
    ABI3, reason="the abi3 build exports DLPack capsules in the main interpreter only")


@pytest.mark.skipif(not ABI3, reason="the default build exports DLPack in subinterpreters "
                                     "(tested by the other DLPack tests here)")
def test_abi3_build_refuses_dlpack_in_a_subinterpreter():
    """The abi3 build refuses __dlpack__ in a subinterpreter with BufferError
    (never a capsule whose deleter could deadlock), and changes nothing."""
    lines, stderr = run_in_subinterpreter('''
        buf = membuf.from_address(ADDRESS, 16, on_release=on_release)
        try:
            buf.__dlpack__(max_version=(1, 0))
        except BufferError as exc:
            say("refused", "main interpreter only" in str(exc), buf.exports)
        buf.release()
        say("calls", len(calls))
    ''')
    assert stderr == ""
    assert lines == ["refused True 0", "released buf in own interpreter", "calls 1",
                     "SUBINTERPRETER DONE", "DESTROYED"]



@DLPACK_IN_SUBINTERPRETERS
def test_unconsumed_dlpack_capsule_dropped_in_a_subinterpreter():
    """A DLPack capsule nobody consumed ends its export when it is dropped in
    a subinterpreter (versioned, legacy and copy=True capsules), without
    waiting for any other interpreter's GIL; a deferred release then
    completes, with the callback in the Buffer's own interpreter."""
    lines, stderr = run_in_subinterpreter('''
        buf = membuf.from_address(ADDRESS, 16, readonly=False, on_release=on_release)
        capsule = buf.__dlpack__(max_version=(1, 0))
        say("capsule", repr(capsule).split('"')[1], buf.exports)
        del capsule  # the destructor calls the deleter: must not deadlock
        say("dropped", buf.exports)
        legacy = buf.__dlpack__()
        say("capsule", repr(legacy).split('"')[1], buf.exports)
        del legacy
        say("dropped", buf.exports)
        copied = buf.__dlpack__(max_version=(1, 0), copy=True)
        say("copy holds", buf.exports)
        del copied
        capsule = buf.__dlpack__(max_version=(1, 0))
        buf.release(defer=True)
        say("deferred", len(calls))
        del capsule
        say("calls", len(calls), buf.released)
    ''')
    assert stderr == ""
    assert lines == [
        "capsule dltensor_versioned 1",
        "dropped 0",
        "capsule dltensor 1",
        "dropped 0",
        "copy holds 0",
        "deferred 0",
        "released buf in own interpreter",
        "calls 1 True",
        "SUBINTERPRETER DONE",
        "DESTROYED",
    ]


# The deleter of a consumed capsule, called the way a consumer calls it: a
# ctypes foreign call (the calling thread gives up the GIL, as C code that
# frees a tensor without it), and on a native thread that never ran Python
# (pthread_create with the deleter as the start routine, as PyTorch frees
# tensors on its own threads).
DELETER_HELPERS = r'''
import ctypes, threading
_pythonapi = ctypes.pythonapi
_pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
_pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_pythonapi.PyCapsule_SetName.restype = ctypes.c_int
_pythonapi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
_USED = ctypes.c_char_p(b"used_dltensor_versioned")  # outlives every capsule

class ManagedTensorVersioned(ctypes.Structure):  # the head of DLManagedTensorVersioned
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]

def consume(capsule):
    """Take the tensor over as a consumer does: rename the capsule; return
    (the tensor's address, its deleter's address)."""
    address = _pythonapi.PyCapsule_GetPointer(capsule, b"dltensor_versioned")
    assert _pythonapi.PyCapsule_SetName(capsule, _USED) == 0
    return address, ManagedTensorVersioned.from_address(address).deleter

def delete_without_the_gil(tensor, deleter):
    # A CFUNCTYPE call releases the GIL around the C function.
    ctypes.CFUNCTYPE(None, ctypes.c_void_p)(deleter)(tensor)

def delete_on_a_native_thread(tensor, deleter):
    libc = ctypes.CDLL(None)
    libc.pthread_create.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p]
    libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
    thread = ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(thread), None, deleter, tensor) == 0
    assert libc.pthread_join(thread, None) == 0  # a foreign call: without the GIL
'''


@DLPACK_IN_SUBINTERPRETERS
@pytest.mark.parametrize("how", ["without-the-gil", "native-thread", "python-thread"])
def test_dlpack_deleter_called_by_a_consumer_in_a_subinterpreter(how):
    """A consumer may call the deleter of a Buffer's DLPack tensor from any
    thread, holding no GIL, including inside a subinterpreter: the deleter
    takes the GIL of the Buffer's own interpreter, ends the export, and a
    deferred release's callback runs there, exactly once."""
    if how == "native-thread" and not sys.platform.startswith("linux"):
        pytest.skip("starts a native thread with libc's pthread_create (Linux)")
    call = {
        "without-the-gil": "delete_without_the_gil(tensor, deleter)",
        "native-thread": "delete_on_a_native_thread(tensor, deleter)",
        "python-thread": """
thread = threading.Thread(target=delete_without_the_gil, args=(tensor, deleter))
thread.start()
thread.join()
""",
    }[how]
    lines, stderr = run_in_subinterpreter(DELETER_HELPERS + '''
buf = membuf.from_address(ADDRESS, 16, on_release=on_release)
capsule = buf.__dlpack__(max_version=(1, 0))
tensor, deleter = consume(capsule)
del capsule  # renamed: its destructor leaves the tensor to the consumer
buf.release(defer=True)
say("consumed", buf.exports, len(calls))
''' + call + '''
say("deleted", buf.exports, len(calls), buf.released)
''')
    assert stderr == ""
    assert lines == [
        "consumed 1 0",
        "released buf in own interpreter",
        "deleted 0 1 True",
        "SUBINTERPRETER DONE",
        "DESTROYED",
    ]


NUMPY_IN_SUBINTERPRETER = '''
import warnings
numpy_imports = False
try:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import numpy as np
    numpy_imports = True
except Exception as exc:  # NumPy may refuse subinterpreters outright
    say("SKIP numpy does not import in a subinterpreter:", type(exc).__name__, exc)
else:
    for warning in caught:
        say("numpy warned:", str(warning.message).splitlines()[0])
'''


def _skip_if_numpy_refused(lines):
    for line in lines:
        if line.startswith("SKIP "):
            pytest.skip(line[len("SKIP "):])


@DLPACK_IN_SUBINTERPRETERS
def test_dlpack_numpy_consumer_in_a_subinterpreter():
    """NumPy (when it imports in a subinterpreter at all) consumes a Buffer
    through DLPack and the buffer protocol there: read-only stays read-only,
    the export ends when the array dies, and a deferred release completes
    then, with the callback in the Buffer's own interpreter."""
    pytest.importorskip("numpy")
    lines, stderr = run_child(in_subinterpreter(NUMPY_IN_SUBINTERPRETER + '''
if numpy_imports:
    buf = membuf.from_address(ADDRESS, 16, on_release=on_release)
    arr = np.from_dlpack(buf)
    say("from_dlpack", bytes(arr[:4]).decode(), arr.flags.writeable, buf.exports)
    try:
        buf.release()
    except BufferError:
        say("strict release refused")
    del arr  # NumPy calls the deleter
    say("array gone", buf.exports)
    view = np.frombuffer(buf, dtype=np.uint8)
    arr = np.from_dlpack(buf)
    buf.release(defer=True)
    del view
    say("frombuffer gone", len(calls))
    del arr
    say("calls", len(calls), buf.released)
'''))
    _skip_if_numpy_refused(lines)
    assert stderr == ""  # NumPy's warning about subinterpreters is recorded, not printed
    lines = [line for line in lines if not line.startswith("numpy warned:")]
    assert lines == [
        "from_dlpack abcd False 1",
        "strict release refused",
        "array gone 0",
        "frombuffer gone 0",
        "released buf in own interpreter",
        "calls 1 True",
        "SUBINTERPRETER DONE",
        "DESTROYED",
    ]


# ---------------------------------------------------------------------------
# Destroying a subinterpreter with Buffers alive
# ---------------------------------------------------------------------------

ALIVE_AT_DESTROY = {
    "plain": "",
    "memoryview": "keep = memoryview(buf)",
    "deferred": "keep = memoryview(buf); buf.release(defer=True)",
    "slice-only": "keep = buf[2:6]; del buf",
    "pickle5-out-of-band": """
frames = []
keep = pickle.loads(pickle.dumps(buf, protocol=5, buffer_callback=frames.append), buffers=frames)
""",
    "dlpack-capsule": "keep = buf.__dlpack__(max_version=(1, 0))",
    "numpy-array": "keep = np.frombuffer(buf, dtype=np.uint8)",
    "numpy-from-dlpack": "keep = np.from_dlpack(buf)",
}


@pytest.mark.parametrize("name", list(ALIVE_AT_DESTROY))
def test_buffers_alive_when_the_subinterpreter_is_destroyed(name):
    """Buffers still alive in a subinterpreter's globals when it is destroyed
    are released while it is finalized (before destroy() returns), exactly
    once -- under a live memoryview, with a pending deferred release, as a
    slice, under a Buffer rebuilt from its pickle, an unconsumed DLPack
    capsule, a NumPy array or DLPack consumer -- provided the callback does
    not lead back to those globals (here a functools.partial of os.write)."""
    if ABI3 and "dlpack" in name:
        pytest.skip("the abi3 build exports DLPack capsules in the main interpreter only")
    uses_numpy = name.startswith("numpy")
    if uses_numpy:
        pytest.importorskip("numpy")
    lines, stderr = run_in_subinterpreter((NUMPY_IN_SUBINTERPRETER if uses_numpy else "") + f'''
buf = membuf.from_address(ADDRESS, 16,
                          on_release=functools.partial(os.write, 1, b"released {name}\\n"))
{ALIVE_AT_DESTROY[name] if not uses_numpy else "if numpy_imports: " + ALIVE_AT_DESTROY[name]}
other = membuf.from_address(ADDRESS, 16,
                            on_release=functools.partial(os.write, 1, b"released other\\n"))
''')
    _skip_if_numpy_refused(lines)
    assert stderr == ""
    lines = [line for line in lines if not line.startswith("numpy warned:")]
    assert lines[0] == "SUBINTERPRETER DONE"
    assert lines[-1] == "DESTROYED"
    assert sorted(lines[1:-1]) == sorted([f"released {name}", "released other"])


def test_module_level_callback_under_a_live_view_when_the_subinterpreter_is_destroyed():
    """As at interpreter exit: a Buffer in a subinterpreter's globals whose
    on_release is a function of that namespace, under a live memoryview, is
    never released when the subinterpreter is destroyed (the cycle through
    the callback is kept alive); other Buffers still are, nothing crashes,
    and releasing before destroying (or `with buf:`) is the remedy."""
    lines, stderr = run_child(in_subinterpreter('''
def module_level(write=os.write):
    write(1, b"released module-level\\n")

buf = membuf.from_address(ADDRESS, 16, on_release=module_level)
view = memoryview(buf)
other = membuf.from_address(ADDRESS, 16,
                            on_release=functools.partial(os.write, 1, b"released other\\n"))
''') + '''
interp = create("legacy")
run(interp, {remedy!r})
destroy(interp)
say("DESTROYED remedy")
'''.format(remedy=sub_code('''
def module_level(write=os.write):
    write(1, b"released remedy\\n")

buf = membuf.from_address(ADDRESS, 16, on_release=module_level)
view = memoryview(buf)
view.release()
buf.release()
''')))
    assert stderr == ""
    assert lines == [
        "SUBINTERPRETER DONE",
        "released other",
        "DESTROYED",
        "released remedy",
        "DESTROYED remedy",
    ]


# ---------------------------------------------------------------------------
# Several interpreters, one process
# ---------------------------------------------------------------------------

CAPI_PROBE = r'''
import ctypes, membuf
class _CAPI(ctypes.Structure):  # MemBuf_CAPI (membuf.h): append-only
    _fields_ = [("abi_version", ctypes.c_uint), ("api_version", ctypes.c_uint),
                # API version 1
                ("Buffer_Type", ctypes.c_void_p), ("FromMemory", ctypes.c_void_p),
                ("FromSpec", ctypes.c_void_p), ("Release", ctypes.c_void_p),
                # API version 2: IsReleased (the unused Check of version 1)
                ("IsReleased", ctypes.c_void_p)]

def probe_capi(where, address):
    # Import the C API the way import_membuf() does, check it against the
    # module and drive it; say where the table and the type live.
    import_capsule = ctypes.pythonapi.PyCapsule_Import
    import_capsule.restype = ctypes.c_void_p
    import_capsule.argtypes = [ctypes.c_char_p, ctypes.c_int]
    table_address = import_capsule(b"membuf._membuf._C_API", 0)
    assert table_address, "PyCapsule_Import failed"
    table = _CAPI.from_address(table_address)
    assert table.abi_version == membuf.ABI_VERSION, table.abi_version
    assert table.api_version == membuf.API_VERSION, table.api_version
    assert table.Buffer_Type == id(membuf.Buffer)
    capsule = membuf._membuf._C_API
    assert type(capsule).__name__ == "PyCapsule" and "membuf._membuf._C_API" in repr(capsule)
    from_memory = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_size_t,
                                    ctypes.c_int, ctypes.c_void_p,
                                    ctypes.c_void_p)(table.FromMemory)
    release = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_int)(table.Release)
    buf = from_memory(address, 4, 0, None, None)
    assert type(buf) is membuf.Buffer and buf.address == address and buf.nbytes == 4
    view = memoryview(buf)
    assert release(buf, 1) == 0 and not buf.released  # MEMBUF_DEFER under a view
    if table.api_version >= 2:
        is_released = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object)(table.IsReleased)
        assert is_released(buf) == 1  # a pending release counts
        try:
            is_released(b"not a Buffer")
        except TypeError:
            pass
        else:
            raise AssertionError("MemBuf_IsReleased accepted bytes")
    view.release()
    assert buf.released
    say(where, "C API table", hex(table_address), "type", hex(id(membuf.Buffer)),
        "versions", table.abi_version, table.api_version)
'''


def test_main_interpreter_and_two_subinterpreters_one_after_the_other():
    """membuf imports in the main interpreter and then in one subinterpreter
    after another (and in two alive at once): each import works, all share
    the one Buffer type and C API table of the process, and a Buffer of the
    main interpreter is unaffected by subinterpreters coming and going."""
    lines, stderr = run_child(CAPI_PROBE + '''
import functools
memory = ctypes.create_string_buffer(b"main memory", 16)
address = ctypes.addressof(memory)
main_buf = membuf.from_address(address, 16, on_release=functools.partial(say, "released main"))
main_view = memoryview(main_buf)
probe_capi("main", address)
for name in ("first", "second"):
    interp = create("legacy")
    run(interp, {sub!r}.replace("NAME", name))
    destroy(interp)
    say(name, "destroyed")
both = [create("legacy"), create("legacy")]
run(both[0], {hold!r})
run(both[1], {hold!r})
run(both[0], {finish!r})
run(both[1], {finish!r})
for interp in both:
    destroy(interp)
say("main still reads", bytes(main_view[:4]).decode(), main_buf.released)
main_view.release()
main_buf.release()
'''.format(sub=sub_code(CAPI_PROBE + '''
probe_capi("NAME", ADDRESS)
buf = membuf.from_address(ADDRESS, 16, on_release=on_release)
say("NAME reads", bytes(memoryview(buf)[:4]).decode())
buf.release()
'''), hold=sub_code('''
held = membuf.from_address(ADDRESS, 16, on_release=on_release)
view = memoryview(held)
'''), finish=sub_code('''
held.release(defer=True)
view.release()
''', prelude=False)))
    assert stderr == ""
    probes = [line.split() for line in lines if "C API table" in line]
    assert [probe[0] for probe in probes] == ["main", "first", "second"], lines
    assert len({probe[4] for probe in probes}) == 1, lines  # one C API table per process
    assert len({probe[6] for probe in probes}) == 1, lines  # one Buffer type per process
    assert [line for line in lines if "C API table" not in line] == [
        "first reads abcd",
        "released buf in own interpreter",
        "first destroyed",
        "second reads abcd",
        "released buf in own interpreter",
        "second destroyed",
        "released buf in own interpreter",
        "released buf in own interpreter",
        "main still reads main False",
        "released main",
    ]


# ---------------------------------------------------------------------------
# A per-interpreter GIL (3.12+)
# ---------------------------------------------------------------------------


@needs_own_gil
@pytest.mark.parametrize("first_import", ["main-first", "isolated-first"])
def test_isolated_subinterpreter_with_its_own_gil(first_import):
    """An interpreter with its own GIL either refuses to import membuf with
    CPython's clean ImportError (membuf supports subinterpreters that share
    the main GIL only), or imports it and everything works; the main
    interpreter and later subinterpreters are unaffected either way."""
    main_first = "import membuf\n" if first_import == "main-first" else ""
    lines, stderr = run_child(main_first + f'''
interp = create("isolated")
run(interp, {sub_code("""
try:
    import membuf
except ImportError as exc:
    say("ImportError", exc)
else:
    memory = bytearray(b"isolated")
    calls = []
    buf = membuf.from_address(membuf.address_of(memory), 8, on_release=lambda: calls.append(1))
    with memoryview(buf) as view:
        assert bytes(view) == b"isolated"
    buf.release()
    say("imported and released", len(calls))
""", prelude=False, compat=False)!r})
destroy(interp)
import membuf
buf = membuf.from_address(membuf.address_of(bytearray(4)), 4)
say("main still works", buf.nbytes)
interp = create("legacy")
run(interp, "import membuf, os; os.write(1, b'legacy still imports\\\\n')")
destroy(interp)
''')
    assert stderr == ""
    assert len(lines) == 3, lines
    outcome = lines[0]
    if outcome.startswith("ImportError"):
        message = outcome.lower()
        assert "membuf._membuf" in message, outcome
        assert "subinterpreter" in message or "per-interpreter gil" in message, outcome
    else:
        assert outcome == "imported and released 1", outcome
    assert lines[1:] == ["main still works 4", "legacy still imports"]
