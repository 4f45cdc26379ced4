#!/usr/bin/env bash
# Provision two extra CPython interpreters for CI, into a cache folder that
# later runs reuse:
#
#   3.14   Debian 12 (the CI host) has only CPython 3.11.  Debian unstable
#          (sid) ships python3.14, so we debootstrap a minimal sid chroot at
#          CACHE/sid and install python3.14 (+ -dev, -venv, gcc) there, rather
#          than mixing sid packages into the host.  Everything 3.14 runs
#          INSIDE that chroot: use the generated wrappers
#            CACHE/bin/in-sid CMD...        run CMD in the chroot, same cwd
#            CACHE/bin/python3.14 ARGS...   = in-sid /usr/bin/python3.14 ARGS...
#          (a venv made by the chroot's python points at the chroot's
#          /usr/bin/python3.14, so its bin/python only works inside in-sid).
#          The host folders in MEMBUF_CHROOT_BINDS are bind-mounted into the
#          chroot at the same path, so a checkout under them is visible there.
#
#   3.13t  Free-threaded CPython (--disable-gil).  Debian ships no
#          free-threaded binary, so we build one from the upstream tarball
#          (.orig.tar.xz) of Debian trixie's python3.13 source package
#          (only deb.debian.org and PyPI are reachable: no python.org), and
#          install it at CACHE/py313t.  The source is fetched with the host's
#          apt-get, using a private apt configuration under CACHE/apt-trixie
#          (the host's own apt sources and lists are not touched).
#
#   3.14t  The same build from Debian sid's python3.14 source package.  Today
#          sid lists it but its files answer 404: the script says so and exits
#          3, and .ci/matrix.sh prints that and goes on; the day the files are
#          served, the same code builds 3.14t and the matrix runs it.
#
# Usage:  bash .ci/interpreters.sh [314|313t|314t|all]   (default: all; 314t on request)
#         must run as root (debootstrap, chroot, mount, apt-get).
# Env:    MEMBUF_INTERP_CACHE  cache folder (default /var/cache/membuf-interpreters)
#         MEMBUF_CHROOT_BINDS  host folders bind-mounted into the sid chroot
#                              (default "/work /tmp"); read by in-sid at every
#                              call, so CI can add the folder of its clone
#
# Each target is skipped when the cache already holds a working result
# (a stamp file plus a smoke test of the interpreter).  A run ends by printing
# every provisioned interpreter's path and sys.version.
#
# Run 3.14 things, e.g. the test suite of a checkout in the current folder:
#   CACHE/bin/in-sid bash -c 'python3.14 -m venv /tmp/v314 &&
#       /tmp/v314/bin/pip install ".[test]" && /tmp/v314/bin/python -m pytest'
# Run 3.13t:  CACHE/py313t/bin/python3.13t ...
set -euo pipefail

CACHE=${MEMBUF_INTERP_CACHE:-/var/cache/membuf-interpreters}
BINDS=${MEMBUF_CHROOT_BINDS:-/work /tmp}
MIRROR=http://deb.debian.org/debian
BIN=$CACHE/bin
SID=$CACHE/sid
PY313T=$CACHE/py313t
# libsqlite3-dev: tests/test_sqlite_example.py compiles examples/sqlite_blobs
# against the system SQLite (.ci/run installs it on the host for the same reason)
SID_PACKAGES=(python3.14 python3.14-dev python3.14-venv gcc libc6-dev ca-certificates
              libsqlite3-dev)
# Host packages to build CPython with ssl, zlib, ctypes (libffi), bz2, lzma,
# sqlite3, readline, curses, uuid, dbm; xz-utils to unpack the tarball.
BUILD_DEPS=(build-essential pkg-config xz-utils libssl-dev zlib1g-dev libffi-dev
            libbz2-dev liblzma-dev libsqlite3-dev libreadline-dev libncurses-dev
            uuid-dev libgdbm-dev libgdbm-compat-dev)
export DEBIAN_FRONTEND=noninteractive

step() { printf '== %s\n' "$*"; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

usage() { echo "usage: $0 [314|313t|314t|all]" >&2; exit 2; }
TARGET=${1:-all}
case $TARGET in 314|313t|314t|all) ;; *) usage ;; esac
[ $# -le 1 ] || usage
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount, apt-get)"

