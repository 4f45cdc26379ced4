"""The interpreter-exit rule (README, "At interpreter exit"), sentence by
sentence: scripts that end with Buffers in __main__'s globals, each run in
a child process (subprocess.run([sys.executable, "-c", code])), checking
which release callbacks ran, in which order, and that the exit is clean
(status 0, nothing on stderr).

Markers: every callback writes "released NAME" with os.write(1, ...),
which needs nothing that finalization may already have torn down (print()
writes nowhere once sys.stdout is gone).  Module-level callbacks bind
os.write as a default argument for the same reason, and still close over
the module's globals (their __globals__), which is what matters here.
Every script prints "END" as its last line and registers an atexit handler
that writes "ATEXIT", so the order is visible.

Each scenario also holds two unrelated Buffers in the same globals, one
with a module-level callback ("other-def") and one with a functools.partial
("other-partial"): whether they are released tells whether the namespace
itself was finalized.

What CPython 3.11, 3.12 and 3.13 do, as observed (all three alike) and
asserted below:

* A Buffer in a module's globals is released at exit, after atexit
  handlers, whatever its callback, under a slice or a Buffer rebuilt from
  a pickle; and under ANY live export when the callback does not lead back
  to the module's globals (functools.partial, a C callback, an owner whose
  class lives in another module).
* A callback defined in the module (def or lambda) closes over the globals
  that hold the Buffer: under a live memoryview (or a pickle.PickleBuffer
  frame, a pending deferred release under a view) that Buffer is not
  released at exit; the module's other Buffers still are.
* Under an export the garbage collector cannot see (a NumPy array, a
  DLPack capsule or a DLPack consumer), such a Buffer -- or one whose
  owner's class is defined in the module -- keeps the whole namespace
  alive: NO Buffer of that module is released at exit.  So does a C
  callback whose context holds a function of the module.
* Remedies that work: release before exit (buf.release() once the arrays
  are gone, `with buf:`, an atexit handler that drops the arrays and
  releases), or a callback that does not close over the module's globals.
  release(defer=True) alone is not one.
* A Buffer held by a non-daemon thread is released when the thread ends
  (before atexit handlers); one held by a daemon thread still running is
  never released -- and a daemon thread running a function of the module
  keeps the module's globals alive, so none of its Buffers is released.
"""

import os
import subprocess
import sys
import sysconfig

import pytest

PRELUDE = r'''
import atexit, ctypes, functools, os, pickle, sys, threading, types
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])  # the folder of the fakelib test extension
import membuf
memory = ctypes.create_string_buffer(b"m" * 64, 64)
ADDRESS = ctypes.addressof(memory)


def marker(tag):
    # An on_release that does not lead back to this module's globals.
    return functools.partial(os.write, 1, b"released " + tag.encode() + b"\n")


class Owner:
    # An owner whose class (and so __del__'s globals) is this module.
    def __init__(self, tag):
        self.tag = tag

    def __del__(self, write=os.write):
        write(1, b"released " + self.tag + b"\n")


# The same class in another module.
elsewhere = types.ModuleType("elsewhere")
exec(
    "import os\n"
    "class Owner:\n"
    "    def __init__(self, tag):\n"
    "        self.tag = tag\n"
    "    def __del__(self, write=os.write):\n"
    "        write(1, b'released ' + self.tag + b'\\n')\n",
    elsewhere.__dict__,
)
atexit.register(functools.partial(os.write, 1, b"ATEXIT\n"))
'''

# How a Buffer NAME gets its release callback.
CALLBACKS = {
    # Module-level: the callback's __globals__ are the globals holding NAME.
    "def": '''
def on_release_NAME(write=os.write):
    write(1, b"released NAME\\n")
NAME = membuf.from_address(ADDRESS, 64, on_release=on_release_NAME)
''',
    "lambda": '''
NAME = membuf.from_address(ADDRESS, 64,
                          on_release=lambda write=os.write: write(1, b"released NAME\\n"))
''',
    "owner-here": '''
NAME = membuf.from_address(ADDRESS, 64, owner=Owner(b"NAME"))
''',
    # Not leading back to the module.
    "partial": '''
NAME = membuf.from_address(ADDRESS, 64, on_release=marker("NAME"))
''',
    "owner-elsewhere": '''
NAME = membuf.from_address(ADDRESS, 64, owner=elsewhere.Owner(b"NAME"))
''',
    "c-callback": '''
import fakelib
NAME = fakelib.wrap_with_hook(fakelib.alloc(64), marker("NAME"))
''',
    # A C callback whose context holds a module-level function (invisible to the GC).
    "c-callback-closing": '''
import fakelib
NAME = fakelib.wrap_with_hook(fakelib.alloc(64),
                             lambda write=os.write: write(1, b"released NAME\\n"))
''',
}
MODULE_LEVEL = ["def", "lambda"]
NOT_LEADING_BACK = ["partial", "owner-elsewhere", "c-callback"]

