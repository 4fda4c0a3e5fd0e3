"""Processes the benchmark starts: nginx profiles, rclone mounts, bounded child commands.

Every process is started by PID, registered with testlib.cleanup (so an
interpreter torn down by a signal still kills it and lazily unmounts), and
stopped by PID. Every wait is bounded.
"""
import os
import shutil
import signal
import subprocess
import time

import testlib
from testlib import cleanup
from testlib.mount import is_mounted, lazy_unmount, pid_alive, wait_mounted

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE_DIR = '/usr/lib/nginx/modules'
NDK = f'{MODULE_DIR}/ndk_http_module.so'
LUA = f'{MODULE_DIR}/ngx_http_lua_module.so'
DAV_EXT = f'{MODULE_DIR}/ngx_http_dav_ext_module.so'
RCLONE = '/usr/bin/rclone'


class Profile:
    """How nginx imitates the store: `latency_ms` added to every request (Lua
    ngx.sleep in the access phase) and `rate` (nginx limit_rate, bytes/s, per
    request) on responses. latency 0 and rate None: nginx as is."""

    def __init__(self, name, latency_ms=0, rate=None, label=None):
        self.name = name
        self.latency_ms = latency_ms
        self.rate = rate
        self.label = label or name

    def describe(self):
        if not self.latency_ms and not self.rate:
            return 'nginx on 127.0.0.1 as is'
        parts = []
        if self.latency_ms:
            parts.append(f'+{self.latency_ms:g} ms per request')
        if self.rate:
            parts.append(f'{self.rate / 2**20:g} MiB/s per connection (responses)')
        return 'nginx on 127.0.0.1, ' + ', '.join(parts)

    def as_dict(self):
        return {'name': self.name, 'latency_ms': self.latency_ms, 'rate_bytes_per_s': self.rate,
                'description': self.describe()}


class BenchNginx(testlib.Nginx):
    """testlib's throw-away nginx, with the benchmark's config (tools/bench/nginx.conf.in):
    autoindex (rclone's http backend lists directories from it), WebDAV with
    PROPFIND when dav_ext is installed, and the profile's delay and rate cap."""

    new_session = True  # Ctrl-C reaches the benchmark, which stops nginx itself

    def __init__(self, root, profile, start_timeout=10.0):
        super().__init__(root, start_timeout=start_timeout)
        self.profile = profile
        self.has_dav_ext = os.path.exists(DAV_EXT)

    def config(self):
        modules, remote = [], []
        if self.profile.latency_ms:
            for so in (NDK, LUA):
                if not os.path.exists(so):
                    raise testlib.nginx.NginxError(
                        f'{so} is missing: install libnginx-mod-http-lua (bash tools/deps.sh)')
                modules.append(f'load_module {so};')
            remote.append('access_by_lua_block { ngx.sleep(%.4f) }' % (self.profile.latency_ms / 1000))
        if self.profile.rate:
            remote.append(f'limit_rate {int(self.profile.rate)};')
        if self.has_dav_ext:
            modules.append(f'load_module {DAV_EXT};')
        with open(os.path.join(HERE, 'nginx.conf.in')) as f:
            template = f.read()
        return template.format(load_modules='\n'.join(modules), prefix=self.prefix, port=self.port,
                               root=self.root, remote='\n            '.join(remote),
                               dav_ext='dav_ext_methods PROPFIND OPTIONS;' if self.has_dav_ext else '')


