#!/usr/bin/python3
"""Integration: shelbyfs over S3 (s3rver behind testlib.s3's SigV4-verifying proxy).

pack -> push to an awkward prefix -> mount the s3:// manifest -> read every sample
and a whole shard -> torchvision ImageFolder; a wrong secret fails mount and push
(nothing stored); checkpoints/ on S3 (default location beside the manifest,
credentials through a TOML profile) survive a fresh mount and land as
objects/<xxh128> + index/*.json; a >100 MiB checkpoint goes multipart; an
interrupted push resumes skipping what landed; verify names a damaged and a
missing shard; a store answering 503 makes close() fail with EIO.
Bucket contents are checked with the harness's botocore-signed helpers, never
with shelbyfs's own client.
Run: SHELBYFS_BIN=build/src/shelbyfs PYTHONPATH=tools /usr/bin/python3 tests/integration/test_s3.py
Exit 0 pass, 77 skip (prerequisite missing and CI unset), else failure.
"""
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tools'))
import testlib  # noqa: E402
from testlib import ckpt  # noqa: E402
from testlib import fmnist  # noqa: E402
from testlib import s3 as ts3  # noqa: E402

MiB = 1024 * 1024
BUCKET = 'data'
PREFIX = 'data sets/a+b=c%/ü/'          # raw key prefix, AWS-CLI style
DEST = f's3://{BUCKET}/{PREFIX}'
MANIFEST = DEST + 'manifest.json'
COUNT = 300                              # Fashion-MNIST images in the dataset
FAST_FAIL = ['retries=1', 'timeout=2', 'connect_timeout=2']
G = {}


def require_all():
    testlib.require_prereqs(extra_modules=('numpy', 'PIL', 'torch', 'torchvision'))
    ts3.require_prereqs()
    missing = []
    for f in ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'):
        if not os.path.exists(os.path.join(fmnist.DEFAULT_DIR, f)):
            missing.append(os.path.join(fmnist.DEFAULT_DIR, f) + ' (dataset-fashion-mnist)')
    if shutil.which('xxhsum') is None:
        missing.append('xxhsum')
    testlib.skip_unless_present(missing)


def setUpModule():
    require_all()
    tmp = testlib.make_tmpdir('shelbyfs-test-s3-')
    unittest.addModuleCleanup(shutil.rmtree, tmp, True)
    src, out = os.path.join(tmp, 'src'), os.path.join(tmp, 'out')
    counts = testlib.fmnist_to_imagefolder(src, COUNT, 'train')
    assert sum(counts.values()) == COUNT
    testlib.pack(src, out, '--shard-size', '64KiB', '--no-progress')
    server = ts3.S3Server(os.path.join(tmp, 's3'), buckets=(BUCKET,)).__enter__()
    unittest.addModuleCleanup(server.close)
    env = testlib.isolated_env(tmp)
    G.update(tmp=tmp, src=src, out=out, s3=server, env=env, s3env=dict(env, **server.env()),
             manifest=testlib.read_manifest(out))
    G['push'] = run(['push', out, DEST, '--no-progress'])


def run(args, env=None, timeout=120):
    return subprocess.run([testlib.shelbyfs_bin(), *args], capture_output=True, text=True,
                          env=env or G['s3env'], timeout=timeout, check=False)


def source_files():
    """{relative path: bytes} of the ImageFolder source tree."""
    files = {}
    for dirpath, _dirs, names in os.walk(G['src']):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, 'rb') as f:
                files[os.path.relpath(p, G['src'])] = f.read()
    return files


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(MiB), b''):
            h.update(block)
    return h.hexdigest()


def push_summary(text):
    m = re.search(r'pushed (\d+) shards: (\d+) uploaded \(.*?\), (\d+) already there; manifest: (.+)',
                  text)
    if not m:
        raise AssertionError(f'no push summary in {text!r}')
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4).strip()