# What else holds the Buffer NAME in the globals.
EXPORTS = {
    "none": "",
    "memoryview": "view_NAME = memoryview(NAME)",
    "deferred-memoryview": "view_NAME = memoryview(NAME)\nNAME.release(defer=True)",
    "np.frombuffer": "import numpy as np\narray_NAME = np.frombuffer(NAME, dtype=np.uint8)",
    "np.asarray": "import numpy as np\narray_NAME = np.asarray(NAME)",
    "dlpack-capsule": "capsule_NAME = NAME.__dlpack__(max_version=(1, 0))",
    "np.from_dlpack": "import numpy as np\narray_NAME = np.from_dlpack(NAME)",
    "pickle5-frames": """
frames_NAME = []
rebuilt_NAME = pickle.loads(pickle.dumps(NAME, protocol=5, buffer_callback=frames_NAME.append),
                            buffers=frames_NAME)
assert rebuilt_NAME.address == NAME.address
""",
    "pickle5-rebuilt": """
frames_NAME = []
rebuilt_NAME = pickle.loads(pickle.dumps(NAME, protocol=5, buffer_callback=frames_NAME.append),
                            buffers=frames_NAME)
assert rebuilt_NAME.address == NAME.address
del frames_NAME
""",
    "slice": "part_NAME = NAME[2:10]",
}
GC_VISIBLE_VIEWS = ["memoryview", "deferred-memoryview", "pickle5-frames"]
HIDDEN_EXPORTS = ["np.frombuffer", "np.asarray", "dlpack-capsule", "np.from_dlpack"]
NUMPY_EXPORTS = ["np.frombuffer", "np.asarray", "np.from_dlpack"]
OTHERS = ["other-def", "other-partial"]


def buffer_code(name, callback, export="none"):
    return (CALLBACKS[callback] + "\n" + EXPORTS[export] + "\n").replace("NAME", name)


def others_code():
    return (CALLBACKS["def"].replace("NAME", "other_def").replace("released other_def",
                                                                  "released other-def")
            + CALLBACKS["partial"].replace('"NAME"', '"other-partial"').replace("NAME",
                                                                                 "other_partial"))


def run(request, code, callback="", export="none"):
    """Run PRELUDE + code + print("END") in a child; return its stdout
    lines after checking a clean exit."""
    if export in NUMPY_EXPORTS:
        pytest.importorskip("numpy")
    fakelib_dir = ""
    if callback.startswith("c-callback"):
        fakelib = request.getfixturevalue("fakelib")
        fakelib_dir = os.path.dirname(fakelib.__file__)
    script = PRELUDE + code + '\nprint("END", flush=True)\n'
    try:
        result = subprocess.run([sys.executable, "-c", script, fakelib_dir],
                                capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child process did not exit within 60 s (a hang at exit?)\n"
                    f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}", pytrace=False)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout.splitlines()


def released_at_exit(lines):
    """The callbacks that ran after the program's end and the atexit
    handlers, sorted; each must have run once."""
    assert lines[:2] == ["END", "ATEXIT"], lines
    names = [line.removeprefix("released ") for line in lines[2:]]
    assert all(line.startswith("released ") for line in lines[2:]), lines
    assert len(names) == len(set(names)), f"a callback ran twice: {lines}"
    return sorted(names)


EVERYTHING = sorted(["buf"] + OTHERS)
ONLY_OTHERS = sorted(OTHERS)
NOTHING = []


# ---------------------------------------------------------------------------
# Released at exit
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("callback", MODULE_LEVEL + ["owner-here"] + NOT_LEADING_BACK)
def test_buffer_in_globals_is_released_at_exit(request, callback):
    """A Buffer still held in a module's globals at interpreter exit is
    released then, exactly once, after the program's last line and after the
    atexit handlers, whatever its callback."""
    lines = run(request, buffer_code("buf", callback) + others_code(), callback)
    assert released_at_exit(lines) == EVERYTHING


