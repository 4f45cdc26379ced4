"""Zero-copy BLOBs vs copies: time to iterate a table of large BLOBs.

    python bench.py                      # 1 MiB and 16 MiB BLOBs, 128 MiB per table
    python bench.py --sizes 4MiB --total 256MiB --repeats 11 --work none --mmap-size 1GiB

For each BLOB size, one table in a temporary database file holds --total
bytes of random BLOBs.  Each mode runs `SELECT data FROM t` to the end and
does --work on every BLOB:

    sqlite_blobs            membuf.Buffer over sqlite3_column_blob() (no copy)
    sqlite_blobs copy=True  bytes copied from sqlite3_column_blob()
    stdlib sqlite3          the sqlite3 module (bytes copied, like copy=True)

work: crc32 (zlib.crc32 of every byte, a cheap consumer that reads it all) or
none (only fetch the row; what the copy itself costs).  Modes are interleaved
and each figure is the median of --repeats runs, after one warm-up run of each
(the database file is in the OS page cache for all of them).  Nothing is
asserted: the table is printed as Markdown.
"""

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
import zlib
from contextlib import closing

import sqlite_blobs


def parse_size(text):
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(text[: -len(unit)]) * factor
    return int(text)


def make_db(path, size, count):
    with closing(sqlite3.connect(path)) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)")
        for i in range(count):
            con.execute("INSERT INTO t VALUES (?, ?)", (i, os.urandom(size)))
        con.commit()


WORK = {
    "crc32": zlib.crc32,
    "none": len,
}


PRAGMAS = []  # set from --mmap-size, run on every connection of every mode


def run_sqlite_blobs(path, work, copy):
    with sqlite_blobs.connect(path) as db:
        for pragma in PRAGMAS:
            list(db.execute(pragma))
        with db.execute("SELECT data FROM t", copy=copy) as cur:
            return [work(data) for (data,) in cur]


def run_stdlib(path, work):
    with closing(sqlite3.connect(path)) as con:
        for pragma in PRAGMAS:
            con.execute(pragma).fetchall()
        return [work(data) for (data,) in con.execute("SELECT data FROM t")]


MODES = {
    "sqlite_blobs (zero-copy)": lambda path, work: run_sqlite_blobs(path, work, copy=False),
    "sqlite_blobs copy=True": lambda path, work: run_sqlite_blobs(path, work, copy=True),
    "stdlib sqlite3": run_stdlib,
}


def measure(path, work, repeats):
    """{mode: median seconds}; modes interleaved, results cross-checked."""
    times = {mode: [] for mode in MODES}
    for i in range(repeats + 1):
        results = []
        for mode, run in MODES.items():
            t0 = time.perf_counter()
            results.append(run(path, work))
            elapsed = time.perf_counter() - t0
            if i > 0:  # run 0 warms the page cache and the allocator
                times[mode].append(elapsed)
        if any(r != results[0] for r in results):
            raise SystemExit(f"modes disagree on {path}: {results}")
    return {mode: statistics.median(t) for mode, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1MiB,16MiB", help="BLOB sizes, comma-separated")
    parser.add_argument("--total", default="128MiB", help="bytes of BLOBs per table")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--work", default="crc32,none", help="crc32 and/or none")
    parser.add_argument(
        "--mmap-size", default="0", help="PRAGMA mmap_size (SQLite reads pages from a mapping)"
    )
    args = parser.parse_args()
    PRAGMAS.append(f"PRAGMA mmap_size={parse_size(args.mmap_size)}")
    total = parse_size(args.total)
    works = args.work.split(",")
    print(
        f"SQLite {sqlite_blobs.sqlite_version}, {PRAGMAS[0]}, "
        f"medians of {args.repeats} interleaved runs\n"
    )
    print("| BLOB size | rows | work | mode | time | throughput | vs stdlib |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size_text in args.sizes.split(","):
            size = parse_size(size_text)
            count = max(1, total // size)
            path = os.path.join(tmp, f"blobs-{size}.db")
            make_db(path, size, count)
            for work in works:
                medians = measure(path, WORK[work], args.repeats)
                base = medians["stdlib sqlite3"]
                for mode, seconds in medians.items():
                    rate = size * count / seconds / 1e9
                    print(
                        f"| {size_text} | {count} | {work} | {mode} | {seconds * 1e3:.1f} ms "
                        f"| {rate:.2f} GB/s | {seconds / base:.2f}× |"
                    )
            os.remove(path)


if __name__ == "__main__":
    main()
