"""`ShelbyRpc`: a loopback stand-in for a Shelby RPC node (none can be installed here).

    with ShelbyRpc(root_dir, api_key=None, content_range=True) as rpc:
        rpc.url                       # "http://127.0.0.1:PORT"
        rpc.blob_path(account, name)  # root_dir/<account>/<name>

Reads:
  GET|HEAD /v1/blobs/<account>/<blob name>
    The blob name may contain '/' and is percent-decoded (UTF-8) from the wire;
    names with '.', '..' or empty segments are refused (400). Serves the file
    root_dir/<account>/<name>:
      no Range                 -> 200 + Content-Length
      Range bytes=a-b / a- / -n -> 206 + Content-Length (+ Content-Range
                                  `bytes a-b/total` only if content_range=True:
                                  the real RPC does not document Content-Range)
      range starting past EOF  -> 416 {"error": ...}
      missing blob             -> 404 {"error": ...}
    A malformed or multi-range Range header is ignored (200, whole blob).
Writes (STORAGE-APIS.md §2, without the on-chain part):
  PUT  /v1/blobs/<account>/<name> with Content-Length           -> 204
  POST /v1/multipart-uploads {rawAccount, rawBlobName, rawPartSize} -> 200 {"uploadId"}
  PUT  /v1/multipart-uploads/<id>/parts/<idx> (0-based)        -> 200 {"success": true}
  POST /v1/multipart-uploads/<id>/complete                      -> 200 {"success": true}
If api_key is set, every /v1 request needs `Authorization: Bearer <key>` (else 401
{"error": ...}). Bodies are streamed in chunks of at most 1 MiB both ways.
`log` is a list of {method, path, status, range, reason}; `clear_log()` empties it.

Standalone (PYTHONPATH=tools):
    /usr/bin/python3 -m testlib.shelby_rpc serve --dir D [--api-key K] [--no-content-range]
prints one JSON line {"url": ...} once ready and serves until stdin reaches EOF or
SIGTERM/SIGINT, then exits 0.
"""
import argparse
import http.server
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

from . import cleanup
from .fixture import Fixture, ServerThread, serve_until_eof
from .httplog import LoggedHandler

CHUNK = 1024 * 1024


