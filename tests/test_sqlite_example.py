"""examples/sqlite_blobs: zero-copy BLOBs over the system libsqlite3.

The example is built here as a third party would build it (against the
installed membuf.get_include(), linked with -lsqlite3, -Wall -Wextra -Werror),
and checked against the stdlib sqlite3 module on the same database file.
"""

import gc
import importlib.util
import pathlib
import random
import sqlite3
import sys
from contextlib import closing

import numpy as np
import pytest

import membuf
from conftest import STRICT_FLAGS

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "sqlite_blobs"
MIB = 1 << 20
RELEASED = "operation forbidden on released membuf.Buffer"
COPY_OR_RELEASE = r"copy what you keep with bytes\(buf\) or release the view"

# (id, data, name, x): BLOBs of 0 B, 1 B and 1 MiB, then non-BLOB values in
# the BLOB column (SQLite keeps each value's own type).
ROWS = [
    (0, b"", "empty", 0.0),
    (1, b"\xff", "one", 1.0),
    (2, random.Random(0).randbytes(MIB), "mib", 2.5),
    (3, None, None, None),
    (4, 7, "an int in the blob column", -1.5),
    (5, "text", "a str in the blob column", 3.0),
]
SELECT = "SELECT id, data, name, x FROM t ORDER BY id"


def build_sqlite_blobs(build_dir):
    """conftest.build_extension() plus libraries=["sqlite3"] (it has no such
    parameter); CFLAGS/LDFLAGS from the environment apply as there (ASan job)."""
    from setuptools import Distribution, Extension

    ext = Extension(
        "sqlite_blobs",
        sources=[str(EXAMPLE / "sqlite_blobs.c")],
        include_dirs=[membuf.get_include()],
        libraries=["sqlite3"],
        extra_compile_args=STRICT_FLAGS,
    )
    dist = Distribution({"name": "sqlite_blobs", "ext_modules": [ext]})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = str(build_dir)
    cmd.build_temp = str(build_dir / "tmp")
    cmd.ensure_finalized()
    cmd.run()
    (path,) = build_dir.glob("sqlite_blobs*.so")
    spec = importlib.util.spec_from_file_location("sqlite_blobs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["sqlite_blobs"] = module
    return module


@pytest.fixture(scope="module")
def sqlite_blobs(tmp_path_factory):
    return build_sqlite_blobs(tmp_path_factory.mktemp("sqlite_blobs"))


def write_db(path, rows=ROWS):
    with closing(sqlite3.connect(path)) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB, name TEXT, x REAL)")
        con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
        con.commit()
    return path


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    return write_db(tmp_path_factory.mktemp("db") / "blobs.db")


@pytest.fixture
def db(sqlite_blobs, db_path):
    with sqlite_blobs.connect(db_path) as conn:
        yield conn


def stdlib_rows(path, sql=SELECT, params=()):
    with closing(sqlite3.connect(path)) as con:
        return con.execute(sql, params).fetchall()


def database_lock(path):
    """'free' if another connection can take an exclusive lock on path, else
    SQLite's message: a statement that is not finalized holds a shared lock."""
    with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as con:
        try:
            con.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as e:
            return str(e)
        con.execute("ROLLBACK")
        return "free"


# --- same values as the stdlib sqlite3 module -----------------------------


def test_rows_equal_stdlib_and_only_blobs_are_buffers(db, db_path):
    expected = stdlib_rows(db_path)
    assert [r[1] for r in expected[:3]] == [b"", b"\xff", ROWS[2][1]]
    n = 0
    for row, want in zip(db.execute(SELECT), expected, strict=True):
        assert len(row) == 4
        for value, wanted in zip(row, want):
            if isinstance(wanted, bytes):
                assert type(value) is membuf.Buffer
                assert value.readonly and value.format == "B"
                assert value.nbytes == len(wanted)
                assert bytes(value) == wanted
            else:
                assert type(value) is type(wanted) and value == wanted
        n += 1
    assert n == len(ROWS)


def test_copy_mode_yields_bytes_that_survive_steps(db, db_path):
    cur = db.execute(SELECT, copy=True)
    assert cur.copy
    views = []
    rows = []
    for row in cur:
        if isinstance(row[1], bytes):
            views.append(memoryview(row[1]))  # held across the next steps: fine
        rows.append(row)
    assert rows == stdlib_rows(db_path)
    assert [bytes(v) for v in views] == [b"", b"\xff", ROWS[2][1]]
    assert cur.closed


def test_columns(db):
    assert db.execute(SELECT).columns == ("id", "data", "name", "x")
    assert db.execute("SELECT 1 AS a, x'00' b").columns == ("a", "b")