class RcloneMount:
    """`rclone mount REMOTE MNT` in the foreground for the duration of a with-block.

    `remote` is ':http:' or ':webdav:'; `flags` are rclone flags (e.g.
    ['--http-url', url]). The VFS cache lives in a private dir removed on exit.
    """

    def __init__(self, remote, flags, workdir, name, mount_timeout=30.0, exit_timeout=30.0):
        self.remote = remote
        self.flags = list(flags)
        self.dir = os.path.join(workdir, f'rclone-{name}')
        self.mnt = os.path.join(self.dir, 'mnt')
        self.cache_dir = os.path.join(self.dir, 'cache')
        self.log_path = os.path.join(workdir, 'logs', f'rclone-{name}.log')
        self.mount_timeout = mount_timeout
        self.exit_timeout = exit_timeout
        self.proc = None

    def path(self, rel=''):
        return os.path.join(self.mnt, rel) if rel else self.mnt

    def command(self):
        return [RCLONE, 'mount', self.remote, self.mnt, '--config', '/dev/null',
                '--cache-dir', self.cache_dir, '--log-file', self.log_path, '--log-level', 'INFO',
                *self.flags]

    def log(self):
        try:
            with open(self.log_path, errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def start(self):
        if not os.access(RCLONE, os.X_OK):
            raise RuntimeError(f'{RCLONE} is missing: install rclone (bash tools/deps.sh)')
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.mnt)
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        cleanup.register_pid(self.proc.pid)
        cleanup.register_mount(self.mnt)
        if not wait_mounted(self.mnt, self.mount_timeout, self.proc):
            rc = self.proc.poll()
            self.stop()
            raise RuntimeError(f'rclone mount failed ({"exit " + str(rc) if rc is not None else "timeout"}): '
                               + self.log()[-1500:])
        return self

    def stop(self):
        """Unmount (lazily if busy), wait for rclone to exit (bounded), kill it if it hangs."""
        if self.proc is None:
            return
        if is_mounted(self.mnt):
            r = subprocess.run(['fusermount3', '-u', self.mnt], capture_output=True, timeout=30,
                               check=False)
            if r.returncode != 0:
                lazy_unmount(self.mnt)
        try:
            self.proc.wait(timeout=self.exit_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        cleanup.unregister_pid(self.proc.pid)
        cleanup.unregister_mount(self.mnt)
        self.proc = None
        if not is_mounted(self.mnt):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def vm_hwm_mib(pid):
    """Peak resident set size (VmHWM) of `pid` in MiB, or None if it is gone."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Timeout(RuntimeError):
    pass


def run_bounded(cmd, timeout, env=None, stdin=subprocess.DEVNULL):
    """Run `cmd` in a new session; on timeout or Ctrl-C kill its whole process group.

    Returns (returncode, stdout, stderr, seconds); raises Timeout after killing.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    cleanup.register_pid(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as e:
        _kill_group(proc)
        if isinstance(e, subprocess.TimeoutExpired):
            raise Timeout(f'{os.path.basename(cmd[0])} {" ".join(cmd[1:3])}...: no result within '
                          f'{timeout:g}s (killed)') from None
        raise
    finally:
        cleanup.unregister_pid(proc.pid)
    return proc.returncode, out, err, time.monotonic() - t0


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pass  # stuck in an uninterruptible FUSE wait; the unmount frees it


class ProcGroup:
    """Several children started together (e.g. 8 parallel curls), all bounded by one deadline."""

    def __init__(self, cmds, timeout):
        self.cmds = cmds
        self.timeout = timeout

    def run(self):
        """Returns ([(rc, stdout, stderr)], wall seconds from first start to last exit)."""
        procs = []
        t0 = time.monotonic()
        try:
            for cmd in self.cmds:
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
                cleanup.register_pid(p.pid)
                procs.append(p)
            results = []
            for p in procs:
                left = max(0.1, self.timeout - (time.monotonic() - t0))
                try:
                    out, err = p.communicate(timeout=left)
                except subprocess.TimeoutExpired:
                    raise Timeout(f'{len(self.cmds)} parallel {os.path.basename(self.cmds[0][0])}: '
                                  f'no result within {self.timeout:g}s (killed)') from None
                results.append((p.returncode, out, err))
            return results, time.monotonic() - t0
        finally:
            for p in procs:
                if p.poll() is None:
                    _kill_group(p)
                cleanup.unregister_pid(p.pid)


__all__ = ['BenchNginx', 'ProcGroup', 'Profile', 'RcloneMount', 'Timeout', 'pid_alive',
           'run_bounded', 'vm_hwm_mib']
