/* sqlite_blobs -- iterate an SQLite query; BLOB columns come back as zero-copy
 * membuf.Buffers over the memory sqlite3_column_blob() returns.
 *
 *     with sqlite_blobs.connect("app.db") as db:
 *         for key, data in db.execute("SELECT key, data FROM t"):
 *             digest = hashlib.sha256(data)    # data: membuf.Buffer, no copy
 *
 * SQLite keeps a row's BLOB memory valid only until the next sqlite3_step(),
 * sqlite3_reset() or sqlite3_finalize() of its statement.  This module never
 * calls those while a Buffer of the current row can still be read:
 *
 * OWNERSHIP
 *   Connection  owns `sqlite3 *db`; sqlite3_close_v2() runs once, in close(),
 *               __exit__ or dealloc.  With statements still unfinalized,
 *               close_v2 leaves a "zombie" that SQLite frees when the last of
 *               them is finalized, so their rows stay valid after close().
 *   Cursor      owns `sqlite3_stmt *stmt` and a strong reference to its
 *               Connection.  sqlite3_finalize() runs once, at the first of:
 *               SQLITE_DONE, an error from sqlite3_step(), close() / __exit__,
 *               dealloc.  Only stepping and finalizing free row memory.
 *   Buffer      (one per BLOB column of the current row) holds a strong
 *               reference to its Cursor as its membuf owner, so the Cursor,
 *               and with it the statement, outlives every Buffer over it.
 *
 * INVARIANTS
 *   live[i] is a BORROWED pointer to the Buffer over column i of the current
 *   row while that Buffer is not released, else NULL.  The Buffer's release
 *   callback (forget_buffer) clears the slot, whoever releases it (us, the
 *   user, deallocation).  Before sqlite3_step() or sqlite3_finalize() the
 *   Cursor releases every live Buffer strictly (release_row): if any of them
 *   is still exported (a memoryview, NumPy array, slice, ...), it raises
 *   BufferError and changes nothing -- the row stays current and readable, and
 *   iteration can go on once the view is gone.  A Cursor is deallocated only
 *   when no Buffer references it, so live[] is all NULL in dealloc.
 *
 * The GIL is held throughout (sqlite3_step included): a Cursor is never
 * stepped by two threads at once.
 *
 * Build: pyproject.toml / setup.py beside this file (libsqlite3, membuf.h).
 */
#include <membuf.h>

#include <sqlite3.h>
#include <string.h>

static PyObject *Error; /* sqlite_blobs.Error: SQLite's own errors */

/* Raise Error with SQLite's message for db and its error code as
 * .sqlite_errorcode.  Returns NULL. */
static PyObject *
set_sqlite_error(sqlite3 *db, int rc)
{
    const char *msg = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    int code = db != NULL ? sqlite3_extended_errcode(db) : rc;
    PyObject *exc = PyObject_CallFunction(Error, "s", msg);
    if (exc == NULL) {
        return NULL;
    }
    PyObject *pycode = PyLong_FromLong(code);
    if (pycode == NULL || PyObject_SetAttrString(exc, "sqlite_errorcode", pycode) < 0) {
        Py_XDECREF(pycode);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(pycode);
    PyErr_SetObject(Error, exc);
    Py_DECREF(exc);
    return NULL;
}

/* ====================================================================== */
/* Connection                                                              */
/* ====================================================================== */

typedef struct {
    PyObject_HEAD
    sqlite3 *db; /* owned; NULL once closed */
} ConnectionObject;

static PyTypeObject Connection_Type;
static PyTypeObject Cursor_Type;

static PyObject *
connect(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *kwlist[] = {"path", NULL};
    PyObject *path = NULL; /* bytes, from the file-system encoding */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&:connect", kwlist, PyUnicode_FSConverter,
                                     &path)) {
        return NULL;
    }
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(PyBytes_AS_STRING(path), &db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    Py_DECREF(path);
    if (rc != SQLITE_OK) {
        set_sqlite_error(db, rc);
        sqlite3_close_v2(db); /* a failed open may still allocate a handle */
        return NULL;
    }
    ConnectionObject *self = PyObject_New(ConnectionObject, &Connection_Type);
    if (self == NULL) {
        sqlite3_close_v2(db);
        return NULL;
    }
    self->db = db;
    return (PyObject *)self;
}

