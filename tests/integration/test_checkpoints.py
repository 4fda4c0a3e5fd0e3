#!/usr/bin/python3
"""Integration: the writable <mnt>/checkpoints/ area over a real store.

Mounts with `-o checkpoints=LOCATION,spool_dir=DIR` where LOCATION is a WebDAV
collection on the loopback nginx fixture (or a local directory), and checks
the contract: what any writer (cp, shell redirect, torch.save, pwrite,
truncate, rename, mkdir, unlink, xattrs) leaves behind is published on
close/fsync as an immutable content-addressed object `objects/<xxh128 hex>`
plus immutable `index/*.json` records; every version stays readable under
`.versions/`; a fresh mount (new spool: "another machine") sees everything;
a store that goes down makes close fail with EIO and publishes nothing; a
full spool gives ENOSPC; a daemon SIGKILLed mid-upload leaves no partial
object and finishes the upload at the next mount before it is ready.
Slow and failing stores come from testlib.throttle.ThrottleProxy in front of
a private nginx.
Run: SHELBYFS_BIN=build/src/shelbyfs /usr/bin/python3 tests/integration/test_checkpoints.py
"""
import datetime
import errno
import glob
import itertools
import json
import mmap
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tools'))
import testlib  # noqa: E402
from testlib import ckpt  # noqa: E402
from testlib.throttle import ThrottleProxy  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
BIG_SIZE = 256 * MiB
TORCH_PY = '/usr/bin/python3'
HASH_XATTR = 'user.shelbyfs.hash'
# Keep failure tests fast: one retry, short stall and connect timeouts.
FAST_FAIL = ['retries=1', 'timeout=2', 'connect_timeout=2']
# Uploads through the throttling proxy: slow enough to interrupt, never stuck.
SLOW_RATE = 2 * MiB            # bytes/s
INTERRUPT_SIZE = 8 * MiB       # store-down test: ~4 s of upload at SLOW_RATE
CRASH_SIZE = 24 * MiB          # SIGKILL test: ~12 s of upload at SLOW_RATE
# Any upload the proxy should watch: every PUT except index records (so a
# temp-name-then-MOVE upload scheme is caught as well as a direct PUT).
UPLOAD_PUT = r'^PUT (?!.*/index/)'

G = {}
_STORE_IDS = itertools.count(1)


def setUpModule():
    tmp = testlib.make_tmpdir('shelbyfs-test-ckpt-')
    unittest.addModuleCleanup(shutil.rmtree, tmp, True)
    src, out = os.path.join(tmp, 'src'), os.path.join(tmp, 'out')
    files = testlib.generate_tree(src, seed=4242, small_files=20, big_size=300 * KiB)
    testlib.pack(src, out, '--shard-size', '1MiB')
    # Stores under /refuses-overwrite-f/ answer 400 to "Overwrite: F".
    nginx = testlib.Nginx(out, refuse_overwrite_f='/refuses-overwrite-f/').__enter__()
    unittest.addModuleCleanup(nginx.close)
    G.update(tmp=tmp, src=src, out=out, files=files, nginx=nginx,
             url=nginx.url('manifest.json'), manifest_path=os.path.join(out, 'manifest.json'))


def put(path, data):
    """Write `data` to `path` (create/truncate) and close it; close errors propagate."""
    with open(path, 'wb') as f:
        f.write(data)


def seeded(size, seed):
    return random.Random(seed).randbytes(size)


def find_tree(root, skip_top=('.versions',)):
    """{relative path: 'd' | bytes} of everything under root, minus top-level `skip_top`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [d for d in dirnames if d not in skip_top]
        rel_dir = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel_dir, d))] = 'd'
        for f in filenames:
            out[os.path.normpath(os.path.join(rel_dir, f))] = testlib.read_file(
                os.path.join(dirpath, f))
    return out


class CheckpointCase(unittest.TestCase):
    """Stores, spools and mounts for one test; everything lives in the module temp dir."""

    def scratch(self, what):
        return tempfile.mkdtemp(prefix=f'{self._testMethodName}-{what}-', dir=G['tmp'])

    def spool(self):
        return self.scratch('spool')

    def http_store(self, under='stores'):
        """(URL of a fresh WebDAV collection on the module nginx, its directory on disk).

        The directory does not exist yet: the first upload creates it.
        """
        name = f'store-{next(_STORE_IDS)}'
        return G['nginx'].url(f'{under}/{name}/'), os.path.join(G['out'], under, name)

    @staticmethod
    def stream_notes(spool):
        """The spool's notes of streamed uploads (inst-*/streams/*), of every store and mount."""
        return glob.glob(os.path.join(spool, '*', 'inst-*', 'streams', '*'))

    def mount(self, store, spool, manifest=None, options=(), **kwargs):
        kwargs.setdefault('mount_timeout', 30)
        kwargs.setdefault('exit_timeout', 30)
        return testlib.Mount(manifest or G['url'],
                             options=[f'checkpoints={store}', f'spool_dir={spool}', *options],
                             **kwargs)

    @staticmethod
    def ck(m, rel=''):
        return m.path(os.path.join('checkpoints', rel)) if rel else m.path('checkpoints')

    def assert_errno(self, expected, fn, *args):
        with self.assertRaises(OSError, msg=f'{fn.__name__}{args} succeeded') as cm:
            fn(*args)
        self.assertEqual(cm.exception.errno, expected,
                         f'{fn.__name__}{args}: {cm.exception!r}, '
                         f'expected {errno.errorcode[expected]}')

    def assert_content(self, path, data):
        """Same bytes, compared through a bounded child read (no hang on a stuck mount)."""
        r = testlib.read_in_subprocess(path, timeout=120)
        self.assertTrue(r.matches(data), f'{path}: {r} does not match {len(data)} expected bytes')

    def assert_hash_xattr(self, path, want):
        got = os.getxattr(path, HASH_XATTR).decode().strip()
        self.assertEqual(got, want, f'{HASH_XATTR} of {path}')

    def assert_store_sound(self, root):
        """Every object is named by its own hash and every index record is whole JSON."""
        self.assertEqual(ckpt.bad_objects(root) + ckpt.bad_index_records(root), [])


