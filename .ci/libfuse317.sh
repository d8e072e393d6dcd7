#!/usr/bin/env bash
# Build libfuse 3.17.2 (the library only) from Debian's source tarball and print the path of its
# libfuse3.so. Why: FUSE passthrough, which the mount uses for warm reads where it can
# (deltastore/passthrough.py), needs libfuse >= 3.17, and Debian 12 ships 3.14; the passthrough
# tests (tests/mount/test_passthrough.py) run against this build through DELTASTORE_TEST_LIBFUSE317.
# The tarball is checked against the sha256 that Debian's fuse3_3.17.2-3.dsc gives for it.
# Usage: .ci/libfuse317.sh [DIR]   (default /tmp/deltastore-libfuse-3.17.2; reused when built)
set -euo pipefail
dir=${1:-/tmp/deltastore-libfuse-3.17.2}
lib="$dir/build/lib/libfuse3.so.3.17.2"
if [ -f "$lib" ]; then echo "$lib"; exit 0; fi
url=http://deb.debian.org/debian/pool/main/f/fuse3/fuse3_3.17.2.orig.tar.gz
sha=3d932431ad94e86179e5265cddde1d67aa3bb2fb09a5bd35c641f86f2b5ed06f
# a build of ours that stopped half way starts again from nothing; any other non-empty folder is refused
if [ -f "$dir/src.tar.gz" ]; then rm -rf "$dir"; elif [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  echo "libfuse317.sh: $dir is not empty and not a build of this script" >&2; exit 1; fi
mkdir -p "$dir"
cd "$dir"
curl -fsS --retry 3 --max-time 120 -o src.tar.gz "$url"
echo "$sha  src.tar.gz" | sha256sum -c --quiet -
tar xzf src.tar.gz --strip-components=1
python3 -m venv tools >/dev/null && tools/bin/pip install -q meson ninja >/dev/null 2>&1
PATH="$dir/tools/bin:$PATH" meson setup build -Dutils=false -Dexamples=false -Dtests=false -Ddisable-mtab=true >build.log 2>&1
PATH="$dir/tools/bin:$PATH" ninja -C build lib/libfuse3.so.3.17.2 >>build.log 2>&1
test -f "$lib"
echo "$lib"