static PyObject *
connection_close(ConnectionObject *self, PyObject *unused)
{
    (void)unused;
    if (self->db != NULL) {
        sqlite3_close_v2(self->db); /* zombie while Cursors still hold statements */
        self->db = NULL;
    }
    Py_RETURN_NONE;
}

static void
connection_dealloc(ConnectionObject *self)
{
    /* Every Cursor holds a reference to us: its statement is finalized. */
    if (self->db != NULL) {
        sqlite3_close_v2(self->db);
    }
    PyObject_Free(self);
}

static PyObject *
return_self(PyObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(self);
}

static PyObject *
connection_exit(ConnectionObject *self, PyObject *args)
{
    (void)args;
    return connection_close(self, NULL);
}

static PyObject *
connection_closed(ConnectionObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->db == NULL);
}

/* Bind params (a tuple or list) to the `?` parameters of stmt. */
static int
bind_params(sqlite3_stmt *stmt, PyObject *params)
{
    if (!PyTuple_Check(params) && !PyList_Check(params)) {
        PyErr_Format(PyExc_TypeError, "execute() params must be a tuple or a list, not %.200s",
                     Py_TYPE(params)->tp_name);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(params);
    int expected = sqlite3_bind_parameter_count(stmt);
    if (n != expected) {
        PyErr_Format(PyExc_ValueError,
                     "execute(): the statement has %d parameter(s), %zd value(s) given", expected,
                     n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(params, i);
        int col = (int)i + 1, rc;
        if (v == Py_None) {
            rc = sqlite3_bind_null(stmt, col);
        }
        else if (PyLong_Check(v)) {
            long long x = PyLong_AsLongLong(v);
            if (x == -1 && PyErr_Occurred()) {
                return -1;
            }
            rc = sqlite3_bind_int64(stmt, col, x);
        }
        else if (PyFloat_Check(v)) {
            rc = sqlite3_bind_double(stmt, col, PyFloat_AS_DOUBLE(v));
        }
        else if (PyUnicode_Check(v)) {
            Py_ssize_t len;
            const char *s = PyUnicode_AsUTF8AndSize(v, &len);
            if (s == NULL) {
                return -1;
            }
            rc = sqlite3_bind_text64(stmt, col, s, (sqlite3_uint64)len, SQLITE_TRANSIENT,
                                     SQLITE_UTF8);
        }
        else if (PyObject_CheckBuffer(v)) {
            Py_buffer view;
            if (PyObject_GetBuffer(v, &view, PyBUF_SIMPLE) < 0) {
                return -1;
            }
            /* SQLITE_TRANSIENT: SQLite copies now; the view ends at once. */
            rc = sqlite3_bind_blob64(stmt, col, view.buf, (sqlite3_uint64)view.len,
                                     SQLITE_TRANSIENT);
            PyBuffer_Release(&view);
        }
        else {
            PyErr_Format(PyExc_TypeError,
                         "execute(): parameter %d has unsupported type %.200s (use None, int, "
                         "float, str or a bytes-like object)",
                         col, Py_TYPE(v)->tp_name);
            return -1;
        }
        if (rc != SQLITE_OK) {
            set_sqlite_error(sqlite3_db_handle(stmt), rc);
            return -1;
        }
    }
    return 0;
}

/* 1 if more SQL follows the first statement (anything but white space,
 * semicolons and comments), else 0. */
static int
has_more_sql(sqlite3 *db, const char *tail)
{
    while (*tail != '\0') {
        sqlite3_stmt *next = NULL;
        const char *rest = tail;
        if (sqlite3_prepare_v2(db, tail, -1, &next, &rest) != SQLITE_OK) {
            return 1;
        }
        if (next != NULL) {
            sqlite3_finalize(next);
            return 1;
        }
        if (rest == tail) {
            break;
        }
        tail = rest;
    }
    return 0;
}

typedef struct {
    PyObject_HEAD
    ConnectionObject *conn; /* strong */
    sqlite3_stmt *stmt;     /* owned; NULL once finalized */
    PyObject *columns;      /* tuple of column names */
    int copy;               /* BLOBs as bytes copies instead of Buffers */
    int on_row;             /* stmt points at a row (sqlite3_step gave SQLITE_ROW) */
    int busy;               /* inside next(): refuse re-entrant next() / close() */
    int nlive;              /* entries in live[] */
    PyObject **live;        /* borrowed, see INVARIANTS at the top */
} CursorObject;

static PyObject *
connection_execute(ConnectionObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"sql", "params", "copy", NULL};
    const char *sql;
    PyObject *params = NULL;
    int copy = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|O$p:execute", kwlist, &sql, &params,
                                     &copy)) {
        return NULL;
    }
    if (self->db == NULL) {
        PyErr_SetString(Error, "execute() on a closed sqlite_blobs.Connection");
        return NULL;
    }
    sqlite3_stmt *stmt = NULL;
    const char *tail = NULL;
    if (sqlite3_prepare_v2(self->db, sql, -1, &stmt, &tail) != SQLITE_OK) {
        return set_sqlite_error(self->db, SQLITE_ERROR);
    }
    if (stmt == NULL) {
        PyErr_SetString(PyExc_ValueError, "execute(): no SQL statement in sql");
        return NULL;
    }
    /* From here on, stmt is finalized on every error path. */
    if (has_more_sql(self->db, tail)) {
        PyErr_Format(PyExc_ValueError,
                     "execute() runs one SQL statement at a time; more SQL follows the first: "
                     "'%.200s'",
                     tail);
        goto fail;
    }
    if (params != NULL && bind_params(stmt, params) < 0) {
        goto fail;
    }
    int ncols = sqlite3_column_count(stmt);
    PyObject *columns = PyTuple_New(ncols);
    if (columns == NULL) {
        goto fail;
    }
    for (int i = 0; i < ncols; i++) {
        const char *name = sqlite3_column_name(stmt, i);
        PyObject *s = name != NULL ? PyUnicode_FromString(name) : PyErr_NoMemory();
        if (s == NULL) {
            Py_DECREF(columns);
            goto fail;
        }
        PyTuple_SET_ITEM(columns, i, s);
    }
    PyObject **live = PyMem_Calloc(ncols > 0 ? (size_t)ncols : 1, sizeof(PyObject *));
    CursorObject *cur = live != NULL ? PyObject_New(CursorObject, &Cursor_Type) : NULL;
    if (cur == NULL) {
        PyMem_Free(live);
        Py_DECREF(columns);
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto fail;
    }
    cur->conn = (ConnectionObject *)Py_NewRef(self);
    cur->stmt = stmt;
    cur->columns = columns;
    cur->copy = copy;
    cur->on_row = 0;
    cur->busy = 0;
    cur->nlive = ncols;
    cur->live = live;
    return (PyObject *)cur;