class FixtureTests(CheckpointCase):
    def test_nginx_lists_collections_as_json(self):
        # The WebDAV store lists index/ through nginx `autoindex_format json`;
        # without it no remount can find its records.
        base = G['nginx'].url('stores/probe-listing/')
        req = urllib.request.Request(base + 'index/r1.json', data=b'{}', method='PUT')
        with urllib.request.urlopen(req, timeout=10) as r:
            self.assertIn(r.status, (201, 204))
        try:
            with urllib.request.urlopen(base + 'index/', timeout=10) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            self.fail(f'GET of a collection: HTTP {e.code} (nginx autoindex off?)')
        try:
            listing = json.loads(body)
        except ValueError:
            self.fail(f'GET of a collection is not a JSON autoindex: {body[:200]!r}')
        self.assertEqual([e.get('name') for e in listing], ['r1.json'])


class DatasetTreeTests(CheckpointCase):
    def test_samples_and_shards_stay_read_only_beside_checkpoints(self):
        url, _root = self.http_store()
        with self.mount(url, self.spool()) as m:
            self.assertEqual(testlib.read_file(m.path('samples/.hidden')), G['files']['.hidden'])
            self.assert_errno(errno.EROFS, os.open, m.path('samples/new'),
                              os.O_WRONLY | os.O_CREAT, 0o644)
            self.assert_errno(errno.EROFS, os.mkdir, m.path('shards/new-dir'))
            self.assert_errno(errno.EROFS, os.unlink, m.path('samples/.hidden'))
            os.mkdir(self.ck(m, 'writable'))
            self.assertTrue(os.path.isdir(self.ck(m, 'writable')))


class BigCopyTests(CheckpointCase):
    def test_cp_256mib_random_file_over_webdav(self):
        url, root = self.http_store()
        src = os.path.join(self.scratch('src'), 'big.bin')
        ckpt.write_random(src, BIG_SIZE, seed=256)
        want = ckpt.xxh128_file(src)
        with self.mount(url, self.spool(), options=['spool_size=1GiB'], exit_timeout=120) as m:
            dst = self.ck(m, 'big.bin')
            r = subprocess.run(['cp', src, dst], capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, f'cp failed: {r.stderr}')
            self.assertEqual(os.stat(dst).st_size, BIG_SIZE)
            # cp and stdio size their writes by it: 1 MiB requests, not 128 KiB ones.
            self.assertEqual(os.stat(dst).st_blksize, 1 << 20)
            self.assertEqual(ckpt.xxh128_file(dst), want, 'bytes read back differ')
            # close() returned, so the object is already durable in nginx's root.
            obj = os.path.join(root, 'objects', want)
            self.assertTrue(os.path.isfile(obj), f'{obj} missing; objects: {ckpt.objects(root)}')
            self.assertEqual(os.path.getsize(obj), BIG_SIZE)
            self.assertEqual(ckpt.xxh128_file(obj), want)
            g = subprocess.run(['getfattr', '-n', HASH_XATTR, '--only-values', '--absolute-names',
                                dst], capture_output=True, text=True, timeout=60)
            self.assertEqual(g.returncode, 0, g.stderr)
            self.assertEqual(g.stdout.strip(), want, 'getfattr hash differs from xxhsum -H2')
            self.assert_hash_xattr(dst, want)
        # Read back from the store alone: a fresh mount with an empty spool.
        with self.mount(url, self.spool(), exit_timeout=60) as m:
            self.assertEqual(ckpt.xxh128_file(self.ck(m, 'big.bin')), want)
        self.assertEqual(ckpt.objects(root), [want])
        self.assert_store_sound(root)


_TORCH_SAVE = r'''
import sys, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(3):
    loss = model(torch.randn(32, 16)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
state = {"epoch": 3, "model": model.state_dict(), "optimizer": opt.state_dict(), "note": "shelbyfs"}
for path in sys.argv[1:]:
    torch.save(state, path)
print("saved", sum(t.numel() for t in state["model"].values()))
'''

_TORCH_COMPARE = r'''
import sys, torch
def same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
got = torch.load(sys.argv[1], map_location="cpu")
want = torch.load(sys.argv[2], map_location="cpu")
same(got, want, "state")
assert got["optimizer"]["state"], "optimizer state is empty"
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
model.load_state_dict(got["model"])
torch.optim.Adam(model.parameters(), lr=1e-3).load_state_dict(got["optimizer"])
print("equal")
'''


class TorchTests(CheckpointCase):
    def run_torch(self, script, *args):
        r = subprocess.run([TORCH_PY, '-c', script, *args], capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, f'{TORCH_PY} failed:\n{r.stdout}\n{r.stderr}')
        return r.stdout

    def test_torch_save_load_round_trip(self):
        probe = subprocess.run([TORCH_PY, '-c', 'import torch'], capture_output=True, timeout=120)
        if probe.returncode != 0:
            if os.environ.get('CI', '').lower() == 'true':
                self.fail(f'{TORCH_PY} cannot import torch')
            self.skipTest(f'{TORCH_PY} cannot import torch')
        url, root = self.http_store()
        ref = os.path.join(self.scratch('ref'), 'ref.pt')
        with self.mount(url, self.spool()) as m:
            os.mkdir(self.ck(m, 'torch'))
            path = self.ck(m, 'torch/epoch-3.pt')
            self.run_torch(_TORCH_SAVE, path, ref)
            self.assertIn('equal', self.run_torch(_TORCH_COMPARE, path, ref))
            want = ckpt.xxh128_file(path)
            self.assert_hash_xattr(path, want)
            self.assertIn(want, ckpt.objects(root))
        with self.mount(url, self.spool()) as m:
            self.assertIn('equal', self.run_torch(_TORCH_COMPARE, self.ck(m, 'torch/epoch-3.pt'),
                                                  ref))
        self.assert_store_sound(root)


class AtomicSaveTests(CheckpointCase):
    def atomic_save(self, directory, name, data):
        """The usual crash-safe save: write a temp file, fsync it, rename over the final name."""
        tmp = os.path.join(directory, f'.{name}.tmp')
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            third = len(data) // 3
            for piece in (data[:third], data[third:2 * third], data[2 * third:]):
                self.assertEqual(os.write(fd, piece), len(piece))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(directory, name))
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def assert_saved(self, directory, name, data):
        self.assertEqual(sorted(os.listdir(directory)), [name], 'temp file left behind')
        self.assertFalse(os.path.lexists(os.path.join(directory, f'.{name}.tmp')))
        self.assert_content(os.path.join(directory, name), data)
        self.assert_hash_xattr(os.path.join(directory, name), ckpt.xxh128(data))

    def test_write_fsync_rename_over_final(self):
        url, root = self.http_store()
        old, new, newer = seeded(300 * KiB, 1), seeded(2 * MiB + 17, 2), seeded(MiB + 5, 3)
        with self.mount(url, self.spool()) as m:
            d = self.ck(m, 'run-7')
            os.mkdir(d)
            put(os.path.join(d, 'model.pt'), old)
            self.atomic_save(d, 'model.pt', new)
            self.assert_saved(d, 'model.pt', new)
            # Again, over a final name that itself came from a rename.
            self.atomic_save(d, 'model.pt', newer)
            self.assert_saved(d, 'model.pt', newer)
        with self.mount(url, self.spool()) as m:
            self.assert_saved(self.ck(m, 'run-7'), 'model.pt', newer)
        self.assert_store_sound(root)


