"""`S3Server`: s3rver 3.7.1 behind a SigV4-verifying reverse proxy, on 127.0.0.1.

    with S3Server(workdir, buckets=('bucket',)) as s3:
        s3.endpoint            # "http://127.0.0.1:PORT" (the proxy: the only endpoint tests use)
        s3.put_object('bucket', 'a/b.bin', data)      # signed with botocore
        s3.log                 # [{method, path, query, status, accepted, reason, ...}, ...]
        s3.inject(method='PUT', query_contains='partNumber=', status=503, count=2)

Why a proxy: s3rver does not verify SigV4 signatures (a wrong secret gets 200), so
on its own it cannot catch a client that signs wrongly. The proxy verifies every
request with botocore (`S3SigV4Auth`: canonical_request / string_to_sign /
signature), an implementation independent of shelbyfs's, and only then forwards
it to s3rver, re-signed with s3rver's own credentials (S3RVER/S3RVER).

Canonicalization is the one AWS S3 applies on its side, so a request that is
internally consistent but encoded differently from what AWS expects is rejected:
  - canonical URI: the path as received, percent-decoded once and re-encoded
    (RFC 3986 unreserved kept, '/' kept, everything else %XX uppercase); no
    normalisation of '.', '..' or '//' (S3 never normalises);
  - canonical query: parameters percent-decoded, re-encoded the same way, sorted
    by key then value, and always `k=v` (so `?uploads` is signed as `uploads=`);
  - canonical headers: exactly the headers named in SignedHeaders (values
    trimmed, repeated headers joined with ','); every x-amz-* header present
    must be signed; host must be signed;
  - payload hash: the x-amz-content-sha256 header, which is required.
curl/libcurl 7.88 signs the raw query in the order given and the raw path, so an
unsorted query, a valueless `?uploads` or an unencoded '+'/'='/space in a key is
rejected here with SignatureDoesNotMatch, as real S3 would.

Rejections (S3 XML error body `<Error><Code/><Message/></Error>`):
  403 AccessDenied            no Authorization (unless allow_anonymous=True), unsigned
                              x-amz-* header, presigned (query) auth, no x-amz-date
  403 InvalidAccessKeyId      unknown access key; or missing x-amz-security-token
                              when the server has a session_token
  400 InvalidToken            wrong x-amz-security-token
  403 SignatureDoesNotMatch   signature mismatch (reason in the log has the canonical request)
  403 RequestTimeTooSkewed    X-Amz-Date more than 15 minutes off
  400 AuthorizationHeaderMalformed  unparsable header, wrong region/service in the
                              Credential scope, scope date != X-Amz-Date date
                              (400 as on AWS, not 403)
  400 InvalidRequest          missing x-amz-content-sha256
  400 XAmzContentSHA256Mismatch  hex x-amz-content-sha256 does not match the body
  400 InvalidArgument         x-amz-checksum-*, x-amz-sdk-checksum-algorithm,
                              x-amz-trailer, Content-Encoding: aws-chunked or a
                              STREAMING-* payload hash (Akave O3 rejects these)
  411 MissingContentLength    PUT without Content-Length, or any chunked request body
When the request carries a body the proxy reads it (or, with Expect: 100-continue,
answers before the body and closes the connection).

Bodies are streamed both ways in chunks of at most 1 MiB. With UNSIGNED-PAYLOAD
the upload goes straight through to s3rver; with a hex payload hash it is spooled
to a file under <workdir>/spool first (never held in memory) so a mismatching
body is never stored.

s3rver 3.7.1 quirks, deliberately NOT fixed by the proxy (see STORAGE-APIS.md §5):
  - `Range: bytes=0-0` returns the WHOLE object (206 `bytes 0-N/N+1`);
  - a suffix range `bytes=-100` is served as `bytes=0-100`;
  - AbortMultipartUpload (DELETE ?uploadId=) and ListParts -> 405,
    ListMultipartUploads (GET ?uploads) -> 501;
  - If-None-Match on PUT is ignored (overwrites);
  - no 5 MiB minimum part size; the multipart ETag is the MD5 of the whole object;
  - listing XML namespace is http://doc.s3.amazonaws.com/2006-03-01/;
  - objects live on disk as <dir>/<bucket>/<key>._S3rver_object (see object_path()).

Fault injection (after a request passed verification): `inject()` makes the next
`count` matching requests fail with `status` (mode='status', not forwarded), or
(mode='reset') breaks the connection mid-way: an upload is half read and the
connection closed without a response; a download is forwarded and the client
gets the status line, headers and half of the body before the connection is
closed; (mode='lost') the request is forwarded and done by s3rver, but the
client gets `status` instead of the answer (a reply lost on the way back).
`delay` sleeps before any of them.

Standalone, for the C++ tests (PYTHONPATH=tools):
    /usr/bin/python3 -m testlib.s3 serve --dir D [--bucket B ...] [--session-token T]
prints one JSON line {"endpoint", "region", "access_key", "secret_key"[, "session_token"]}
once ready, then serves until stdin reaches EOF or SIGTERM/SIGINT, stops s3rver
and exits 0. In that mode the proxy also answers (unsigned) GET /__test/log,
POST /__test/clear and POST /__test/inject (JSON body = inject() keyword arguments).
"""
import argparse
import datetime
import hashlib
import hmac
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

