"""Helpers for the checkpoint tests: XXH3-128 via xxhsum, store snapshots, killing a mount.

A checkpoint store is a directory (a local store, or the nginx root behind a
WebDAV one) holding `objects/<32 hex>` (content-addressed, immutable) and
`index/*.json` (immutable records). The helpers here inspect such a directory
directly, without going through shelbyfs.
"""
import hashlib
import json
import os
import random
import re
import signal
import subprocess

from . import cleanup
from .mount import is_mounted, lazy_unmount, scan_log

HEX128 = re.compile(r'^[0-9a-f]{32}$')
# <mnt>/checkpoints/.versions/<path>/<name>: UTC time with microseconds, then
# the first 16 hex digits of the content hash.
VERSION_NAME = re.compile(r'^(\d{8}T\d{6}\.\d{6}Z)-([0-9a-f]{16})$')
# Log lines a test that provokes failures may see: any ERROR line that is not a
# sanitizer report (those must still fail the test).
EXPECTED_ERRORS = (r'^(?!.*(?:[Ss]anitizer|runtime error:)).*ERROR',)


def xxh128(data, timeout=120):
    """Hex XXH3-128 of `data` (bytes), exactly as `xxhsum -H2` prints it."""
    r = subprocess.run(['xxhsum', '-H2', '-'], input=data, capture_output=True, timeout=timeout,
                       check=False)
    if r.returncode != 0:
        raise AssertionError(f'xxhsum -H2 - failed ({r.returncode}): '
                             f'{r.stderr.decode(errors="replace")}')
    return r.stdout.split()[0].decode()


def xxh128_files(paths, timeout=300):
    """{path: hex XXH3-128} via one `xxhsum -H2` child (bounded, so a read stuck in
    a mount cannot hang the test). Raises AssertionError naming unreadable files."""
    paths = list(paths)
    if not paths:
        return {}
    try:
        r = subprocess.run(['xxhsum', '-H2', '--', *paths], capture_output=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError(f'xxhsum of {paths[:3]}... did not finish within {timeout}s') from None
    if r.returncode != 0:
        raise AssertionError(f'xxhsum failed ({r.returncode}) on {paths[:3]}...: '
                             f'{r.stderr.decode(errors="replace").strip()}')
    out = {}
    for line, path in zip(r.stdout.decode(errors='replace').splitlines(), paths):
        out[path] = line.split('  ', 1)[0].lstrip('\\')
    if len(out) != len(paths):
        raise AssertionError(f'xxhsum printed {len(out)} lines for {len(paths)} files')
    return out


def xxh128_file(path, timeout=300):
    return xxh128_files([path], timeout)[path]


def write_random(path, size, seed, chunk=8 << 20):
    """Write `size` seeded random bytes to `path` without holding them all in memory."""
    rng = random.Random(seed)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'wb') as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(rng.randbytes(n))
            left -= n


def store_files(root):
    """Relative paths of every regular file below `root` (sorted)."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def snapshot(root):
    """{relative path: (size, sha256)} of every file below `root`."""
    snap = {}
    for rel in store_files(root):
        h = hashlib.sha256()
        with open(os.path.join(root, rel), 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                h.update(block)
        snap[rel] = (os.path.getsize(os.path.join(root, rel)), h.hexdigest())
    return snap


def changed_files(before, after):
    """Problems if any file of snapshot `before` vanished or changed in `after`."""
    problems = []
    for rel, sig in sorted(before.items()):
        if rel not in after:
            problems.append(f'{rel}: disappeared')
        elif after[rel] != sig:
            problems.append(f'{rel}: modified (size {sig[0]} -> {after[rel][0]})')
    return problems


def objects(root):
    """Names of the files directly in `<root>/objects/` (empty if it does not exist)."""
    d = os.path.join(root, 'objects')
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def bad_objects(root):
    """Files under `<root>/objects/` (recursively) that are not named by their own
    XXH3-128: partial uploads, temp files, corrupt bytes."""
    d = os.path.join(root, 'objects')
    if not os.path.isdir(d):
        return []
    rels = store_files(d)
    problems = [f'objects/{r}: not a 32-hex name' for r in rels if not HEX128.match(r)]
    named = [r for r in rels if HEX128.match(r)]
    hashes = xxh128_files([os.path.join(d, r) for r in named]) if named else {}
    for r in named:
        got = hashes[os.path.join(d, r)]
        if got != r:
            problems.append(f'objects/{r}: content hashes to {got}')
    return problems


def bad_index_records(root):
    """Files under `<root>/index/` that are not complete JSON documents named *.json."""
    d = os.path.join(root, 'index')
    problems = []
    if not os.path.isdir(d):
        return problems
    for rel in store_files(d):
        if not rel.endswith('.json'):
            problems.append(f'index/{rel}: not a .json record')
            continue
        try:
            with open(os.path.join(d, rel), encoding='utf-8') as f:
                json.load(f)
        except (OSError, ValueError) as e:
            problems.append(f'index/{rel}: not valid JSON ({e})')
    return problems


def kill_mount(m):
    """SIGKILL the daemon of Mount `m` (a PID we started), reap it, lazily unmount
    the dead mountpoint and detach it from `m`. Returns (status, sanitizer lines)."""
    proc = m.proc
    if proc is None:
        return None, []
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    try:
        status = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        status = None
    cleanup.unregister_pid(proc.pid)
    if is_mounted(m.mnt):
        lazy_unmount(m.mnt)
    cleanup.unregister_mount(m.mnt)
    m.proc = None               # m.close() now only removes its temp dir
    m.returncode = status
    return status, scan_log(m.log(), EXPECTED_ERRORS)