@pytest.mark.parametrize("export", [e for e in EXPORTS if e != "none"])
@pytest.mark.parametrize("callback", NOT_LEADING_BACK)
def test_callback_not_leading_back_is_released_under_any_export(request, callback, export):
    """Under any live export -- a memoryview, a NumPy array, a DLPack capsule
    or consumer, a slice, a pickle frame or rebuilt Buffer, a pending
    deferred release -- a Buffer whose callback does not lead back to the
    module's globals (a functools.partial, a C callback, an owner whose class
    lives in another module) is released at exit, and so is every other
    Buffer of the module: such a callback is the other remedy."""
    lines = run(request, buffer_code("buf", callback, export) + others_code(), callback, export)
    assert released_at_exit(lines) == EVERYTHING


@pytest.mark.parametrize("export", ["slice", "pickle5-rebuilt"])
@pytest.mark.parametrize("callback", MODULE_LEVEL + ["owner-here"])
def test_module_level_callback_is_released_under_a_slice_or_a_rebuilt_pickle(
        request, callback, export):
    """A Buffer whose callback (or owner's class) is defined in the module is
    released at exit under a slice, or under a Buffer rebuilt from its
    pickle protocol 5 frame once the frame itself is gone: both expose their
    hold on it to the garbage collector."""
    lines = run(request, buffer_code("buf", callback, export) + others_code(), callback, export)
    assert released_at_exit(lines) == EVERYTHING


@pytest.mark.parametrize("export", GC_VISIBLE_VIEWS)
def test_owner_defined_in_the_module_is_released_under_a_memoryview(request, export):
    """A Buffer whose owner is an instance of a class defined in the module is
    released at exit under a live memoryview: the garbage collector breaks a
    cycle through the owner."""
    lines = run(request, buffer_code("buf", "owner-here", export) + others_code(), "owner-here",
                export)
    assert released_at_exit(lines) == EVERYTHING


# ---------------------------------------------------------------------------
# Not released at exit: the documented limitation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("export", GC_VISIBLE_VIEWS)
@pytest.mark.parametrize("callback", MODULE_LEVEL)
def test_module_level_callback_under_a_live_view_is_not_released(request, callback, export):
    """KNOWN LIMITATION: a Buffer whose on_release is defined in the module
    (a def or a lambda, which closes over the globals holding the Buffer) is
    not released at exit while a memoryview of it, or a pickle protocol 5
    frame, is still alive there -- not even after release(defer=True); the
    module's other Buffers still are."""
    lines = run(request, buffer_code("buf", callback, export) + others_code(), callback, export)
    assert released_at_exit(lines) == ONLY_OTHERS


@pytest.mark.parametrize("export", HIDDEN_EXPORTS)
@pytest.mark.parametrize("callback", MODULE_LEVEL + ["owner-here"])
def test_hidden_export_and_a_module_level_callback_keep_the_namespace(request, callback, export):
    """KNOWN LIMITATION: under an export the garbage collector cannot see (a
    NumPy array, a DLPack capsule or consumer), a Buffer whose on_release,
    or whose owner's class, is defined in the module keeps that module's
    namespace alive at exit: no Buffer of the module is released, not even
    ones with unrelated callbacks.  The exit itself stays clean."""
    lines = run(request, buffer_code("buf", callback, export) + others_code(), callback, export)
    assert released_at_exit(lines) == NOTHING


def test_c_callback_holding_a_module_function_keeps_the_namespace(request):
    """KNOWN LIMITATION: a C callback whose context holds a function of the
    module (a reference the garbage collector cannot see) keeps that module's
    namespace alive at exit, even with no export at all: none of its Buffers
    is released."""
    lines = run(request, buffer_code("buf", "c-callback-closing") + others_code(),
                "c-callback-closing")
    assert released_at_exit(lines) == NOTHING


# ---------------------------------------------------------------------------
# Remedies
# ---------------------------------------------------------------------------