# ---------------------------------------------------------------- helpers --

APT_UPDATED=0
# host_install PKG...: apt-get install the packages that are not installed yet
host_install() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
            missing+=("$p")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "host packages already installed: $*"
        return 0
    fi
    if [ $APT_UPDATED = 0 ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    echo "installing on the host: ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# umount_under DIR: unmount everything mounted at or below DIR (deepest first)
umount_under() {
    local dir m
    dir=$(realpath -m "$1")
    for m in $(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' \
                   /proc/self/mountinfo | sort -r); do
        echo "umount $m"
        umount "$m"
    done
    if awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { found = 1 } END { exit !found }' \
           /proc/self/mountinfo; then
        die "something is still mounted below $dir; refusing to delete it"
    fi
}

# safe_rmtree DIR: delete DIR, but never through a bind mount of /work or /tmp
safe_rmtree() {
    [ -e "$1" ] || return 0
    umount_under "$1"
    echo "removing $1"
    rm -rf --one-file-system "$1"
}

mkdir -p "$CACHE" "$BIN"
# Two CI runs on one machine must not provision into the same folder at once.
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    step "another run holds $CACHE/.lock: waiting"
    flock 9
fi

# ------------------------------------------------------ 3.14 in a sid chroot --

write_sid_wrappers() {
    # in-sid: the one place that knows how to enter the chroot.  It (re)creates
    # the mounts lazily at each call (they do not survive a reboot, and
    # MEMBUF_CHROOT_BINDS may name a new folder), then runs the command in the
    # current directory, which must be visible inside the chroot.
    cat >"$BIN/in-sid" <<EOF
#!/usr/bin/env bash
# in-sid CMD [ARGS...]: run CMD inside the Debian sid chroot $SID, in the
# current directory, with a plain PATH.  Generated by .ci/interpreters.sh.
# The host folders in \$MEMBUF_CHROOT_BINDS (default "/work /tmp") are
# bind-mounted into the chroot at the same path; the current directory must
# be under one of them.  "in-sid --mount-only" just sets up the mounts;
# "in-sid --unmount" undoes the binds.
set -euo pipefail
SID=$SID
EOF
    cat >>"$BIN/in-sid" <<'EOF'
BINDS=${MEMBUF_CHROOT_BINDS:-/work /tmp}
[ $# -ge 1 ] || { echo "usage: in-sid CMD [ARGS...] | --mount-only | --unmount" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "in-sid: must run as root (chroot, mount)" >&2; exit 1; }
[ -x "$SID/bin/sh" ] || { echo "in-sid: no chroot at $SID: run .ci/interpreters.sh 314" >&2; exit 1; }
if [ "$1" = --unmount ]; then
    # Undo the binds of $MEMBUF_CHROOT_BINDS (proc and /dev/shm stay).
    for d in $BINDS; do
        if mountpoint -q "$SID$d"; then umount -l "$SID$d"; fi
    done
    exit 0
fi
if ! mountpoint -q "$SID/proc"; then
    mount -t proc proc "$SID/proc"
fi
mkdir -p "$SID/dev/shm"
if ! mountpoint -q "$SID/dev/shm"; then
    mount -t tmpfs -o mode=1777 tmpfs "$SID/dev/shm"
fi
for d in $BINDS; do
    case $d in /*) ;; *) echo "in-sid: MEMBUF_CHROOT_BINDS: $d is not absolute" >&2; exit 1 ;; esac
    [ "$d" != / ] || { echo "in-sid: refusing to bind-mount / into the chroot" >&2; exit 1; }
    [ -d "$d" ] || { echo "in-sid: MEMBUF_CHROOT_BINDS: no folder $d" >&2; exit 1; }
    mkdir -p "$SID$d"
    # A bind whose host folder was deleted and made again (a CI checkout at
    # the same path as the last run's) still answers mountpoint, but shows the
    # deleted folder: drop it, then bind the folder of today.
    if mountpoint -q "$SID$d" && [ "$(stat -c %d:%i "$d")" != "$(stat -c %d:%i "$SID$d")" ]; then
        umount -l "$SID$d"
    fi
    if ! mountpoint -q "$SID$d"; then
        mount --bind "$d" "$SID$d"
    fi
done
[ "$1" != --mount-only ] || exit 0
# Host pip settings that name host paths (PIP_FIND_LINKS=/opt/wheels) would
# make pip inside the chroot warn at every step: keep only those that exist there.
if [ -n "${PIP_FIND_LINKS:-}" ]; then
    keep=()
    for l in $PIP_FIND_LINKS; do
        if [ "${l#/}" = "$l" ] || [ -e "$SID$l" ]; then
            keep+=("$l")
        fi
    done
    if [ ${#keep[@]} -gt 0 ]; then
        export PIP_FIND_LINKS="${keep[*]}"
    else
        unset PIP_FIND_LINKS
    fi
fi
# Same device and inode on both sides: the current directory is visible.
if [ "$(stat -c %d:%i "$PWD")" != "$(stat -c %d:%i "$SID$PWD" 2>/dev/null || echo none)" ]; then
    echo "in-sid: $PWD is not visible inside the chroot; add its top folder to" \
         "MEMBUF_CHROOT_BINDS (now: $BINDS)" >&2
    exit 1
fi
exec env -u VIRTUAL_ENV -u PYTHONHOME \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    chroot "$SID" /bin/sh -c 'cd "$0" || exit 1; exec "$@"' "$PWD" "$@"
EOF
    cat >"$BIN/python3.14" <<EOF
#!/bin/sh
# python3.14 ARGS...: CPython 3.14 of the Debian sid chroot $SID, run in the
# current directory.  Generated by .ci/interpreters.sh; see in-sid.
exec "$BIN/in-sid" /usr/bin/python3.14 "\$@"
EOF
    chmod 755 "$BIN/in-sid" "$BIN/python3.14"
}

# sid_run CMD...: run CMD inside the chroot at / (provisioning only)
sid_run() {
    env -u VIRTUAL_ENV -u PYTHONHOME \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        chroot "$SID" "$@"
}

provision_314() {
    local start=$SECONDS
    step "3.14: write the wrappers $BIN/in-sid and $BIN/python3.14"
    write_sid_wrappers

    step "3.14: look for a working cached chroot at $SID"
    if [ -f "$SID/.membuf-ready" ] && "$BIN/in-sid" --mount-only \
        && sid_run dpkg-query -W "${SID_PACKAGES[@]}" >/dev/null \
        && sid_run /usr/bin/python3.14 -c 'import ssl, venv, ensurepip, sysconfig' ; then
        step "3.14: reused the cached sid chroot at $SID ($(cat "$SID/.membuf-ready"))"
        return 0
    fi
    echo "no working cached chroot: provisioning it"
    rm -f "$SID/.membuf-ready"

    step "3.14: host packages (debootstrap)"
    host_install debootstrap

    step "3.14: debootstrap --variant=minbase sid $SID $MIRROR"
    if [ -f "$SID/.membuf-debootstrapped" ]; then
        echo "already bootstrapped (stamp $SID/.membuf-debootstrapped)"
    else
        safe_rmtree "$SID"   # a leftover of an interrupted debootstrap
        debootstrap --variant=minbase sid "$SID" "$MIRROR"
        touch "$SID/.membuf-debootstrapped"
    fi

    step "3.14: chroot configuration (resolv.conf, Check-Valid-Until off)"
    cp /etc/resolv.conf "$SID/etc/resolv.conf"
    # sid's Release file may be past its Valid-Until on a mirror snapshot
    echo 'Acquire::Check-Valid-Until "false";' >"$SID/etc/apt/apt.conf.d/99novalid"

    step "3.14: mounts (proc, /dev/shm, binds: $BINDS)"
    "$BIN/in-sid" --mount-only

    step "3.14: apt-get update in the chroot"
    sid_run apt-get update

    step "3.14: apt-get install ${SID_PACKAGES[*]} in the chroot"
    sid_run apt-get install -y --no-install-recommends "${SID_PACKAGES[@]}"
    sid_run apt-get clean

    step "3.14: the host's extra CA certificates into the chroot (pip needs them for TLS)"
    local certs=()
    shopt -s nullglob
    certs=(/usr/local/share/ca-certificates/*.crt)
    shopt -u nullglob
    mkdir -p "$SID/usr/local/share/ca-certificates"
    if [ ${#certs[@]} -gt 0 ]; then
        cp "${certs[@]}" "$SID/usr/local/share/ca-certificates/"
        echo "copied: ${certs[*]}"
    else
        echo "the host has no extra CA certificates"
    fi
    sid_run update-ca-certificates

    step "3.14: check: a venv with pip inside the chroot"
    sid_run rm -rf /root/membuf-venv-check
    sid_run /usr/bin/python3.14 -m venv /root/membuf-venv-check
    sid_run /root/membuf-venv-check/bin/python -m pip --version
    sid_run rm -rf /root/membuf-venv-check

    sid_run /usr/bin/python3.14 -c 'import sys; print(sys.version.split()[0])' \
        >"$SID/.membuf-ready"
    step "3.14: provisioned in $((SECONDS - start)) s"
}

# ------------------------------------- 3.13t (and 3.14t) built from source --

# Free-threaded builds: VERSION (3.13, 3.14) from the upstream tarball of
# Debian SUITE's pythonVERSION source package, installed at CACHE/pyVVt.
ft_apt() {  # $1: the private apt folder; the rest: apt-get arguments
    local dir=$1
    shift
    apt-get -o Dir::Etc::SourceList="$dir/sources.list" \
            -o Dir::Etc::SourceParts="$dir/sources.list.d" \
            -o Dir::State::Lists="$dir/lists" \
            -o Dir::Cache="$dir/cache" \
            -o Acquire::Check-Valid-Until=false \
            "$@"
}

ft_apt_cache() {  # the same private configuration, for apt-cache
    local dir=$1
    shift
    apt-cache -o Dir::Etc::SourceList="$dir/sources.list" \
              -o Dir::Etc::SourceParts="$dir/sources.list.d" \
              -o Dir::State::Lists="$dir/lists" \
              -o Dir::Cache="$dir/cache" \
              "$@"
}

ft_check() {  # $1: the interpreter
    "$1" -c '
import sys, sysconfig, ssl, ctypes, zlib, bz2, lzma, sqlite3
assert sysconfig.get_config_var("Py_GIL_DISABLED") == 1, "not a free-threaded build"
assert not sys._is_gil_enabled(), "the GIL is enabled"
'
}

# provision_ft VERSION SUITE: returns 0 when CACHE/pyVVt works; 3 (after
# saying why) when SUITE serves no pythonVERSION source to build from.
provision_ft() {
    local ver=$1 suite=$2 start=$SECONDS
    local tag=${ver}t short=${ver/./}
    local prefix=$CACHE/py${short}t apt_dir=$CACHE/apt-$suite
    local exe=$prefix/bin/python${ver}t
    step "$tag: look for a working cached build at $prefix"
    if [ -f "$prefix/.membuf-ready" ] && [ -x "$exe" ] && ft_check "$exe"; then
        step "$tag: reused the cached build at $prefix ($(cat "$prefix/.membuf-ready"))"
        return 0
    fi
    echo "no working cached build: building it"

    step "$tag: fetch Debian $suite's python$ver source package (private apt config in $apt_dir)"
    mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" \
             "$apt_dir/cache/archives/partial" "$CACHE/src"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $suite main" \
        >"$apt_dir/sources.list"
    ft_apt "$apt_dir" update
    local orig
    orig=$(find "$CACHE/src" -maxdepth 1 -name "python${ver}_*.orig.tar.xz" | sort | tail -n 1)
    if [ -n "$orig" ]; then
        echo "already downloaded: $orig"
    else
        if ! ft_apt_cache "$apt_dir" showsrc "python$ver" 2>/dev/null |
                grep -q "^Package: python$ver\$"; then
            echo "$tag: not obtainable here: Debian $suite serves no python$ver source package" \
                 "(and there is no free-threaded binary to install)"
            return 3
        fi
        # apt-get source verifies the files against the suite's signed Sources index
        if ! (cd "$CACHE/src" && ft_apt "$apt_dir" source --download-only "python$ver"); then
            # Seen for sid's python3.14: listed in the Sources index, but the
            # archive answers 404 for its files.
            echo "$tag: not obtainable here: Debian $suite lists python$ver but its source" \
                 "files cannot be downloaded (see apt-get's errors above)"
            return 3
        fi
        orig=$(find "$CACHE/src" -maxdepth 1 -name "python${ver}_*.orig.tar.xz" | sort | tail -n 1)
        [ -n "$orig" ] || die "apt-get source left no python${ver}_*.orig.tar.xz in $CACHE/src"
    fi
    echo "source: $orig"

    step "$tag: host build dependencies"
    host_install "${BUILD_DEPS[@]}"

    step "$tag: unpack into $CACHE/build"
    safe_rmtree "$CACHE/build"
    mkdir -p "$CACHE/build"
    tar -xf "$orig" -C "$CACHE/build" --strip-components=1

    local log=$CACHE/build/membuf-build.log
    step "$tag: ./configure --disable-gil --prefix=$prefix --with-ensurepip=install (log: $log)"
    cd "$CACHE/build"
    if ! ./configure --disable-gil --prefix="$prefix" --with-ensurepip=install >"$log" 2>&1; then
        tail -n 60 "$log"
        die "configure failed (log: $log)"
    fi
    echo "extension modules configure will not build (none is fine):"
    grep -E 'checking for stdlib extension module .*[.][.][.] (missing|disabled|n/a)' "$log" \
        || echo "  (none)"

    step "$tag: make -j$(nproc) (several minutes)"
    if ! make -j"$(nproc)" >>"$log" 2>&1; then
        tail -n 80 "$log"
        die "make failed (log: $log)"
    fi
    # CPython lists the optional modules it could not build; show that part.
    sed -n '/necessary bits to build these optional modules were not found/,/^$/p;
            /Failed to build these modules/,/^$/p' "$log"

    step "$tag: make install into $prefix"
    safe_rmtree "$prefix"
    if ! make install >>"$log" 2>&1; then
        tail -n 60 "$log"
        die "make install failed (log: $log)"
    fi
    cd /

    step "$tag: check: free-threaded, GIL off, ssl ctypes zlib bz2 lzma sqlite3 import"
    ft_check "$exe"
    "$exe" -m pip --version
    basename "$orig" >"$prefix/.membuf-ready"

    step "$tag: remove the build tree (the source tarball stays in $CACHE/src)"
    safe_rmtree "$CACHE/build"
    step "$tag: built in $((SECONDS - start)) s"
}

provision_313t() { provision_ft 3.13 trixie; }

# ------------------------------------------------------------------- main --

case $TARGET in
    314)  provision_314 ;;
    313t) provision_313t ;;
    314t) # exit 3: not obtainable here (said why above); .ci/matrix.sh prints it and goes on
          rc=0; provision_ft 3.14 sid || rc=$?; [ "$rc" = 0 ] || exit "$rc" ;;
    all)  provision_314; provision_313t ;;
esac

step "interpreters"
if [ "$TARGET" = 314 ] || [ "$TARGET" = all ]; then
    "$BIN/in-sid" --mount-only
    echo "3.14:  $BIN/python3.14 (runs in the chroot $SID; in-sid: $BIN/in-sid)"
    sid_run /usr/bin/python3.14 -c 'import sys; print("       sys.version =", sys.version)'
fi
if [ "$TARGET" = 314t ]; then
    echo "3.14t: $CACHE/py314t/bin/python3.14t"
fi
if [ "$TARGET" = 313t ] || [ "$TARGET" = all ]; then
    echo "3.13t: $PY313T/bin/python3.13t"
    "$PY313T/bin/python3.13t" -c '
import sys, sysconfig
gil = sysconfig.get_config_var("Py_GIL_DISABLED")
print("       sys.version =", sys.version)
print("       Py_GIL_DISABLED =", gil, " sys._is_gil_enabled() =", sys._is_gil_enabled())
sys.exit(gil != 1)
'
fi
