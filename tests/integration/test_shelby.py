#!/usr/bin/python3
"""Integration: shelbyfs reading shelby:// blobs from a loopback Shelby RPC stand-in.

Packed Fashion-MNIST shards become blobs of one account with awkward names
(spaces, '+', '%', non-ASCII, '/'); a manifest whose locations are
shelby://<account>/<name> is mounted with SHELBY_RPC_URL pointing at
testlib.shelby_rpc.ShelbyRpc (with and without Content-Range in its answers)
and every sample compared. An RPC that wants an API key refuses a mount without
one (exit 1, clear message) and serves one with SHELBY_API_KEY or a TOML
profile (shelby_rpc_url + shelby_api_key_env). `shelbyfs verify` passes, then
names a damaged blob. A shelby:// manifest with no gateway or CLI still mounts,
warning that checkpoints/ is read-only.
Run: SHELBYFS_BIN=build/src/shelbyfs PYTHONPATH=tools /usr/bin/python3 tests/integration/test_shelby.py
Exit 0 pass, 77 skip (prerequisite missing and CI unset), else failure.
"""
import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tools'))
import testlib  # noqa: E402
from testlib import fmnist  # noqa: E402
from testlib.shelby_rpc import ShelbyRpc  # noqa: E402

ACCOUNT = '0x' + '0123456789abcdef' * 3 + 'c63d6a5efb0080a6'
COUNT = 200
API_KEY = 'test-api-key-Zq9+/='
G = {}


def blob_name(i):
    """An awkward blob name for shard i: spaces, '+', '%', '=', non-ASCII, '/'."""
    return f'data sets/a+b=c%20 {i % 2}/ü-日本/shard {i:03d}+%.tar'


def require_all():
    testlib.require_prereqs(extra_modules=('numpy', 'PIL'))
    missing = [os.path.join(fmnist.DEFAULT_DIR, f) + ' (dataset-fashion-mnist)'
               for f in ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz')
               if not os.path.exists(os.path.join(fmnist.DEFAULT_DIR, f))]
    testlib.skip_unless_present(missing)


def setUpModule():
    require_all()
    tmp = testlib.make_tmpdir('shelbyfs-test-shelby-')
    unittest.addModuleCleanup(shutil.rmtree, tmp, True)
    src, out, root = (os.path.join(tmp, d) for d in ('src', 'out', 'rpc'))
    testlib.fmnist_to_imagefolder(src, COUNT, 'train')
    testlib.pack(src, out, '--shard-size', '48KiB', '--no-progress')
    manifest = testlib.read_manifest(out)
    assert len(manifest['shards']) >= 3, manifest['shards']
    names = {}
    for i, s in enumerate(manifest['shards']):
        names[s['name']] = blob_name(i)
        dest = os.path.join(root, ACCOUNT, *blob_name(i).split('/'))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(out, s['name']), dest)
        s['location'] = f'shelby://{ACCOUNT}/{blob_name(i)}'
    mdir = os.path.join(tmp, 'manifest')
    os.makedirs(mdir)
    testlib.write_manifest(os.path.join(mdir, 'manifest.json'), manifest)
    # The same manifest as a blob too, for a shelby:// manifest location.
    os.makedirs(os.path.join(root, ACCOUNT, 'ds'))
    testlib.write_manifest(os.path.join(root, ACCOUNT, 'ds', 'manifest.json'), manifest)
    files = {}
    for dirpath, _dirs, fnames in os.walk(src):
        for n in fnames:
            p = os.path.join(dirpath, n)
            with open(p, 'rb') as f:
                files[os.path.relpath(p, src)] = f.read()
    G.update(tmp=tmp, src=src, out=out, root=root, manifest=manifest, names=names, files=files,
             manifest_path=os.path.join(mdir, 'manifest.json'), env=testlib.isolated_env(tmp))