class _Err(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def _decode_segments(raw):
    """Percent-decoded (UTF-8) path; _Err(400) for '.'/'..'/empty segments or bad UTF-8."""
    try:
        name = urllib.parse.unquote(raw, errors='strict')
    except UnicodeDecodeError:
        raise _Err(400, 'blob name is not valid UTF-8')
    segs = name.split('/')
    if not name or any(s in ('', '.', '..') for s in segs) or '\0' in name:
        raise _Err(400, f'invalid blob name {name!r}')
    return name


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False


class _Handler(LoggedHandler):
    server_version = 'shelbyfs-fake-shelby-rpc'

    def do_GET(self):
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _json(self, status, obj, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header('Connection', 'close')
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _length(self):
        cl = self.headers.get('Content-Length')
        if cl is None:
            return None
        try:
            n = int(cl)
        except ValueError:
            raise _Err(400, 'bad Content-Length')
        if n < 0:
            raise _Err(400, 'bad Content-Length')
        return n

    def _drain(self):
        left, self._left = self._left, 0
        try:
            while left > 0:
                chunk = self.rfile.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            self.close_connection = True
        if left:
            self.close_connection = True

    def _receive_to(self, path):
        """Stream the request body into path (atomically), returns its size."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.incoming-')
        try:
            with os.fdopen(fd, 'wb') as f:
                while self._left > 0:
                    chunk = self.rfile.read(min(CHUNK, self._left))
                    if not chunk:
                        self.close_connection = True
                        raise _Err(400, 'request body shorter than Content-Length')
                    f.write(chunk)
                    self._left -= len(chunk)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _handle(self):
        owner = self.server.owner
        raw_path = self.path.partition('?')[0]
        entry = {'method': self.command, 'path': raw_path, 'range': self.headers.get('Range'),
                 'status': None, 'reason': None, 'time': time.time()}
        self._entry, self._entry_logged = entry, False
        self._left = 0
        try:
            self._left = self._length() or 0
            if owner.api_key is not None and \
                    self.headers.get('Authorization') != f'Bearer {owner.api_key}':
                raise _Err(401, 'missing or invalid API key (Authorization: Bearer <key>)')
            entry['status'] = self._route(raw_path)
        except _Err as e:
            self._drain()
            entry['status'], entry['reason'] = e.status, e.message
            self._json(e.status, {'error': e.message})
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as e:
            entry['reason'] = f'client connection lost: {e!r}'
            self.close_connection = True
        finally:
            if not self._entry_logged:
                owner._append_log(entry)
            self._entry, self._entry_logged = None, False

    def _route(self, raw_path):
        owner = self.server.owner
        m = re.fullmatch(r'/v1/blobs/([^/]+)/(.+)', raw_path)
        if m:
            account = _decode_segments(m.group(1))
            name = _decode_segments(m.group(2))
            if self.command in ('GET', 'HEAD'):
                return self._get_blob(owner.blob_path(account, name))
            if self.command == 'PUT':
                if self.headers.get('Content-Length') is None:
                    raise _Err(411, 'Content-Length required')
                self._receive_to(owner.blob_path(account, name))
                self.send_response(204)
                self.send_header('Content-Length', '0')
                self.end_headers()
                return 204
            raise _Err(405, f'method {self.command} not allowed here')
        if raw_path == '/v1/multipart-uploads' and self.command == 'POST':
            n = self._left
            if n > 1024 * 1024:
                raise _Err(400, 'request body too large')
            body = self.rfile.read(n) if n else b''
            self._left = 0
            try:
                req = json.loads(body)
                account = _decode_segments(urllib.parse.quote(req['rawAccount'], safe=''))
                name = _decode_segments(urllib.parse.quote(req['rawBlobName'], safe='/'))
                part_size = int(req.get('rawPartSize', 1048576))
            except (ValueError, KeyError, TypeError) as e:
                raise _Err(400, f'bad multipart-upload request: {e}')
            upload_id = uuid.uuid4().hex
            os.makedirs(os.path.join(owner.uploads_dir, upload_id))
            with owner._lock:
                owner._uploads[upload_id] = (account, name, part_size)
            self._json(200, {'uploadId': upload_id})
            return 200
        m = re.fullmatch(r'/v1/multipart-uploads/([0-9a-f]+)/parts/(\d+)', raw_path)
        if m and self.command == 'PUT':
            if m.group(1) not in owner._uploads:
                raise _Err(404, 'unknown uploadId')
            if self.headers.get('Content-Length') is None:
                raise _Err(411, 'Content-Length required')
            self._receive_to(os.path.join(owner.uploads_dir, m.group(1), '%08d' % int(m.group(2))))
            self._json(200, {'success': True})
            return 200
        m = re.fullmatch(r'/v1/multipart-uploads/([0-9a-f]+)/complete', raw_path)
        if m and self.command == 'POST':
            self._drain()
            with owner._lock:
                up = owner._uploads.pop(m.group(1), None)
            if up is None:
                raise _Err(404, 'unknown uploadId')
            account, name, _ps = up
            d = os.path.join(owner.uploads_dir, m.group(1))
            dest = owner.blob_path(account, name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix='.incoming-')
            with os.fdopen(fd, 'wb') as out:
                for part in sorted(os.listdir(d)):
                    with open(os.path.join(d, part), 'rb') as f:
                        shutil.copyfileobj(f, out, CHUNK)
            os.replace(tmp, dest)
            shutil.rmtree(d, ignore_errors=True)
            self._json(200, {'success': True})
            return 200
        raise _Err(404, f'no route for {self.command} {raw_path}')

    def _get_blob(self, path):
        owner = self.server.owner
        try:
            f = open(path, 'rb')
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _Err(404, 'blob not found')
        with f:
            if not os.path.isfile(path):
                raise _Err(404, 'blob not found')
            size = os.fstat(f.fileno()).st_size
            start, end, status = 0, size - 1, 200
            m = re.fullmatch(r'\s*bytes=(\d*)-(\d*)\s*', self.headers.get('Range', ''))
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    if m.group(2) and int(m.group(2)) < start:
                        m = None       # invalid: ignore the header
                else:
                    start = max(0, size - int(m.group(2)))
                    if int(m.group(2)) == 0:
                        start = size
                if m is not None:
                    if start >= size:
                        extra = [('Content-Range', f'bytes */{size}')] if owner.content_range else []
                        raise_err = _Err(416, f'range not satisfiable (blob size {size})')
                        self._drain()
                        self._json(416, {'error': raise_err.message}, extra)
                        return 416
                    status = 206
                else:
                    start, end = 0, size - 1
            length = max(0, end - start + 1)
            self.send_response(status)
            self.send_header('Content-Type', 'application/octet-stream')
            self.send_header('Content-Length', str(length))
            if status == 206 and owner.content_range:
                self.send_header('Content-Range', f'bytes {start}-{end}/{size}')
            self.end_headers()
            if self.command == 'HEAD':
                return status
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    self.close_connection = True   # file shrank under us
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
            return status


class ShelbyRpc(Fixture):
    """Context manager serving root_dir as Shelby blobs on 127.0.0.1:<free port>."""

    def __init__(self, root_dir, api_key=None, content_range=True, suffix=''):
        # suffix: appended to every blob's file name. With root_dir = an S3Server's
        # data dir and suffix '._S3rver_object', the stand-in serves what was
        # written through the "Shelby S3 gateway" (s3rver, bucket = account), as a
        # real RPC node serves what the real gateway wrote to the network.
        self.suffix = suffix
        self.root_dir = os.path.abspath(root_dir)
        self.api_key = api_key
        self.content_range = content_range
        self.port = None
        self._server = None  # fixture.ServerThread
        self._lock = threading.Lock()
        self._log = []
        self._uploads = {}
        self.uploads_dir = None

    @property
    def url(self):
        return f'http://127.0.0.1:{self.port}'

    def blob_url(self, account, name):
        return (f'{self.url}/v1/blobs/{urllib.parse.quote(account, safe="")}/'
                f'{urllib.parse.quote(name, safe="/")}')

    def blob_path(self, account, name):
        parts = name.split('/')
        return os.path.join(self.root_dir, account, *parts[:-1], parts[-1] + self.suffix)

    @property
    def log(self):
        with self._lock:
            return [dict(e) for e in self._log]

    def clear_log(self):
        with self._lock:
            self._log.clear()

    def _append_log(self, entry):
        with self._lock:
            self._log.append(entry)

    def start(self):
        if self._server is not None:
            return
        os.makedirs(self.root_dir, exist_ok=True)
        self.uploads_dir = cleanup.make_tmpdir('shelbyfs-rpc-uploads-')
        httpd = _Server(('127.0.0.1', 0), _Handler)
        httpd.owner = self
        self._server = ServerThread(httpd, f'shelby-rpc-{httpd.server_address[1]}')
        self.port = self._server.port

    def close(self):
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        if self.uploads_dir is not None:
            shutil.rmtree(self.uploads_dir, ignore_errors=True)
            self.uploads_dir = None


def _serve_main(argv):
    ap = argparse.ArgumentParser(prog='python3 -m testlib.shelby_rpc')
    sub = ap.add_subparsers(dest='cmd', required=True)
    sp = sub.add_parser('serve', help='serve --dir as Shelby blobs until stdin EOF / SIGTERM')
    sp.add_argument('--dir', required=True)
    sp.add_argument('--api-key', default=None)
    sp.add_argument('--no-content-range', action='store_true')
    args = ap.parse_args(argv)
    rpc = ShelbyRpc(args.dir, api_key=args.api_key, content_range=not args.no_content_range)
    return serve_until_eof(rpc, lambda r: {'url': r.url})


if __name__ == '__main__':
    sys.exit(_serve_main(sys.argv[1:]))
