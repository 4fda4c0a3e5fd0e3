"""`Mount`: run `shelbyfs mount ... -f` for the duration of a with-block.

On entry: spawn the daemon in the foreground with stderr captured to a file,
poll /proc/mounts (bounded) until the mountpoint appears, and fail with the
captured stderr if the process exits first. On exit: `fusermount3 -u -z`,
wait (bounded) for the daemon, require exit status 0 (kill it by PID and fail
if it hangs), and scan its log for ERROR / sanitizer reports, minus an
allow-list of regexes for tests that expect errors.
"""
import os
import re
import shutil
import subprocess
import sys
import time

from . import cleanup
from .fixture import read_text
from .prereq import shelbyfs_bin

BAD_LOG = re.compile(r'ERROR|sanitizer|AddressSanitizer|runtime error:|LeakSanitizer')


class MountError(AssertionError):
    pass


def _unescape_mount_field(field):
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), field)


def mount_entry(path):
    """The /proc/mounts line (split) for `path`, or None."""
    path = os.path.abspath(path)
    with open('/proc/mounts') as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and _unescape_mount_field(parts[1]) == path:
                return parts
    return None


def is_mounted(path):
    return mount_entry(path) is not None


def wait_mounted(path, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(path):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.02)
    return is_mounted(path)


def wait_unmounted(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_mounted(path):
            return True
        time.sleep(0.02)
    return not is_mounted(path)


def lazy_unmount(path):
    """`fusermount3 -u -z path`; returns (returncode, stderr)."""
    r = subprocess.run(['fusermount3', '-u', '-z', os.path.abspath(path)], capture_output=True,
                       text=True, timeout=30, check=False)
    return r.returncode, r.stderr


def find_daemon_pids(needle):
    """PIDs whose command line mentions `needle` (e.g. a unique mountpoint path)."""
    pids = []
    me = os.getpid()
    needle = os.fsencode(needle)
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f'/proc/{entry}/cmdline', 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if any(needle in a for a in argv) and any(a.endswith(b'shelbyfs') for a in argv[:1]):
            pids.append(int(entry))
    return pids


def pid_alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            # A zombie still has a /proc entry; it is gone for our purposes.
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def scan_log(text, allow=()):
    """Lines that look like errors and match none of the allow-list regexes."""
    allow = [re.compile(a) for a in allow]
    bad = []
    for line in text.splitlines():
        if BAD_LOG.search(line) and not any(a.search(line) for a in allow):
            bad.append(line)
    return bad


def _fds_under(path):
    """Our own open file descriptors that point below `path` (leak check)."""
    prefix = os.path.abspath(path) + '/'
    leaks = []
    for fd in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink(f'/proc/self/fd/{fd}')
        except OSError:
            continue
        if target.startswith(prefix) or target == prefix[:-1]:
            leaks.append(f'fd {fd} -> {target}')
    return leaks


def isolated_env(tmp):
    """An environment for shelbyfs children: a private HOME under `tmp` (no user
    config, cache or data) and no inherited AWS_* / SHELBY_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('AWS_', 'SHELBY_'))}
    home = os.path.join(tmp, 'home')
    for d in ('.config', '.cache', '.local/share'):
        os.makedirs(os.path.join(home, d), exist_ok=True)
    env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, '.config'),
               XDG_CACHE_HOME=os.path.join(home, '.cache'),
               XDG_DATA_HOME=os.path.join(home, '.local/share'))
    return env


class Mount:
    """`with Mount(manifest, options=['cache_size=2MiB']) as m: open(m.path('samples/x'))`.

    mountpoint: created in a fresh temp dir unless given. allow_errors: regexes of
    log lines that are expected (the rest of ERROR/sanitizer lines fail the test).
    """

    def __init__(self, manifest, mountpoint=None, options=(), allow_errors=(),
                 mount_timeout=10.0, exit_timeout=15.0, extra_args=(), env=None):
        self.manifest = manifest
        self.options = list(options)
        self.allow_errors = list(allow_errors)
        self.mount_timeout = mount_timeout
        self.exit_timeout = exit_timeout
        self.extra_args = list(extra_args)
        self.env = env
        self._tmp = cleanup.make_tmpdir('shelbyfs-mnt-')
        self.mnt = os.path.abspath(mountpoint) if mountpoint else os.path.join(self._tmp, 'mnt')
        os.makedirs(self.mnt, exist_ok=True)
        self.log_path = os.path.join(self._tmp, 'stderr.log')
        self.proc = None
        self.returncode = None

    def path(self, rel=''):
        return os.path.join(self.mnt, rel) if rel else self.mnt

    def log(self):
        return read_text(self.log_path)

    def command(self):
        cmd = [shelbyfs_bin(), 'mount', self.manifest, self.mnt, '-f']
        if self.options:
            cmd += ['-o', ','.join(self.options)]
        return cmd + self.extra_args

    def start(self):
        with open(self.log_path, 'wb') as err:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, env=self.env)
        cleanup.register_pid(self.proc.pid)
        cleanup.register_mount(self.mnt)
        if not wait_mounted(self.mnt, self.mount_timeout, self.proc):
            rc = self.proc.poll()
            self._kill()
            lazy_unmount(self.mnt)
            cleanup.unregister_mount(self.mnt)
            state = f'exited with {rc}' if rc is not None else f'not mounted after {self.mount_timeout}s'
            raise MountError(f'{" ".join(self.command())}: {state}; stderr:\n{self.log()}')
        return self

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=None):
        """Wait for the daemon to exit on its own; returns its exit status."""
        self.returncode = self.proc.wait(timeout=timeout or self.exit_timeout)
        cleanup.unregister_pid(self.proc.pid)
        return self.returncode

    def stop(self, check=True):
        """Unmount, wait for the daemon, check its exit status and log. Idempotent."""
        if self.proc is None:
            return
        problems = []
        leaks = _fds_under(self.mnt)
        if leaks:
            problems.append('test process leaked fds into the mount: ' + ', '.join(leaks))
        if is_mounted(self.mnt):
            rc, err = lazy_unmount(self.mnt)
            if rc != 0:
                problems.append(f'fusermount3 -u -z failed ({rc}): {err.strip()}')
        try:
            self.returncode = self.proc.wait(timeout=self.exit_timeout)
        except subprocess.TimeoutExpired:
            problems.append(f'daemon pid {self.proc.pid} did not exit within {self.exit_timeout}s '
                            'after unmount; killed')
            self._kill()
        cleanup.unregister_pid(self.proc.pid)
        cleanup.unregister_mount(self.mnt)
        if self.returncode not in (0, None) and not problems:
            problems.append(f'daemon exited with status {self.returncode}')
        bad = scan_log(self.log(), self.allow_errors)
        if bad:
            problems.append('unexpected error lines in daemon log:\n  ' + '\n  '.join(bad[:20]))
        self.proc = None
        if problems and not check:
            print('shelbyfs teardown (after an earlier failure): ' + '; '.join(problems),
                  file=sys.stderr)
        if check and problems:
            raise MountError('; '.join(problems) + f'\n--- daemon stderr ---\n{self.log()[-4000:]}')

    def close(self, check=True):
        try:
            self.stop(check=check)
        finally:
            if not is_mounted(self.mnt):
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            cleanup.unregister_pid(self.proc.pid)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        # Don't let a teardown complaint mask the test's own failure.
        self.close(check=exc_type is None)
        return False