fail:
    sqlite3_finalize(stmt);
    return NULL;
}

static PyMethodDef connection_methods[] = {
    {"execute", (PyCFunction)(void (*)(void))connection_execute, METH_VARARGS | METH_KEYWORDS,
     "execute(sql, params=(), *, copy=False) -> Cursor over the rows of one SQL statement"},
    {"close", (PyCFunction)connection_close, METH_NOARGS,
     "close the connection (open Cursors keep their current row readable)"},
    {"__enter__", return_self, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)connection_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef connection_getset[] = {
    {"closed", (getter)connection_closed, NULL, "True after close()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Connection_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sqlite_blobs.Connection",
    .tp_basicsize = sizeof(ConnectionObject),
    .tp_dealloc = (destructor)connection_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An SQLite database connection; sqlite_blobs.connect(path) makes one.",
    .tp_methods = connection_methods,
    .tp_getset = connection_getset,
};

/* ====================================================================== */
/* Cursor                                                                  */
/* ====================================================================== */

/* Release callback of a row's Buffers.  The memory is SQLite's and nothing
 * is freed here: the Buffer only stops being "live" for its Cursor.  ctx is
 * &cursor->live[i]; the Cursor is alive (it is the Buffer's owner, dropped
 * after this callback). */
static void
forget_buffer(void *ptr, size_t len, void *ctx)
{
    (void)ptr;
    (void)len;
    *(PyObject **)ctx = NULL;
}

static PyObject *str_exports; /* interned "exports" */

/* Release every live Buffer of the current row, or none: 0 on success, -1
 * with BufferError (naming the column and telling what to do) if any of them
 * is still exported.  `action` completes "cannot ...". */
static int
release_row(CursorObject *self, const char *action)
{
    for (int i = 0; i < self->nlive; i++) {
        if (self->live[i] == NULL) {
            continue;
        }
        PyObject *n = PyObject_GetAttr(self->live[i], str_exports);
        if (n == NULL) {
            return -1;
        }
        Py_ssize_t exports = PyLong_AsSsize_t(n);
        Py_DECREF(n);
        if (exports == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (exports > 0) {
            PyErr_Format(PyExc_BufferError,
                         "sqlite_blobs.Cursor: cannot %s: the Buffer of column %d (%R) of the "
                         "current row still has %zd exported view(s) (memoryview, NumPy array, "
                         "slice, ...), and SQLite frees that memory at the next step; copy what "
                         "you keep with bytes(buf) or release the view first (view.release() or "
                         "del), or execute(..., copy=True)",
                         action, i, PyTuple_GET_ITEM(self->columns, i), exports);
            return -1;
        }
    }
    for (int i = 0; i < self->nlive; i++) {
        /* No exports (checked above, and no Python code ran since): the strict
         * release succeeds and forget_buffer clears the slot. */
        if (self->live[i] != NULL && MemBuf_Release(self->live[i], 0) < 0) {
            return -1;
        }
    }
    return 0;
}

static void
finalize(CursorObject *self)
{
    sqlite3_finalize(self->stmt);
    self->stmt = NULL;
    self->on_row = 0;
}

/* A Buffer over column i of the current row (a BLOB), registered in live[]. */
static PyObject *
blob_buffer(CursorObject *self, int i)
{
    MemBuf_Spec spec = {0};
    spec.ptr = sqlite3_column_blob(self->stmt, i); /* then _bytes: SQLite's order */
    spec.len = (size_t)sqlite3_column_bytes(self->stmt, i);
    spec.release = forget_buffer;
    spec.ctx = &self->live[i];
    spec.owner = (PyObject *)self;
    if (spec.ptr == NULL && spec.len > 0) {
        return PyErr_NoMemory(); /* SQLite's out-of-memory signal */
    }
    PyObject *buf = MemBuf_FromSpec(&spec);
    if (buf != NULL) {
        self->live[i] = buf;
    }
    return buf;
}

static PyObject *
column_value(CursorObject *self, int i)
{
    sqlite3_stmt *stmt = self->stmt;
    switch (sqlite3_column_type(stmt, i)) {
    case SQLITE_INTEGER:
        return PyLong_FromLongLong(sqlite3_column_int64(stmt, i));
    case SQLITE_FLOAT:
        return PyFloat_FromDouble(sqlite3_column_double(stmt, i));
    case SQLITE_TEXT: {
        const char *text = (const char *)sqlite3_column_text(stmt, i);
        int n = sqlite3_column_bytes(stmt, i);
        if (text == NULL) {
            return PyErr_NoMemory();
        }
        return PyUnicode_DecodeUTF8(text, n, NULL);
    }
    case SQLITE_BLOB:
        if (self->copy) {
            const void *p = sqlite3_column_blob(stmt, i);
            int n = sqlite3_column_bytes(stmt, i);
            if (p == NULL && n > 0) {
                return PyErr_NoMemory();
            }
            return PyBytes_FromStringAndSize(p, n);
        }
        return blob_buffer(self, i);
    default:
        Py_RETURN_NONE;
    }
}

static PyObject *
make_row(CursorObject *self)
{
    int n = sqlite3_data_count(self->stmt);
    if (n > self->nlive) {
        /* The statement was re-prepared with more columns (schema change).
         * release_row() ran before the step: live[] is all NULL. */
        PyObject **live = PyMem_Realloc(self->live, (size_t)n * sizeof(PyObject *));
        if (live == NULL) {
            return PyErr_NoMemory();
        }
        memset(live, 0, (size_t)n * sizeof(PyObject *));
        self->live = live;
        self->nlive = n;
    }
    PyObject *row = PyTuple_New(n);
    if (row == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        PyObject *v = column_value(self, i);
        if (v == NULL) {
            Py_DECREF(row); /* releases the Buffers made so far */
            return NULL;
        }
        PyTuple_SET_ITEM(row, i, v);
    }
    return row;
}

static PyObject *
step(CursorObject *self)
{
    if (self->conn->db == NULL) {
        PyErr_SetString(Error, "sqlite_blobs.Cursor: cannot step: the Connection is closed");
        return NULL;
    }
    if (release_row(self, "step to the next row") < 0) {
        return NULL; /* the current row stays current and readable */
    }
    self->on_row = 0;
    int rc = sqlite3_step(self->stmt);
    if (rc == SQLITE_ROW) {
        self->on_row = 1;
        return make_row(self);
    }
    if (rc != SQLITE_DONE) {
        set_sqlite_error(sqlite3_db_handle(self->stmt), rc);
    }
    finalize(self);
    return NULL;
}

/* Building a row allocates, and an allocation may run a garbage collection,
 * whose finalizers and gc.callbacks may run any Python code: such code must
 * not step or finalize the statement under the row being built. */
static int
refuse_reentry(CursorObject *self, const char *what)
{
    if (self->busy) {
        PyErr_Format(PyExc_RuntimeError,
                     "sqlite_blobs.Cursor: %s called while the cursor is building a row (from a "
                     "finalizer or gc callback)",
                     what);
        return -1;
    }
    return 0;
}

static PyObject *
cursor_iternext(CursorObject *self)
{
    if (refuse_reentry(self, "next()") < 0) {
        return NULL;
    }
    if (self->stmt == NULL) {
        return NULL; /* exhausted, failed or closed: StopIteration */
    }
    self->busy = 1;
    PyObject *row = step(self);
    self->busy = 0;
    return row;
}

static PyObject *
cursor_close(CursorObject *self, PyObject *unused)
{
    (void)unused;
    if (refuse_reentry(self, "close()") < 0) {
        return NULL;
    }
    if (self->stmt == NULL) {
        Py_RETURN_NONE;
    }
    if (release_row(self, "close") < 0) {
        return NULL;
    }
    finalize(self);
    Py_RETURN_NONE;
}

static PyObject *
cursor_exit(CursorObject *self, PyObject *args)
{
    (void)args;
    return cursor_close(self, NULL);
}

static PyObject *
cursor_column_blob_address(CursorObject *self, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!self->on_row) {
        PyErr_SetString(PyExc_ValueError,
                        "column_blob_address(): the sqlite_blobs.Cursor is not on a row");
        return NULL;
    }
    if (i < 0 || i >= sqlite3_data_count(self->stmt)) {
        PyErr_Format(PyExc_IndexError, "column_blob_address(): no column %ld in a row of %d", i,
                     sqlite3_data_count(self->stmt));
        return NULL;
    }
    if (sqlite3_column_type(self->stmt, (int)i) != SQLITE_BLOB) {
        /* sqlite3_column_blob() would convert the value and move it. */
        PyErr_Format(PyExc_ValueError, "column_blob_address(): column %ld is not a BLOB", i);
        return NULL;
    }
    return PyLong_FromVoidPtr((void *)sqlite3_column_blob(self->stmt, (int)i));
}

static void
cursor_dealloc(CursorObject *self)
{
    /* Every live Buffer holds a reference to us: none is left. */
    for (int i = 0; i < self->nlive; i++) {
        assert(self->live[i] == NULL);
    }
    if (self->stmt != NULL) {
        sqlite3_finalize(self->stmt);
    }
    PyMem_Free(self->live);
    Py_DECREF(self->columns);
    Py_DECREF(self->conn); /* after finalize: may close a zombie connection */
    PyObject_Free(self);
}

static PyObject *
cursor_get_columns(CursorObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->columns);
}

static PyObject *
cursor_get_copy(CursorObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->copy);
}

