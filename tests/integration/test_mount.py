#!/usr/bin/python3
"""Integration: pack a varied tree, serve it with nginx, mount it, compare every byte.

Covers the HTTP mount and the local-manifest mount, listing and stat, random
reads with dd, reads past EOF, EROFS outside /checkpoints, daemon mode,
SIGTERM/SIGINT shutdown, concurrent readers, a tiny block cache, and which
range GETs one random read causes (a whole shard when the dataset fits the cache).
Run: SHELBYFS_BIN=build/src/shelbyfs /usr/bin/python3 tests/integration/test_mount.py
"""
import errno
import math
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tools'))
import testlib  # noqa: E402
from testlib import data as tdata  # noqa: E402

MiB = 1024 * 1024
SHARD_SIZE = '1MiB'

# Filled by setUpModule.
G = {}


def setUpModule():
    tmp = testlib.make_tmpdir('shelbyfs-test-mount-')
    unittest.addModuleCleanup(shutil.rmtree, tmp, True)
    src, out = os.path.join(tmp, 'src'), os.path.join(tmp, 'out')
    files = testlib.generate_tree(src)
    t0 = time.monotonic()
    r = testlib.pack(src, out, '--shard-size', SHARD_SIZE)
    print(f'\npack: {len(files)} files in {time.monotonic() - t0:.2f}s; {r.stdout.strip()}',
          file=sys.stderr)
    nginx = testlib.Nginx(out).__enter__()
    unittest.addModuleCleanup(nginx.close)
    G.update(tmp=tmp, src=src, out=out, files=files, nginx=nginx,
             manifest=testlib.read_manifest(out), url=nginx.url('manifest.json'))


def samples():
    return G['manifest']['samples']


def shard_names():
    return [s['name'] for s in G['manifest']['shards']]


def expected_listing():
    """{relative path: ('f', size) | ('d', 0)} of the source tree."""
    return testlib.list_tree(G['src'])


def find_listing(root):
    out = subprocess.run(['find', root, '-mindepth', '1', '-printf', r'%P\t%y\t%s\n'],
                         capture_output=True, check=True, timeout=60).stdout
    listing = {}
    for line in os.fsdecode(out).splitlines():
        rel, kind, size = line.rsplit('\t', 2)
        listing[rel] = (kind, int(size) if kind == 'f' else 0)
    return listing


class MountChecks:
    """Assertions shared by the HTTP, local and small-cache mounts."""

    def assert_all_samples_equal(self, mnt, order=None):
        paths = order if order is not None else sorted(G['files'])
        for rel in paths:
            with self.subTest(sample=rel):
                got = testlib.read_file(os.path.join(mnt, 'samples', rel))
                want = G['files'][rel]
                self.assertEqual(len(got), len(want))
                self.assertTrue(got == want, f'{rel}: bytes differ')

    def assert_all_shards_equal(self, mnt):
        for name in shard_names():
            with self.subTest(shard=name):
                got = testlib.read_file(os.path.join(mnt, 'shards', name))
                want = testlib.read_file(os.path.join(G['out'], name))
                self.assertEqual(len(got), len(want))
                self.assertTrue(got == want, f'{name}: bytes differ')


