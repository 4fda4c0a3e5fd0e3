"""Prerequisite check: exit 77 (meson SKIP) when FUSE, nginx or the binary is missing.

Under CI (env CI=true) a missing prerequisite is a failure (exit 1) instead,
because .ci/run installs everything.
"""
import os
import shutil
import sys

NGINX = '/usr/sbin/nginx'
SKIP = 77


def shelbyfs_bin():
    return os.environ.get('SHELBYFS_BIN', '')


def missing_prereqs(extra_modules=()):
    missing = []
    if not os.path.exists('/dev/fuse'):
        missing.append('/dev/fuse')
    elif not os.access('/dev/fuse', os.R_OK | os.W_OK):
        missing.append('/dev/fuse (not readable/writable)')
    if shutil.which('fusermount3') is None:
        missing.append('fusermount3')
    if not os.access(NGINX, os.X_OK):
        missing.append(NGINX)
    exe = shelbyfs_bin()
    if not exe:
        missing.append('SHELBYFS_BIN (environment variable not set)')
    elif not os.access(exe, os.X_OK):
        missing.append(f'SHELBYFS_BIN={exe} (not an executable)')
    for mod in extra_modules:
        try:
            __import__(mod)
        except ImportError:
            missing.append(f'python module {mod} (for {sys.executable})')
    return missing


def require_prereqs(extra_modules=()):
    """Exit 77 (or 1 under CI=true) if anything the integration tests need is missing."""
    skip_unless_present(missing_prereqs(extra_modules))


def skip_unless_present(missing):
    """Exit 77 (meson SKIP), or 1 under CI=true, naming what is `missing`; return if nothing is."""
    if not missing:
        return
    if os.environ.get('CI', '').lower() == 'true':
        print('FAIL: missing prerequisites under CI: ' + ', '.join(missing), file=sys.stderr)
        sys.exit(1)
    print('SKIP: missing prerequisites: ' + ', '.join(missing), file=sys.stderr)
    sys.exit(SKIP)