class S3Case(unittest.TestCase):
    def setUp(self):
        G['s3'].clear_injections()
        G['s3'].clear_log()

    def tearDown(self):
        G['s3'].clear_injections()

    def scratch(self, what):
        return tempfile.mkdtemp(prefix=f'{self._testMethodName}-{what}-', dir=G['tmp'])

    def mount(self, manifest=MANIFEST, options=(), env=None, **kw):
        kw.setdefault('mount_timeout', 30)
        kw.setdefault('exit_timeout', 30)
        return testlib.Mount(manifest, options=[f'spool_dir={self.scratch("spool")}', *options],
                             env=env or G['s3env'], **kw)

    def keys(self, prefix):
        return G['s3'].list_keys(BUCKET, prefix)

    def push_fresh(self, out, dest_prefix):
        r = run(['push', out, f's3://{BUCKET}/{dest_prefix}', '--no-progress'])
        self.assertEqual(r.returncode, 0, r.stderr)
        return r


class T1Spine(S3Case):
    def test_push_output_and_bucket_contents(self):
        r = G['push']
        self.assertEqual(r.returncode, 0, f'{r.stdout}\n{r.stderr}')
        n = len(G['manifest']['shards'])
        self.assertGreaterEqual(n, 4, 'want several shards')
        self.assertEqual(push_summary(r.stdout), (n, n, 0, MANIFEST))
        names = [s['name'] for s in G['manifest']['shards']]
        self.assertEqual(self.keys(PREFIX), sorted([PREFIX + s for s in names] + [PREFIX + 'manifest.json']))
        pushed = json.loads(G['s3'].get_object(BUCKET, PREFIX + 'manifest.json'))
        self.assertEqual([s['location'] for s in pushed['shards']], [DEST + s for s in names])
        for s in G['manifest']['shards']:
            with open(os.path.join(G['out'], s['name']), 'rb') as f:
                self.assertTrue(G['s3'].get_object(BUCKET, PREFIX + s['name']) == f.read(), s['name'])

    def test_mount_s3_manifest_reads_every_sample_and_imagefolder(self):
        from torchvision import datasets
        files = source_files()
        self.assertEqual(len(files), COUNT)
        with self.mount() as m:
            for rel, data in sorted(files.items()):
                got = testlib.read_file(m.path(os.path.join('samples', rel)))
                self.assertTrue(got == data, f'samples/{rel}: bytes differ')
            names = [s['name'] for s in G['manifest']['shards']]
            self.assertEqual(sorted(os.listdir(m.path('shards'))), sorted(names))
            big = max(G['manifest']['shards'], key=lambda s: s['size'])
            with open(os.path.join(G['out'], big['name']), 'rb') as f:
                self.assertTrue(testlib.read_file(m.path('shards/' + big['name'])) == f.read())
            local = datasets.ImageFolder(G['src'])
            mounted = datasets.ImageFolder(m.path('samples'))
            self.assertEqual(len(mounted), COUNT)
            self.assertEqual(mounted.classes, local.classes)
            self.assertEqual(mounted.classes, sorted(testlib.CLASS_NAMES))
            loaded = [mounted[i][0].size for i in range(len(mounted))]
            self.assertEqual(set(loaded), {(28, 28)})
        log = G['s3'].log
        self.assertTrue(log)
        self.assertEqual([e for e in log if not e['accepted']], [])


class T2WrongSecret(S3Case):
    def test_mount_with_wrong_secret_fails(self):
        env = dict(G['s3env'], AWS_SECRET_ACCESS_KEY='not-the-secret')
        mnt = self.scratch('mnt')
        r = run(['mount', MANIFEST, mnt], env=env, timeout=60)
        if r.returncode == 0:
            testlib.lazy_unmount(mnt)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn('SignatureDoesNotMatch', r.stderr)
        self.assertNotIn('not-the-secret', r.stderr)
        self.assertFalse(testlib.is_mounted(mnt))

    def test_push_with_wrong_secret_fails_and_stores_nothing(self):
        env = dict(G['s3env'], AWS_SECRET_ACCESS_KEY='not-the-secret')
        r = run(['push', G['out'], f's3://{BUCKET}/wrong-secret/', '--no-progress'], env=env)
        self.assertEqual(r.returncode, 1, r.stderr)
        # The HEAD's 403 has no body; the PUT's answer names the problem.
        self.assertIn('SignatureDoesNotMatch', r.stderr)
        self.assertNotIn('not-the-secret', r.stderr)
        self.assertEqual(self.keys('wrong-secret/'), [])
        self.assertTrue(any(e['reason'] and 'SignatureDoesNotMatch' in e['reason'] for e in G['s3'].log),
                        G['s3'].log)