class PackTests(unittest.TestCase):
    def test_manifest_describes_every_file(self):
        m = G['manifest']
        self.assertEqual(m['format'], 'shelbyfs-manifest')
        self.assertEqual(m['version'], 1)
        self.assertEqual(m['block_size'], MiB)
        self.assertEqual({s['path']: s['size'] for s in m['samples']},
                         {p: len(d) for p, d in G['files'].items()})

    def test_shards_hold_samples_at_their_offsets(self):
        m = G['manifest']
        self.assertGreaterEqual(len(m['shards']), 3, 'expected several 1 MiB shards')
        for sh in m['shards']:
            path = os.path.join(G['out'], sh['name'])
            self.assertEqual(os.path.getsize(path), sh['size'], sh['name'])
            self.assertEqual(len(sh['blocks']), math.ceil(sh['size'] / m['block_size']), sh['name'])
            with tarfile.open(path) as tf:
                members = [t for t in tf.getmembers() if t.isfile()]
            self.assertEqual(len(members),
                             sum(1 for s in m['samples'] if m['shards'][s['shard']] is sh), sh['name'])
        for s in m['samples']:
            with open(os.path.join(G['out'], m['shards'][s['shard']]['name']), 'rb') as f:
                f.seek(s['offset'])
                self.assertTrue(f.read(s['size']) == G['files'][s['path']], s['path'])

    def test_oversized_sample_gets_its_own_shard(self):
        m = G['manifest']
        big = next(s for s in m['samples'] if s['path'] == tdata.BIG_FILE)
        mates = [s['path'] for s in m['samples'] if s['shard'] == big['shard']]
        self.assertEqual(mates, [tdata.BIG_FILE])

    def test_pack_is_deterministic(self):
        out2 = os.path.join(G['tmp'], 'out-again')
        testlib.pack(G['src'], out2, '--shard-size', SHARD_SIZE)
        try:
            self.assertEqual(sorted(os.listdir(out2)), sorted(os.listdir(G['out'])))
            for name in os.listdir(out2):
                self.assertTrue(testlib.read_file(os.path.join(out2, name)) ==
                                testlib.read_file(os.path.join(G['out'], name)), name)
        finally:
            shutil.rmtree(out2, ignore_errors=True)