class VersionTests(CheckpointCase):
    def test_three_overwrites_keep_three_versions_and_store_is_append_only(self):
        url, root = self.http_store()
        contents = [seeded(100 * KiB + i, 40 + i) for i in range(3)]
        hashes = [ckpt.xxh128(c) for c in contents]
        t_start = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        with self.mount(url, self.spool()) as m:
            os.mkdir(self.ck(m, 'run1'))
            path = self.ck(m, 'run1/model.bin')
            before = ckpt.snapshot(root)
            for data in contents:
                put(path, data)
                after = ckpt.snapshot(root)
                self.assertEqual(ckpt.changed_files(before, after), [])
                before = after
            self.assert_content(path, contents[-1])
            vdir = self.ck(m, '.versions/run1/model.bin')
            self.assertTrue(os.path.isdir(vdir), f'{vdir} is not a directory')
            names = os.listdir(vdir)
            self.assertEqual(len(names), 3, names)
            stamps = []
            for name, data, h in zip(sorted(names), contents, hashes):
                match = ckpt.VERSION_NAME.match(name)
                self.assertIsNotNone(match, f'version name {name!r}')
                self.assertEqual(match.group(2), h[:16], f'{name}: hash prefix')
                stamps.append(datetime.datetime.strptime(match.group(1), '%Y%m%dT%H%M%S.%fZ'))
                vpath = os.path.join(vdir, name)
                self.assert_content(vpath, data)
                self.assertFalse(os.stat(vpath).st_mode & 0o222, f'{name} is writable')
            now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            slack = datetime.timedelta(minutes=2)
            self.assertEqual(stamps, sorted(stamps))
            self.assertTrue(t_start - slack <= stamps[0] and stamps[-1] <= now + slack,
                            f'version times {stamps} outside the test run')
            # .versions is read-only, whatever the operation.
            one = os.path.join(vdir, sorted(names)[0])
            self.assert_errno(errno.EROFS, os.open, one, os.O_WRONLY)
            self.assert_errno(errno.EROFS, os.truncate, one, 0)
            self.assert_errno(errno.EROFS, os.unlink, one)
            self.assert_errno(errno.EROFS, os.rename, one, one + '.x')
            self.assert_errno(errno.EROFS, os.open, os.path.join(vdir, 'new'),
                              os.O_WRONLY | os.O_CREAT, 0o644)
            self.assert_errno(errno.EROFS, os.mkdir, self.ck(m, '.versions/new-dir'))
            self.assert_content(one, contents[0])
            # Identical content under another name is stored once.
            put(self.ck(m, 'run1/copy-of-first.bin'), contents[0])
            self.assert_hash_xattr(self.ck(m, 'run1/copy-of-first.bin'), hashes[0])
            self.assertEqual(ckpt.changed_files(before, ckpt.snapshot(root)), [])
        self.assertEqual(ckpt.objects(root), sorted(hashes))
        self.assertEqual(ckpt.bad_index_records(root), [])
        self.assertTrue(ckpt.store_files(os.path.join(root, 'index')), 'no index records')
        self.assert_store_sound(root)


class XattrTests(CheckpointCase):
    def check_xattrs(self, path, want_hash):
        def get(name):
            try:
                return os.getxattr(path, name)
            except OSError as e:
                return f'{name}: {e.strerror}'
        self.assertEqual(get('user.epoch'), b'7')
        self.assertEqual(get('user.loss'), b'0.0123')
        self.assertTrue({'user.epoch', 'user.loss', HASH_XATTR} <= set(os.listxattr(path)),
                        os.listxattr(path))
        self.assert_hash_xattr(path, want_hash)
        g = subprocess.run(['getfattr', '-n', HASH_XATTR, '--only-values', '--absolute-names',
                            path], capture_output=True, text=True, timeout=60)
        self.assertEqual((g.returncode, g.stdout.strip()), (0, want_hash), g.stderr)

    def test_user_xattrs_survive_remount_on_another_machine(self):
        url, root = self.http_store()
        data = seeded(123 * KiB, 5)
        want = ckpt.xxh128(data)
        with self.mount(url, self.spool()) as m:
            os.mkdir(self.ck(m, 'xattr'))
            path = self.ck(m, 'xattr/epoch-7.pt')
            put(path, data)
            os.setxattr(path, 'user.epoch', b'7')
            os.setxattr(path, 'user.loss', b'0.0123')
            self.check_xattrs(path, want)
        # Another "machine": a fresh spool, same manifest and store.
        with self.mount(url, self.spool()) as m:
            path = self.ck(m, 'xattr/epoch-7.pt')
            self.assert_content(path, data)
            self.check_xattrs(path, want)
        self.assert_store_sound(root)