class T3Checkpoints(S3Case):
    def config_file(self, profile):
        """A world-readable TOML config with a literal secret (must warn)."""
        s3 = G['s3']
        path = os.path.join(self.scratch('cfg'), 'shelbyfs.toml')
        with open(path, 'w') as f:
            f.write(f'[profiles.{profile}]\n'
                    f'endpoint = "{s3.endpoint}"\n'
                    f'region = "{s3.region}"\n'
                    f'access_key_id = "{s3.access_key}"\n'
                    f'secret_access_key = "{s3.secret_key}"\n')
        os.chmod(path, 0o644)
        return path

    def test_checkpoints_on_s3_survive_fresh_mount(self):
        import torch
        cfg = self.config_file('loop')
        env = G['env']                # no AWS_* at all: everything from the profile
        ck = PREFIX + 'checkpoints/'
        rng = random.Random(7)
        copied = rng.randbytes(3 * MiB + 123)
        nested = rng.randbytes(200 * 1024)
        srcfile = os.path.join(self.scratch('src'), 'weights.bin')
        with open(srcfile, 'wb') as f:
            f.write(copied)
        state = {'w': torch.arange(1000, dtype=torch.float32), 'step': 42}
        m = self.mount(env=env, options=['profile=loop'], extra_args=['--config', cfg])
        with m:
            root = m.path('checkpoints')
            subprocess.run(['cp', srcfile, os.path.join(root, 'weights.bin')], check=True, timeout=60)
            tmp = os.path.join(root, 'model.pt.tmp')
            with open(tmp, 'wb') as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, os.path.join(root, 'model.pt'))
            os.makedirs(os.path.join(root, 'run 1/épochs'))
            with open(os.path.join(root, 'run 1/épochs/e1.bin'), 'wb') as f:
                f.write(nested)
            with open(os.path.join(root, 'gone.bin'), 'wb') as f:
                f.write(b'short-lived')
            os.unlink(os.path.join(root, 'gone.bin'))
            os.setxattr(os.path.join(root, 'model.pt'), 'user.note', b'epoch 42')
            expect = {'weights.bin': sha256_file(os.path.join(root, 'weights.bin')),
                      'model.pt': sha256_file(os.path.join(root, 'model.pt')),
                      'run 1/épochs/e1.bin': sha256_file(os.path.join(root, 'run 1/épochs/e1.bin'))}
            log = m.log()           # the temp dir holding it goes away with the mount
        self.assertRegex(log, r'holds secrets but is readable by others \(mode 0?644\); run chmod 600')
        self.assertNotIn(G['s3'].secret_key, log)
        self.assertEqual(expect['weights.bin'], hashlib.sha256(copied).hexdigest())
        self.assertEqual(expect['run 1/épochs/e1.bin'], hashlib.sha256(nested).hexdigest())

        # A fresh mount (new spool: another machine), credentials from the environment.
        with self.mount() as m2:
            root = m2.path('checkpoints')
            self.assertEqual(sorted(n for n in os.listdir(root) if n != '.versions'),
                             ['model.pt', 'run 1', 'weights.bin'])
            self.assertEqual(os.listdir(os.path.join(root, 'run 1')), ['épochs'])
            for rel, digest in expect.items():
                self.assertEqual(sha256_file(os.path.join(root, rel)), digest, rel)
            self.assertEqual(os.getxattr(os.path.join(root, 'model.pt'), 'user.note'), b'epoch 42')
            loaded = torch.load(os.path.join(root, 'model.pt'))
            self.assertTrue(torch.equal(loaded['w'], state['w']))
            self.assertEqual(loaded['step'], 42)
            model = testlib.read_file(os.path.join(root, 'model.pt'))

        # The bucket, listed and read with botocore: objects/<xxh128> + index/*.json.
        keys = self.keys(ck)
        objects = [k[len(ck + 'objects/'):] for k in keys if k.startswith(ck + 'objects/')]
        index = [k for k in keys if k.startswith(ck + 'index/')]
        self.assertTrue(all(ckpt.HEX128.match(o) for o in objects), objects)
        self.assertEqual(sorted(k for k in keys if k not in index and k[len(ck):] not in
                                ['objects/' + o for o in objects]), [])
        for name, data in (('weights.bin', copied), ('run 1/épochs/e1.bin', nested), ('model.pt', model)):
            h = ckpt.xxh128(data)
            self.assertIn(h, objects, f'{name}: objects/{h} missing')
            self.assertTrue(G['s3'].get_object(BUCKET, ck + 'objects/' + h) == data, name)
        self.assertTrue(index, 'no index records')
        records = ''
        for k in index:
            self.assertTrue(k.endswith('.json'), k)
            body = G['s3'].get_object(BUCKET, k)
            json.loads(body)
            records += body.decode()
        for name in ('weights.bin', 'model.pt', 'e1.bin'):
            self.assertIn(name, records)

    def test_multipart_checkpoint_over_100mib(self):
        size = 110 * MiB
        local = os.path.join(self.scratch('big'), 'big.bin')
        ckpt.write_random(local, size, seed=11)
        want = ckpt.xxh128_file(local)
        with self.mount(options=['checkpoints=' + DEST + 'mp-store/']) as m:
            subprocess.run(['cp', local, m.path('checkpoints/big.bin')], check=True, timeout=240)
        log = G['s3'].log
        mp = [e for e in log if '/mp-store/' in e['path']]
        starts = [e for e in mp if e['method'] == 'POST' and re.search(r'(^|&)uploads=?(&|$)', e['query'])]
        parts = [e for e in mp if e['method'] == 'PUT' and 'partNumber=' in e['query'] and e['status'] == 200]
        done = [e for e in mp if e['method'] == 'POST' and 'uploadId=' in e['query'] and e['status'] == 200]
        self.assertEqual(len(starts), 1, mp)
        self.assertGreaterEqual(len(parts), 2, mp)
        self.assertEqual(len(done), 1, mp)
        self.assertEqual([e for e in log if not e['accepted']], [])
        self.assertIn(PREFIX + 'mp-store/objects/' + want,
                      self.keys(PREFIX + 'mp-store/objects/'))
        with self.mount(options=['checkpoints=' + DEST + 'mp-store/']) as m2:
            self.assertEqual(os.path.getsize(m2.path('checkpoints/big.bin')), size)
            self.assertEqual(ckpt.xxh128_file(m2.path('checkpoints/big.bin')), want)

    def test_store_503_makes_close_fail_with_eio(self):
        store = DEST + 'failing-store/'
        with self.mount(options=['checkpoints=' + store, *FAST_FAIL],
                        allow_errors=ckpt.EXPECTED_ERRORS) as m:
            with open(m.path('checkpoints/ok.bin'), 'wb') as f:
                f.write(b'stored fine')
            G['s3'].inject(method='PUT', status=503, count=100000)
            f = open(m.path('checkpoints/fail.bin'), 'wb')
            f.write(random.Random(3).randbytes(2 * MiB))
            with self.assertRaises(OSError) as cm:
                f.close()
            self.assertEqual(cm.exception.errno, errno.EIO)
            G['s3'].clear_injections()
        self.assertTrue(any(e['reason'] == 'injected status 503' for e in G['s3'].log))
        keys = self.keys(PREFIX + 'failing-store/')
        index = [k for k in keys if '/index/' in k]
        records = ''.join(G['s3'].get_object(BUCKET, k).decode() for k in index)
        self.assertIn('ok.bin', records)
        self.assertNotIn('fail.bin', records)
        fail_hash = ckpt.xxh128(random.Random(3).randbytes(2 * MiB))
        self.assertNotIn(PREFIX + 'failing-store/objects/' + fail_hash, keys)


