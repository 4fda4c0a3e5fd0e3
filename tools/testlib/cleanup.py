"""Last-resort cleanup: lazily unmount and kill what we started, even on SIGTERM.

The context managers do the real work; this only covers an interpreter that is
torn down before their __exit__ runs (e.g. meson's timeout sends SIGTERM).
"""
import atexit
import os
import signal
import shutil
import subprocess
import tempfile
import threading

_lock = threading.Lock()
_mounts = set()      # mountpoints we mounted and have not unmounted yet
_pids = set()        # PIDs of processes we started and have not reaped yet
_tmpdirs = []        # temp dirs to remove at exit (if nothing is still mounted inside)
_installed = False


def register_mount(path):
    with _lock:
        _mounts.add(os.path.abspath(path))


def unregister_mount(path):
    with _lock:
        _mounts.discard(os.path.abspath(path))


def register_pid(pid):
    with _lock:
        _pids.add(pid)


def unregister_pid(pid):
    with _lock:
        _pids.discard(pid)


def stop_process(proc, timeout=10.0):
    """SIGTERM a process we started (a subprocess.Popen), SIGKILL it if it has
    not exited within `timeout`, reap it and forget its PID."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    unregister_pid(proc.pid)


def make_tmpdir(prefix):
    """mkdtemp() that is removed at interpreter exit even if the test is interrupted."""
    d = tempfile.mkdtemp(prefix=prefix)
    with _lock:
        _tmpdirs.append(d)
    return d


def _mounted_under(path):
    prefix = os.path.abspath(path) + '/'
    try:
        with open('/proc/mounts') as f:
            return any(line.split()[1].startswith(prefix) for line in f if len(line.split()) > 1)
    except OSError:
        return True


def _atexit():
    with _lock:
        mounts, pids, tmpdirs = list(_mounts), list(_pids), list(_tmpdirs)
        _mounts.clear()
        _pids.clear()
        _tmpdirs.clear()
    for m in mounts:
        subprocess.run(['fusermount3', '-u', '-z', m], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10, check=False)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for d in reversed(tmpdirs):
        if os.path.isdir(d) and not _mounted_under(d):
            shutil.rmtree(d, ignore_errors=True)


def _on_signal(signum, _frame):
    # Turn SIGTERM into an exception so every finally/__exit__ on the stack runs.
    raise KeyboardInterrupt(f'received signal {signum}')


def install_signal_handlers():
    """Register the atexit fallback and make SIGTERM/SIGHUP unwind the stack."""
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(_atexit)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _on_signal)


install_signal_handlers()