from . import cleanup, prereq
from .fixture import Fixture, ServerThread, read_text, serve_until_eof
from .httplog import LoggedHandler

CHUNK = 1024 * 1024
SIGV4_TIMESTAMP = '%Y%m%dT%H%M%SZ'
MAX_SKEW = datetime.timedelta(minutes=15)
UNSIGNED_PAYLOAD = 'UNSIGNED-PAYLOAD'
S3RVER_KEY = 'S3RVER'
S3RVER_SECRET = 'S3RVER'
S3RVER_BIN = os.environ.get('SHELBYFS_S3RVER') or os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), '..', 'node', 'node_modules', '.bin', 's3rver'))

_HOP_BY_HOP = {'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization',
               'transfer-encoding', 'te', 'trailer', 'trailers', 'upgrade'}
_HEX64 = re.compile(r'[0-9a-f]{64}')


def missing_prereqs():
    """What the S3 harness needs and is not installed (empty list when all is there)."""
    missing = []
    if not os.access(S3RVER_BIN, os.X_OK):
        missing.append(f'{S3RVER_BIN} (run tools/deps.sh)')
    if shutil.which('node') is None:
        missing.append('node')
    try:
        import botocore.auth  # noqa: F401
    except ImportError:
        missing.append(f'python module botocore (python3-botocore, for {sys.executable})')
    return missing


def require_prereqs():
    """Exit 77 (meson SKIP), or 1 under CI=true, when the S3 harness cannot run."""
    prereq.skip_unless_present(missing_prereqs())


class S3Error(RuntimeError):
    """A non-2xx answer to one of the botocore-signed helper requests."""

    def __init__(self, status, body):
        self.status = status
        self.body = body
        self.code = _xml_text(body, 'Code')
        super().__init__(f'HTTP {status} {self.code or ""}: {body[:300]!r}')


class _Reject(Exception):
    def __init__(self, status, code, message, reason=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.reason = reason or f'{code}: {message}'


def _xml_text(body, tag):
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit('}', 1)[-1] == tag:
            return el.text
    return None


def error_xml(code, message, request_id='0'):
    def esc(s):
        return s.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Error><Code>{esc(code)}</Code><Message>{esc(message)}</Message>'
            f'<RequestId>{request_id}</RequestId></Error>').encode()


# -- SigV4 with botocore ------------------------------------------------------

def _aws_quote(s):
    return urllib.parse.quote(s, safe='-_.~')


def canonical_uri(raw_path):
    """The canonical URI AWS S3 derives from the path it received: decoded once,
    re-encoded with uppercase hex, '/' kept, no dot-segment normalisation."""
    return urllib.parse.quote(urllib.parse.unquote(raw_path, errors='strict'), safe='/-_.~')


def query_params(raw_query):
    """[(key, value)] percent-decoded ('+' stays '+'); a valueless `k` is ('k', '')."""
    params = []
    for pair in raw_query.split('&') if raw_query else ():
        if pair == '':
            continue
        k, _, v = pair.partition('=')
        params.append((urllib.parse.unquote(k, errors='strict'),
                       urllib.parse.unquote(v, errors='strict')))
    return params


def _signer_class():
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import HTTPHeaders

    class _ExactHeaders(S3SigV4Auth):
        """S3SigV4Auth that signs exactly the headers the client listed in SignedHeaders
        (botocore's own headers_to_sign would drop user-agent/expect and add host)."""

        def __init__(self, credentials, service, region, signed_names):
            super().__init__(credentials, service, region)
            self._signed_names = signed_names

        def headers_to_sign(self, request):
            m = HTTPHeaders()
            for name in self._signed_names:
                for v in request.headers.get_all(name) or ():
                    m[name] = v
            return m

    return _ExactHeaders


def sigv4_signature(method, raw_path, raw_query, get_all, signed_names, payload_hash,
                    timestamp, region, service, access_key, secret_key):
    """(signature, canonical_request, string_to_sign) computed by botocore.

    `get_all(name)` returns the list of values of a request header (lower-case name).
    """
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    req = AWSRequest(method=method, url='http://signing.invalid' + canonical_uri(raw_path),
                     params=query_params(raw_query))
    for name in signed_names:
        for v in get_all(name):
            req.headers[name] = v
    if 'X-Amz-Content-SHA256' in req.headers:
        del req.headers['X-Amz-Content-SHA256']
    req.headers['X-Amz-Content-SHA256'] = payload_hash
    req.context['timestamp'] = timestamp
    signer = _signer_class()(Credentials(access_key, secret_key), service, region, signed_names)
    creq = signer.canonical_request(req)
    sts = signer.string_to_sign(req, creq)
    return signer.signature(sts, req), creq, sts