class HttpMountTests(MountChecks, unittest.TestCase):
    """One mount of the manifest URL shared by the read-only checks."""

    @classmethod
    def setUpClass(cls):
        cls.m = testlib.Mount(G['url']).__enter__()
        cls.addClassCleanup(cls.m.close)
        cls.mnt = cls.m.path()

    def test_top_level_entries(self):
        self.assertEqual(sorted(os.listdir(self.mnt)), ['checkpoints', 'samples', 'shards'])
        for d in ('checkpoints', 'samples', 'shards'):
            self.assertTrue(stat.S_ISDIR(os.stat(os.path.join(self.mnt, d)).st_mode), d)

    def test_checkpoints_dir_exists(self):
        self.assertTrue(os.path.isdir(os.path.join(self.mnt, 'checkpoints')))

    def test_every_sample_has_source_bytes(self):
        self.assert_all_samples_equal(self.mnt)

    def test_every_shard_has_packed_bytes(self):
        self.assert_all_shards_equal(self.mnt)

    def test_reads_are_http_range_requests(self):
        big = next(s for s in samples() if s['path'] == tdata.BIG_FILE)
        shard = G['manifest']['shards'][big['shard']]['name']
        self.assertEqual(testlib.read_file(os.path.join(self.mnt, 'samples', tdata.BIG_FILE)),
                         G['files'][tdata.BIG_FILE])
        hits = [ln for ln in G['nginx'].access_log().splitlines()
                if f'"GET /{shard} HTTP/1.1" 206 ' in ln]
        self.assertTrue(hits, f'no 206 range GETs of {shard} in the nginx access log')

    def test_stat_sizes_and_types(self):
        for rel, (kind, size) in expected_listing().items():
            with self.subTest(path=rel):
                st = os.stat(os.path.join(self.mnt, 'samples', rel))
                if kind == 'd':
                    self.assertTrue(stat.S_ISDIR(st.st_mode))
                else:
                    self.assertTrue(stat.S_ISREG(st.st_mode))
                    self.assertEqual(st.st_size, size)
        for sh in G['manifest']['shards']:
            st = os.stat(os.path.join(self.mnt, 'shards', sh['name']))
            self.assertTrue(stat.S_ISREG(st.st_mode))
            self.assertEqual(st.st_size, sh['size'])

    def test_find_lists_exactly_the_tree(self):
        self.assertEqual(find_listing(os.path.join(self.mnt, 'samples')), expected_listing())
        self.assertEqual(find_listing(os.path.join(self.mnt, 'shards')),
                         {s['name']: ('f', s['size']) for s in G['manifest']['shards']})

    def test_ls_l_lists_each_directory(self):
        dirs = [''] + [p for p, (k, _) in expected_listing().items() if k == 'd']
        for rel in dirs:
            with self.subTest(dir=rel):
                out = subprocess.run(['ls', '-lAn', '--time-style=+%s',
                                      os.path.join(self.mnt, 'samples', rel)],
                                     capture_output=True, check=True, timeout=30).stdout
                got = {}
                for line in os.fsdecode(out).splitlines()[1:]:      # skip "total N"
                    mode, _links, _uid, _gid, size, _mtime, name = line.split(None, 6)
                    got[name] = (mode[0], int(size))
                want = {}
                src_dir = os.path.join(G['src'], rel)
                for name in os.listdir(src_dir):
                    p = os.path.join(src_dir, name)
                    want[name] = ('d', None) if os.path.isdir(p) else ('-', os.path.getsize(p))
                self.assertEqual(set(got), set(want))
                for name, (kind, size) in want.items():
                    self.assertEqual(got[name][0], kind, name)
                    if kind == '-':
                        self.assertEqual(got[name][1], size, name)

    def test_dd_at_random_offsets(self):
        rng = random.Random(20261122)
        nonempty = sorted(p for p, d in G['files'].items() if d)
        cases = [(tdata.BIG_FILE, MiB - 10, 20), (tdata.BIG_FILE, 2 * MiB - 1, MiB + 2),
                 (tdata.BIG_FILE, 0, tdata.BIG_SIZE), (tdata.BIG_FILE, tdata.BIG_SIZE - 7, 7)]
        for _ in range(60):
            p = rng.choice(nonempty)
            size = len(G['files'][p])
            off = rng.randrange(size)
            cases.append((p, off, rng.randint(1, size - off)))
        for p, off, length in cases:
            with self.subTest(path=p, offset=off, length=length):
                r = subprocess.run(['dd', f'if={os.path.join(self.mnt, "samples", p)}',
                                    'iflag=skip_bytes,count_bytes', f'skip={off}',
                                    f'count={length}', 'bs=64K', 'status=none'],
                                   capture_output=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertTrue(r.stdout == G['files'][p][off:off + length], 'bytes differ')

    def test_read_past_eof_returns_nothing(self):
        for rel in (tdata.BIG_FILE, 'empty.txt', '.hidden'):
            size = len(G['files'][rel])
            fd = os.open(os.path.join(self.mnt, 'samples', rel), os.O_RDONLY)
            try:
                self.assertEqual(os.pread(fd, 100, size), b'', rel)
                self.assertEqual(os.pread(fd, 100, size + 1), b'', rel)
                self.assertEqual(os.pread(fd, 100, size + 10 * MiB), b'', rel)
                if size:
                    self.assertEqual(os.pread(fd, 100, size - 3), G['files'][rel][-3:], rel)
            finally:
                os.close(fd)

    def assert_errno(self, expected, fn, *args):
        with self.assertRaises(OSError) as cm:
            fn(*args)
        self.assertEqual(cm.exception.errno, expected,
                         f'{fn.__name__}{args}: {cm.exception!r}, expected {errno.errorcode[expected]}')

    def test_samples_and_shards_are_read_only(self):
        sample = os.path.join(self.mnt, 'samples', '.hidden')
        sample_dir = os.path.join(self.mnt, 'samples', 'a')
        shard = os.path.join(self.mnt, 'shards', shard_names()[0])
        for d, existing, a_dir in ((os.path.join(self.mnt, 'samples'), sample, sample_dir),
                                   (os.path.join(self.mnt, 'shards'), shard, None),
                                   (self.mnt, None, None)):
            with self.subTest(dir=d):
                new = os.path.join(d, 'new-file')
                self.assert_errno(errno.EROFS, os.open, new, os.O_WRONLY | os.O_CREAT, 0o644)
                self.assert_errno(errno.EROFS, os.mkdir, os.path.join(d, 'new-dir'))
                self.assert_errno(errno.EROFS, os.symlink, 'target', os.path.join(d, 'new-link'))
                self.assertFalse(os.path.lexists(new))
                if existing:
                    self.assert_errno(errno.EROFS, os.open, existing, os.O_WRONLY)
                    self.assert_errno(errno.EROFS, os.open, existing, os.O_RDWR)
                    self.assert_errno(errno.EROFS, os.open, existing, os.O_WRONLY | os.O_TRUNC)
                    self.assert_errno(errno.EROFS, os.truncate, existing, 0)
                    self.assert_errno(errno.EROFS, os.unlink, existing)
                    self.assert_errno(errno.EROFS, os.rename, existing, existing + '.moved')
                    self.assertTrue(os.path.isfile(existing))
                if a_dir:
                    self.assert_errno(errno.EROFS, os.rmdir, os.path.join(a_dir, 'b', 'c', 'd'))
        self.assertEqual(testlib.read_file(sample), G['files']['.hidden'])


class LocalManifestTests(MountChecks, unittest.TestCase):
    def test_local_manifest_mount_reads_from_disk(self):
        with testlib.Mount(os.path.join(G['out'], 'manifest.json')) as m:
            self.assertEqual(find_listing(m.path('samples')), expected_listing())
            self.assert_all_samples_equal(m.path())
            self.assert_all_shards_equal(m.path())


class SmallCacheTests(MountChecks, unittest.TestCase):
    def test_two_mib_cache_still_returns_correct_bytes(self):
        with testlib.Mount(G['url'], options=['cache_size=2MiB']) as m:
            self.assert_all_samples_equal(m.path())
            self.assert_all_shards_equal(m.path())
            # A second pass in another order must refetch evicted blocks correctly.
            order = sorted(G['files'])
            random.Random(7).shuffle(order)
            self.assert_all_samples_equal(m.path(), order)


class TinyBlockTests(MountChecks, unittest.TestCase):
    def test_64_byte_blocks_serve_1_mib_reads(self):
        # Even a 128 KiB request (the kernel's read-ahead without root) spans
        # 2,048 blocks: more pieces than one writev takes, so the reply is
        # assembled in a buffer instead.
        out = os.path.join(G['tmp'], 'out-tiny')
        testlib.pack(G['src'], out, '--shard-size', SHARD_SIZE, '--block-size', '64')
        self.assertEqual(testlib.read_manifest(out)['block_size'], 64)
        with testlib.Mount(os.path.join(out, 'manifest.json')) as m:
            for name in shard_names():
                with self.subTest(shard=name):
                    want = testlib.read_file(os.path.join(out, name))
                    fd = os.open(m.path(os.path.join('shards', name)), os.O_RDONLY)
                    try:
                        got = os.pread(fd, MiB, 0)
                    finally:
                        os.close(fd)
                    self.assertEqual(len(got), min(MiB, len(want)))
                    self.assertTrue(got == want[:MiB], f'{name}: bytes differ')
            self.assert_all_samples_equal(m.path())


class WholeShardPrefetchTests(unittest.TestCase):
    """One sample read at random: its whole shard comes along when the whole
    dataset fits in the cache, and only the sample's own block when it does not."""

    @classmethod
    def setUpClass(cls):
        out = os.path.join(G['tmp'], 'out-64k')
        testlib.pack(G['src'], out, '--shard-size', SHARD_SIZE, '--block-size', '64KiB')
        cls.manifest = testlib.read_manifest(out)
        cls.nginx = testlib.Nginx(out).__enter__()
        cls.addClassCleanup(cls.nginx.close)
        bs = cls.manifest['block_size']
        # A small sample inside one block, in the middle of a shard of more
        # than 8 blocks (the size that comes whole in any case).
        cls.sample, cls.shard = next(
            (s, cls.manifest['shards'][s['shard']]) for s in cls.manifest['samples']
            if cls.manifest['shards'][s['shard']]['size'] > 12 * bs and 0 < s['size']
            and s['offset'] // bs == (s['offset'] + s['size'] - 1) // bs and s['offset'] // bs > 2)
        cls.blocks = math.ceil(cls.shard['size'] / bs)
        cls.total = sum(sh['size'] for sh in cls.manifest['shards'])

    def shard_gets(self):
        return sum(1 for ln in self.nginx.access_log().splitlines()
                   if f'"GET /{self.shard["name"]} HTTP/1.1" 206 ' in ln)

    def read_sample(self, mnt):
        got = testlib.read_file(os.path.join(mnt, 'samples', self.sample['path']))
        self.assertTrue(got == G['files'][self.sample['path']], 'sample bytes differ')

    def test_dataset_that_fits_the_cache_brings_the_whole_shard(self):
        self.assertLess(self.total, 512 * MiB)
        before = self.shard_gets()
        with testlib.Mount(self.nginx.url('manifest.json')) as m:
            self.read_sample(m.path())
            deadline = time.monotonic() + 10
            while self.shard_gets() - before < self.blocks and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # nothing beyond the shard's blocks follows
            self.assertEqual(self.shard_gets() - before, self.blocks,
                             f'range GETs of {self.shard["name"]} ({self.blocks} blocks of 64 KiB)')
            # Everything is cached now: reading the whole shard sends nothing.
            self.assertTrue(testlib.read_file(m.path(os.path.join('shards', self.shard['name']))) ==
                            testlib.read_file(os.path.join(G['tmp'], 'out-64k', self.shard['name'])))
            self.assertEqual(self.shard_gets() - before, self.blocks)

    def test_dataset_larger_than_the_cache_fetches_one_block(self):
        cache = 2 * MiB
        self.assertGreater(self.total, cache)  # so it does not fit
        before = self.shard_gets()
        with testlib.Mount(self.nginx.url('manifest.json'), options=[f'cache_size={cache // MiB}MiB']) as m:
            self.read_sample(m.path())
            time.sleep(0.5)  # room for prefetches, if any were started
            self.assertEqual(self.shard_gets() - before, 1)


class PageCachePushTests(unittest.TestCase):
    """A sample whose blocks are cached goes into the kernel's page cache at
    open(): reading it sends no READ, and stat() after it no GETATTR. Checked
    in libfuse's request trace (-d)."""

    def test_cached_samples_are_read_without_read_requests(self):
        out = os.path.join(G['tmp'], 'out-4k')
        testlib.pack(G['src'], out, '--shard-size', SHARD_SIZE, '--block-size', '4KiB')
        manifest = testlib.read_manifest(out)
        shard = max(range(len(manifest['shards'])),
                    key=lambda i: sum(1 for x in manifest['samples'] if x['shard'] == i))
        name = manifest['shards'][shard]['name']
        chosen = [x for x in manifest['samples'] if x['shard'] == shard and 0 < x['size'] <= MiB]
        self.assertGreater(len(chosen), 20)
        self.assertTrue(any(x['offset'] // 4096 != (x['offset'] + x['size'] - 1) // 4096 for x in chosen),
                        'no sample spans blocks')
        with testlib.Mount(os.path.join(out, 'manifest.json'), extra_args=['-d']) as m:
            # Reading the whole shard caches all of its blocks.
            self.assertTrue(testlib.read_file(m.path(os.path.join('shards', name))) ==
                            testlib.read_file(os.path.join(out, name)))
            inos = {}
            for x in chosen:
                path = m.path(os.path.join('samples', x['path']))
                with open(path, 'rb') as f:  # Python's open() also fstat()s
                    got = f.read()
                self.assertTrue(got == G['files'][x['path']], f'{x["path"]}: bytes differ')
                self.assertEqual(os.stat(path).st_size, x['size'])
                inos[os.stat(path).st_ino] = x['path']
            m.stop()
            trace = m.log()
        requests = re.findall(r'^unique: \d+, opcode: (\w+) \(\d+\), nodeid: (\d+)', trace, re.M)
        self.assertIn(('OPEN', str(next(iter(inos)))), requests)  # the trace is there
        for op in ('READ', 'GETATTR'):
            sent = sorted({inos[int(n)] for o, n in requests if o == op and int(n) in inos})
            self.assertEqual(sent, [], f'{op} requests for pushed samples')
        self.assertRegex(trace, rf'pushed {len(chosen)} samples \(\d+ KiB\) into the kernel\'s page cache')


class ConcurrencyTests(unittest.TestCase):
    def run_threads(self, n, work):
        barrier = threading.Barrier(n, timeout=30)
        errors = []

        def runner(i):
            try:
                barrier.wait()
                work(i)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(f'thread {i}: {e!r}')

        threads = [threading.Thread(target=runner, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        self.assertFalse([t for t in threads if t.is_alive()], 'reader threads hung')
        self.assertEqual(errors, [])

    def test_eight_readers_of_different_samples(self):
        paths = sorted(G['files'])
        with testlib.Mount(G['url'], options=['threads=8']) as m:
            def work(i):
                for rel in paths[i::8]:
                    got = testlib.read_file(m.path(os.path.join('samples', rel)))
                    if got != G['files'][rel]:
                        raise AssertionError(f'{rel}: bytes differ')
            self.run_threads(8, work)

    def test_eight_readers_of_the_same_samples_with_one_fuse_thread(self):
        # Blocks arrive while the same samples are opened and read by several
        # readers: a sample opened while another reader has it open is never
        # pushed into the page cache (that store would wait for the other
        # reader's READ, which needs the one FUSE thread).
        out = os.path.join(G['tmp'], 'out-4k-shared')
        testlib.pack(G['src'], out, '--shard-size', SHARD_SIZE, '--block-size', '4KiB')
        paths = sorted(rel for rel in G['files'] if len(G['files'][rel]) <= MiB)
        with testlib.Nginx(out) as srv, testlib.Mount(srv.url('manifest.json'), options=['threads=1']) as m:
            def work(i):
                order = list(paths)
                random.Random(i).shuffle(order)
                for rel in order:
                    got = testlib.read_file(m.path(os.path.join('samples', rel)))
                    if got != G['files'][rel]:
                        raise AssertionError(f'{rel}: bytes differ')
            self.run_threads(8, work)
            m.stop()
            self.assertRegex(m.log(), r"pushed \d+ samples")

    def test_eight_readers_of_one_big_file(self):
        want = G['files'][tdata.BIG_FILE]
        with testlib.Mount(G['url']) as m:
            path = m.path(os.path.join('samples', tdata.BIG_FILE))

            def work(i):
                fd = os.open(path, os.O_RDONLY)
                try:
                    rng = random.Random(i)
                    for _ in range(40):
                        off = rng.randrange(len(want))
                        length = rng.randint(1, 300_000)
                        if os.pread(fd, length, off) != want[off:off + length]:
                            raise AssertionError(f'offset {off} length {length}: bytes differ')
                finally:
                    os.close(fd)
            self.run_threads(8, work)


class ReadAheadTests(unittest.TestCase):
    @staticmethod
    def bdi_file(mnt):
        st = os.stat(mnt)
        return f'/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb'

    def read_ahead_kb(self, mnt):
        with open(self.bdi_file(mnt)) as f:
            return int(f.read())

    def test_read_ahead_is_one_block_by_default_and_settable(self):
        if os.geteuid() != 0 or not os.access('/sys/class/bdi', os.W_OK):
            self.skipTest('writing /sys/class/bdi needs root and a writable /sys')
        shard = shard_names()[0]
        want_bytes = testlib.read_file(os.path.join(G['out'], shard))
        # 0 keeps what the kernel gives a new FUSE mount: 128 KiB.
        for options, want_kb in (([], 1024), (['read_ahead=256KiB'], 256), (['read_ahead=0'], 128)):
            with self.subTest(options=options):
                with testlib.Mount(G['url'], options=options) as m:
                    self.assertEqual(self.read_ahead_kb(m.path()), want_kb)
                    got = testlib.read_file(os.path.join(m.path('shards'), shard))
                    self.assertTrue(got == want_bytes, f'{shard}: bytes differ')


class LifecycleTests(unittest.TestCase):
    def test_daemon_mode_returns_when_ready_and_exits_on_unmount(self):
        tmp = testlib.make_tmpdir('shelbyfs-daemon-')
        mnt = os.path.join(tmp, f'mnt-{os.getpid()}-{time.monotonic_ns()}')
        os.mkdir(mnt)
        log = os.path.join(tmp, 'daemon.log')
        pids = []
        try:
            r = subprocess.run([testlib.shelbyfs_bin(), 'mount', G['url'], mnt,
                                '-o', f'log_file={log}'],
                               capture_output=True, text=True, timeout=60)
            testlib.register_mount(mnt)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(testlib.is_mounted(mnt), 'mount not ready when `mount` returned')
            self.assertEqual(testlib.read_file(os.path.join(mnt, 'samples', '.hidden')),
                             G['files']['.hidden'])
            pids = testlib.find_daemon_pids(mnt)
            self.assertEqual(len(pids), 1, f'daemon processes for {mnt}: {pids}')
            u = subprocess.run(['fusermount3', '-u', mnt], capture_output=True, text=True,
                               timeout=30)
            self.assertEqual(u.returncode, 0, u.stderr)
            self.assertTrue(testlib.wait_unmounted(mnt, 10))
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and testlib.mount.pid_alive(pids[0]):
                time.sleep(0.05)
            self.assertFalse(testlib.mount.pid_alive(pids[0]), 'daemon still running after unmount')
            log_text = ''
            if os.path.exists(log):
                with open(log, errors='replace') as f:
                    log_text = f.read()
            self.assertEqual(testlib.mount.scan_log(log_text), [], log_text)
        finally:
            if testlib.is_mounted(mnt):
                testlib.lazy_unmount(mnt)
            for pid in pids + testlib.find_daemon_pids(mnt):
                if testlib.mount.pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
            testlib.unregister_mount(mnt)
            shutil.rmtree(tmp, ignore_errors=True)

    def test_signals_unmount_cleanly(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(signal=sig.name):
                with testlib.Mount(G['url']) as m:
                    self.assertEqual(testlib.read_file(m.path('samples/empty.txt')), b'')
                    m.signal(sig)
                    self.assertEqual(m.wait(15), 0, m.log())
                    self.assertTrue(testlib.wait_unmounted(m.path(), 10),
                                    f'still mounted after {sig.name}')

    def test_lazy_unmount_with_open_file_exits_after_close(self):
        # The daemon serves an open file after a lazy unmount and exits 0 once it is closed.
        with testlib.Mount(G['url']) as m:
            f = open(m.path(os.path.join('samples', tdata.BIG_FILE)), 'rb')
            try:
                self.assertEqual(f.read(10), G['files'][tdata.BIG_FILE][:10])
                rc, err = testlib.lazy_unmount(m.path())
                self.assertEqual(rc, 0, err)
                self.assertTrue(testlib.wait_unmounted(m.path(), 10))
                f.seek(3 * MiB)
                self.assertEqual(f.read(100), G['files'][tdata.BIG_FILE][3 * MiB:3 * MiB + 100])
                self.assertIsNone(m.proc.poll(), 'daemon exited while a file was still open')
            finally:
                f.close()
            self.assertEqual(m.wait(15), 0, m.log())

if __name__ == '__main__':
    testlib.require_prereqs()
    unittest.main(verbosity=2)
