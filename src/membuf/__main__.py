"""python -m membuf              run the demonstration (see membuf._demo): 16 MiB, about a second
python -m membuf --size 1GiB  the same over a bigger block
python -m membuf --include    print the directory of membuf.h (for build scripts)
python -m membuf --version    print membuf's version"""

import argparse
import sys

import membuf


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m membuf",
        description="Zero-copy, lifetime-managed buffers over foreign memory.",
    )
    parser.add_argument(
        "--include", action="store_true", help="print the directory that holds membuf.h and exit"
    )
    parser.add_argument(
        "--size",
        default="16MiB",
        help="how much memory the demonstration wraps (e.g. 64MiB, 1GiB; default 16MiB)",
    )
    parser.add_argument("--version", action="version", version=f"membuf {membuf.__version__}")
    args = parser.parse_args(argv)
    if args.include:
        print(membuf.get_include())
        return 0
    from membuf import _demo

    return _demo.run(_demo.parse_size(args.size))


if __name__ == "__main__":
    sys.exit(main())
