#!/usr/bin/python3
"""Integration: bad input is refused at startup; bad data and dead servers give EIO, not hangs.

Startup: malformed manifests, unsafe paths, out-of-range samples, a 404 or
refused manifest URL and a missing mountpoint each exit non-zero with one
`shelbyfs: ` line naming the problem, and leave no mount behind.
Runtime: a corrupted shard byte, a deleted shard, a stopped server and a
stalled server each give EIO to the affected read within bounded time while
the mount stays up and other data still reads.
Run: SHELBYFS_BIN=build/src/shelbyfs /usr/bin/python3 tests/integration/test_errors.py
"""
import copy
import errno
import json
import os
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

KiB = 1024
BLOCK = 256 * KiB
# Bound for any single read that is expected to fail; the options below make
# the real figure a few seconds.
READ_BOUND = 60.0
FAST_FAIL = ['retries=1', 'timeout=2', 'connect_timeout=2']

G = {}


def setUpModule():
    tmp = testlib.make_tmpdir('shelbyfs-test-errors-')
    unittest.addModuleCleanup(shutil.rmtree, tmp, True)
    src, out = os.path.join(tmp, 'src'), os.path.join(tmp, 'out')
    files = testlib.generate_tree(src, seed=99, small_files=250, big_size=1536 * KiB)
    testlib.pack(src, out, '--shard-size', '1MiB', '--block-size', f'{BLOCK // KiB}KiB')
    G.update(tmp=tmp, src=src, out=out, files=files, manifest=testlib.read_manifest(out))
    assert len(G['manifest']['shards']) >= 3, 'test layout needs at least 3 shards'


