"""Dask integration: sizeof and zero-copy serialization of membuf.Buffer.

Nothing here runs unless Dask is used, and no user code is needed:

* Dask imports ``dask.sizeof`` whenever ``dask`` is imported, and calls every
  function of the ``dask.sizeof`` entry-point group (membuf's pyproject.toml
  names :func:`register_sizeof`) with its ``sizeof`` dispatcher.
  ``import membuf`` never imports this module, nor Dask.
* :func:`register_sizeof` registers ``sizeof(Buffer) == buf.nbytes`` lazily
  (when the first membuf object is measured) and arranges for
  :func:`register` to run as soon as ``distributed.protocol`` has been
  imported, in that same process: distributed has no entry point for
  serializers, and it imports ``dask`` (hence ``dask.sizeof``) before
  ``distributed.protocol``.  So every client, scheduler and worker process
  registers the serializer by itself.
* :func:`register` adds a ``dask_serialize`` / ``dask_deserialize`` pair for
  Buffer: the memory goes as one out-of-band frame (a memoryview over the
  Buffer: no copy) on every path, including connections to the scheduler,
  which pickle with protocol 4 and would otherwise copy the memory in-band.
  The receiver gets a Buffer over the received frame (``membuf.from_buffer``),
  with the original's format and shape; it is read-only if the original was,
  and otherwise writable only if the received memory is (the pickle rule).
  Calling it by hand (``membuf._dask.register()``) is needed only in a
  process that imported ``distributed.protocol`` before ``dask`` had run
  its entry points, which distributed itself never does.
"""

import sys

__all__ = ["register", "register_sizeof"]

_registered = False


def _sizeof_buffer(buf):
    return buf.nbytes


def register_sizeof(sizeof):
    """The ``dask.sizeof`` entry point: ``sizeof(Buffer)`` is ``nbytes``."""

    @sizeof.register_lazy("membuf")
    def _register_membuf_sizeof():
        import membuf

        sizeof.register(membuf.Buffer)(_sizeof_buffer)

    _after_import("distributed.protocol", register)


def _serialize(buf):
    from pickle import PickleBuffer

    header = {"format": buf.format, "shape": list(buf.shape), "readonly": buf.readonly}
    if buf.c_contiguous:
        # A flat byte memoryview over the Buffer's memory, holding an export
        # of it (through the PickleBuffer) until distributed has sent it.
        frame = PickleBuffer(buf).raw()
    else:
        frame = buf.tobytes()  # a strided Buffer cannot be one frame: C order copy
        header["copied"] = True
    return header, [frame]


def _deserialize(header, frames):
    import membuf

    if len(frames) == 1:
        frame = frames[0]
    else:  # distributed merges split frames itself; be safe if it did not
        frame = b"".join(frames)
    return membuf.from_buffer(
        frame,
        readonly=True if header["readonly"] else None,
        format=header["format"],
        shape=tuple(header["shape"]),
    )


def register():
    """Register Buffer with distributed's ``dask`` serialization family.

    Idempotent; called automatically (see the module docstring)."""
    global _registered
    if _registered:
        return
    import membuf
    from distributed.protocol.serialize import (  # type: ignore[import-not-found,unused-ignore]
        dask_deserialize,
        dask_serialize,
    )

    dask_serialize.register(membuf.Buffer)(_serialize)
    dask_deserialize.register(membuf.Buffer)(_deserialize)
    _registered = True


# ---------------------------------------------------------------------------
# A one-shot post-import hook (the pattern of wrapt.register_post_import_hook)
# ---------------------------------------------------------------------------


def _after_import(name, hook):
    """Call hook() once module `name` has been imported: now if it already
    has been, otherwise right after its code has run."""
    module = sys.modules.get(name)
    if module is not None:
        if getattr(module, "__spec__", None) is not None and not getattr(
            module.__spec__, "_initializing", False
        ):
            hook()
        return  # being imported right now: too late to hook, too early to run
    for finder in sys.meta_path:
        if isinstance(finder, _PostImportFinder) and finder.name == name:
            return
    sys.meta_path.insert(0, _PostImportFinder(name, hook))


class _PostImportFinder:
    """Finds nothing itself: wraps the exec_module of the loader the other
    finders return for one module, then removes itself from sys.meta_path."""

    def __init__(self, name, hook):
        self.name = name
        self.hook = hook

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec = None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec  # nothing we can wrap: the module imports as usual
        hook = self.hook

        def exec_then_hook(module):
            try:
                exec_module(module)
            finally:
                try:
                    del loader.exec_module  # the loader is this module's own instance
                except AttributeError:
                    pass
            try:
                hook()
            except Exception as exc:  # never break the import of distributed
                import warnings

                warnings.warn(f"membuf: registering with {fullname} failed: {exc!r}",
                              RuntimeWarning, stacklevel=2)

        try:
            loader.exec_module = exec_then_hook
        except AttributeError:  # a loader that takes no attributes: leave it be
            pass
        return spec
