"""`StallServer`: a loopback HTTP server that serves some files and stalls on others.

Used to prove that a stalled transfer ends in EIO after the mount's stall
timeout instead of hanging. Files under `root` are served with single-range
support; requests whose path matches `stall` (a regex) are answered per `mode`:
  'silent'  - read the request, never send a byte;
  'partial' - send the status line, headers and half of the body, then go quiet.
Stalled handlers wait on an event that close() sets, so shutdown is bounded.
"""
import http.server
import os
import re
import threading

from .fixture import ServerThread


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, fmt, *args):
        self.server.requests.append(f'{self.command} {self.path} {self.headers.get("Range", "")}')

    def do_GET(self):
        srv = self.server
        path = self.path.split('?', 1)[0]
        full = os.path.join(srv.root, path.lstrip('/'))
        if not os.path.isfile(full) or '..' in path.split('/'):
            self.send_response(404)
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        with open(full, 'rb') as f:
            data = f.read()
        start, end = 0, len(data) - 1
        m = re.fullmatch(r'bytes=(\d+)-(\d*)', self.headers.get('Range', ''))
        status = 200
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else end, len(data) - 1)
            status = 206
        body = data[start:end + 1]
        stalled = srv.stall is not None and re.search(srv.stall, path)
        if stalled and srv.mode == 'silent':
            srv.stalls += 1
            srv.release.wait(srv.max_stall)
            self.close_connection = True
            return
        self.send_response(status)
        if status == 206:
            self.send_header('Content-Range', f'bytes {start}-{end}/{len(data)}')
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Accept-Ranges', 'bytes')
        self.end_headers()
        if stalled:
            srv.stalls += 1
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            srv.release.wait(srv.max_stall)
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StallServer:
    def __init__(self, root, stall=r'\.tar$', mode='silent', max_stall=120.0):
        if mode not in ('silent', 'partial'):
            raise ValueError(mode)
        self.httpd = _Server(('127.0.0.1', 0), _Handler)
        self.httpd.root = os.path.abspath(root)
        self.httpd.stall = stall
        self.httpd.mode = mode
        self.httpd.max_stall = max_stall
        self.httpd.release = threading.Event()
        self.httpd.requests = []
        self.httpd.stalls = 0
        self.port = self.httpd.server_address[1]
        self._server = None

    @property
    def stalls(self):
        return self.httpd.stalls

    @property
    def requests(self):
        return list(self.httpd.requests)

    def url(self, path=''):
        return f'http://127.0.0.1:{self.port}/' + path.lstrip('/')

    def __enter__(self):
        self._server = ServerThread(self.httpd, f'stall-{self.port}')
        return self

    def close(self):
        self.httpd.release.set()
        if self._server is not None:
            self._server.stop()
        else:
            self.httpd.server_close()

    def __exit__(self, *exc):
        self.close()
        return False
