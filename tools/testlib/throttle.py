"""`ThrottleProxy`: a loopback HTTP/1.1 proxy that slows or cuts request bodies.

Sits between shelbyfs and a real server (the Nginx fixture) so a test can make
an upload last long enough to interrupt it: SIGKILL the daemon mid-PUT, stop
nginx mid-PUT, or drop every connection. Everything else is forwarded byte for
byte (responses, including `100 Continue`, are never parsed), so the store
semantics under test are nginx's own.

Only the client-to-server direction is parsed, and only enough to find
request boundaries: the request head, then a Content-Length or chunked body.
The bodies of requests whose "METHOD /path" matches `match` are forwarded at
`rate` bytes/s (None = full speed); `set_rate()` takes effect mid-body.

Binds 127.0.0.1:0, starts no processes, and every thread is a daemon thread
that close() unblocks (sockets shut down, waits bounded), so a stuck client
cannot hang the test.
"""
import re
import socket
import threading
import time

_HEAD_LIMIT = 64 * 1024


class _Closed(Exception):
    """The client or the upstream went away."""


class _Conn:
    """One client connection and its upstream connection."""

    def __init__(self, client):
        self.client = client
        self.upstream = None
        self.buf = b''

    def shutdown(self):
        for s in (self.client, self.upstream):
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.shutdown()
        for s in (self.client, self.upstream):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