def parse_authorization(value):
    """{'access_key', 'date', 'region', 'service', 'signed_headers': [..], 'signature'} or _Reject."""
    def malformed(msg):
        return _Reject(400, 'AuthorizationHeaderMalformed', msg)
    algo, _, rest = value.strip().partition(' ')
    if algo != 'AWS4-HMAC-SHA256':
        raise _Reject(400, 'InvalidArgument', f'Unsupported Authorization Type {algo!r}')
    fields = {}
    for part in rest.split(','):
        k, eq, v = part.strip().partition('=')
        if not eq:
            raise malformed(f'The authorization header is malformed; bad component {part.strip()!r}.')
        fields[k] = v
    for k in ('Credential', 'SignedHeaders', 'Signature'):
        if k not in fields:
            raise malformed(f'The authorization header is malformed; missing {k}.')
    scope = fields['Credential'].split('/')
    if len(scope) != 5 or scope[4] != 'aws4_request':
        raise malformed('The authorization header is malformed; the Credential is mal-formed; '
                        'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".')
    names = fields['SignedHeaders'].split(';')
    return {'access_key': scope[0], 'date': scope[1], 'region': scope[2], 'service': scope[3],
            'signed_headers': names, 'signature': fields['Signature']}


# -- the proxy ---------------------------------------------------------------

class _Injection:
    def __init__(self, method=None, path_contains=None, query_contains=None, status=503,
                 count=1, mode='status', code=None, delay=0.0):
        if mode not in ('status', 'reset', 'lost'):
            raise ValueError(f'inject: mode must be "status", "reset" or "lost", not {mode!r}')
        self.method = method.upper() if method else None
        self.path_contains, self.query_contains = path_contains, query_contains
        self.status, self.count, self.mode, self.delay = int(status), int(count), mode, float(delay)
        self.code = code or {500: 'InternalError', 503: 'SlowDown'}.get(self.status, 'InjectedFault')

    def matches(self, method, path, query):
        return ((self.method is None or self.method == method)
                and (self.path_contains is None or self.path_contains in path)
                and (self.query_contains is None or self.query_contains in query))


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 64