class FreshMountTests(CheckpointCase):
    def test_fresh_mount_sees_everything(self):
        url, root = self.http_store()
        deep, top, moved, gone = (seeded(50 * KiB, 10), seeded(70 * KiB, 11),
                                  seeded(1500 * KiB, 12), seeded(9 * KiB, 13))
        expected = {
            'runs': 'd', 'runs/a': 'd', 'runs/a/b': 'd', 'runs/a/b/c': 'd', 'runs/empty': 'd',
            'runs/a/b/c/deep.bin': deep,
            'runs/top.bin': top,
            'runs/a/b/renamed.bin': moved,
            'runs/log.txt': b'epoch 1\nepoch 2\n',
        }
        with self.mount(url, self.spool()) as m:
            c = self.ck(m)
            os.makedirs(os.path.join(c, 'runs/a/b/c'))
            os.mkdir(os.path.join(c, 'runs/empty'))
            os.mkdir(os.path.join(c, 'runs/removed-dir'))
            os.rmdir(os.path.join(c, 'runs/removed-dir'))
            put(os.path.join(c, 'runs/a/b/c/deep.bin'), deep)
            put(os.path.join(c, 'runs/top.bin'), top)
            os.chmod(os.path.join(c, 'runs/top.bin'), 0o600)
            os.utime(os.path.join(c, 'runs/top.bin'), (1_700_000_000, 1_700_000_000))
            put(os.path.join(c, 'runs/a/moved-from.bin'), moved)
            os.rename(os.path.join(c, 'runs/a/moved-from.bin'),
                      os.path.join(c, 'runs/a/b/renamed.bin'))
            put(os.path.join(c, 'runs/gone.bin'), gone)
            os.unlink(os.path.join(c, 'runs/gone.bin'))
            # Shell redirects: `>` creates, `>>` appends to a published checkpoint.
            r = subprocess.run(['sh', '-c', 'echo "epoch 1" > runs/log.txt && '
                                            'echo "epoch 2" >> runs/log.txt'],
                               cwd=c, capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(find_tree(c), expected)
        with self.mount(url, self.spool()) as m:
            c = self.ck(m)
            self.assertEqual(find_tree(c), expected)
            for rel, data in expected.items():
                if data != 'd':
                    self.assert_hash_xattr(os.path.join(c, rel), ckpt.xxh128(data))
            self.assertFalse(os.path.lexists(os.path.join(c, 'runs/gone.bin')))
            self.assertFalse(os.path.lexists(os.path.join(c, 'runs/removed-dir')))
            vdir = os.path.join(c, '.versions/runs/gone.bin')
            versions = os.listdir(vdir)
            self.assertEqual(len(versions), 1, versions)
            self.assert_content(os.path.join(vdir, versions[0]), gone)
        self.assert_store_sound(root)

    def test_default_location_is_checkpoints_beside_manifest(self):
        # nginx serves G['out'], so both the manifest URL's directory and the
        # local manifest's directory put the default store in out/checkpoints/.
        store_dir = os.path.join(G['out'], 'checkpoints')
        for seed, (label, manifest) in enumerate((('url', G['url']),
                                                   ('local', G['manifest_path']))):
            with self.subTest(manifest=label):
                data = seeded(40 * KiB, 70 + seed)
                want = ckpt.xxh128(data)
                with testlib.Mount(manifest, options=[f'spool_dir={self.spool()}']) as m:
                    put(self.ck(m, f'default-{label}.bin'), data)
                    self.assert_hash_xattr(self.ck(m, f'default-{label}.bin'), want)
                self.assertIn(want, ckpt.objects(store_dir))
                self.assertEqual(testlib.read_file(os.path.join(store_dir, 'objects', want)), data)
        self.assert_store_sound(store_dir)


class StoreFailureTests(CheckpointCase):
    """A private nginx behind a ThrottleProxy, so uploads can be slowed and interrupted."""

    @classmethod
    def setUpClass(cls):
        cls.store_root = testlib.make_tmpdir('shelbyfs-ckpt-failstore-')
        cls.addClassCleanup(shutil.rmtree, cls.store_root, True)
        cls.nginx = testlib.Nginx(cls.store_root).__enter__()
        cls.addClassCleanup(cls.nginx.close)
        cls.proxy = ThrottleProxy(cls.nginx.port, match=UPLOAD_PUT).__enter__()
        cls.addClassCleanup(cls.proxy.close)

    def setUp(self):
        self.proxy.set_rate(None)
        self.proxy.restore()
        self.nginx.start()          # no-op unless a failed test left it stopped

    def proxied_store(self):
        name = f'store-{next(_STORE_IDS)}'
        return self.proxy.url(f'{name}/'), os.path.join(self.store_root, name)

    def interrupted_cp(self, src, dst, min_bytes, interrupt):
        """cp src dst at SLOW_RATE; once min_bytes of its upload went through, interrupt().

        Returns (upload seen?, cp exit status or None if it hung, cp stderr).
        """
        mark = self.proxy.mark()
        self.proxy.set_rate(SLOW_RATE)
        cp = subprocess.Popen(['cp', src, dst], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started = False
        try:
            started = self.proxy.wait_for_body(min_bytes, 60, proc=cp, since=mark)
            if started:
                interrupt()
            try:
                _out, err = cp.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                return started, None, 'cp did not exit within 120s'
            return started, cp.returncode, err
        finally:
            if cp.poll() is None:
                cp.kill()
                try:
                    cp.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            self.proxy.set_rate(None)

    def test_store_down_mid_upload_fails_close_with_eio(self):
        url, root = self.proxied_store()
        old = seeded(200 * KiB, 20)
        src_dir = self.scratch('src')
        outages = {
            'nginx stopped': (self.nginx.stop, self.nginx.start),
            'connections dropped': (self.proxy.cut, self.proxy.restore),
        }
        with self.mount(url, self.spool(), manifest=G['manifest_path'], options=FAST_FAIL,
                        allow_errors=ckpt.EXPECTED_ERRORS) as m:
            put(self.ck(m, 'keep.bin'), old)
            seed = 100
            for how, (down, up) in outages.items():
                for name in (f'new-{seed}.bin', 'keep.bin'):
                    seed += 1
                    with self.subTest(outage=how, name=name):
                        src = os.path.join(src_dir, f'{seed}.bin')
                        ckpt.write_random(src, INTERRUPT_SIZE, seed)
                        try:
                            started, rc, err = self.interrupted_cp(src, self.ck(m, name),
                                                                   256 * KiB, down)
                        finally:
                            up()
                        self.assertTrue(started, f'no upload reached the store; cp: {rc} {err}')
                        self.assertIsNotNone(rc, err)
                        self.assertNotEqual(rc, 0, 'cp succeeded although the store was down')
                        self.assertIn('Input/output error', err)
                        if name == 'keep.bin':
                            self.assert_content(self.ck(m, name), old)
                            self.assert_hash_xattr(self.ck(m, name), ckpt.xxh128(old))
                        elif os.path.lexists(self.ck(m, name)):
                            time.sleep(2)   # diagnosis only: is it a stale kernel dentry?
                            later = 'still there' if os.path.lexists(self.ck(m, name)) else 'gone'
                            self.fail(f'{name} visible right after its failed close ({later} 2 s '
                                      'later; a dentry cached for the entry TTL must be '
                                      'invalidated too)')
                        self.assert_store_sound(root)
            # The store is back: the same mount publishes again.
            fine = seeded(300 * KiB, 30)
            put(self.ck(m, 'after-outage.bin'), fine)
            self.assert_content(self.ck(m, 'after-outage.bin'), fine)
            self.assertIn(ckpt.xxh128(fine), ckpt.objects(root))
        # And a fresh mount agrees: old content kept, failed names absent.
        with self.mount(url, self.spool(), manifest=G['manifest_path']) as m:
            self.assertEqual(set(os.listdir(self.ck(m))) - {'.versions'},
                             {'after-outage.bin', 'keep.bin'})
            self.assert_content(self.ck(m, 'keep.bin'), old)
        self.assert_store_sound(root)

    def test_sigkill_mid_upload_then_remount_resumes(self):
        url, root = self.proxied_store()
        spool = self.spool()
        src = os.path.join(self.scratch('src'), 'crash.bin')
        ckpt.write_random(src, CRASH_SIZE, seed=77)
        want = ckpt.xxh128_file(src)
        earlier = seeded(250 * KiB, 78)
        status, sanitizer, started, uploads, log = None, [], False, [], ''
        m = self.mount(url, spool, manifest=G['manifest_path'], options=FAST_FAIL,
                       allow_errors=ckpt.EXPECTED_ERRORS)
        with m:
            put(self.ck(m, 'earlier.bin'), earlier)
            mark = self.proxy.mark()

            def kill():
                nonlocal status, sanitizer
                status, sanitizer = ckpt.kill_mount(m)

            started, _rc, _err = self.interrupted_cp(src, self.ck(m, 'crash.bin'), 2 * MiB, kill)
            uploads = self.proxy.matching_requests(since=mark)
            log = m.log()
        self.assertTrue(started, f'no upload reached the store before the kill; daemon log:\n'
                                 f'{log[-3000:]}')
        self.assertEqual(status, -signal.SIGKILL)
        self.assertEqual(sanitizer, [])
        # The kill must have landed mid-upload, or this test proves nothing.
        interrupted = [u for u in uploads if u[1] >= 2 * MiB]
        self.assertTrue(interrupted and not any(done for _line, _n, done in interrupted),
                        f'the upload finished before the kill: {uploads}')
        # Let nginx see the dropped connections and discard the partial bodies.
        self.assertTrue(self.proxy.wait_idle(30), 'proxy connections still open after the kill')
        self.assert_store_sound(root)
        self.assertNotIn(want, ckpt.objects(root), 'the upload finished before the kill')

        # Same spool, same store: the pending upload completes before the mount is ready.
        with self.mount(url, spool, manifest=G['manifest_path'], mount_timeout=120) as m:
            self.assertIn(want, ckpt.objects(root), 'pending upload not finished at mount time')
            self.assertEqual(ckpt.xxh128_file(self.ck(m, 'crash.bin')), want)
            self.assert_hash_xattr(self.ck(m, 'crash.bin'), want)
            self.assert_content(self.ck(m, 'earlier.bin'), earlier)
            # No name points at bytes other than its hash: a checkpoint's hash
            # xattr, a version's hash prefix in its name.
            paths = [os.path.join(d, f) for d, _dirs, files in os.walk(self.ck(m)) for f in files]
            self.assertTrue(paths)
            versions = self.ck(m, '.versions') + '/'
            for path, got in ckpt.xxh128_files(paths).items():
                if path.startswith(versions):
                    self.assertTrue(os.path.basename(path).endswith('-' + got[:16]), path)
                else:
                    self.assert_hash_xattr(path, got)
        self.assert_store_sound(root)
        # Another machine sees it too: it is in the store, not only in the spool.
        with self.mount(url, self.spool(), manifest=G['manifest_path']) as m:
            self.assertEqual(ckpt.xxh128_file(self.ck(m, 'crash.bin')), want)
            self.assert_content(self.ck(m, 'earlier.bin'), earlier)


# argv: source, target. Copies source into target in 1 MiB writes, prints
# "written", waits for a line on stdin, then closes: exit 0 if close() did.
WRITE_THEN_WAIT = '''
import os, sys
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o644)
with open(sys.argv[1], 'rb') as src:
    while True:
        chunk = src.read(1 << 20)
        if not chunk:
            break
        os.write(fd, chunk)
print('written', flush=True)
sys.stdin.readline()
os.close(fd)
'''


class StreamedUploadTests(CheckpointCase):
    """A file written in order is uploaded while it is written (chunked PUT to
    uploads/, then MOVE to objects/<hash> at close)."""

    @staticmethod
    def dav_requests(url):
        """(method, path under the store, status) of nginx's requests to the store at `url`."""
        store_path = '/' + url.split('/', 3)[3]
        got = []
        for ln in G['nginx'].access_log().splitlines():
            m = re.search(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d+)', ln)
            if m and m.group(2).startswith(store_path):
                got.append((m.group(1), m.group(2)[len(store_path):], int(m.group(3))))
        return got

    def streamed(self, m):
        """Uploads the daemon streamed, from the statistics it logs at unmount."""
        m.stop()
        found = re.findall(r'(\d+) streamed while written', m.log())
        self.assertTrue(found, 'no checkpoint statistics in the daemon log:\n' + m.log()[-2000:])
        return int(found[-1])

    def test_in_order_writes_are_uploaded_while_written(self):
        url, root = self.http_store()
        data = seeded(48 * MiB, 70)
        spool = self.spool()
        with self.mount(url, spool) as m:
            path = self.ck(m, 'seq.bin')
            with open(path, 'wb') as f:
                for off in range(0, len(data), MiB):
                    f.write(data[off:off + MiB])
            self.assertEqual(self.stream_notes(spool), [], 'the note of a finished stream is left')
            self.assert_content(path, data)
            self.assert_hash_xattr(path, ckpt.xxh128(data))
            self.assertEqual(self.streamed(m), 1)
        obj = os.path.join(root, 'objects', ckpt.xxh128(data))
        self.assertEqual(ckpt.xxh128_file(obj), ckpt.xxh128(data))
        self.assertEqual(os.listdir(os.path.join(root, 'uploads')), [], 'the temporary name is left')
        self.assert_store_sound(root)
        with self.mount(url, self.spool()) as m:
            self.assert_content(self.ck(m, 'seq.bin'), data)

    def test_streamed_object_is_moved_without_replacing(self):
        # A new object: MOVE "Overwrite: F" straight away (no HEAD before it).
        # The same bytes again: nginx keeps the stored object (412), the
        # temporary is deleted, and the object on disk is the first one.
        url, root = self.http_store()
        data = seeded(12 * MiB, 73)
        obj = os.path.join(root, 'objects', ckpt.xxh128(data))
        with self.mount(url, self.spool()) as m:
            put(self.ck(m, 'first.bin'), data)
            first = self.dav_requests(url)
            stored = os.stat(obj)
            put(self.ck(m, 'second.bin'), data)
            second = self.dav_requests(url)[len(first):]
            self.assert_content(self.ck(m, 'second.bin'), data)
            self.assertEqual(self.streamed(m), 2)
        key = 'objects/' + ckpt.xxh128(data)
        moves = [r for r in first if r[0] == 'MOVE']
        self.assertEqual([s for _, _, s in moves], [204], first)
        self.assertTrue(moves[0][1].startswith('uploads/'), moves)
        before_move = first[:first.index(moves[0])]
        self.assertNotIn(('HEAD', key), [(meth, p) for meth, p, _ in before_move], first)
        self.assertIn(('HEAD', key, 200), first[first.index(moves[0]):], 'the move is not verified')
        second_moves = [r for r in second if r[0] == 'MOVE']
        self.assertEqual([s for _, _, s in second_moves], [412], second)
        self.assertIn(('DELETE', second_moves[0][1], 204), second, 'the temporary is not deleted')
        now = os.stat(obj)
        self.assertEqual((now.st_ino, now.st_mtime_ns), (stored.st_ino, stored.st_mtime_ns),
                         'the stored object was replaced')
        self.assertEqual(ckpt.xxh128_file(obj), ckpt.xxh128(data))
        self.assertEqual(os.listdir(os.path.join(root, 'uploads')), [], 'a temporary name is left')
        self.assert_store_sound(root)

    def test_a_live_mounts_stream_is_left_alone_by_a_second_mount(self):
        url, root = self.http_store()
        spool = self.spool()
        data = seeded(12 * MiB, 76)
        src = os.path.join(self.scratch('src'), 'live.bin')
        with open(src, 'wb') as f:
            f.write(data)
        with self.mount(url, spool) as a:
            # The writer is a process of its own, so the stream stays open
            # however this process spawns the second mount.
            with subprocess.Popen(
                    [sys.executable, '-c', WRITE_THEN_WAIT, src, self.ck(a, 'live.bin')],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as writer:
                try:
                    self.assertEqual(writer.stdout.readline().strip(), 'written')
                    notes = self.stream_notes(spool)
                    self.assertEqual(len(notes), 1, 'no note of the stream in the spool')
                    with open(notes[0]) as f:
                        key = f.read()
                    self.assertTrue(key.startswith('uploads/'), key)
                    # As if the stream's PUT had landed and its MOVE were next.
                    placed = os.path.join(root, key)
                    os.makedirs(os.path.dirname(placed), exist_ok=True)
                    with open(placed, 'wb') as f:
                        f.write(b'in flight')
                    # Same spool, same store: the second mount's clean-up of dead
                    # mounts must tell this live one apart (flock) and leave it.
                    with self.mount(url, spool) as b:
                        self.assertTrue(os.path.exists(placed), "a second mount deleted a live stream's temporary")
                        self.assertEqual(self.stream_notes(spool), notes)
                        self.assertNotIn('live.bin', os.listdir(self.ck(b)))  # nothing saved yet
                    writer.stdin.write('close\n')
                    writer.stdin.flush()
                    self.assertEqual(writer.wait(timeout=120), 0, 'close() of the written file failed')
                finally:
                    if writer.poll() is None:
                        writer.kill()
            self.assert_content(self.ck(a, 'live.bin'), data)
        self.assertEqual(self.stream_notes(spool), [])
        self.assert_store_sound(root)

    def test_a_dead_mounts_temporary_upload_is_deleted_by_the_next_mount(self):
        url, root = self.http_store()
        spool = self.spool()
        data = seeded(12 * MiB, 75)
        m = self.mount(url, spool)
        with m:
            fd = os.open(self.ck(m, 'dying.bin'), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                for off in range(0, len(data), MiB):
                    self.assertEqual(os.write(fd, data[off:off + MiB]), MiB)
                notes = self.stream_notes(spool)
                self.assertEqual(len(notes), 1, 'no note of the stream in the spool')
                with open(notes[0]) as f:
                    key = f.read()
                status, sanitizer = ckpt.kill_mount(m)
            finally:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.assertEqual(status, -signal.SIGKILL)
        self.assertEqual(sanitizer, [])
        self.assertTrue(key.startswith('uploads/'), key)
        # What a mount that died between its PUT and its MOVE leaves behind,
        # and a damaged note that names a stored object.
        leftover = os.path.join(root, key)
        os.makedirs(os.path.dirname(leftover), exist_ok=True)
        with open(leftover, 'wb') as f:
            f.write(data)
        kept = os.path.join(root, 'objects', '0' * 32)
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        with open(kept, 'wb') as f:
            f.write(b'not a temporary')
        with open(os.path.join(os.path.dirname(notes[0]), '999'), 'w') as f:
            f.write('objects/' + '0' * 32)
        with open(os.path.join(os.path.dirname(notes[0]), '998'), 'w') as f:
            f.write('uploads//x')     # not a key a stream writes: dropped, not kept for ever
        dead = os.path.dirname(os.path.dirname(notes[0]))
        with self.mount(url, spool, allow_errors=[r'ignoring a damaged stream note']) as m:
            self.assertFalse(os.path.exists(leftover), 'the temporary object is left')
            self.assertTrue(os.path.exists(kept), 'a damaged note deleted a stored object')
            self.assertFalse(os.path.exists(dead), 'the dead mount\'s spool directory is left')
            self.assertNotIn('dying.bin', os.listdir(self.ck(m)))
            m.stop()
            self.assertIn('deleted ' + key, m.log())

    def test_a_server_refusing_overwrite_f_is_asked_twice_then_no_more(self):
        # The module's nginx answers 400 to "Overwrite: F" under /refuses-overwrite-f/.
        # Two refusals in a row (not a passing failure) switch to HEAD then MOVE.
        url, root = self.http_store(under='refuses-overwrite-f')
        files = {f'f{i}.bin': seeded(12 * MiB, 80 + i) for i in range(4)}
        with self.mount(url, self.spool()) as m:
            for fname, data in files.items():
                put(self.ck(m, fname), data)
            for fname, data in files.items():
                self.assert_content(self.ck(m, fname), data)
            self.assertEqual(self.streamed(m), 4)
            self.assertIn('refused a MOVE with "Overwrite: F"', m.log())
        sent = self.dav_requests(url)
        self.assertEqual([s for meth, _, s in sent if meth == 'MOVE'], [400, 204, 400, 204, 204, 204], sent)
        for data in files.values():
            self.assertEqual(ckpt.xxh128_file(os.path.join(root, 'objects', ckpt.xxh128(data))), ckpt.xxh128(data))
        self.assertEqual(os.listdir(os.path.join(root, 'uploads')), [], 'a temporary name is left')
        self.assert_store_sound(root)

    def test_streamed_save_replaces_a_damaged_object(self):
        url, root = self.http_store()
        data = seeded(12 * MiB, 74)
        obj = os.path.join(root, 'objects', ckpt.xxh128(data))
        os.makedirs(os.path.dirname(obj))
        with open(obj, 'wb') as f:
            f.write(data[:MiB])     # a cut-short copy under the right name
        with self.mount(url, self.spool()) as m:
            put(self.ck(m, 'fixed.bin'), data)
            self.assert_content(self.ck(m, 'fixed.bin'), data)
            self.assertEqual(self.streamed(m), 1)
            self.assertIn('replacing the damaged object', m.log())
        sent = self.dav_requests(url)
        self.assertEqual([s for meth, _, s in sent if meth == 'MOVE'], [412, 204], sent)
        self.assertEqual(ckpt.xxh128_file(obj), ckpt.xxh128(data))
        self.assertEqual(os.listdir(os.path.join(root, 'uploads')), [], 'a temporary name is left')
        self.assert_store_sound(root)

    def test_rewriting_sent_bytes_abandons_the_stream(self):
        # zipfile-style: write on, then seek back and patch a header.
        url, root = self.http_store()
        data = bytearray(seeded(24 * MiB, 71))
        with self.mount(url, self.spool()) as m:
            path = self.ck(m, 'patched.bin')
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for off in range(0, len(data), MiB):
                    self.assertEqual(os.write(fd, data[off:off + MiB]), MiB)
                self.assertEqual(os.pwrite(fd, b'PATCHED', 100), 7)
                data[100:107] = b'PATCHED'
            finally:
                os.close(fd)
            self.assert_content(path, bytes(data))
            self.assertEqual(self.streamed(m), 0)
        obj = os.path.join(root, 'objects', ckpt.xxh128(bytes(data)))
        self.assertEqual(ckpt.xxh128_file(obj), ckpt.xxh128(bytes(data)))
        uploads = os.path.join(root, 'uploads')
        self.assertEqual(os.listdir(uploads) if os.path.isdir(uploads) else [], [],
                         'an abandoned stream left an object')
        self.assert_store_sound(root)


    def test_a_writer_pausing_past_the_timeout_is_uploaded_from_the_spool(self):
        url, root = self.http_store()
        data = seeded(12 * MiB, 72)
        with self.mount(url, self.spool(), options=['timeout=2']) as m:
            path = self.ck(m, 'paused.bin')
            with open(path, 'wb') as f:
                f.write(data[:10 * MiB])
                f.flush()
                time.sleep(3.5)     # longer than timeout=2: the stream gives up
                f.write(data[10 * MiB:])
            self.assert_content(path, data)
            self.assertEqual(self.streamed(m), 0)
            self.assertIn('nothing was written to the file for 2 s', m.log())
        self.assertEqual(ckpt.xxh128_file(os.path.join(root, 'objects', ckpt.xxh128(data))),
                         ckpt.xxh128(data))
        self.assert_store_sound(root)


class InheritedDescriptorTests(CheckpointCase):
    """A close saves only when the closing process changed the file: a
    subprocess inherits the descriptor and closes it, and that must not
    publish a half-written checkpoint."""

    @staticmethod
    def records(root):
        return sorted(glob.glob(os.path.join(root, 'index', '*')))

    def test_a_subprocess_closing_an_inherited_descriptor_saves_nothing(self):
        url, root = self.http_store()
        data = seeded(3 * MiB, 77)
        with self.mount(url, self.spool()) as m:
            path = self.ck(m, 'inherited.bin')
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                self.assertEqual(os.write(fd, data[:MiB]), MiB)
                # One child gets the descriptor, one closes its copy before
                # exec (close_fds): both close it without writing.
                subprocess.run([sys.executable, '-c', 'pass'], pass_fds=(fd,), check=True, timeout=60)
                subprocess.run(['true'], check=True, timeout=60)
                self.assertEqual(self.records(root), [], 'a close by a child published the file')
                self.assertEqual(os.write(fd, data[MiB:]), len(data) - MiB)
            finally:
                os.close(fd)
            self.assertEqual(len(self.records(root)), 1)
            self.assert_content(path, data)
        with self.mount(url, self.spool()) as m:
            self.assert_content(self.ck(m, 'inherited.bin'), data)
        self.assert_store_sound(root)

    def test_truncating_and_closing_saves_the_empty_file(self):
        # O_TRUNC is a change by the process that opens, with no write after.
        url, root = self.http_store()
        with self.mount(url, self.spool()) as m:
            path = self.ck(m, 'marker.txt')
            with open(path, 'wb') as f:
                f.write(b'hello world')
            os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
            self.assertEqual(os.stat(path).st_size, 0)
            self.assertEqual(len(self.records(root)), 2)
        with self.mount(url, self.spool()) as m:
            self.assertEqual(os.stat(self.ck(m, 'marker.txt')).st_size, 0)

    def test_a_child_that_writes_saves_at_its_close(self):
        url, root = self.http_store()
        data = seeded(2 * MiB, 78)
        src = os.path.join(self.scratch('src'), 'child.bin')
        with open(src, 'wb') as f:
            f.write(data)
        with self.mount(url, self.spool()) as m:
            path = self.ck(m, 'child.bin')
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                # The child writes through the descriptor it inherited, then
                # exits: its close saves, while this process keeps its own.
                code = 'import os, sys; os.write(int(sys.argv[1]), open(sys.argv[2], "rb").read())'
                subprocess.run([sys.executable, '-c', code, str(fd), src], pass_fds=(fd,), check=True, timeout=60)
                self.assertEqual(len(self.records(root)), 1, "the writing child's close saved nothing")
                with self.mount(url, self.spool()) as other:
                    self.assert_content(self.ck(other, 'child.bin'), data)
            finally:
                os.close(fd)
            self.assertEqual(len(self.records(root)), 1)  # nothing changed since
        self.assert_store_sound(root)


class WriterTests(CheckpointCase):
    def test_random_offset_writes_and_truncate(self):
        url, root = self.http_store()
        rng = random.Random(2024)
        model = bytearray()

        def write_at(fd, offset, data):
            self.assertEqual(os.pwrite(fd, data, offset), len(data))
            if offset > len(model):
                model.extend(bytes(offset - len(model)))
            model[offset:offset + len(data)] = data

        def truncate_to(size):
            if size < len(model):
                del model[size:]
            else:
                model.extend(bytes(size - len(model)))

        with self.mount(url, self.spool()) as m:
            os.mkdir(self.ck(m, 'rw'))
            path = self.ck(m, 'rw/random.bin')
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for i in range(300):
                    op = rng.random()
                    if op < 0.85:       # including past EOF, leaving holes
                        write_at(fd, rng.randrange(len(model) + 256 * KiB),
                                 rng.randbytes(rng.randint(1, 64 * KiB)))
                    elif op < 0.95:
                        size = rng.randrange(len(model) + 128 * KiB)
                        os.ftruncate(fd, size)
                        truncate_to(size)
                    else:
                        self.assertTrue(os.pread(fd, len(model) + 10, 0) == model,
                                        f'read-your-writes differs after op {i}')
                    if i == 150:
                        os.fsync(fd)    # a mid-way fsync publishes; writing goes on
                self.assertEqual(os.fstat(fd).st_size, len(model))
            finally:
                os.close(fd)
            self.assert_content(path, bytes(model))
            self.assert_hash_xattr(path, ckpt.xxh128(bytes(model)))
            # Reopen the published file without O_TRUNC and patch it in place.
            fd = os.open(path, os.O_RDWR)
            try:
                write_at(fd, len(model) // 2, b'patched in the middle')
                write_at(fd, len(model), b'appended at the end')
            finally:
                os.close(fd)
            self.assert_content(path, bytes(model))
            # Truncate by path, with no open file: shrink, then grow with a hole.
            os.truncate(path, 1000)
            truncate_to(1000)
            self.assert_content(path, bytes(model))
            os.truncate(path, 5000)
            truncate_to(5000)
            self.assert_content(path, bytes(model))
            self.assert_hash_xattr(path, ckpt.xxh128(bytes(model)))
        # truncate(2) reports success, so the result must be published too.
        with self.mount(url, self.spool()) as m:
            self.assert_content(self.ck(m, 'rw/random.bin'), bytes(model))
        self.assert_store_sound(root)

    def test_shared_mmap_of_a_read_write_descriptor_is_saved(self):
        # np.memmap(mode='w+'), LMDB and SQLite map what they open read-write.
        # (Write-only descriptors use direct I/O; they cannot be mapped anyway.)
        url, root = self.http_store()
        data = seeded(256 * KiB, 61)
        with self.mount(url, self.spool()) as m:
            path = self.ck(m, 'mapped.bin')
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, len(data))
                with mmap.mmap(fd, len(data), mmap.MAP_SHARED) as mm:
                    mm[:] = data
                    mm.flush()
            finally:
                os.close(fd)
            self.assert_content(path, data)
            self.assert_hash_xattr(path, ckpt.xxh128(data))
        with self.mount(url, self.spool()) as m:
            self.assert_content(self.ck(m, 'mapped.bin'), data)
        self.assert_store_sound(root)

    def test_full_spool_gives_enospc(self):
        url, root = self.http_store()
        data = seeded(4 * MiB, 60)
        with self.mount(url, self.spool(), options=['spool_size=1MiB'],
                        allow_errors=ckpt.EXPECTED_ERRORS) as m:
            path = self.ck(m, 'too-big.bin')
            failure = None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for offset in range(0, len(data), 64 * KiB):
                    try:
                        os.write(fd, data[offset:offset + 64 * KiB])
                    except OSError as e:
                        failure = e
                        break
            finally:
                try:
                    os.close(fd)
                except OSError as e:
                    failure = failure or e
            self.assertIsNotNone(failure, 'a 4 MiB write into a 1 MiB spool succeeded')
            self.assertEqual(failure.errno, errno.ENOSPC, repr(failure))
            # Never corruption: if anything was published, it is bytes we wrote.
            if os.path.lexists(path):
                got = testlib.read_file(path)
                self.assertTrue(data.startswith(got), 'published bytes are not what was written')
            src = os.path.join(self.scratch('src'), 'big.bin')
            put(src, data)
            r = subprocess.run(['cp', src, self.ck(m, 'cp-too-big.bin')], capture_output=True,
                               text=True, timeout=120)
            self.assertNotEqual(r.returncode, 0, 'cp of 4 MiB into a 1 MiB spool succeeded')
            self.assertIn('No space left on device', r.stderr)
            # The space comes back: a file that fits still works.
            small = seeded(256 * KiB, 61)
            put(self.ck(m, 'fits.bin'), small)
            self.assert_content(self.ck(m, 'fits.bin'), small)
            self.assert_hash_xattr(self.ck(m, 'fits.bin'), ckpt.xxh128(small))
        self.assert_store_sound(root)

    def test_local_directory_store(self):
        root = self.scratch('local-store')
        src = os.path.join(self.scratch('src'), 'model.bin')
        ckpt.write_random(src, 3 * MiB + 1, seed=90)
        want = ckpt.xxh128_file(src)
        with self.mount(root, self.spool(), manifest=G['manifest_path']) as m:
            os.makedirs(self.ck(m, 'local/run'))
            dst = self.ck(m, 'local/run/model.bin')
            r = subprocess.run(['cp', src, dst], capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(ckpt.xxh128_file(dst), want)
            self.assert_hash_xattr(dst, want)
            self.assertEqual(ckpt.objects(root), [want])
            self.assertTrue(ckpt.store_files(os.path.join(root, 'index')), 'no index records')
        with self.mount(root, self.spool(), manifest=G['manifest_path']) as m:
            self.assertEqual(ckpt.xxh128_file(self.ck(m, 'local/run/model.bin')), want)
            self.assertTrue(stat.S_ISDIR(os.stat(self.ck(m, 'local/run')).st_mode))
        self.assert_store_sound(root)


if __name__ == '__main__':
    testlib.require_prereqs()
    unittest.main(verbosity=2)