class ThrottleProxy:
    """`with ThrottleProxy(nginx.port, rate=2 << 20) as p: p.url('store/')`.

    match: regex searched in "METHOD /path" of each request; matching bodies
    are throttled and counted. rate: bytes per second for those bodies, or None.
    """

    def __init__(self, upstream_port, match=r'^PUT /.*objects/', rate=None, chunk=16 * 1024):
        self.upstream_port = upstream_port
        self.match = re.compile(match)
        self.chunk = chunk
        self._rate = rate
        self._lock = threading.Condition()
        self._down = False
        self._stop = threading.Event()
        self._conns = set()
        self._threads = []
        self.requests = []            # "METHOD /path" of every request head seen
        self.body_progress = []       # per matching request: [line, body bytes forwarded, done?]
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._accept_thread = None

    # -- public API ---------------------------------------------------------
    def url(self, path=''):
        return f'http://127.0.0.1:{self.port}/' + path.lstrip('/')

    def set_rate(self, rate):
        """Bytes/s for matching bodies from now on, in flight too; None = unthrottled."""
        with self._lock:
            self._rate = rate
            self._lock.notify_all()

    def cut(self):
        """The store "goes down": drop every open connection and close new ones at once."""
        with self._lock:
            self._down = True
            conns = list(self._conns)
            self._lock.notify_all()
        for c in conns:
            c.shutdown()

    def restore(self):
        with self._lock:
            self._down = False

    @property
    def active_connections(self):
        with self._lock:
            return len(self._conns)

    def matching_requests(self, since=0):
        """[(request line, body bytes forwarded, body complete?)] of matching requests."""
        with self._lock:
            return [tuple(p) for p in self.body_progress[since:]]

    def mark(self):
        """A position in the list of matching requests, for wait_for_body(since=...)."""
        with self._lock:
            return len(self.body_progress)

    def wait_for_body(self, min_bytes, timeout, proc=None, since=0):
        """Wait until a matching request (the since-th or later) has forwarded
        >= min_bytes of its body.

        Returns True on success, False on timeout or once `proc` (a Popen whose
        work should cause the request) has exited without it happening.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if any(p[1] >= min_bytes for p in self.body_progress[since:]):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or (proc is not None and proc.poll() is not None):
                    return False
                self._lock.wait(min(left, 0.1))

    def wait_idle(self, timeout):
        """Wait until no client connection is open; returns True if that happened."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._conns:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
            return True

    def start(self):
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name='throttle-accept')
        self._accept_thread.start()
        return self

    def close(self):
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
            self._lock.notify_all()
        for c in conns:
            c.shutdown()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=10)
        try:
            self._listener.close()
        except OSError:
            pass
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    # -- internals ----------------------------------------------------------
    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                client, _addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                client.close()
                continue
            t = threading.Thread(target=self._serve, args=(client,), daemon=True,
                                 name='throttle-conn')
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve(self, client):
        conn = _Conn(client)
        with self._lock:
            self._conns.add(conn)
        try:
            try:
                conn.upstream = socket.create_connection(('127.0.0.1', self.upstream_port),
                                                         timeout=5)
                conn.upstream.settimeout(None)
            except OSError:
                return          # upstream down: the client sees the connection close
            pump = threading.Thread(target=self._pump_back, args=(conn,), daemon=True,
                                    name='throttle-back')
            pump.start()
            try:
                while not self._stop.is_set():
                    self._forward_request(conn)
            except _Closed:
                pass
            conn.shutdown()
            pump.join(timeout=10)
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)
                self._lock.notify_all()

    def _pump_back(self, conn):
        """Upstream to client, unparsed."""
        try:
            while True:
                data = conn.upstream.recv(65536)
                if not data:
                    break
                conn.client.sendall(data)
        except OSError:
            pass
        conn.shutdown()

    def _recv_more(self, conn):
        try:
            data = conn.client.recv(65536)
        except OSError:
            data = b''
        if not data:
            raise _Closed()
        conn.buf += data

    def _take(self, conn, n):
        while not conn.buf:
            self._recv_more(conn)
        out, conn.buf = conn.buf[:n], conn.buf[n:]
        return out

    def _read_line(self, conn):
        while b'\r\n' not in conn.buf:
            if len(conn.buf) > _HEAD_LIMIT:
                raise _Closed()
            self._recv_more(conn)
        line, conn.buf = conn.buf.split(b'\r\n', 1)
        return line + b'\r\n'

    def _send_up(self, conn, data):
        with self._lock:
            if self._down:
                raise _Closed()
        try:
            conn.upstream.sendall(data)
        except OSError:
            raise _Closed() from None

    def _forward_request(self, conn):
        while b'\r\n\r\n' not in conn.buf:
            if len(conn.buf) > _HEAD_LIMIT:
                raise _Closed()
            self._recv_more(conn)
        head, conn.buf = conn.buf.split(b'\r\n\r\n', 1)
        lines = head.decode('latin-1').split('\r\n')
        parts = lines[0].split(' ')
        line = ' '.join(parts[:2])
        headers = {}
        for h in lines[1:]:
            k, _, v = h.partition(':')
            headers[k.strip().lower()] = v.strip()
        progress = None
        with self._lock:
            self.requests.append(line)
            if self.match.search(line):
                progress = [line, 0, False]
                self.body_progress.append(progress)
        self._send_up(conn, head + b'\r\n\r\n')
        if 'chunked' in headers.get('transfer-encoding', '').lower():
            while True:
                size_line = self._read_line(conn)
                self._send_up(conn, size_line)
                size = int(size_line.split(b';', 1)[0].strip() or b'0', 16)
                if size == 0:
                    while True:          # trailers, then the empty line
                        t = self._read_line(conn)
                        self._send_up(conn, t)
                        if t == b'\r\n':
                            break
                    break
                self._forward_body(conn, size, progress)
                self._send_up(conn, self._take_exact(conn, 2))
        else:
            self._forward_body(conn, int(headers.get('content-length', '0') or 0), progress)
        if progress is not None:
            with self._lock:
                progress[2] = True
                self._lock.notify_all()

    def _take_exact(self, conn, n):
        out = b''
        while len(out) < n:
            out += self._take(conn, n - len(out))
        return out

    def _forward_body(self, conn, length, progress):
        left = length
        t0, sent = time.monotonic(), 0
        while left > 0:
            with self._lock:
                rate = self._rate if progress is not None else None
            step = min(left, self.chunk)
            data = self._take(conn, step)
            self._send_up(conn, data)
            left -= len(data)
            sent += len(data)
            if progress is not None:
                with self._lock:
                    progress[1] += len(data)
                    self._lock.notify_all()
            if rate:
                # Sleep until `sent` bytes are due at `rate`; re-read the rate in
                # small steps so set_rate(None) or close() end the wait quickly.
                while not self._stop.is_set():
                    with self._lock:
                        rate = self._rate
                        down = self._down
                    if not rate or down:
                        break
                    due = t0 + sent / rate - time.monotonic()
                    if due <= 0:
                        break
                    self._stop.wait(min(due, 0.05))
            else:
                t0, sent = time.monotonic(), 0