def test_parameters_are_bound(db):
    sql = "SELECT id, data FROM t WHERE id >= ? AND name != ? ORDER BY id LIMIT 1"
    assert [(i, bytes(b)) for i, b in db.execute(sql, (1, "mib"), copy=True)] == [(1, b"\xff")]
    params = (None, -(2**63), 0.25, "é", memoryview(b"\x00b"))
    row = next(db.execute("SELECT ?, ?, ?, ?, ?", params))
    assert row[:4] == (None, -(2**63), 0.25, "é")
    assert bytes(row[4]) == b"\x00b"


# --- zero-copy, proved by addresses ----------------------------------------


def test_buffer_wraps_the_memory_sqlite3_column_blob_returned(db):
    cur = db.execute("SELECT data FROM t WHERE id IN (1, 2) ORDER BY id")
    for size in (1, MIB):
        (buf,) = next(cur)
        assert buf.nbytes == size
        # SQLite's pointer for this row, asked again (no type conversion: the same pointer).
        address = cur.column_blob_address(0)
        assert address != 0
        assert buf.address == address
        assert membuf.address_of(buf) == address
        with memoryview(buf) as view:
            assert membuf.address_of(view) == address
        arr = np.frombuffer(buf, dtype=np.uint8)
        assert arr.ctypes.data == address
        assert not arr.flags.writeable
        del arr
    assert list(cur) == []


def test_empty_blob_is_an_empty_buffer(db):
    cur = db.execute("SELECT data FROM t WHERE id = 0")
    (buf,) = next(cur)
    # SQLite returns NULL for a zero-length BLOB; membuf exports a placeholder
    # address for empty memory, so there is no address to compare.
    assert cur.column_blob_address(0) == 0
    assert buf.nbytes == 0 and bytes(buf) == b"" and len(memoryview(buf)) == 0


def test_blob_memory_is_read_only(db):
    cur = db.execute("SELECT data FROM t WHERE id = 1")
    (buf,) = next(cur)
    with pytest.raises(TypeError, match="read-only"):
        memoryview(buf)[0] = 0
    assert bytes(buf) == b"\xff"


def test_column_blob_address_refuses_non_blobs(db):
    cur = db.execute("SELECT id, data FROM t WHERE id = 1")
    with pytest.raises(ValueError, match="is not on a row"):
        cur.column_blob_address(1)
    next(cur)
    with pytest.raises(ValueError, match="column 0 is not a BLOB"):
        cur.column_blob_address(0)
    with pytest.raises(IndexError, match="no column 2 in a row of 2"):
        cur.column_blob_address(2)


# --- the next step releases the previous row ------------------------------


def test_step_releases_the_previous_rows_buffers(db):
    cur = db.execute("SELECT id, data FROM t WHERE id IN (1, 2) ORDER BY id")
    _, first = next(cur)
    assert bytes(first) == b"\xff" and not first.released
    _, second = next(cur)
    assert first.released
    assert first.nbytes == 1  # metadata still answers
    for use in (len, bytes, memoryview, lambda b: b[0], lambda b: b.tobytes()):
        with pytest.raises(ValueError, match=RELEASED):
            use(first)
    assert bytes(second) == ROWS[2][1]
    assert list(cur) == []
    assert second.released  # released before the step that found the end
    assert cur.closed


def test_list_of_zero_copy_rows_holds_only_released_buffers(db):
    rows = list(db.execute("SELECT data FROM t WHERE id IN (0, 1, 2)"))
    assert len(rows) == 3
    assert all(buf.released for (buf,) in rows)


def test_view_held_across_a_step_raises_and_the_row_stays_current(db):
    cur = db.execute("SELECT id, data FROM t WHERE id IN (1, 2, 3) ORDER BY id")
    _, buf = next(cur)
    view = memoryview(buf)
    with pytest.raises(BufferError, match=COPY_OR_RELEASE) as excinfo:
        next(cur)
    message = str(excinfo.value)
    assert "column 1 ('data')" in message and "1 exported view" in message
    # Nothing changed: same row, same memory, still readable.
    assert not buf.released
    assert cur.column_blob_address(1) == buf.address == membuf.address_of(view)
    assert view.tobytes() == b"\xff"
    with pytest.raises(BufferError, match=COPY_OR_RELEASE):
        cur.close()
    assert not cur.closed
    # The error is not final: once the view is gone, iteration goes on.
    view.release()
    assert next(cur)[0] == 2
    assert buf.released
    assert next(cur) == (3, None)
    with pytest.raises(StopIteration):
        next(cur)