class T3bPagedIndex(S3Case):
    def test_fresh_mount_reads_an_index_listed_over_several_pages(self):
        """A store whose index/ takes several ListObjectsV2 pages (the proxy pages by 4,
        as S3 pages by 1000): a fresh mount must follow the continuation tokens."""
        with ts3.S3Server(self.scratch('paged-s3'), buckets=('paged',), list_page_size=4) as srv:
            env = dict(G['env'], **srv.env())
            store = 's3://paged/run 1/ck+pt/'
            local_manifest = os.path.join(G['out'], 'manifest.json')
            files = {f'step {i:02d}.pt': os.urandom(1000 + i) for i in range(11)}
            with self.mount(local_manifest, options=[f'checkpoints={store}'], env=env) as m:
                for name, data in files.items():
                    with open(m.path('checkpoints/' + name), 'wb') as f:
                        f.write(data)
            records = srv.list_keys('paged', 'run 1/ck+pt/index/')
            self.assertEqual(len(records), len(files), records)
            srv.clear_log()
            with self.mount(local_manifest, options=[f'checkpoints={store}'], env=env) as m:
                self.assertEqual(sorted(os.listdir(m.path('checkpoints'))), ['.versions', *sorted(files)])
                for name, data in files.items():
                    self.assertEqual(testlib.read_file(m.path('checkpoints/' + name)), data, name)
            pages = [e for e in srv.log if 'list-type=2' in e['query'] and 'index' in e['query']]
            self.assertGreaterEqual(len(pages), 3, pages)
            self.assertTrue(any('continuation-token=' in e['query'] for e in pages), pages)


