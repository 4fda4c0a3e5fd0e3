#!/usr/bin/python3
"""Self-test of the loopback storage stand-ins: testlib.s3 (s3rver behind a
botocore SigV4-verifying proxy) and testlib.shelby_rpc (fake Shelby RPC).

The S3 side is driven with the curl CLI (7.88, --aws-sigv4), a client independent
of both shelbyfs and the verifier, and with the harness's botocore-signed helpers.
Run: PYTHONPATH=tools /usr/bin/python3 tests/integration/test_s3_harness.py
Exit 0 pass, 77 skip (s3rver/botocore/curl missing and CI unset), else failure.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tools'))
import testlib  # noqa: E402
from testlib import s3 as ts3  # noqa: E402
from testlib.shelby_rpc import ShelbyRpc  # noqa: E402

G = {}
BUCKET = 'bucket'


def setUpModule():
    tmp = testlib.make_tmpdir('shelbyfs-test-s3h-')
    unittest.addModuleCleanup(shutil.rmtree, tmp, True)
    server = ts3.S3Server(os.path.join(tmp, 's3'), buckets=(BUCKET, 'other')).__enter__()
    unittest.addModuleCleanup(server.close)
    G.update(tmp=tmp, s3=server)


def curl(*args, secret=None, sha='UNSIGNED-PAYLOAD', region='us-east-1', user=None, timeout=60):
    """(status, body) of a curl --aws-sigv4 request to the proxy."""
    s3 = G['s3']
    cmd = ['curl', '-sS', '--aws-sigv4', f'aws:amz:{region}:s3',
           '--user', user or f'{s3.access_key}:{secret if secret is not None else s3.secret_key}',
           '-o', '-', '-w', '\n%{http_code}']
    if sha is not None:
        cmd += ['-H', f'x-amz-content-sha256: {sha}']
    r = subprocess.run(cmd + list(args), capture_output=True, timeout=timeout)
    body, _, code = r.stdout.rpartition(b'\n')
    return int(code or 0), body


def url(path):
    return G['s3'].endpoint + path


def err_code(body):
    return ts3._xml_text(body, 'Code')


class S3CurlTests(unittest.TestCase):
    def setUp(self):
        G['s3'].clear_log()
        G['s3'].clear_injections()

    def test_put_and_range_get(self):
        data = os.urandom(3 * 1024 * 1024 + 17)    # > 1 MiB: curl sends Expect: 100-continue
        src = os.path.join(G['tmp'], 'put.bin')
        with open(src, 'wb') as f:
            f.write(data)
        status, body = curl('-T', src, url('/bucket/curl/a%2Bb%3Dc%20d.bin'))
        self.assertEqual(status, 200, body)
        status, body = curl('-r', '1000-1999', url('/bucket/curl/a%2Bb%3Dc%20d.bin'))
        self.assertEqual(status, 206)
        self.assertTrue(body == data[1000:2000])
        self.assertEqual(G['s3'].get_object(BUCKET, 'curl/a+b=c d.bin'), data)
        with open(G['s3'].object_path(BUCKET, 'curl/a+b=c d.bin'), 'rb') as f:
            self.assertTrue(f.read() == data)
        self.assertTrue(all(e['accepted'] for e in G['s3'].log), G['s3'].log)

    def test_put_with_hex_sha256(self):
        data = b'payload with a real hash'
        src = os.path.join(G['tmp'], 'hex.bin')
        with open(src, 'wb') as f:
            f.write(data)
        status, body = curl('-T', src, url('/bucket/hex/ok'), sha=hashlib.sha256(data).hexdigest())
        self.assertEqual(status, 200, body)
        status, body = curl('-T', src, url('/bucket/hex/bad'), sha=hashlib.sha256(b'other').hexdigest())
        self.assertEqual((status, err_code(body)), (400, 'XAmzContentSHA256Mismatch'))
        self.assertEqual(G['s3'].list_keys(BUCKET, 'hex/'), ['hex/ok'])

    def test_wrong_secret_rejected_and_nothing_stored(self):
        src = os.path.join(G['tmp'], 'small.bin')
        with open(src, 'wb') as f:
            f.write(b'x' * 100)
        for name, size in (('small', 100), ('big', 2 * 1024 * 1024)):
            with open(src, 'wb') as f:
                f.write(b'x' * size)
            status, body = curl('-T', src, url(f'/bucket/wrong/{name}'), secret='not-the-secret')
            self.assertEqual((status, err_code(body)), (403, 'SignatureDoesNotMatch'), name)
        self.assertEqual(G['s3'].list_keys(BUCKET, 'wrong/'), [])
        status, body = curl(url('/bucket/wrong/small'), user='unknown-key:whatever')
        self.assertEqual((status, err_code(body)), (403, 'InvalidAccessKeyId'))

    def test_query_canonicalization(self):
        status, body = curl(url('/bucket?list-type=2&prefix=curl%2F'))
        self.assertEqual(status, 200, body)
        # curl 7.88 signs the query as given: unsorted -> mismatch (real S3 sorts).
        status, body = curl(url('/bucket?prefix=a&list-type=2'))
        self.assertEqual((status, err_code(body)), (403, 'SignatureDoesNotMatch'))
        # ... and signs a valueless parameter as `uploads`, S3 as `uploads=`.
        status, body = curl('-X', 'POST', url('/bucket/mpu?uploads'))
        self.assertEqual((status, err_code(body)), (403, 'SignatureDoesNotMatch'))
        status, body = curl('-X', 'POST', url('/bucket/mpu?uploads='))
        self.assertEqual(status, 200, body)
        self.assertIn(b'UploadId', body)
        # Raw '+' / '=' in the key: S3 re-encodes the path before signing.
        status, body = curl(url('/bucket/curl/a+b=c%20d.bin'))
        self.assertEqual((status, err_code(body)), (403, 'SignatureDoesNotMatch'))

    def test_rejected_headers(self):
        status, body = curl('-H', 'x-amz-checksum-crc32: AAAAAA==', url('/bucket/x'))
        self.assertEqual((status, err_code(body)), (400, 'InvalidArgument'))
        self.assertIn(b'Akave O3', body)
        status, body = curl('-H', 'x-amz-sdk-checksum-algorithm: CRC32', url('/bucket/x'))
        self.assertEqual((status, err_code(body)), (400, 'InvalidArgument'))
        status, body = curl(url('/bucket/x'), sha=None)
        self.assertEqual((status, err_code(body)), (400, 'InvalidRequest'))
        status, body = curl(url('/bucket/x'), region='eu-west-1')
        self.assertEqual((status, err_code(body)), (400, 'AuthorizationHeaderMalformed'))
        r = subprocess.run(['curl', '-sS', '-o', '-', '-w', '\n%{http_code}', url('/bucket/x')],
                           capture_output=True, timeout=30)
        body, _, code = r.stdout.rpartition(b'\n')
        self.assertEqual((int(code), err_code(body)), (403, 'AccessDenied'))
        # curl 7.88 duplicates a user-supplied X-Amz-Date (fixed in 8.3.0) but signs with it.
        status, body = curl('-H', 'X-Amz-Date: 20200101T000000Z', url('/bucket/x'))
        self.assertEqual((status, err_code(body)), (403, 'RequestTimeTooSkewed'))
        # HEAD: status only, no body.
        r = subprocess.run(['curl', '-sS', '-I', '-o', '/dev/null', '-w', '%{http_code} %{size_download}',
                            url('/bucket/x')], capture_output=True, timeout=30)
        self.assertEqual(r.stdout, b'403 0')
        rejected = [e for e in G['s3'].log if not e['accepted']]
        self.assertEqual(len(rejected), len(G['s3'].log))
        self.assertTrue(all(e['reason'] for e in rejected))

    def test_unsigned_amz_header(self):
        status, _h, body = G['s3'].request('GET', BUCKET, 'x', unsigned_headers={'x-amz-meta-a': '1'})
        self.assertEqual((status, err_code(body)), (403, 'AccessDenied'))
        self.assertIn(b'not signed', body)

    def test_fault_injection(self):
        G['s3'].put_object(BUCKET, 'fault/obj', b'0123456789')
        G['s3'].inject(method='GET', path_contains='/fault/', status=503, count=2)
        s1, b1 = curl(url('/bucket/fault/obj'))
        s2, _ = curl(url('/bucket/fault/obj'))
        s3_, b3 = curl(url('/bucket/fault/obj'))
        self.assertEqual((s1, err_code(b1), s2, s3_, b3), (503, 'SlowDown', 503, 200, b'0123456789'))
        G['s3'].inject(method='GET', path_contains='/fault/', mode='reset')
        r = subprocess.run(['curl', '-sS', '--aws-sigv4', 'aws:amz:us-east-1:s3', '--user',
                            f'{G["s3"].access_key}:{G["s3"].secret_key}', '-H',
                            'x-amz-content-sha256: UNSIGNED-PAYLOAD', '-o', '/dev/null',
                            url('/bucket/fault/obj')], capture_output=True, timeout=30)
        self.assertNotEqual(r.returncode, 0, 'a reset transfer must fail in curl')
        log = G['s3'].log
        self.assertEqual([e['status'] for e in log][-4:], [503, 503, 200, 200])
        self.assertIn('injected reset', log[-1]['reason'])


class S3HelperTests(unittest.TestCase):
    def test_put_get_list_head_delete(self):
        s3 = G['s3']
        s3.put_object('other', 'h/ü x+y=z.txt', b'hello world')
        s3.put_object('other', 'h/b', b'')
        self.assertEqual(s3.get_object('other', 'h/ü x+y=z.txt'), b'hello world')
        self.assertEqual(s3.get_object('other', 'h/ü x+y=z.txt', range='bytes=6-10'), b'world')
        self.assertEqual(s3.list_keys('other', 'h/'), ['h/b', 'h/ü x+y=z.txt'])
        self.assertEqual(s3.head_object('other', 'h/b')['content-length'], '0')
        self.assertIsNone(s3.head_object('other', 'h/missing'))
        s3.delete_object('other', 'h/b')
        self.assertEqual(s3.list_keys('other', 'h/'), ['h/ü x+y=z.txt'])
        with self.assertRaises(ts3.S3Error) as cm:
            s3.get_object('other', 'h/missing')
        self.assertEqual((cm.exception.status, cm.exception.code), (404, 'NoSuchKey'))

    def test_session_token_and_standalone(self):
        d = os.path.join(G['tmp'], 'standalone')
        p = subprocess.Popen([sys.executable, '-m', 'testlib.s3', 'serve', '--dir', d, '--bucket', 'b1',
                              '--session-token', 'tok'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=dict(os.environ, PYTHONPATH=os.path.join(
                                 os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tools')))
        testlib.cleanup.register_pid(p.pid)
        try:
            info = json.loads(p.stdout.readline())
            self.assertEqual(set(info), {'endpoint', 'region', 'access_key', 'secret_key', 'session_token'})
            c = ts3.S3Server(None, session_token='tok', access_key=info['access_key'],
                             secret_key=info['secret_key'])
            c.port = int(info['endpoint'].rsplit(':', 1)[1])
            c.put_object('b1', 'k', b'v')
            self.assertEqual(c.get_object('b1', 'k'), b'v')
            c.session_token = None
            status, _h, body = c.request('GET', 'b1', 'k')
            self.assertEqual((status, err_code(body)), (403, 'InvalidAccessKeyId'))
            c.session_token = 'wrong'
            status, _h, body = c.request('GET', 'b1', 'k')
            self.assertEqual((status, err_code(body)), (400, 'InvalidToken'))
            req = urllib.request.Request(info['endpoint'] + '/__test/inject', method='POST',
                                         data=json.dumps({'method': 'GET', 'status': 500}).encode())
            self.assertEqual(urllib.request.urlopen(req, timeout=10).status, 204)
            c.session_token = 'tok'
            self.assertEqual(c.request('GET', 'b1', 'k')[0], 500)
            log = json.load(urllib.request.urlopen(info['endpoint'] + '/__test/log', timeout=10))
            self.assertEqual([e['status'] for e in log], [200, 200, 403, 400, 500])
        finally:
            p.stdin.close()
            rc = p.wait(timeout=30)
            testlib.cleanup.unregister_pid(p.pid)
            p.stdout.close()
        self.assertEqual(rc, 0)


class S3AnonymousTests(unittest.TestCase):
    def test_allow_anonymous(self):
        with ts3.S3Server(None, buckets=('pub',), allow_anonymous=True) as s3:
            s3.put_object('pub', 'k', b'public')
            with urllib.request.urlopen(s3.endpoint + '/pub/k', timeout=30) as r:
                self.assertEqual(r.read(), b'public')
            self.assertEqual([e['status'] for e in s3.log], [200, 200])


class ShelbyRpcTests(unittest.TestCase):
    NAME = 'dir/sp ace+plus=eq%pct-ü€.bin'
    ACCT = '0xabc'

    @classmethod
    def setUpClass(cls):
        cls.root = os.path.join(G['tmp'], 'rpc')
        cls.data = os.urandom(100_000)
        path = os.path.join(cls.root, cls.ACCT, *cls.NAME.split('/'))
        os.makedirs(os.path.dirname(path))
        with open(path, 'wb') as f:
            f.write(cls.data)

    def get(self, rpc, name, rng=None, key=None, method='GET', data=None):
        req = urllib.request.Request(rpc.blob_url(self.ACCT, name), method=method, data=data)
        if rng:
            req.add_header('Range', rng)
        if key:
            req.add_header('Authorization', f'Bearer {key}')
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def test_blob_reads(self):
        with ShelbyRpc(self.root) as rpc:
            self.assertIn('%25pct-%C3%BC%E2%82%AC', rpc.blob_url(self.ACCT, self.NAME))
            st, h, body = self.get(rpc, self.NAME)
            self.assertEqual((st, int(h['Content-Length'])), (200, len(self.data)))
            self.assertTrue(body == self.data)
            st, h, body = self.get(rpc, self.NAME, 'bytes=10-19')
            self.assertEqual((st, h['Content-Range'], body), (206, f'bytes 10-19/{len(self.data)}',
                                                             self.data[10:20]))
            st, h, body = self.get(rpc, self.NAME, 'bytes=99990-')
            self.assertEqual((st, body), (206, self.data[99990:]))
            st, h, body = self.get(rpc, self.NAME, f'bytes={len(self.data)}-')
            self.assertEqual(st, 416)
            self.assertIn('error', json.loads(body))
            st, h, body = self.get(rpc, 'dir/missing')
            self.assertEqual(st, 404)
            self.assertIn('error', json.loads(body))
            st, _h, _b = self.get(rpc, 'dir/../../etc/passwd')
            self.assertEqual(st, 400)

    def test_no_content_range_and_api_key(self):
        with ShelbyRpc(self.root, api_key='k3y', content_range=False) as rpc:
            st, h, body = self.get(rpc, self.NAME, 'bytes=0-0', key='k3y')
            self.assertEqual((st, h.get('Content-Range'), body), (206, None, self.data[:1]))
            self.assertEqual(h['Content-Length'], '1')
            self.assertEqual(self.get(rpc, self.NAME)[0], 401)
            self.assertEqual(self.get(rpc, self.NAME, key='nope')[0], 401)

    def test_writes(self):
        with ShelbyRpc(os.path.join(G['tmp'], 'rpc-w')) as rpc:
            st, _h, _b = self.get(rpc, 'w/single blob', method='PUT', data=b'abc')
            self.assertEqual(st, 204)
            self.assertEqual(self.get(rpc, 'w/single blob')[2], b'abc')

            def call(method, path, data=None):
                req = urllib.request.Request(rpc.url + path, method=method, data=data)
                req.add_header('Content-Type', 'application/json' if method == 'POST'
                               else 'application/octet-stream')
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, json.loads(r.read() or b'null')
            st, resp = call('POST', '/v1/multipart-uploads', json.dumps(
                {'rawAccount': self.ACCT, 'rawBlobName': 'w/multi', 'rawPartSize': 4}).encode())
            uid = resp['uploadId']
            for idx, chunk in enumerate((b'0123', b'4567', b'89')):
                self.assertEqual(call('PUT', f'/v1/multipart-uploads/{uid}/parts/{idx}', chunk),
                                 (200, {'success': True}))
            self.assertEqual(call('POST', f'/v1/multipart-uploads/{uid}/complete', b''),
                             (200, {'success': True}))
            with open(rpc.blob_path(self.ACCT, 'w/multi'), 'rb') as f:
                self.assertEqual(f.read(), b'0123456789')


def require_prereqs():
    missing = ts3.missing_prereqs()
    if shutil.which('curl') is None:
        missing.append('curl')
    testlib.skip_unless_present(missing)


if __name__ == '__main__':
    require_prereqs()
    unittest.main(verbosity=2)