def test_for_loop_can_resume_after_the_buffer_error(db):
    cur = db.execute("SELECT id, data FROM t WHERE id IN (0, 1, 2) ORDER BY id")
    seen = []
    kept = None
    with pytest.raises(BufferError, match=COPY_OR_RELEASE):
        for i, data in cur:
            seen.append(i)
            if i == 1:
                kept = memoryview(data)
    assert seen == [0, 1]
    copied = bytes(kept)  # what the message tells the user to do
    kept.release()
    seen += [i for i, _ in cur]
    assert seen == [0, 1, 2]
    assert copied == b"\xff"


def test_a_slice_counts_as_a_view(db):
    cur = db.execute("SELECT data FROM t WHERE id = 2")
    (buf,) = next(cur)
    part = buf[10:20]
    assert part.address == buf.address + 10
    with pytest.raises(BufferError, match=COPY_OR_RELEASE):
        next(cur)
    assert bytes(part) == ROWS[2][1][10:20]
    del part
    assert list(cur) == []
    assert buf.released


def test_numpy_array_works_while_current_and_blocks_the_step(db):
    cur = db.execute("SELECT id, data FROM t WHERE id IN (2, 3) ORDER BY id")
    _, buf = next(cur)
    arr = np.frombuffer(buf, dtype=np.uint64)
    assert arr.shape == (MIB // 8,)
    assert arr.ctypes.data == buf.address
    assert arr.sum(dtype=np.uint64) == np.frombuffer(ROWS[2][1], dtype=np.uint64).sum(
        dtype=np.uint64
    )
    with pytest.raises(BufferError, match=COPY_OR_RELEASE):
        next(cur)
    assert arr[0] == int.from_bytes(ROWS[2][1][:8], sys.byteorder)
    del arr
    assert next(cur) == (3, None)
    assert buf.released


def test_user_may_release_a_buffer_early(db):
    cur = db.execute("SELECT data FROM t WHERE id IN (1, 2) ORDER BY id")
    (buf,) = next(cur)
    with buf:
        assert bytes(buf) == b"\xff"
    assert buf.released
    (buf2,) = next(cur)
    buf2.release()
    assert list(cur) == []


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ runs the cyclic GC from the eval "
                    "loop, never inside a C allocation: no collection can interrupt next()")
def test_reentrant_next_or_close_while_building_a_row_is_refused(db):
    # Building a row allocates; an allocation may run a collection, and a gc
    # callback (or a finalizer) may run any code, e.g. next() on this cursor.
    # 40 Buffers: more than membuf's free list (32) can serve, so with the
    # threshold at 1 the row's own allocations start at least one collection.
    blobs = [bytes([i]) for i in range(40)]
    cur = db.execute("SELECT " + ", ".join(f"x'{b.hex()}'" for b in blobs))
    armed = False
    refused = []

    def callback(phase, info):
        if armed and phase == "start":
            for attempt in (lambda: next(cur), cur.close):
                with pytest.raises(RuntimeError, match="while the cursor is building a row"):
                    attempt()
            refused.append(info["generation"])

    threshold = gc.get_threshold()
    gc.callbacks.append(callback)
    try:
        gc.set_threshold(1)
        armed = True
        row = next(cur)  # only this call: unpacking a tuple may collect too
        armed = False
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(callback)
    assert refused  # the callback ran inside next(), and was refused
    assert [bytes(b) for b in row] == blobs
    assert not any(b.released for b in row)
    assert cur.column_blob_address(39) == row[39].address
    assert list(cur) == []
    assert all(b.released for b in row)


# --- close, context managers, lifetime ------------------------------------


def test_cursor_context_manager_releases_the_last_row(db):
    with db.execute("SELECT id, data FROM t WHERE id = 2") as cur:
        _, buf = next(cur)
        assert not buf.released
    assert buf.released
    assert cur.closed
    with pytest.raises(StopIteration):
        next(cur)
    cur.close()  # idempotent


def test_cursor_context_manager_refuses_to_close_under_a_view(db):
    view = None
    with pytest.raises(BufferError, match=COPY_OR_RELEASE):
        with db.execute("SELECT data FROM t WHERE id = 1") as cur:
            (buf,) = next(cur)
            view = memoryview(buf)
    assert not cur.closed and not buf.released
    assert view.tobytes() == b"\xff"
    view.release()
    cur.close()
    assert cur.closed and buf.released


def test_exhausted_cursor_stays_exhausted(db):
    cur = db.execute("SELECT id FROM t WHERE id = 1")
    assert list(cur) == [(1,)]
    assert cur.closed
    assert list(cur) == []