class T4PushResume(S3Case):
    def test_interrupted_push_resumes(self):
        src, out = self.scratch('src'), self.scratch('out')
        rng = random.Random(99)
        for i in range(8):
            with open(os.path.join(src, f'part-{i}.bin'), 'wb') as f:
                f.write(rng.randbytes(3 * MiB + 512 * 1024))
        testlib.pack(src, out, '--shard-size', '4MiB', '--no-progress')
        shards = [s['name'] for s in testlib.read_manifest(out)['shards']]
        self.assertEqual(len(shards), 8)
        prefix = 'resume/'
        # Shards go one at a time (--jobs 1); the 4th keeps failing slowly, so the
        # first three land and the push is stuck on the 4th when it is killed.
        G['s3'].inject(method='PUT', path_contains=shards[3], status=503, count=100000, delay=0.5)
        proc = subprocess.Popen([testlib.shelbyfs_bin(), 'push', out, f's3://{BUCKET}/{prefix}',
                                 '--jobs', '1', '--no-progress'], env=G['s3env'],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        testlib.cleanup.register_pid(proc.pid)
        try:
            deadline = time.monotonic() + 60
            landed = []
            while time.monotonic() < deadline and proc.poll() is None:
                landed = self.keys(prefix)
                if len(landed) >= 3:
                    break
                time.sleep(0.05)
            self.assertIsNone(proc.poll(), f'push ended early: {proc.returncode}')
            self.assertGreaterEqual(len(landed), 3)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            testlib.cleanup.unregister_pid(proc.pid)
        G['s3'].clear_injections()
        landed = self.keys(prefix)
        self.assertNotIn(prefix + 'manifest.json', landed)
        self.assertEqual(landed, [prefix + s for s in shards[:3]])
        # One landed shard has the right size but not the right bytes (say, an
        # older pack): it must be uploaded again, not skipped.
        with open(G['s3'].object_path(BUCKET, prefix + shards[1]), 'r+b') as f:
            f.seek(12345)
            b = f.read(1)
            f.seek(12345)
            f.write(bytes([b[0] ^ 0xff]))
        r = run(['push', out, f's3://{BUCKET}/{prefix}', '--no-progress'])
        self.assertEqual(r.returncode, 0, r.stderr)
        total, uploaded, skipped, where = push_summary(r.stdout)
        self.assertEqual((total, uploaded, skipped), (8, 6, 2), r.stdout + r.stderr)
        self.assertIn(shards[1], r.stderr)
        self.assertIn('differs', r.stderr)
        self.assertEqual(where, f's3://{BUCKET}/{prefix}manifest.json')
        self.assertEqual(self.keys(prefix), sorted([prefix + s for s in shards] + [prefix + 'manifest.json']))
        v = run(['verify', where])
        self.assertEqual(v.returncode, 0, v.stderr)
        self.assertIn('verified 8 of 8 shards', v.stdout)
        self.assertIn('all good', v.stdout)


class T5Verify(S3Case):
    def test_verify_names_damaged_and_missing_shards(self):
        prefix = 'verify/'
        self.push_fresh(G['out'], prefix)
        manifest = f's3://{BUCKET}/{prefix}manifest.json'
        shards = [s['name'] for s in G['manifest']['shards']]
        n = len(shards)
        r = run(['verify', manifest])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f'verified {n} of {n} shards', r.stdout)

        damaged, deleted = shards[1], shards[2]
        with open(os.path.join(G['out'], damaged), 'rb') as f:
            damaged_bytes = f.read()
        with open(os.path.join(G['out'], deleted), 'rb') as f:
            deleted_bytes = f.read()
        path = G['s3'].object_path(BUCKET, prefix + damaged)
        with open(path, 'r+b') as f:
            f.seek(1000)
            b = f.read(1)
            f.seek(1000)
            f.write(bytes([b[0] ^ 0x01]))
        r = run(['verify', manifest])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        bad = [ln for ln in r.stderr.splitlines() if 'verify: BAD' in ln]
        self.assertEqual(len(bad), 1, r.stderr)
        self.assertIn(f'BAD {damaged} ', bad[0])
        self.assertRegex(bad[0], r'damaged|hash')

        G['s3'].delete_object(BUCKET, prefix + deleted)
        r = run(['verify', manifest])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        bad = sorted(ln for ln in r.stderr.splitlines() if 'verify: BAD' in ln)
        self.assertEqual(len(bad), 2, r.stderr)
        by_name = {re.search(r'BAD (\S+) ', ln).group(1): ln for ln in bad}
        self.assertEqual(sorted(by_name), sorted([damaged, deleted]))
        self.assertRegex(by_name[damaged], r'damaged|hash')
        self.assertIn('missing', by_name[deleted])

        G['s3'].put_object(BUCKET, prefix + damaged, damaged_bytes)
        G['s3'].put_object(BUCKET, prefix + deleted, deleted_bytes)
        r = run(['verify', manifest, '--jobs', '2'])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('all good', r.stdout)

    def test_hand_uploaded_manifest_with_relative_locations(self):
        """pack's own manifest (shard locations relative to it) copied with another
        tool: locations resolve against the s3:// manifest URL."""
        prefix = 'hand up/ü+%/'
        for name in sorted(os.listdir(G['out'])):
            with open(os.path.join(G['out'], name), 'rb') as f:
                G['s3'].put_object(BUCKET, prefix + name, f.read())
        manifest = f's3://{BUCKET}/{prefix}manifest.json'
        r = run(['verify', manifest])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('all good', r.stdout)
        rel, data = sorted(source_files().items())[-1]
        with self.mount(manifest=manifest, options=['checkpoints=off']) as m:
            self.assertTrue(testlib.read_file(m.path('samples/' + rel)) == data)


if __name__ == '__main__':
    unittest.main(verbosity=2)