class _ProxyHandler(LoggedHandler):
    server_version = 'shelbyfs-s3-proxy'

    # Expect: 100-continue is answered by us once the request is verified, so a
    # rejected upload is never sent.

    def parse_request(self):
        self._expect_pending = False
        return super().parse_request()

    def handle_expect_100(self):
        self._expect_pending = True
        return True

    def do_GET(self):
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    # -- helpers --
    def _hdr_all(self, name):
        return [v for v in (self.headers.get_all(name) or ())]

    def _body_length(self):
        cl = self.headers.get('Content-Length')
        if cl is None:
            return None
        try:
            n = int(cl)
        except ValueError:
            raise _Reject(400, 'InvalidArgument', 'Bad Content-Length')
        if n < 0:
            raise _Reject(400, 'InvalidArgument', 'Bad Content-Length')
        return n

    def _continue(self):
        if getattr(self, '_expect_pending', False):
            self._expect_pending = False
            self.send_response_only(100)
            self.end_headers()

    def _drain(self):
        """Consume the unread request body so the connection stays usable, or mark
        it for closing when the client still waits for 100 Continue."""
        if getattr(self, '_expect_pending', False) or self.headers.get('Transfer-Encoding'):
            self.close_connection = True
            return
        left = self._left
        try:
            while left > 0:
                chunk = self.rfile.read(min(CHUNK, left))
                if not chunk:
                    self.close_connection = True
                    break
                left -= len(chunk)
        except OSError:
            self.close_connection = True
        self._left = 0

    def _send_simple(self, status, body, content_type='application/xml', extra=()):
        self.send_response_only(status)
        self.send_header('Date', self.date_time_string())
        self.send_header('x-amz-request-id', '0')
        if body is not None:
            self.send_header('Content-Type', content_type)
            self.send_header('Content-Length', str(len(body)))
        else:
            self.send_header('Content-Length', '0')
        for k, v in extra:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header('Connection', 'close')
        self.end_headers()
        if body and self.command != 'HEAD':
            self.wfile.write(body)

    def _reject(self, rej):
        self._drain()
        self._send_simple(rej.status, error_xml(rej.code, rej.message))
        return rej.status

    def _abort_connection(self):
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    # -- main --
    def _handle(self):
        owner = self.server.owner
        raw_path, _, raw_query = self.path.partition('?')
        if owner.control_endpoints and raw_path.startswith('/__test/'):
            return self._control(raw_path)
        entry = {'method': self.command, 'path': raw_path, 'query': raw_query,
                 'range': self.headers.get('Range'), 'status': None, 'accepted': False,
                 'reason': None, 'time': time.time()}
        self._entry, self._entry_logged = entry, False
        try:
            self._left = 0
            self._left = self._body_length() or 0
            auth = self._verify(raw_path, raw_query)
            entry['accepted'] = True
            inj = owner._take_injection(self.command, raw_path, raw_query)
            if inj is not None:
                entry['reason'] = ('injected reset' if inj.mode == 'reset' else
                                   f'injected status {inj.status} after forwarding' if inj.mode == 'lost' else
                                   f'injected status {inj.status}')
                if inj.delay:
                    time.sleep(inj.delay)
                if inj.mode == 'status':
                    entry['status'] = inj.status
                    self._reject(_Reject(inj.status, inj.code, f'Injected fault ({inj.code})'))
                    return
            if (owner.list_page_size and self.command == 'GET' and raw_path.count('/') == 1
                    and ('list-type', '2') in query_params(raw_query)):
                entry['status'] = self._paged_list(raw_path, raw_query, auth, owner.list_page_size)
                return
            entry['status'] = self._forward(raw_path, raw_query, auth, entry,
                                            reset=inj is not None and inj.mode == 'reset',
                                            lost=inj if inj is not None and inj.mode == 'lost' else None)
        except _Reject as rej:
            entry['reason'] = rej.reason
            entry['status'] = self._reject(rej)
        except UnicodeDecodeError:
            entry['reason'] = 'InvalidURI: percent-decoded path or query is not UTF-8'
            entry['status'] = self._reject(_Reject(400, 'InvalidURI', "Couldn't parse the specified URI."))
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as e:
            entry['reason'] = (entry['reason'] or '') + f' client connection lost: {e!r}'
            self.close_connection = True
        finally:
            if not self._entry_logged:
                owner._append_log(entry)
            self._entry, self._entry_logged = None, False

    def _verify(self, raw_path, raw_query):
        """Check the request; returns the parsed Authorization dict (None if anonymous)."""
        owner = self.server.owner
        h = self.headers
        for name in h.keys():
            ln = name.lower()
            if ln.startswith('x-amz-checksum-') or ln in ('x-amz-sdk-checksum-algorithm', 'x-amz-trailer'):
                raise _Reject(400, 'InvalidArgument',
                              f"Unsupported header '{ln}' received for this API call. (Akave O3 rejects it)")
        if 'aws-chunked' in (h.get('Content-Encoding') or '').lower():
            raise _Reject(400, 'InvalidArgument',
                          "Unsupported header 'content-encoding: aws-chunked' received for this API call. "
                          "(Akave O3 rejects it)")
        sha = h.get('x-amz-content-sha256')
        if sha is not None and sha.startswith('STREAMING-'):
            raise _Reject(400, 'InvalidArgument',
                          f"Unsupported header 'x-amz-content-sha256: {sha}' received for this API call. "
                          "(Akave O3 rejects it)")
        if h.get('Transfer-Encoding') or (self.command == 'PUT' and h.get('Content-Length') is None):
            raise _Reject(411, 'MissingContentLength', 'You must provide the Content-Length HTTP header.')
        qkeys = {k.lower() for k, _ in query_params(raw_query)}
        if 'x-amz-algorithm' in qkeys or 'x-amz-signature' in qkeys:
            raise _Reject(403, 'AccessDenied', 'Query-string (presigned) authentication is not '
                          'supported by this test proxy')
        authz = h.get('Authorization')
        if authz is None:
            if owner.allow_anonymous:
                return None
            raise _Reject(403, 'AccessDenied', 'Access Denied', 'AccessDenied: no Authorization header')
        a = parse_authorization(authz)
        if a['access_key'] != owner.access_key:
            raise _Reject(403, 'InvalidAccessKeyId',
                          'The AWS Access Key Id you provided does not exist in our records.')
        if a['region'] != owner.region:
            raise _Reject(400, 'AuthorizationHeaderMalformed',
                          f"The authorization header is malformed; the region '{a['region']}' is wrong; "
                          f"expecting '{owner.region}'")
        if a['service'] != 's3':
            raise _Reject(400, 'AuthorizationHeaderMalformed',
                          f"The authorization header is malformed; incorrect service '{a['service']}'. "
                          "This endpoint belongs to 's3'.")
        amz_date = h.get('x-amz-date')
        if amz_date is None:
            raise _Reject(403, 'AccessDenied', 'AWS authentication requires a valid Date or x-amz-date header')
        try:
            ts = datetime.datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            raise _Reject(403, 'AccessDenied', 'AWS authentication requires a valid Date or x-amz-date header')
        if a['date'] != amz_date[:8]:
            raise _Reject(400, 'AuthorizationHeaderMalformed',
                          f"The authorization header is malformed; Invalid credential date "
                          f"'{a['date']}'. Date is not the same as X-Amz-Date: '{amz_date[:8]}'.")
        now = datetime.datetime.now(datetime.timezone.utc)
        if abs(now - ts) > MAX_SKEW:
            raise _Reject(403, 'RequestTimeTooSkewed',
                          'The difference between the request time and the current time is too large.')
        if sha is None:
            raise _Reject(400, 'InvalidRequest', 'Missing required header for this request: x-amz-content-sha256')
        if sha != UNSIGNED_PAYLOAD and not _HEX64.fullmatch(sha):
            raise _Reject(400, 'InvalidArgument', 'x-amz-content-sha256 must be UNSIGNED-PAYLOAD, or a '
                          'valid sha256 value.')
        signed = a['signed_headers']
        if 'host' not in signed:
            raise _Reject(403, 'AccessDenied', 'Host header is not signed',
                          'AccessDenied: host is not in SignedHeaders')
        unsigned = sorted({n.lower() for n in h.keys() if n.lower().startswith('x-amz-')} - set(signed))
        if unsigned:
            raise _Reject(403, 'AccessDenied', 'There were headers present in the request which were '
                          f'not signed: {", ".join(unsigned)}',
                          f'AccessDenied: HeadersNotSigned {unsigned}')
        missing = [n for n in signed if not h.get_all(n)]
        if missing:
            raise _Reject(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not '
                          'match the signature you provided. Check your key and signing method.',
                          f'SignatureDoesNotMatch: signed headers absent from the request: {missing}')
        if owner.session_token is not None:
            tok = h.get('x-amz-security-token')
            if tok is None:
                raise _Reject(403, 'InvalidAccessKeyId', 'The AWS Access Key Id you provided does not '
                              'exist in our records (a session token is required).',
                              'InvalidAccessKeyId: missing x-amz-security-token')
            if tok != owner.session_token:
                raise _Reject(400, 'InvalidToken', 'The provided token is malformed or otherwise invalid.')
        sig, creq, _sts = sigv4_signature(self.command, raw_path, raw_query, self._hdr_all, signed, sha,
                                          amz_date, a['region'], a['service'], owner.access_key,
                                          owner.secret_key)
        if not hmac.compare_digest(sig, a['signature']):
            raise _Reject(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not '
                          'match the signature you provided. Check your key and signing method.',
                          'SignatureDoesNotMatch; expected canonical request:\n' + creq)
        a['amz_date'] = amz_date
        a['payload_hash'] = sha
        return a

    def _upstream_headers(self, raw_path, raw_query, auth):
        owner = self.server.owner
        host = f'127.0.0.1:{owner.s3rver_port}'
        out = [('Host', host)]
        for k, v in self.headers.items():
            lk = k.lower()
            if lk in _HOP_BY_HOP or lk in ('host', 'authorization', 'expect'):
                continue
            out.append((k, v))
        if auth is not None:
            def get_all(name):
                if name == 'host':
                    return [host]
                return self._hdr_all(name)
            sig, _c, _s = sigv4_signature(self.command, raw_path, raw_query, get_all,
                                          auth['signed_headers'], auth['payload_hash'], auth['amz_date'],
                                          auth['region'], 's3', S3RVER_KEY, S3RVER_SECRET)
            out.append(('Authorization',
                        f"AWS4-HMAC-SHA256 Credential={S3RVER_KEY}/{auth['date']}/{auth['region']}/s3/"
                        f"aws4_request, SignedHeaders={';'.join(auth['signed_headers'])}, Signature={sig}"))
        return out

    def _paged_list(self, raw_path, raw_query, auth, page_size):
        """ListObjectsV2 in pages of page_size (keys and common prefixes together,
        in key order, as S3 counts them); the token is opaque to clients."""
        owner = self.server.owner
        params = query_params(raw_query)
        token = dict(params).get('continuation-token')
        up = sorted((k, v) for k, v in params if k in ('list-type', 'prefix', 'delimiter'))
        up_query = '&'.join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                            for k, v in up)
        conn = http.client.HTTPConnection('127.0.0.1', owner.s3rver_port, timeout=120)
        try:
            conn.putrequest('GET', raw_path + '?' + up_query, skip_host=True, skip_accept_encoding=True)
            for k, v in self._upstream_headers(raw_path, up_query, auth):
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            self._send_simple(resp.status, body)
            return resp.status
        root = ET.fromstring(body)
        ns = root.tag[:root.tag.index('}') + 1] if root.tag.startswith('{') else ''
        items = [(c.findtext(ns + 'Key'), c) for c in root.findall(ns + 'Contents')]
        items += [(p.findtext(ns + 'Prefix'), None) for p in root.findall(ns + 'CommonPrefixes')]
        items.sort(key=lambda t: t[0].encode())
        start = 0
        if token is not None:
            m = re.fullmatch(r'page-(\d+)', token)
            if not m:
                raise _Reject(400, 'InvalidArgument', 'The continuation token provided is incorrect')
            start = int(m.group(1))
        page = items[start:start + page_size]
        truncated = start + page_size < len(items)
        esc = lambda t: (t.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')  # noqa: E731
                         .replace('"', '&quot;').replace("'", '&apos;'))
        out = ['<?xml version="1.0" encoding="UTF-8"?>',
               '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
               f'<Name>{esc(raw_path[1:])}</Name>', f'<Prefix>{esc(dict(params).get("prefix", ""))}</Prefix>',
               f'<KeyCount>{len(page)}</KeyCount>', f'<MaxKeys>{page_size}</MaxKeys>',
               f'<IsTruncated>{"true" if truncated else "false"}</IsTruncated>']
        if 'delimiter' in dict(params):
            out.append(f'<Delimiter>{esc(dict(params)["delimiter"])}</Delimiter>')
        if token is not None:
            out.append(f'<ContinuationToken>{esc(token)}</ContinuationToken>')
        if truncated:
            out.append(f'<NextContinuationToken>page-{start + page_size}</NextContinuationToken>')
        for key, el in page:
            if el is None:
                out.append(f'<CommonPrefixes><Prefix>{esc(key)}</Prefix></CommonPrefixes>')
            else:
                out.append(f'<Contents><Key>{esc(key)}</Key>'
                           f'<LastModified>{esc(el.findtext(ns + "LastModified") or "")}</LastModified>'
                           f'<ETag>{esc(el.findtext(ns + "ETag") or "")}</ETag>'
                           f'<Size>{el.findtext(ns + "Size") or "0"}</Size>'
                           '<StorageClass>STANDARD</StorageClass></Contents>')
        out.append('</ListBucketResult>')
        self._send_simple(200, ''.join(out).encode())
        return 200

    def _forward(self, raw_path, raw_query, auth, entry, reset=False, lost=None):
        owner = self.server.owner
        length = self._left
        spool = None
        try:
            if length and reset:
                self._continue()
                half = length // 2
                while half > 0:
                    chunk = self.rfile.read(min(CHUNK, half))
                    if not chunk:
                        break
                    half -= len(chunk)
                self._abort_connection()
                return 0
            if length and auth is not None and auth['payload_hash'] != UNSIGNED_PAYLOAD:
                # Verify the payload hash before anything reaches s3rver.
                self._continue()
                spool = tempfile.TemporaryFile(dir=owner.spool_dir)
                digest = hashlib.sha256()
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(CHUNK, left))
                    if not chunk:
                        raise ConnectionResetError('client closed during the request body')
                    digest.update(chunk)
                    spool.write(chunk)
                    left -= len(chunk)
                self._left = 0
                if digest.hexdigest() != auth['payload_hash']:
                    raise _Reject(400, 'XAmzContentSHA256Mismatch', 'The provided \'x-amz-content-sha256\' '
                                  'header does not match what was computed.',
                                  f'XAmzContentSHA256Mismatch: body sha256 {digest.hexdigest()}')
                spool.seek(0)
            elif length == 0 and auth is not None and auth['payload_hash'] not in (
                    UNSIGNED_PAYLOAD, hashlib.sha256(b'').hexdigest()):
                raise _Reject(400, 'XAmzContentSHA256Mismatch', 'The provided \'x-amz-content-sha256\' '
                              'header does not match what was computed.')
            conn = http.client.HTTPConnection('127.0.0.1', owner.s3rver_port, timeout=300)
            try:
                target = raw_path + ('?' + raw_query if raw_query else '')
                conn.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
                for k, v in self._upstream_headers(raw_path, raw_query, auth):
                    conn.putheader(k, v)
                conn.endheaders()
                if length:
                    if spool is None:
                        self._continue()
                    src = spool if spool is not None else self.rfile
                    left = length
                    while left > 0:
                        chunk = src.read(min(CHUNK, left))
                        if not chunk:
                            raise ConnectionResetError('client closed during the request body')
                        conn.send(chunk)
                        left -= len(chunk)
                        if spool is None:
                            self._left = left
                resp = conn.getresponse()
                if lost is not None:
                    # s3rver did the work; the client gets an error instead of its answer.
                    resp.read()
                    raise _Reject(lost.status, lost.code, f'Injected fault ({lost.code}) after s3rver answered '
                                  f'{resp.status}', f'injected status {lost.status} after forwarding')
                return self._relay(resp, reset)
            finally:
                conn.close()
        finally:
            if spool is not None:
                spool.close()

    def _relay(self, resp, reset):
        no_body = self.command == 'HEAD' or resp.status in (204, 304) or 100 <= resp.status < 200
        self.send_response_only(resp.status, resp.reason)
        clen = None
        for k, v in resp.getheaders():
            lk = k.lower()
            if lk in _HOP_BY_HOP:
                continue
            if lk == 'content-length':
                clen = int(v)
            self.send_header(k, v)
        chunked = not no_body and clen is None
        if chunked:
            self.send_header('Transfer-Encoding', 'chunked')
        self.end_headers()
        if no_body:
            if reset:
                self._abort_connection()
            return resp.status
        limit = clen // 2 if (reset and clen is not None) else None
        sent = 0
        while True:
            want = CHUNK if limit is None else min(CHUNK, limit - sent)
            if want <= 0:
                break
            chunk = resp.read(want)
            if not chunk:
                break
            if chunked:
                self.wfile.write(b'%x\r\n' % len(chunk) + chunk + b'\r\n')
            else:
                self.wfile.write(chunk)
            sent += len(chunk)
        if reset:
            self._abort_connection()
            return resp.status
        if chunked:
            self.wfile.write(b'0\r\n\r\n')
        elif sent != clen:
            self.close_connection = True   # upstream short read: do not reuse
        return resp.status

    def _control(self, raw_path):
        owner = self.server.owner
        n = self._body_length() or 0
        self._continue()
        body = self.rfile.read(n) if n else b''
        if self.command == 'GET' and raw_path == '/__test/log':
            self._send_simple(200, json.dumps(owner.log).encode(), 'application/json')
        elif self.command == 'POST' and raw_path == '/__test/clear':
            owner.clear_log()
            self._send_simple(204, None)
        elif self.command == 'POST' and raw_path == '/__test/clear_injections':
            owner.clear_injections()
            self._send_simple(204, None)
        elif self.command == 'POST' and raw_path == '/__test/inject':
            try:
                owner.inject(**json.loads(body or b'{}'))
            except (TypeError, ValueError) as e:
                self._send_simple(400, json.dumps({'error': str(e)}).encode(), 'application/json')
                return
            self._send_simple(204, None)
        else:
            self._send_simple(404, json.dumps({'error': 'unknown control endpoint'}).encode(),
                              'application/json')