def test_buffer_keeps_the_statement_alive_after_cursor_and_connection_are_dropped(
    sqlite_blobs, tmp_path
):
    path = write_db(tmp_path / "t.db")
    db = sqlite_blobs.connect(path)
    _, buf = next(db.execute("SELECT id, data FROM t WHERE id = 2"))
    del db
    gc.collect()
    # The statement is not finalized: it still holds its read lock, and the
    # Buffer's owner is the Cursor that owns it.
    assert database_lock(path) == "database is locked"
    assert type(buf.owner) is sqlite_blobs.Cursor and not buf.owner.closed
    assert bytes(buf) == ROWS[2][1]
    view = memoryview(buf)
    del buf
    gc.collect()
    assert view.tobytes() == ROWS[2][1]  # still SQLite's live row
    assert database_lock(path) == "database is locked"
    view.release()  # the last reference: Buffer, Cursor, statement, connection go
    assert database_lock(path) == "free"


def test_closed_connection_keeps_open_rows_readable(sqlite_blobs, tmp_path):
    path = write_db(tmp_path / "t.db")
    db = sqlite_blobs.connect(path)
    cur = db.execute("SELECT id, data FROM t WHERE id IN (1, 2) ORDER BY id")
    _, buf = next(cur)
    db.close()
    assert db.closed
    db.close()  # idempotent
    with pytest.raises(sqlite_blobs.Error, match="execute\\(\\) on a closed"):
        db.execute("SELECT 1")
    with pytest.raises(sqlite_blobs.Error, match="cannot step: the Connection is closed"):
        next(cur)
    assert bytes(buf) == b"\xff"  # the statement (of a zombie connection) lives on
    assert database_lock(path) == "database is locked"
    cur.close()  # finalizes the statement; SQLite then frees the connection
    assert buf.released
    assert database_lock(path) == "free"


def test_connection_context_manager_closes(sqlite_blobs, db_path):
    with sqlite_blobs.connect(db_path) as db:
        assert not db.closed
        assert list(db.execute("SELECT count(*) FROM t")) == [(len(ROWS),)]
    assert db.closed


# --- errors ----------------------------------------------------------------


def test_sqlite_errors_carry_sqlites_message(sqlite_blobs, db):
    with pytest.raises(sqlite_blobs.Error, match='near "SELEC": syntax error') as excinfo:
        db.execute("SELEC data FROM t")
    assert excinfo.value.sqlite_errorcode == sqlite3.SQLITE_ERROR
    with pytest.raises(sqlite_blobs.Error, match="no such table: nope"):
        db.execute("SELECT * FROM nope")
    assert issubclass(sqlite_blobs.Error, Exception)


def test_error_while_stepping_finalizes_the_statement(sqlite_blobs, db):
    cur = db.execute("SELECT abs(x) FROM (SELECT 1 AS x UNION ALL SELECT -9223372036854775808)")
    assert next(cur) == (1,)
    with pytest.raises(sqlite_blobs.Error, match="integer overflow"):
        next(cur)
    assert cur.closed
    with pytest.raises(StopIteration):
        next(cur)


def test_text_that_is_not_utf8_fails_its_row_only(db):
    cur = db.execute("SELECT CAST(x'ff' AS TEXT), x'01' UNION ALL SELECT 'ok', x'02'")
    with pytest.raises(UnicodeDecodeError, match="invalid start byte"):
        next(cur)  # the row's Buffer made before the error is released with it
    text, buf = next(cur)
    assert (text, bytes(buf)) == ("ok", b"\x02")


def test_connect_errors(sqlite_blobs, tmp_path):
    with pytest.raises(sqlite_blobs.Error, match="unable to open database file") as excinfo:
        sqlite_blobs.connect(tmp_path / "missing-dir" / "x.db")
    assert excinfo.value.sqlite_errorcode == sqlite3.SQLITE_CANTOPEN
    with pytest.raises(TypeError, match="expected str, bytes or os.PathLike object, not int"):
        sqlite_blobs.connect(3)


def test_bad_execute_arguments(db):
    with pytest.raises(ValueError, match="one SQL statement at a time; more SQL follows"):
        db.execute("SELECT 1; SELECT 2")
    assert list(db.execute("SELECT 1; -- only a comment\n ;")) == [(1,)]
    with pytest.raises(ValueError, match="no SQL statement"):
        db.execute("  -- nothing")
    with pytest.raises(ValueError, match="embedded null character"):
        db.execute("SELECT 1\0; DROP TABLE t")
    with pytest.raises(ValueError, match="the statement has 1 parameter\\(s\\), 2 value\\(s\\)"):
        db.execute("SELECT ?", (1, 2))
    with pytest.raises(TypeError, match="params must be a tuple or a list, not dict"):
        db.execute("SELECT ?", {"a": 1})
    with pytest.raises(TypeError, match="parameter 1 has unsupported type object"):
        db.execute("SELECT ?", (object(),))
    with pytest.raises(OverflowError):
        db.execute("SELECT ?", (2**63,))
    with pytest.raises(TypeError, match="cannot create 'sqlite_blobs.Cursor' instances"):
        type(db.execute("SELECT 1"))()