WORST_CASE = buffer_code("buf", "def") + others_code()
REMEDIES = {
    "release": """
array = np.frombuffer(buf, dtype=np.uint8)
total = int(array.sum())
del array
buf.release()
""",
    "with": """
with buf:
    array = np.frombuffer(buf, dtype=np.uint8)
    total = int(array.sum())
    del array
""",
    "atexit": """
array = np.frombuffer(buf, dtype=np.uint8)

def drop_arrays_and_release():
    global array
    del array
    buf.release()

atexit.register(drop_arrays_and_release)
""",
}


@pytest.mark.parametrize("remedy", list(REMEDIES))
def test_releasing_before_exit_is_the_remedy(request, remedy):
    """The remedy for a Buffer with a module-level callback under a NumPy
    array or a DLPack consumer: release it before exit -- buf.release() once
    the arrays are gone, `with buf:`, or an atexit handler that drops the
    arrays and releases; the module's other Buffers are then released at exit
    as usual."""
    pytest.importorskip("numpy")
    lines = run(request, WORST_CASE + "import numpy as np\n" + REMEDIES[remedy])
    if remedy == "atexit":  # handlers run last-registered first
        assert lines[:3] == ["END", "released buf", "ATEXIT"], lines
    else:
        assert lines[:3] == ["released buf", "END", "ATEXIT"], lines
    assert sorted(lines[3:]) == ["released other-def", "released other-partial"]


def test_deferred_release_is_not_a_remedy(request):
    """release(defer=True) alone is no remedy: the Buffer waits for the last
    export, which a namespace kept alive never drops, so nothing of the
    module is released at exit."""
    pytest.importorskip("numpy")
    lines = run(request, WORST_CASE + """
import numpy as np
array = np.frombuffer(buf, dtype=np.uint8)
buf.release(defer=True)
""")
    assert released_at_exit(lines) == NOTHING


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("callback", ["def", "partial"])
def test_buffer_of_a_non_daemon_thread_is_released_when_it_ends(request, callback):
    """A Buffer held by a non-daemon thread still running when the program
    ends is released when that thread finishes, in that thread -- CPython
    waits for it before the atexit handlers run."""
    on_release = {"def": "on_release_local", "partial": 'marker("local")'}[callback]
    lines = run(request, others_code() + """
def on_release_local(write=os.write):
    write(1, b"released local\\n")

started = threading.Event()

def worker():
    local = membuf.from_address(ADDRESS, 64, on_release=%s)
    started.set()
    threading.main_thread().join()  # returns once the program has ended
    os.write(1, b"thread ends in " + threading.current_thread().name.encode() + b"\\n")

threading.Thread(target=worker, name="worker").start()
started.wait()
""" % on_release)
    assert lines[:4] == ["END", "thread ends in worker", "released local", "ATEXIT"], lines
    assert sorted(lines[4:]) == ["released other-def", "released other-partial"]


DAEMONS = {
    # The thread runs a function of the module: its frame holds the globals.
    "function-of-the-module": """
def daemon():
    local = membuf.from_address(ADDRESS, 64, on_release=marker("daemon"))
    started.set()
    threading.Event().wait()

threading.Thread(target=daemon, daemon=True).start()
""",
    # The thread runs code of another module and holds the Buffer as an argument.
    "function-elsewhere": """
exec("def hold(buf, started, forever):\\n    started.set()\\n    forever.wait()\\n",
     elsewhere.__dict__)
held = membuf.from_address(ADDRESS, 64, on_release=marker("daemon"))
threading.Thread(target=elsewhere.hold, args=(held, started, threading.Event()),
                 daemon=True).start()
del held
""",
}


@pytest.mark.parametrize("target", list(DAEMONS))
def test_buffer_of_a_daemon_thread_is_never_released(request, target):
    """A Buffer held by a daemon thread still running at exit is never
    released (CPython never finalizes that thread's frame); the operating
    system takes the memory back.  If the thread runs a function of the
    module, its frame keeps the module's globals alive too, and none of the
    module's Buffers is released."""
    lines = run(request, others_code() + "started = threading.Event()\n" + DAEMONS[target]
                + "started.wait()\n")
    if target == "function-of-the-module" and sysconfig.get_config_var("Py_GIL_DISABLED"):
        # Free-threaded 3.13 finalizes the module's globals even so (the
        # daemon's own Buffer, in its frame, is still never released).
        assert released_at_exit(lines) == ONLY_OTHERS
    elif target == "function-of-the-module":
        assert released_at_exit(lines) == NOTHING
    else:
        assert released_at_exit(lines) == ONLY_OTHERS
