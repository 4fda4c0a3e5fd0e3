"""`Nginx`: a throw-away nginx serving one directory on 127.0.0.1:<free port>.

GET with Range (static module), WebDAV PUT/DELETE/MKCOL/COPY/MOVE (core dav
module) and JSON directory listings (`autoindex_format json`, which HttpStore's
list() reads) on the whole root, keepalive on. Runs in the foreground as a single
process (no master, no workers) so the PID we hold is the only process; all its
files (conf, pid, logs, temp dirs) live in a private temp dir.
"""
import os
import shutil
import socket
import subprocess
import time

from . import cleanup
from .fixture import Fixture, read_text
from .prereq import NGINX

_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log {log_level};
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{ application/json json; application/x-tar tar; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    client_max_body_size 0;
    # Buffer PUT bodies (checkpoints) 1 MiB at a time, not 16 KiB: with the
    # default, nginx took a chunked 1 GiB body at about 500 MiB/s on a 2-CPU
    # VM, with 1m at about 2,000 MiB/s (README, "Checkpoints").
    client_body_buffer_size 1m;{refuse_map}
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {root};
        location = /__shelbyfs_ready {{ access_log off; return 204; }}
        location / {{{refuse_if}
            dav_methods PUT DELETE MKCOL COPY MOVE;
            create_full_put_path on;
            autoindex on;
            autoindex_format json;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


def free_port():
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _http_ok(port, timeout=1.0):
    """True once something on the port answers an HTTP request with a status line."""
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
            s.sendall(b'GET /__shelbyfs_ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
            return s.recv(16).startswith(b'HTTP/1.1 204')
    except OSError:
        return False


class NginxError(RuntimeError):
    pass


class Nginx(Fixture):
    """Context manager: `with Nginx(root) as n: n.url('manifest.json')`.

    `stop()` and `start()` take the server down and bring it back on the same
    port (so URLs baked into a mount stay valid).
    """

    def __init__(self, root, port=None, log_level='warn', start_timeout=10.0, refuse_overwrite_f=None):
        self.root = os.path.abspath(root)
        # Tests: under this URL path prefix, answer 400 to a MOVE/COPY with
        # "Overwrite: F", as some WebDAV servers do.
        self.refuse_overwrite_f = refuse_overwrite_f
        self.port = port
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.prefix = None
        self.proc = None

    # -- public API ---------------------------------------------------------
    @property
    def base_url(self):
        return f'http://127.0.0.1:{self.port}/'

    def url(self, path=''):
        return self.base_url + path.lstrip('/')

    def start(self):
        if self.proc is not None:
            return
        if self.prefix is None:
            self.prefix = cleanup.make_tmpdir('shelbyfs-nginx-')
            os.makedirs(os.path.join(self.prefix, 'tmp'))
        fixed_port = self.port is not None
        last_err = ''
        for _attempt in range(5):
            if not fixed_port:
                self.port = free_port()
            err = self._try_start()
            if err is None:
                return
            last_err = err
            if 'Address already in use' not in err:
                break
            time.sleep(0.2)
        raise NginxError(f'nginx failed to start on 127.0.0.1:{self.port}: {last_err}')

    def stop(self, timeout=10.0):
        """Stop the server (fast shutdown, then SIGKILL); idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            cleanup.stop_process(proc, timeout)

    def error_log(self):
        return read_text(os.path.join(self.prefix, 'error.log')) if self.prefix else ''

    def access_log(self):
        return read_text(os.path.join(self.prefix, 'access.log')) if self.prefix else ''

    def _pidfile(self):
        try:
            with open(os.path.join(self.prefix, 'nginx.pid')) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None

    def close(self):
        self.stop()
        if self.prefix is not None:
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None

    # -- internals ----------------------------------------------------------
    # Subclasses (the benchmark's nginx) replace config() and may run nginx in
    # a session of its own, out of reach of the terminal's Ctrl-C.
    new_session = False

    def config(self):
        """The nginx.conf text for this server (prefix and port are set)."""
        refuse_map = refuse_if = ''
        if self.refuse_overwrite_f:
            refuse_map = ('\n    map "$http_overwrite:$uri" $refuse_overwrite_f {\n        default 0;\n'
                          f'        "~^F:{self.refuse_overwrite_f}" 1;\n    }}')
            refuse_if = '\n            if ($refuse_overwrite_f) { return 400; }'
        return _CONF.format(prefix=self.prefix, port=self.port, root=self.root, log_level=self.log_level,
                            refuse_map=refuse_map, refuse_if=refuse_if)

    def _try_start(self):
        conf = os.path.join(self.prefix, 'nginx.conf')
        with open(conf, 'w') as f:
            f.write(self.config())
        stderr_path = os.path.join(self.prefix, 'stderr.log')
        with open(stderr_path, 'wb') as err:
            proc = subprocess.Popen([NGINX, '-c', conf, '-p', self.prefix + '/',
                                     '-e', os.path.join(self.prefix, 'error.log')],
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=self.new_session)
        cleanup.register_pid(proc.pid)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                cleanup.unregister_pid(proc.pid)
                with open(stderr_path, errors='replace') as f:
                    return (f.read() + self.error_log()).strip() or f'exit {proc.returncode}'
            # The pid file is written after the listening socket is bound, so a
            # foreign server on a recycled port cannot be mistaken for ours.
            if self._pidfile() == proc.pid and _http_ok(self.port):
                self.proc = proc
                return None
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=10)
        cleanup.unregister_pid(proc.pid)
        return f'not answering after {self.start_timeout}s'