def run(args, env, timeout=120):
    return subprocess.run([testlib.shelbyfs_bin(), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


class ShelbyCase(unittest.TestCase):
    def scratch(self, what):
        return tempfile.mkdtemp(prefix=f'{self._testMethodName}-{what}-', dir=G['tmp'])

    def mount(self, env, manifest=None, options=(), **kw):
        kw.setdefault('mount_timeout', 30)
        kw.setdefault('exit_timeout', 30)
        return testlib.Mount(manifest or G['manifest_path'],
                             options=[f'spool_dir={self.scratch("spool")}', *options], env=env, **kw)

    def check_samples(self, m):
        self.assertEqual(len(G['files']), COUNT)
        for rel, data in sorted(G['files'].items()):
            got = testlib.read_file(m.path(os.path.join('samples', rel)))
            self.assertTrue(got == data, f'samples/{rel}: bytes differ')
        self.assertEqual(sorted(os.listdir(m.path('shards'))),
                         sorted(s['name'] for s in G['manifest']['shards']))

    def blob_requests(self, rpc):
        return [e for e in rpc.log if e['path'].startswith(f'/v1/blobs/{ACCOUNT}/')]


class ReadTests(ShelbyCase):
    def test_mount_reads_every_sample(self):
        with ShelbyRpc(G['root']) as rpc:
            env = dict(G['env'], SHELBY_RPC_URL=rpc.url)
            with self.mount(env) as m:
                self.check_samples(m)
                big = max(G['manifest']['shards'], key=lambda s: s['size'])
                with open(os.path.join(G['out'], big['name']), 'rb') as f:
                    self.assertTrue(testlib.read_file(m.path('shards/' + big['name'])) == f.read())
            reqs = self.blob_requests(rpc)
            self.assertTrue(reqs)
            self.assertEqual([e for e in reqs if e['status'] not in (200, 206)], [])
            # Every blob was asked for under its percent-encoded name.
            paths = {e['path'] for e in reqs}
            for s in G['manifest']['shards']:
                enc = rpc.blob_url(ACCOUNT, G['names'][s['name']])[len(rpc.url):]
                self.assertIn(enc, paths)

    def test_mount_without_content_range(self):
        with ShelbyRpc(G['root'], content_range=False) as rpc:
            env = dict(G['env'], SHELBY_RPC_URL=rpc.url)
            with self.mount(env) as m:
                self.check_samples(m)
            self.assertTrue(any(e['status'] == 206 for e in self.blob_requests(rpc)))


class ApiKeyTests(ShelbyCase):
    def test_mount_without_api_key_fails_clearly(self):
        with ShelbyRpc(G['root'], api_key=API_KEY) as rpc:
            env = dict(G['env'], SHELBY_RPC_URL=rpc.url)
            mnt = self.scratch('mnt')
            r = run(['mount', f'shelby://{ACCOUNT}/ds/manifest.json', mnt,
                     '-o', f'spool_dir={self.scratch("spool")}'], env, timeout=60)
            if r.returncode == 0:
                testlib.lazy_unmount(mnt)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn('manifest', r.stderr)
            self.assertRegex(r.stderr, r'\b401\b')
            self.assertRegex(r.stderr, r'(?i)api.?key')
            self.assertFalse(testlib.is_mounted(mnt))
            self.assertTrue(rpc.log)
            self.assertTrue(all(e['status'] == 401 for e in rpc.log), rpc.log)

    def test_samples_without_api_key_fail_with_eio(self):
        """A local manifest mounts (only the manifest is read at mount time), but
        reading a sample whose blob needs the key fails with EIO, and the log says 401."""
        with ShelbyRpc(G['root'], api_key=API_KEY) as rpc:
            env = dict(G['env'], SHELBY_RPC_URL=rpc.url)
            with self.mount(env, options=['retries=0'], allow_errors=(r'401',)) as m:
                rel = sorted(G['files'])[0]
                with self.assertRaises(OSError) as cm:
                    testlib.read_file(m.path(os.path.join('samples', rel)))
                self.assertEqual(cm.exception.errno, errno.EIO)
                log = m.log()
            self.assertIn('401', log)
            self.assertTrue(rpc.log)
            self.assertTrue(all(e['status'] == 401 for e in rpc.log), rpc.log)

    def test_mount_with_api_key_from_env(self):
        with ShelbyRpc(G['root'], api_key=API_KEY) as rpc:
            env = dict(G['env'], SHELBY_RPC_URL=rpc.url, SHELBY_API_KEY=API_KEY)
            with self.mount(env) as m:
                self.check_samples(m)
                log = m.log()
            self.assertNotIn(API_KEY, log)
            self.assertTrue(self.blob_requests(rpc))
            self.assertEqual([e for e in rpc.log if e['status'] == 401], [])

    def test_mount_with_api_key_from_toml_profile(self):
        with ShelbyRpc(G['root'], api_key=API_KEY) as rpc:
            cfg = os.path.join(self.scratch('cfg'), 'config.toml')
            with open(cfg, 'w') as f:
                f.write('[profiles.rpc]\n'
                        f'shelby_rpc_url = "{rpc.url}"\n'
                        'shelby_api_key_env = "MY_SHELBY_KEY"\n')
            os.chmod(cfg, 0o644)        # no literal secret: no warning
            env = dict(G['env'], MY_SHELBY_KEY=API_KEY)
            with self.mount(env, options=['profile=rpc'], extra_args=['--config', cfg]) as m:
                self.check_samples(m)
                log = m.log()
            self.assertNotIn('readable by others', log)
            self.assertNotIn(API_KEY, log)
            self.assertTrue(self.blob_requests(rpc))
            self.assertEqual([e for e in rpc.log if e['status'] == 401], [])


class VerifyTests(ShelbyCase):
    def blob_file(self, shard):
        return os.path.join(G['root'], ACCOUNT, *G['names'][shard['name']].split('/'))

    def check_verify(self, content_range):
        shards = G['manifest']['shards']
        damaged, longer, missing = shards[0], shards[1], shards[2]
        originals = {}
        for s in (damaged, longer, missing):
            with open(self.blob_file(s), 'rb') as f:
                originals[s['name']] = f.read()
        with ShelbyRpc(G['root'], content_range=content_range) as rpc:
            env = dict(G['env'], SHELBY_RPC_URL=rpc.url)
            r = run(['verify', G['manifest_path']], env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f'verified {len(shards)} of {len(shards)} shards', r.stdout)
            self.assertIn('all good', r.stdout)
            try:
                data = bytearray(originals[damaged['name']])
                data[len(data) // 2] ^= 0x40
                with open(self.blob_file(damaged), 'wb') as f:
                    f.write(data)
                r = run(['verify', G['manifest_path']], env)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                bad = [ln for ln in r.stderr.splitlines() if 'verify: BAD' in ln]
                self.assertEqual(len(bad), 1, r.stderr)
                self.assertIn(f'BAD {damaged["name"]} (shelby://{ACCOUNT}/{G["names"][damaged["name"]]})',
                              bad[0])
                self.assertRegex(bad[0], r'damaged|hash')
                # Extra bytes after the shard (the RPC has no HEAD to report the size),
                # and a blob that is gone.
                with open(self.blob_file(longer), 'ab') as f:
                    f.write(b'trailing garbage')
                os.unlink(self.blob_file(missing))
                r = run(['verify', G['manifest_path']], env)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                bad = {re.search(r'BAD (\S+) ', ln).group(1): ln
                       for ln in r.stderr.splitlines() if 'verify: BAD' in ln}
                self.assertEqual(sorted(bad), sorted(s['name'] for s in (damaged, longer, missing)),
                                 r.stderr)
                self.assertRegex(bad[damaged['name']], r'damaged|hash')
                self.assertRegex(bad[longer['name']], r'longer|size')
                self.assertIn('missing', bad[missing['name']])
            finally:
                for s in (damaged, longer, missing):
                    with open(self.blob_file(s), 'wb') as f:
                        f.write(originals[s['name']])
            r = run(['verify', G['manifest_path'], '--jobs', '1'], env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn('all good', r.stdout)

    def test_verify_names_bad_blobs(self):
        self.check_verify(content_range=True)

    def test_verify_names_bad_blobs_without_content_range(self):
        self.check_verify(content_range=False)

    def test_push_to_shelby_without_gateway_fails_clearly(self):
        with ShelbyRpc(G['root']) as rpc:
            env = dict(G['env'], SHELBY_RPC_URL=rpc.url, PATH='/usr/bin:/bin')
            r = run(['push', G['out'], f'shelby://{ACCOUNT}/pushed/', '--no-progress'], env)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertRegex(r.stderr, r'(?i)gateway')
            self.assertFalse(os.path.exists(os.path.join(G['root'], ACCOUNT, 'pushed')))
            self.assertEqual([e for e in rpc.log if e['method'] not in ('GET', 'HEAD')], [])


class CheckpointDefaultTests(ShelbyCase):
    def test_shelby_manifest_without_gateway_mounts_read_only_checkpoints(self):
        with ShelbyRpc(G['root']) as rpc:
            env = dict(G['env'], SHELBY_RPC_URL=rpc.url)
            manifest = f'shelby://{ACCOUNT}/ds/manifest.json'
            with self.mount(env, manifest=manifest) as m:
                self.check_samples(m)
                log = m.log()
                self.assertTrue(os.path.isdir(m.path('checkpoints')))
                with self.assertRaises(OSError):
                    with open(m.path('checkpoints/x.bin'), 'wb') as f:
                        f.write(b'x')
            warn = [ln for ln in log.splitlines() if 'checkpoints/ is read-only' in ln]
            self.assertTrue(warn, log)
            self.assertRegex(warn[0], r'(?i)shelby S3 gateway')
            self.assertEqual([e for e in rpc.log if e['method'] not in ('GET', 'HEAD')], [])


# A stand-in for the `shelby` CLI (npm's @shelby-protocol/cli cannot be installed
# here): `shelby [--context C] upload <file> <blob name> -e <unix s> --assume-yes`
# stores the file as the blob of $SHELBY_ACCOUNT under the RPC stand-in's root
# (the "network"), and, like the real one, refuses an existing name.
FAKE_CLI = r"""#!/usr/bin/python3
import os, shutil, sys, time
args = sys.argv[1:]
if args[:1] == ['--context']:
    args = args[2:]
assert args[0] == 'upload' and args[3] == '-e' and args[5] == '--assume-yes', args
assert int(args[4]) > time.time() + 86400, 'expiration must be in the future'
dest = os.path.join(os.environ['FAKE_SHELBY_ROOT'], os.environ['SHELBY_ACCOUNT'], *args[2].split('/'))
if os.path.exists(dest):
    print('Error: Blob already exists'); sys.exit(1)
os.makedirs(os.path.dirname(dest), exist_ok=True)
shutil.copyfile(args[1], dest + '.part'); os.rename(dest + '.part', dest)
with open(os.environ['FAKE_SHELBY_LOG'], 'a') as log:
    log.write(args[2] + '\n')
print('uploaded', args[2])
"""


class CliTests(ShelbyCase):
    def test_push_through_the_shelby_cli(self):
        bindir = self.scratch('bin')
        cli = os.path.join(bindir, 'shelby')
        with open(cli, 'w', encoding='utf-8') as f:
            f.write(FAKE_CLI)
        os.chmod(cli, 0o755)
        root = self.scratch('network')
        log = os.path.join(self.scratch('log'), 'uploads.txt')
        with ShelbyRpc(root) as rpc:
            env = dict(G['env'], SHELBY_RPC_URL=rpc.url, SHELBY_ACCOUNT=ACCOUNT, FAKE_SHELBY_ROOT=root,
                       FAKE_SHELBY_LOG=log, PATH=bindir + ':/usr/bin:/bin')
            dest = f'shelby://{ACCOUNT}/cli ds/'
            r = run(['push', G['out'], dest, '--no-progress'], env)
            self.assertEqual(r.returncode, 0, r.stderr)
            n = len(G['manifest']['shards'])
            self.assertIn(f'{n} uploaded', r.stdout)
            with open(log, encoding='utf-8') as f:
                uploads = f.read().splitlines()
            self.assertEqual(len(uploads), n + 1, uploads)
            self.assertTrue(any(u.endswith('manifest.json') for u in uploads), uploads)
            r = run(['verify', dest + 'manifest.json', '--no-progress'], env)
            self.assertEqual(r.returncode, 0, r.stderr)
            # A rerun finds the shards through the RPC and uploads nothing but the
            # manifest, which the CLI reports as already there (names are immutable).
            r = run(['push', G['out'], dest, '--no-progress'], env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f'0 uploaded (0 B, 0 B/s), {n} already there', r.stdout)


GATEWAY_ACCOUNT = '0xabc123'  # short enough to be an s3rver bucket name (a full address is 66 characters)


class GatewayTests(ShelbyCase):
    """Writes through the Shelby S3 gateway, reads through the RPC.

    The gateway is S3Server (s3rver behind the SigV4 verifier), bucket = the
    account; the RPC stand-in serves s3rver's files, as a real RPC node serves
    what the real gateway wrote to the network. push, verify, mount and
    checkpoints on shelby:// then run end to end.
    """

    def setUp(self):
        from testlib import s3 as ts3
        ts3.require_prereqs()
        self.s3 = ts3.S3Server(self.scratch('s3'), buckets=(GATEWAY_ACCOUNT,))
        self.s3.start()
        self.addCleanup(self.s3.stop)
        self.rpc = ShelbyRpc(self.s3.data_dir, suffix='._S3rver_object')
        self.rpc.__enter__()
        self.addCleanup(self.rpc.__exit__, None, None, None)
        cfg = os.path.join(self.scratch('cfg'), 'config.toml')
        with open(cfg, 'w', encoding='utf-8') as f:
            f.write(f"""[profiles.gw]
preset = "shelbynet"
shelby_rpc_url = "{self.rpc.url}"
shelby_gateway = "{self.s3.endpoint}"
shelby_gateway_region = "{self.s3.region}"
shelby_gateway_access_key_id_env = "GW_KEY"
shelby_gateway_secret_access_key_env = "GW_SECRET"
shelby_expiration = "2d"
""")
        self.env = dict(G['env'], GW_KEY=self.s3.access_key, GW_SECRET=self.s3.secret_key)
        self.flags = ['--config', cfg, '--profile', 'gw']

    def test_push_verify_mount_and_checkpoint(self):
        dest = f'shelby://{GATEWAY_ACCOUNT}/data sets/ü+1/'
        r = run(['push', G['out'], dest, '--no-progress', *self.flags], self.env)
        self.assertEqual(r.returncode, 0, r.stderr)
        n = len(G['manifest']['shards'])
        self.assertIn(f'pushed {n} shards: {n} uploaded', r.stdout)
        keys = self.s3.list_keys(GATEWAY_ACCOUNT, 'data sets/ü+1/')
        self.assertEqual(sorted(keys), sorted([f'data sets/ü+1/{s["name"]}' for s in G['manifest']['shards']] +
                                              ['data sets/ü+1/manifest.json']))
        # The gateway needs an expiration on every upload.
        head = self.s3.head_object(GATEWAY_ACCOUNT, f'data sets/ü+1/{G["manifest"]["shards"][0]["name"]}')
        self.assertEqual({k.lower(): v for k, v in head.items()}.get('x-amz-meta-expiration-seconds'), str(2 * 86400))
        manifest = dest + 'manifest.json'
        r = run(['verify', manifest, '--no-progress', *self.flags], self.env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f'verified {n} of {n} shards', r.stdout)
        # Rerun: everything already there (read back through the RPC and checked).
        r = run(['push', G['out'], dest, '--no-progress', *self.flags], self.env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f'0 uploaded (0 B, 0 B/s), {n} already there', r.stdout)

        data = os.urandom(3 * 1024 * 1024 + 17)
        with self.mount(self.env, manifest=manifest, extra_args=self.flags) as m:
            self.check_samples(m)
            os.mkdir(m.path('checkpoints/run 1'))
            with open(m.path('checkpoints/run 1/model+1.pt'), 'wb') as f:
                f.write(data)
        objects = self.s3.list_keys(GATEWAY_ACCOUNT, 'data sets/ü+1/checkpoints/objects/')
        self.assertEqual(len(objects), 1, objects)
        self.assertEqual(self.s3.get_object(GATEWAY_ACCOUNT, objects[0]), data)
        # Another machine: a fresh spool, the index found by listing through the gateway,
        # the bytes read through the RPC.
        self.rpc.clear_log()
        with self.mount(self.env, manifest=manifest, extra_args=self.flags) as m:
            self.assertEqual(testlib.read_file(m.path('checkpoints/run 1/model+1.pt')), data)
        self.assertTrue(any('/checkpoints/objects/' in e['path'] for e in self.rpc.log), self.rpc.log)


if __name__ == '__main__':
    unittest.main(verbosity=2)