def _set_pdeathsig():
    """Child side of Popen: die with the parent thread (covers a SIGKILLed harness)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort only
        pass


class S3ServerError(RuntimeError):
    pass


class S3Server(Fixture):
    """Context manager: s3rver on a private port plus the verifying proxy at `endpoint`."""

    def __init__(self, workdir=None, buckets=('bucket',), access_key='shelbyfs-test-key',
                 secret_key='shelbyfs-test-secret/+=', region='us-east-1', session_token=None,
                 allow_anonymous=False, control_endpoints=False, start_timeout=20.0,
                 list_page_size=None):
        # list_page_size: the proxy answers ListObjectsV2 itself in pages of this
        # many entries (IsTruncated + NextContinuationToken), from s3rver's full
        # listing, because s3rver 3.7.1 answers 500 to any truncated listing.
        self.list_page_size = list_page_size
        self._own_workdir = workdir is None
        self.workdir = os.path.abspath(workdir) if workdir else None
        self.buckets = tuple(buckets)
        self.access_key, self.secret_key = access_key, secret_key
        self.region, self.session_token = region, session_token
        self.allow_anonymous = allow_anonymous
        self.control_endpoints = control_endpoints
        self.start_timeout = start_timeout
        self.s3rver_port = None
        self.port = None
        self.proc = None
        self._server = None  # fixture.ServerThread of the verifying proxy
        self._lock = threading.Lock()
        self._log = []
        self._injections = []

    # -- public API ---------------------------------------------------------
    @property
    def endpoint(self):
        return f'http://127.0.0.1:{self.port}'

    @property
    def data_dir(self):
        return os.path.join(self.workdir, 's3rver')

    @property
    def spool_dir(self):
        return os.path.join(self.workdir, 'spool')

    def env(self):
        e = {'AWS_ACCESS_KEY_ID': self.access_key, 'AWS_SECRET_ACCESS_KEY': self.secret_key,
             'AWS_REGION': self.region, 'AWS_ENDPOINT_URL': self.endpoint}
        if self.session_token is not None:
            e['AWS_SESSION_TOKEN'] = self.session_token
        return e

    def object_path(self, bucket, key):
        """Where s3rver keeps the bytes of bucket/key (overwrite it to damage the object)."""
        parts = key.split('/')
        return os.path.join(self.data_dir, bucket, *parts[:-1], parts[-1] + '._S3rver_object')

    @property
    def log(self):
        """Copy of the request log, oldest first. Each entry: method, path (raw), query (raw),
        range (Range header or None), status (int; 0 = connection broken before any
        response), accepted (passed verification), reason (why rejected / 'injected ...'
        / None), time. An entry is published before its response is sent."""
        with self._lock:
            return [dict(e) for e in self._log]

    def clear_log(self):
        with self._lock:
            self._log.clear()

    def inject(self, method=None, path_contains=None, query_contains=None, status=503, count=1,
               mode='status', code=None, delay=0.0):
        """Make the next `count` verified requests matching method / path_contains /
        query_contains (substrings of the raw path / raw query) fail: mode='status'
        answers `status` with an S3 error (`code`, default SlowDown for 503,
        InternalError for 500) without reaching s3rver; mode='reset' breaks the
        connection mid-way; mode='lost' forwards the request and replaces s3rver's
        answer by the error (see the module docstring). `delay` seconds first."""
        inj = _Injection(method, path_contains, query_contains, status, count, mode, code, delay)
        with self._lock:
            self._injections.append(inj)

    def clear_injections(self):
        with self._lock:
            self._injections.clear()

    def pending_injections(self):
        with self._lock:
            return sum(i.count for i in self._injections)

    # botocore-signed helpers, independent of shelbyfs's client ---------------
    def request(self, method, bucket='', key='', params=(), headers=None, body=b'',
                unsigned_headers=None):
        """One signed request through the proxy: (status, {lower-case header: value}, body).

        `unsigned_headers` are added after signing (to provoke HeadersNotSigned)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        path = '/' + _aws_quote(bucket) if bucket else '/'
        if key:
            path += '/' + urllib.parse.quote(key, safe='/-_.~')
        params = list(params.items()) if isinstance(params, dict) else list(params)
        query = '&'.join(f'{_aws_quote(k)}={_aws_quote(str(v))}' for k, v in sorted(params))
        req = AWSRequest(method=method, url=self.endpoint + path, data=body,
                         headers=dict(headers or {}), params=params)
        S3SigV4Auth(Credentials(self.access_key, self.secret_key, self.session_token),
                    's3', self.region).add_auth(req)
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=120)
        try:
            conn.putrequest(method, path + ('?' + query if query else ''), skip_accept_encoding=True)
            for k, v in list(req.headers.items()) + list((unsigned_headers or {}).items()):
                conn.putheader(k, v)
            if body or method in ('PUT', 'POST'):
                conn.putheader('Content-Length', str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def put_object(self, bucket, key, data, headers=None):
        status, hdrs, body = self.request('PUT', bucket, key, headers=headers, body=bytes(data))
        if status != 200:
            raise S3Error(status, body)
        return hdrs.get('etag')

    def get_object(self, bucket, key, range=None):
        status, _h, body = self.request('GET', bucket, key,
                                        headers={'Range': range} if range else None)
        if status not in (200, 206):
            raise S3Error(status, body)
        return body

    def head_object(self, bucket, key):
        """Response headers, or None when the object does not exist."""
        status, hdrs, body = self.request('HEAD', bucket, key)
        if status == 404:
            return None
        if status != 200:
            raise S3Error(status, body)
        return hdrs

    def delete_object(self, bucket, key):
        status, _h, body = self.request('DELETE', bucket, key)
        if status not in (200, 204):
            raise S3Error(status, body)

    def list_keys(self, bucket, prefix=''):
        """All keys under prefix (ListObjectsV2, following continuation tokens), sorted."""
        keys, token = [], None
        while True:
            params = {'list-type': '2', 'prefix': prefix}
            if token:
                params['continuation-token'] = token
            status, _h, body = self.request('GET', bucket, params=params)
            if status != 200:
                raise S3Error(status, body)
            root = ET.fromstring(body)
            token = None
            truncated = False
            for el in root:
                tag = el.tag.rsplit('}', 1)[-1]
                if tag == 'Contents':
                    for sub in el:
                        if sub.tag.rsplit('}', 1)[-1] == 'Key':
                            keys.append(sub.text or '')
                elif tag == 'IsTruncated':
                    truncated = (el.text or '').strip() == 'true'
                elif tag == 'NextContinuationToken':
                    token = el.text
            if not truncated or not token:
                return sorted(keys)

    # -- lifecycle ------------------------------------------------------------
    def start(self):
        if self.proc is not None:
            return
        if self.workdir is None:
            self.workdir = cleanup.make_tmpdir('shelbyfs-s3-')
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.spool_dir, exist_ok=True)
        last = ''
        for _attempt in range(5):
            last = self._try_start_s3rver()
            if last is None:
                break
            if 'EADDRINUSE' not in last:
                break
            time.sleep(0.2)
        if last is not None:
            raise S3ServerError(f's3rver failed to start: {last}')
        httpd = _ProxyServer(('127.0.0.1', 0), _ProxyHandler)
        httpd.owner = self
        self._server = ServerThread(httpd, f's3-proxy-{httpd.server_address[1]}')
        self.port = self._server.port

    def s3rver_output(self):
        return read_text(os.path.join(self.workdir, 's3rver.log')) if self.workdir else ''

    def _try_start_s3rver(self):
        if not os.access(S3RVER_BIN, os.X_OK):
            return f'{S3RVER_BIN} is missing (run tools/deps.sh)'
        from .nginx import free_port
        port = free_port()
        cmd = [S3RVER_BIN, '-a', '127.0.0.1', '-p', str(port), '-d', self.data_dir, '--silent']
        for b in self.buckets:
            cmd += ['--configure-bucket', b]
        logpath = os.path.join(self.workdir, 's3rver.log')
        main = threading.current_thread() is threading.main_thread()
        with open(logpath, 'wb') as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    preexec_fn=_set_pdeathsig if main else None)
        cleanup.register_pid(proc.pid)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                cleanup.unregister_pid(proc.pid)
                return self.s3rver_output().strip() or f'exit {proc.returncode}'
            if _s3rver_answers(port, self.buckets):
                self.proc, self.s3rver_port = proc, port
                return None
            time.sleep(0.1)
        cleanup.stop_process(proc)
        return f'not answering after {self.start_timeout}s: {self.s3rver_output().strip()}'

    def stop(self):
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        proc, self.proc = self.proc, None
        if proc is not None:
            cleanup.stop_process(proc)

    def close(self):
        self.stop()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- used by the handler ----------------------------------------------------
    def _take_injection(self, method, path, query):
        with self._lock:
            for inj in self._injections:
                if inj.count > 0 and inj.matches(method, path, query):
                    inj.count -= 1
                    if inj.count == 0:
                        self._injections.remove(inj)
                    return inj
        return None

    def _append_log(self, entry):
        with self._lock:
            self._log.append(entry)