static PyObject *
cursor_get_closed(CursorObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->stmt == NULL);
}

static PyMethodDef cursor_methods[] = {
    {"close", (PyCFunction)cursor_close, METH_NOARGS,
     "release the current row's Buffers (BufferError if one is still exported) and finalize"},
    {"column_blob_address", (PyCFunction)cursor_column_blob_address, METH_O,
     "column_blob_address(i) -> the address sqlite3_column_blob() gives for column i of the "
     "current row (to check zero-copy)"},
    {"__enter__", return_self, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)cursor_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef cursor_getset[] = {
    {"columns", (getter)cursor_get_columns, NULL, "tuple of column names", NULL},
    {"copy", (getter)cursor_get_copy, NULL, "True: BLOBs come as bytes copies", NULL},
    {"closed", (getter)cursor_get_closed, NULL,
     "True once the statement is finalized (exhausted, failed or closed)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Cursor_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sqlite_blobs.Cursor",
    .tp_basicsize = sizeof(CursorObject),
    .tp_dealloc = (destructor)cursor_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Iterator over the rows of one statement; Connection.execute() makes one.",
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)cursor_iternext,
    .tp_methods = cursor_methods,
    .tp_getset = cursor_getset,
};

/* ====================================================================== */
/* Module                                                                  */
/* ====================================================================== */

static PyMethodDef module_methods[] = {
    {"connect", (PyCFunction)(void (*)(void))connect, METH_VARARGS | METH_KEYWORDS,
     "connect(path) -> Connection to the SQLite database at path (created if missing)"},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    if (import_membuf() < 0) {
        return -1;
    }
    if (PyType_Ready(&Connection_Type) < 0 || PyType_Ready(&Cursor_Type) < 0) {
        return -1;
    }
    if (str_exports == NULL && (str_exports = PyUnicode_InternFromString("exports")) == NULL) {
        return -1;
    }
    if (Error == NULL &&
        (Error = PyErr_NewExceptionWithDoc("sqlite_blobs.Error",
                                           "An error reported by SQLite; .sqlite_errorcode is "
                                           "SQLite's (extended) result code.",
                                           NULL, NULL)) == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Error", Error) < 0 ||
        PyModule_AddObjectRef(module, "Connection", (PyObject *)&Connection_Type) < 0 ||
        PyModule_AddObjectRef(module, "Cursor", (PyObject *)&Cursor_Type) < 0 ||
        PyModule_AddStringConstant(module, "sqlite_version", sqlite3_libversion()) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {{Py_mod_exec, exec_module}, {0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, .m_name = "sqlite_blobs", .m_methods = module_methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit_sqlite_blobs(void)
{
    return PyModuleDef_Init(&module_def);
}