def fresh_copy(name):
    """A private copy of the packed output that a test may damage."""
    d = os.path.join(G['tmp'], name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(G['out'], d)
    return d


def shard_samples(manifest, shard_index):
    return [s for s in manifest['samples'] if s['shard'] == shard_index and s['size'] > 0]


def busiest_shard(manifest):
    """Index of the shard holding the most non-empty samples."""
    return max(range(len(manifest['shards'])), key=lambda i: len(shard_samples(manifest, i)))


def samples_elsewhere(manifest, shard_index, per_shard=4):
    """A few non-empty samples from every shard except `shard_index`."""
    out = []
    for i in range(len(manifest['shards'])):
        if i != shard_index:
            out += shard_samples(manifest, i)[:per_shard]
    return out


def blocks_of(sample, block_size):
    first = sample['offset'] // block_size
    last = (sample['offset'] + sample['size'] - 1) // block_size
    return set(range(first, last + 1))


class StartupErrorTests(unittest.TestCase):
    """Every bad input: exit 1, one `shelbyfs: ` line naming the problem, nothing mounted."""

    def run_mount(self, manifest, mnt=None, args=(), expect_rc=1):
        tmp = tempfile.mkdtemp(prefix='shelbyfs-badmnt-', dir=G['tmp'])
        if mnt is None:
            mnt = os.path.join(tmp, 'mnt')
            os.mkdir(mnt)
        try:
            try:
                r = subprocess.run([testlib.shelbyfs_bin(), 'mount', manifest, mnt, *args],
                                   capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired:
                self.fail(f'mount {manifest} did not exit within 60s')
            mounted = testlib.is_mounted(mnt)
            daemons = testlib.find_daemon_pids(mnt)
            self.assertFalse(mounted, f'{mnt} left mounted; stderr: {r.stderr}')
            self.assertEqual(daemons, [], 'daemon left running')
            self.assertEqual(r.returncode, expect_rc, f'stderr: {r.stderr}')
            lines = r.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, f'expected one stderr line, got: {r.stderr!r}')
            self.assertTrue(lines[0].startswith('shelbyfs: '), lines[0])
            return lines[0]
        finally:
            if testlib.is_mounted(mnt):
                testlib.lazy_unmount(mnt)
            for pid in testlib.find_daemon_pids(mnt):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(tmp, ignore_errors=True)

    def write_variant(self, name, text):
        path = os.path.join(G['out'], f'bad-{name}.json')
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
        self.addCleanup(os.remove, path)
        return path

    def edited(self, edit):
        m = copy.deepcopy(G['manifest'])
        edit(m)
        return json.dumps(m, indent=2, ensure_ascii=False)

    def test_bad_manifests(self):
        with open(os.path.join(G['out'], 'manifest.json'), encoding='utf-8') as f:
            good = f.read()
        shard0 = G['manifest']['shards'][0]

        def setp(i, key, value):
            def edit(m):
                m['samples'][i][key] = value
            return edit

        def seti(i, key, value):
            def edit(m):
                m['shards'][i][key] = value
            return edit

        def drop_block(m):
            m['shards'][0]['blocks'].pop()

        def file_and_dir(m):
            m['samples'][7]['path'] = m['samples'][6]['path'] + '/child'

        def wrong_format(m):
            m['format'] = 'tarball-index'

        def wrong_version(m):
            m['version'] = 99

        # (case, manifest text, regexes the single stderr line must match)
        cases = [
            ('malformed', good.replace('"samples"', '"samples" ::', 1), [r'not valid JSON']),
            ('truncated', good[:len(good) // 2], [r'not valid JSON', r'end of input']),
            ('empty-file', '', [r'not valid JSON']),
            ('not-an-object', '[1, 2, 3]', [r'not a JSON object']),
            ('wrong-format', self.edited(wrong_format), [r'"format" is "tarball-index"']),
            ('wrong-version', self.edited(wrong_version), [r'unsupported version 99']),
            ('offset-past-shard', self.edited(setp(3, 'offset', shard0['size'])),
             [r'samples\[3\]', r'lies outside shard']),
            ('size-past-shard', self.edited(setp(3, 'size', 10 * shard0['size'])),
             [r'samples\[3\]', r'lies outside shard']),
            ('dotdot', self.edited(setp(0, 'path', 'a/../../etc/passwd')),
             [r'samples\[0\]', r"'\.\.' component"]),
            ('dotdot-leading', self.edited(setp(0, 'path', '../evil')),
             [r'samples\[0\]', r"'\.\.' component"]),
            ('absolute', self.edited(setp(1, 'path', '/etc/passwd')),
             [r'samples\[1\]', r'absolute path']),
            ('duplicate', self.edited(setp(2, 'path', G['manifest']['samples'][1]['path'])),
             [r'samples\[2\]', r'duplicate path']),
            ('empty-path', self.edited(setp(4, 'path', '')), [r'samples\[4\]', r'empty path']),
            ('empty-component', self.edited(setp(4, 'path', 'a//b')),
             [r'samples\[4\]', r'empty component']),
            ('dot-component', self.edited(setp(4, 'path', 'a/./b')),
             [r'samples\[4\]', r"'\.' component"]),
            ('file-and-dir', self.edited(file_and_dir),
             [r'samples\[[67]\]', r'both a file and a directory']),
            ('shard-index', self.edited(setp(5, 'shard', 999)),
             [r'samples\[5\]', r'shard 999 does not exist']),
            ('negative-offset', self.edited(setp(5, 'offset', -1)), [r'samples\[5\]', r'offset']),
            ('duplicate-shard', self.edited(seti(1, 'name', shard0['name'])),
             [r'shards\[1\]', r'duplicate shard name']),
            ('shard-name-slash', self.edited(seti(0, 'name', 'x/y.tar')),
             [r'shards\[0\]', r'single file name']),
            ('shard-name-empty', self.edited(seti(0, 'name', '')), [r'shards\[0\]', r'empty name']),
            ('block-count', self.edited(drop_block), [r'shards\[0\]', r'block hashes']),
            ('bad-hex', self.edited(seti(0, 'xxh3_128', 'not-hex')),
             [r'shards\[0\]', r'xxh3_128', r'hex']),
        ]
        for name, text, patterns in cases:
            with self.subTest(case=name):
                line = self.run_mount(self.write_variant(name, text))
                self.assertIn(f'bad-{name}.json', line)     # names the manifest
                for pat in patterns:
                    self.assertRegex(line, pat)

    def test_missing_manifest_file(self):
        path = os.path.join(G['tmp'], 'no-such-manifest.json')
        line = self.run_mount(path)
        self.assertIn('cannot read manifest', line)
        self.assertIn('no-such-manifest.json', line)

    def test_manifest_url_404(self):
        with testlib.Nginx(G['out']) as n:
            line = self.run_mount(n.url('nope/manifest.json'))
        self.assertIn('cannot fetch manifest', line)
        self.assertIn('nope/manifest.json', line)
        self.assertRegex(line, r'404')

    def test_manifest_url_connection_refused(self):
        port = testlib.free_port()
        line = self.run_mount(f'http://127.0.0.1:{port}/manifest.json', args=['-o', ','.join(FAST_FAIL)])
        self.assertIn('cannot fetch manifest', line)
        self.assertRegex(line, r"(?i)refused|couldn't connect")

    def test_manifest_url_stalls(self):
        with testlib.StallServer(G['out'], stall=r'manifest\.json$', mode='silent') as srv:
            t0 = time.monotonic()
            line = self.run_mount(srv.url('manifest.json'), args=['-o', ','.join(FAST_FAIL)])
            elapsed = time.monotonic() - t0
        self.assertIn('cannot fetch manifest', line)
        self.assertRegex(line, r'(?i)time|stall')
        self.assertLess(elapsed, 30, 'retries=1,timeout=2 should fail well within 30s')

    def test_missing_mountpoint(self):
        mnt = os.path.join(G['tmp'], 'no-such-mountpoint')
        line = self.run_mount(os.path.join(G['out'], 'manifest.json'), mnt=mnt)
        self.assertIn('mountpoint', line)
        self.assertIn('no-such-mountpoint', line)

    def test_usage_errors_exit_2(self):
        for args in ([], ['mount'], ['mount', 'only-one-arg'], ['frobnicate'],
                     ['pack', 'only-src'], ['push', 'only-dir'], ['verify'], ['verify', 'a', 'b'],
                     ['verify', 'm.json', '--jobs', '0'], ['mount', 'm.json', 'mnt', '--profile'],
                     ['push', 'a', 'b', '--frob'], ['mount', 'm.json', 'mnt', '-o', 'read_ahead=3000']):
            with self.subTest(args=args):
                r = subprocess.run([testlib.shelbyfs_bin(), *args], capture_output=True, text=True,
                                   timeout=30)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn('shelbyfs', r.stderr)

    def test_pack_missing_source(self):
        out = os.path.join(G['tmp'], 'pack-out-missing')
        r = testlib.pack(os.path.join(G['tmp'], 'no-such-src'), out, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('no-such-src', r.stderr)
        self.assertFalse(os.path.exists(os.path.join(out, 'manifest.json')))


class ConfigErrorTests(unittest.TestCase):
    """--config/--profile problems: exit 1, one line naming the file, key or profile."""

    run_mount = StartupErrorTests.run_mount

    def write_config(self, text, mode=0o600):
        path = os.path.join(G['tmp'], f'config-{len(text)}-{time.monotonic_ns()}.toml')
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
        os.chmod(path, mode)
        self.addCleanup(os.remove, path)
        return path

    def manifest(self):
        return os.path.join(G['out'], 'manifest.json')

    def test_missing_config_file(self):
        path = os.path.join(G['tmp'], 'no-such-config.toml')
        line = self.run_mount(self.manifest(), args=['--config', path])
        self.assertIn('no-such-config.toml', line)

    def test_unknown_profile_lists_presets(self):
        cfg = self.write_config('[profiles.mine]\nregion = "eu-west-1"\n')
        line = self.run_mount(self.manifest(), args=['--config', cfg, '-o', 'profile=nope'])
        self.assertIn('nope', line)
        for name in ('mine', 'akave', 'shelbynet'):
            self.assertIn(name, line)

    def test_bad_key_names_file_line_and_key(self):
        cfg = self.write_config('[profiles.p]\nregion = "x"\nbogus_key = 1\n')
        line = self.run_mount(self.manifest(), args=['--config', cfg, '--profile', 'p'])
        self.assertIn(f'{cfg}:3', line)
        self.assertIn('bogus_key', line)

    def test_bad_mount_option_in_profile_names_profile(self):
        cfg = self.write_config('[profiles.p]\ncache_size = "lots"\n')
        line = self.run_mount(self.manifest(), args=['--config', cfg, '--profile', 'p'])
        self.assertIn('[profiles.p]', line)
        self.assertIn('cache_size', line)

    def test_profile_settings_apply_and_command_line_wins(self):
        """A profile's memory_limit is replaced by -o cache_size; its spool_dir is used."""
        spool = os.path.join(G['tmp'], 'profile-spool')
        cfg = self.write_config(f'[profiles.p]\nmemory_limit = "64MiB"\nspool_dir = "{spool}"\n')
        mnt = tempfile.mkdtemp(prefix='shelbyfs-profile-mnt-', dir=G['tmp'])
        log = os.path.join(G['tmp'], 'profile-mount.log')
        store = os.path.join(G['tmp'], 'profile-store')
        with testlib.Mount(self.manifest(), mnt, options=[f'cache_size=8MiB,log_file={log},checkpoints={store}'],
                           extra_args=['--config', cfg, '--profile', 'p']):
            with open(os.path.join(mnt, 'checkpoints', 'c.bin'), 'wb') as f:
                f.write(b'x' * 1000)
        with open(log, encoding='utf-8') as f:
            text = f.read()
        self.assertIn('cache 8.0 MiB', text)
        self.assertIn(f'spool {spool}', text)

    def test_world_readable_secret_warns_without_printing_it(self):
        secret = 'sEcReT-value-123'
        cfg = self.write_config(f'[profiles.p]\naccess_key_id = "AKID"\nsecret_access_key = "{secret}"\n',
                                mode=0o644)
        r = subprocess.run([testlib.shelbyfs_bin(), 'verify', self.manifest(), '--config', cfg,
                            '--profile', 'p', '--no-progress'], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('readable by others', r.stderr)
        self.assertIn('chmod 600', r.stderr)
        self.assertNotIn(secret, r.stderr + r.stdout)

    def test_unsupported_manifest_scheme(self):
        line = self.run_mount('ftp://127.0.0.1/manifest.json')
        self.assertIn('unsupported URL scheme', line)


class VerifyTests(unittest.TestCase):
    """`shelbyfs verify` on local shards: exit 0 when intact, 1 naming each bad shard."""

    def verify(self, manifest):
        r = subprocess.run([testlib.shelbyfs_bin(), 'verify', manifest, '--no-progress'],
                           capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout, r.stderr

    def test_intact(self):
        rc, out, err = self.verify(os.path.join(G['out'], 'manifest.json'))
        self.assertEqual(rc, 0, err)
        n = len(G['manifest']['shards'])
        self.assertIn(f'verified {n} of {n} shards', out)
        self.assertIn('all good', out)

    def test_damaged_and_missing_shards_are_named(self):
        d = fresh_copy('verify-damaged')
        shards = G['manifest']['shards']
        damaged, missing = shards[1], shards[2]
        with open(os.path.join(d, damaged['location']), 'r+b') as f:
            f.seek(damaged['size'] // 2)
            b = f.read(1)
            f.seek(damaged['size'] // 2)
            f.write(bytes([b[0] ^ 0xFF]))
        os.remove(os.path.join(d, missing['location']))
        rc, out, err = self.verify(os.path.join(d, 'manifest.json'))
        self.assertEqual(rc, 1, err)
        bad = [line for line in err.splitlines() if line.startswith('shelbyfs: verify: BAD ')]
        self.assertEqual(len(bad), 2, err)
        self.assertIn(damaged['name'], bad[0])
        self.assertIn('damaged', bad[0])
        self.assertIn(missing['name'], bad[1])
        self.assertIn('missing', bad[1])
        self.assertIn(f'{len(shards) - 2} of {len(shards)}', out)

    def test_truncated_shard_is_named(self):
        d = fresh_copy('verify-truncated')
        shard = G['manifest']['shards'][0]
        with open(os.path.join(d, shard['location']), 'r+b') as f:
            f.truncate(shard['size'] - 1)
        rc, _, err = self.verify(os.path.join(d, 'manifest.json'))
        self.assertEqual(rc, 1, err)
        self.assertIn(shard['name'], err)
        self.assertIn(f'size {shard["size"] - 1} bytes', err)


class RuntimeErrorTests(unittest.TestCase):
    def assert_eio(self, path, **kw):
        r = testlib.read_in_subprocess(path, timeout=READ_BOUND, **kw)
        self.assertEqual(r.kind, 'errno', f'{path}: expected EIO, got {r}')
        self.assertEqual(r.errno, errno.EIO, f'{path}: {r}')
        return r

    def assert_reads(self, mnt, sample):
        path = os.path.join(mnt, 'samples', sample['path'])
        r = testlib.read_in_subprocess(path, timeout=READ_BOUND)
        self.assertTrue(r.matches(G['files'][sample['path']]), f'{sample["path"]}: {r}')

    def test_corrupt_block_gives_eio_and_is_logged(self):
        root = fresh_copy('corrupt')
        m = G['manifest']
        idx = busiest_shard(m)
        shard = m['shards'][idx]
        # Corrupt one byte in the middle of a sample in the shard's second block;
        # find another sample of the same shard whose blocks are all intact.
        target = next(s for s in shard_samples(m, idx) if s['offset'] >= BLOCK)
        bad_pos = target['offset'] + target['size'] // 2
        bad_block = bad_pos // BLOCK
        intact = [s for s in shard_samples(m, idx) if bad_block not in blocks_of(s, BLOCK)]
        self.assertTrue(intact, f'layout gave no intact sample in shard {idx}')
        with open(os.path.join(root, shard['name']), 'r+b') as f:
            f.seek(bad_pos)
            byte = f.read(1)
            f.seek(bad_pos)
            f.write(bytes([byte[0] ^ 0xFF]))
        allow = [re.escape(shard['name'])]
        with testlib.Nginx(root) as n, \
                testlib.Mount(n.url('manifest.json'), options=['retries=2', 'timeout=5'],
                              allow_errors=allow) as mt:
            t = self.assert_eio(mt.path(os.path.join('samples', target['path'])))
            print(f'\ncorrupt block -> EIO after {t.seconds:.2f}s', file=sys.stderr)
            # The shard file itself: bytes before the bad block read, the bad block does not.
            shard_path = mt.path(os.path.join('shards', shard['name']))
            self.assert_eio(shard_path, offset=bad_block * BLOCK, length=BLOCK)
            if bad_block > 0:
                r = testlib.read_in_subprocess(shard_path, 0, bad_block * BLOCK, timeout=READ_BOUND)
                want = testlib.read_file(os.path.join(G['out'], shard['name']))[:bad_block * BLOCK]
                self.assertTrue(r.matches(want), r)
            self.assert_reads(mt.path(), intact[0])
            for s in samples_elsewhere(m, idx):
                self.assert_reads(mt.path(), s)
            self.assertTrue(testlib.is_mounted(mt.path()))
            log = mt.log()
        errors = [ln for ln in log.splitlines() if 'ERROR' in ln and shard['name'] in ln]
        self.assertTrue(errors, f'no ERROR line naming {shard["name"]}:\n{log}')
        start, end = bad_block * BLOCK, min((bad_block + 1) * BLOCK, shard['size'])
        ranges = [ln for ln in errors if str(start) in ln and (str(end) in ln or str(end - 1) in ln)]
        self.assertTrue(ranges, f'no ERROR line with byte range {start}-{end}:\n{log}')

    def test_missing_shard_gives_eio_and_mount_stays_up(self):
        m = G['manifest']
        idx = busiest_shard(m)
        gone = m['shards'][idx]['name']
        root = fresh_copy('missing')
        os.remove(os.path.join(root, gone))
        allow = [re.escape(gone), r'404']
        with testlib.Nginx(root) as n:
            for kind, manifest in (('http', n.url('manifest.json')),
                                   ('local', os.path.join(root, 'manifest.json'))):
                with self.subTest(manifest=kind), \
                        testlib.Mount(manifest, options=FAST_FAIL, allow_errors=allow) as mt:
                    victim = shard_samples(m, idx)[0]
                    path = mt.path(os.path.join('samples', victim['path']))
                    self.assertEqual(os.stat(path).st_size, victim['size'])
                    t = self.assert_eio(path)
                    print(f'\nmissing shard ({kind}) -> EIO after {t.seconds:.2f}s', file=sys.stderr)
                    self.assert_eio(path)               # again: still an error, still no hang
                    for s in samples_elsewhere(m, idx):
                        self.assert_reads(mt.path(), s)
                    self.assertTrue(testlib.is_mounted(mt.path()))
                    self.assertIsNone(mt.proc.poll(), 'daemon died')

    def test_stopped_server_gives_eio_then_recovers(self):
        m = G['manifest']
        allow = [r'(?i)connect|refused|couldn.t|network|shard-\d+\.tar']
        with testlib.Nginx(G['out']) as n, \
                testlib.Mount(n.url('manifest.json'), options=FAST_FAIL, allow_errors=allow) as mt:
            self.assert_reads(mt.path(), shard_samples(m, 0)[0])
            n.stop()
            victim = shard_samples(m, len(m['shards']) - 1)[0]
            path = mt.path(os.path.join('samples', victim['path']))
            t = self.assert_eio(path)
            print(f'\nserver down -> EIO after {t.seconds:.2f}s', file=sys.stderr)
            self.assertLess(t.seconds, 30, 'EIO took too long with retries=1,timeout=2')
            self.assertTrue(testlib.is_mounted(mt.path()))
            n.start()                                   # same port: the mount recovers
            self.assert_reads(mt.path(), victim)

    def test_stalled_server_gives_eio(self):
        m = G['manifest']
        allow = [r'(?i)timeout|timed out|stall|shard-\d+\.tar|transfer|network|partial']
        for mode in ('silent', 'partial'):
            with self.subTest(mode=mode):
                with testlib.StallServer(G['out'], stall=r'\.tar$', mode=mode) as srv, \
                        testlib.Mount(srv.url('manifest.json'), options=FAST_FAIL,
                                      allow_errors=allow) as mt:
                    victim = shard_samples(m, 0)[0]
                    t = self.assert_eio(mt.path(os.path.join('samples', victim['path'])))
                    print(f'\nstalled server ({mode}) -> EIO after {t.seconds:.2f}s',
                          file=sys.stderr)
                    self.assertGreater(srv.stalls, 0)
                    self.assertTrue(testlib.is_mounted(mt.path()))


if __name__ == '__main__':
    testlib.require_prereqs()
    unittest.main(verbosity=2)