def _s3rver_answers(port, buckets):
    """True once s3rver answers, and (the buckets being created after listen) a HEAD
    of the last configured bucket is 200."""
    path = '/' + buckets[-1] if buckets else '/'
    try:
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=1.0)
        try:
            conn.request('HEAD', path)
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200 or not buckets
        finally:
            conn.close()
    except OSError:
        return False


def _serve_main(argv):
    ap = argparse.ArgumentParser(prog='python3 -m testlib.s3')
    sub = ap.add_subparsers(dest='cmd', required=True)
    sp = sub.add_parser('serve', help='run s3rver + the verifying proxy until stdin EOF / SIGTERM')
    sp.add_argument('--dir', required=True, help='work directory (s3rver data, spool, logs)')
    sp.add_argument('--bucket', action='append', default=None, help='bucket to create (repeatable)')
    sp.add_argument('--session-token', default=None)
    sp.add_argument('--access-key', default='shelbyfs-test-key')
    sp.add_argument('--secret-key', default='shelbyfs-test-secret/+=')
    sp.add_argument('--region', default='us-east-1')
    sp.add_argument('--allow-anonymous', action='store_true')
    sp.add_argument('--list-page-size', type=int, default=None,
                    help='answer ListObjectsV2 in pages of N (s3rver cannot page)')
    args = ap.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    server = S3Server(args.dir, buckets=tuple(args.bucket or ('bucket',)), access_key=args.access_key,
                      secret_key=args.secret_key, region=args.region, session_token=args.session_token,
                      allow_anonymous=args.allow_anonymous, control_endpoints=True,
                      list_page_size=args.list_page_size)

    def info(srv):
        out = {'endpoint': srv.endpoint, 'region': srv.region,
               'access_key': srv.access_key, 'secret_key': srv.secret_key}
        if srv.session_token is not None:
            out['session_token'] = srv.session_token
        return out
    return serve_until_eof(server, info, errors=(S3ServerError,))


if __name__ == '__main__':
    sys.exit(_serve_main(sys.argv[1:]))
