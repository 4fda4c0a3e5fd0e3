#!/usr/bin/python3
"""shelbyfs benchmark: ImageFolder, throughput, memory and metadata against targets.

usage: /usr/bin/python3 tools/bench.py [--out DIR] [--quick] [--only ROWS] [--shelbyfs PATH]
                                       [--keep] [--work DIR] [--profiles NAMES] [--no-rclone]
                                       [--repeat N] [--images N] [--shard-size SIZE] ...

Run as root from anywhere (needs /dev/fuse, fusermount3, nginx, rclone and the
nginx Lua module: `bash tools/deps.sh`). Writes DIR/results.json, results.md,
chart.svg and report.html (self-contained: inline SVG, no scripts), and prints
the Markdown. Default DIR is bench-out/. Exit status: 0 when every row was
measured (whatever the verdicts), 1 when a row errored, 130 on Ctrl-C (partial
results are still written).

Every server, mount and child process is started by PID, bound to 127.0.0.1,
bounded by a timeout and stopped on exit, on error and on Ctrl-C/SIGTERM
(testlib.cleanup is the last resort). Datasets are built in a work dir (a temp
dir removed at exit, unless --keep; --work DIR reuses and keeps one).

Profiles (every network row runs under each):
  loopback   nginx on 127.0.0.1 as is.
  remote     the same nginx imitating a remote store: every request waits
             --latency-ms (default 20; Lua `ngx.sleep` in the access phase, so
             it applies to GET, HEAD, PUT and PROPFIND alike) and every response
             is capped at --rate per request (default 64 MiB/s; nginx
             `limit_rate`, so parallel connections add up, as on S3). Uploads are
             delayed but not rate-capped (nginx has no request-body limit).
  Both take request bodies with client_body_buffer_size 1m (nginx's 16 KiB
  default takes a chunked 1 GiB PUT at about a quarter of the rate).

Rows (--only takes the group names, comma-separated). The imagefolder, seq,
rand and cp groups run --repeat rounds (3; quick 1) per profile, each round
measuring every mode of the group in turn (e.g. curl-1, curl-8, shelbyfs,
rclone), so a row and its ceiling or peer are neighbours in time; each row is
its median round and the JSON keeps every round's value.
  imagefolder  Fashion-MNIST (Debian dataset-fashion-mnist, first --images
               train images as PNGs, tools/testlib/fmnist.py), packed with
               default options. Each measurement is one epoch of stock torchvision
               ImageFolder(ToTensor) + DataLoader(batch 64, 2 workers, shuffled
               with a fixed seed), run by tools/bench/probe.py in a fresh process:
               init_s (ImageFolder construction), first_batch_s (construction
               start to the first batch, init included), samples_per_s (n / epoch
               time, init excluded), total_s (init + epoch).
                 shelbyfs-cold  first epoch on a fresh mount of the manifest URL.
                 shelbyfs-warm  second epoch on the same mount (block cache and
                                kernel page cache populated).
                 local          the source directory, right after (page cache warm).
               These three run --repeat rounds (fresh mount each) per profile,
               interleaved so that the ratios compare neighbours in time; each row
               is the median round (all rounds' samples/s are in the JSON).
                 rclone-cold/-warm  the same two epochs, once, on `rclone mount
                                :http:` of the source directory (nginx autoindex).
               Mount rows also carry mount_s, the daemon's peak RSS (VmHWM read
               from /proc/<pid>/status just before unmount; daemons run with -f so
               we hold their PID) and the cache hit ratio (hits / (hits + misses)
               from the "cache hits N, misses M" line the daemon logs to
               -o log_file at unmount; one mount serves cold and warm epochs).
  seq          A shard of --shard-size random bytes (1 GiB; 64 files packed into
               one shard). MiB/s of one reader reading it start to end with 1 MiB
               read() calls:
                 shelbyfs-cold  <mnt>/shards/shard-000000.tar on a fresh mount.
                 rclone-cold    the shard file on a fresh rclone mount.
               Ceilings, same run: curl-1 (one GET of the whole shard), curl-8
               (8 curl processes at once, each a 1/8 Range), page-cache (the
               local shard file read again after a first read; loopback only).
  rand         Cold random reads: 8 threads of 4 KiB pread()s (POSIX_FADV_RANDOM)
               on the shard on a fresh mount (shelbyfs, rclone), each read at a
               random aligned offset in a different 1 MiB block (blocks in random
               order), so every read is a cache miss; until the blocks run out or
               --rand-seconds pass: IOPS, p50 and p99 latency.
  cp           `cp` of the 1 GiB shard file (page-cached) into <mnt>/checkpoints/
               of a mount with -o checkpoints=<nginx>/ckpt/. MiB/s counts until
               cp has exited AND the bytes are on the server (a file of at least
               that size under www/ckpt/, polled). A mount that rejects the option
               or a failing cp gives an "unsupported"/error row, not a crash.
               Peers: curl-put (WebDAV PUT of the same file) and rclone (`rclone
               mount :webdav:` with --vfs-cache-mode writes; its upload happens
               after close, so the server-side poll is what counts).
  rss64        64 files open at once with one reader thread each (the 1 GiB of
               data packed one file per shard: 64 shards of 16 MiB, read through
               <mnt>/shards/), on a mount with -o memory_limit=--memory-limit:
               peak RSS and aggregate MiB/s. If the option is refused the row is
               "unsupported" and is measured with cache_size=--memory-limit
               instead. rclone peer: the same 64 readers on an rclone mount.
  m1m          A synthetic manifest of --m1m-samples samples (1,000,000; 1000 per
               directory; shards never written) mounted from a local path:
               mount_s (spawn to mountpoint in /proc/mounts), peak RSS after
               `find <mnt> | wc -l`, and find_s.

Targets (PASS/MISS; see tools/bench/report.py): warm >= 0.95x local; cold >=
0.7x warm; cold first batch < 0.3 s; seq read >= 0.9x curl-8; cp >= 0.8x curl
PUT; 64-reader RSS <= memory_limit + 64 MiB; 1M-sample mount < 3 s and < 400
MiB, find < 2 s; shelbyfs faster than rclone on every workload. Absolute numbers
vary on shared machines; the ratios are measured within one run.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack, contextmanager

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)

import testlib  # noqa: E402  (installs SIGTERM -> KeyboardInterrupt and the atexit cleanup)
from bench import datasets, report  # noqa: E402
from bench.servers import (BenchNginx, ProcGroup, Profile, RcloneMount, Timeout,  # noqa: E402
                           run_bounded, vm_hwm_mib)

MIB = 1 << 20
GIB = 1 << 30
PY = '/usr/bin/python3' if os.access('/usr/bin/python3', os.X_OK) else sys.executable
PROBE = os.path.join(TOOLS, 'bench', 'probe.py')
GROUPS = ('imagefolder', 'seq', 'rand', 'cp', 'rss64', 'm1m')
RCLONE_READ_FLAGS = ['--read-only', '--vfs-cache-mode', 'full', '--dir-cache-time', '1h',
                     '--attr-timeout', '1h', '--no-modtime']


def log(msg):
    print(f'[bench {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def parse_size(s):
    m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*', s, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f'bad size {s!r} (e.g. 64MiB, 1G)')
    return int(float(m.group(1)) * 1024 ** ' kmgt'.index(m.group(2).lower() or ' '))


class RowFailed(Exception):
    """A row could not be measured; the message goes into the row."""


class Bench:
    def __init__(self, args, work, out):
        self.args = args
        self.work = work
        self.out = out
        self.rows = []
        self.www = os.path.join(work, 'www')
        self.logs = os.path.join(work, 'logs')
        os.makedirs(self.logs, exist_ok=True)
        self.nginx = None      # the running BenchNginx of the current profile
        self.profile = None
        self._help = None      # `shelbyfs --help`, read once

    # -- bookkeeping ------------------------------------------------------------------
    def record(self, group, mode, fn, profile='current', **fields):
        """Run fn() -> dict of metrics and append a row; failures become error rows."""
        t0 = time.monotonic()
        row = {**fields, **self.attempt(fn)}
        row['wall_s'] = round(time.monotonic() - t0, 3)
        return self.add_row(group, mode, row, profile)

    @staticmethod
    def attempt(fn):
        """fn() -> dict, with status 'ok' unless it says otherwise; exceptions become
        {'status': 'error'|'timeout', 'error': ...} (Ctrl-C still propagates)."""
        try:
            out = dict(fn() or {})
            out.setdefault('status', 'ok')
            return out
        except Timeout as e:
            return {'status': 'timeout', 'error': str(e)}
        except (RowFailed, testlib.MountError, RuntimeError, OSError, ValueError,
                subprocess.SubprocessError) as e:
            return {'status': 'error', 'error': _one_line(str(e))}
        except Exception as e:  # noqa: BLE001  (a bug in a row must not lose the other rows)
            traceback.print_exc()
            return {'status': 'error', 'error': f'{type(e).__name__}: {_one_line(str(e))}'}

    def add_row(self, group, mode, row, profile='current'):
        prof = self.profile.name if profile == 'current' else profile
        row = {'group': group, 'mode': mode, 'profile': prof, **row}
        self.rows.append(row)
        log(f'{prof or "-"} {group} {mode}: {_summary(row)}')
        return row

    def rounds(self, group, specs, key):
        """Run --repeat rounds of every (mode, fn, fields) in `specs`, in order, so that a
        row and its ceiling or peer are measured next to each other; then append one row
        per mode: its median round by `key` (higher is better; the lower middle one for an
        even count), with every round's value."""
        results = {mode: [] for mode, _, _ in specs}
        n = self.args.repeat
        for i in range(n):
            for mode, fn, _ in specs:
                t0 = time.monotonic()
                r = self.attempt(fn)
                r['wall_s'] = round(time.monotonic() - t0, 3)
                results[mode].append(r)
                if n > 1:
                    log(f'{self.profile.name} {group} {mode} round {i + 1}/{n}: {_summary(r)}')
        for mode, _, fields in specs:
            runs = results[mode]
            good = [r for r in runs if r['status'] in ('ok', 'unsupported')
                    and isinstance(r.get(key), (int, float))]
            if not good:
                self.add_row(group, mode, {**fields, **runs[-1]})
                continue
            good.sort(key=lambda r: r[key])
            row = {**fields, **good[(len(good) - 1) // 2]}
            if n > 1:
                row.update(rounds=n, **{f'{key}_runs': [r.get(key) for r in runs]})
            bad = [r for r in runs if r not in good]
            if bad:
                row['note'] = f'{len(bad)} of {n} rounds failed: {bad[-1].get("error", "")}'
            self.add_row(group, mode, row)

    def supports(self, option):
        """Whether `shelbyfs --help` lists `-o option`."""
        if self._help is None:
            r = subprocess.run([self.args.shelbyfs, '--help'], capture_output=True, text=True,
                               timeout=10, check=False)
            self._help = r.stdout + r.stderr
        return f'-o {option}=' in self._help or f'-o {option} ' in self._help

    def logpath(self, name):
        return os.path.join(self.logs, f'{name}.log')

    def url(self, rel):
        return self.nginx.url(rel)

    def probe(self, *argv, timeout):
        rc, out, err, _ = run_bounded([PY, PROBE, *argv], timeout)
        try:
            data = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RowFailed(f'probe {argv[0]} failed (exit {rc}): {_one_line(err)[-600:]}') from None
        if rc != 0:
            raise RowFailed(f'probe {argv[0]} exit {rc}: {data.get("errors") or _one_line(err)[-600:]}')
        return data

    # -- mounts -----------------------------------------------------------------------
    @contextmanager
    def shelbyfs(self, manifest, name, options=(), mount_timeout=60.0):
        """A foreground shelbyfs mount; yields a dict that gets mount_s, then
        rss_peak_mib and cache counters at exit (sampled before unmount)."""
        log_file = self.logpath(name)
        if os.path.exists(log_file):
            os.remove(log_file)
        options = [f'log_file={log_file}', *options]
        # Experiments: extra -o options for every shelbyfs mount of this run.
        extra = os.environ.get('SHELBYFS_BENCH_OPTIONS', '')
        if extra:
            options.append(extra)
        if self.supports('spool_dir'):   # keep checkpoint spool files inside the work dir
            options.append(f'spool_dir={os.path.join(self.work, "spool")}')
        m = testlib.Mount(manifest, options=options,
                          mount_timeout=mount_timeout, exit_timeout=60.0)
        info = {'mount': m}
        t0 = time.monotonic()
        m.start()
        info['mount_s'] = time.monotonic() - t0
        try:
            yield info
        finally:
            info['rss_peak_mib'] = vm_hwm_mib(m.proc.pid) if m.proc else None
            try:
                m.stop(check=True)
            except testlib.MountError as e:
                info['daemon_problems'] = _one_line(str(e))[:500]
            finally:
                text = m.log()   # the daemon's stderr; close() removes it
                m.close(check=False)
            try:
                with open(log_file, errors='replace') as f:
                    text += f.read()
            except OSError:
                pass
            hm = re.findall(r'cache hits (\d+), misses (\d+)', text)
            if hm:
                hits, misses = map(int, hm[-1])
                info.update(cache_hits=hits, cache_misses=misses,
                            cache_hit_ratio=hits / (hits + misses) if hits + misses else None)

    @contextmanager
    def rclone(self, remote, flags, name):
        rc = RcloneMount(remote, flags, self.work, name)
        t0 = time.monotonic()
        rc.start()
        info = {'mount': rc, 'mount_s': time.monotonic() - t0}
        try:
            yield info
        finally:
            info['rss_peak_mib'] = vm_hwm_mib(rc.proc.pid) if rc.proc else None
            rc.stop()

    @staticmethod
    def mount_fields(info):
        return {k: info.get(k) for k in ('mount_s', 'rss_peak_mib', 'cache_hits', 'cache_misses',
                                         'cache_hit_ratio') if info.get(k) is not None} | (
            {'note': 'daemon: ' + info['daemon_problems']} if info.get('daemon_problems') else {})

    # -- workloads --------------------------------------------------------------------
    def imagefolder_shelbyfs(self, src):
        """--repeat rounds of: fresh mount, cold epoch, warm epoch, then an epoch over the
        local source dir. Rows report the median round of each mode (by samples/s), so
        warm/local and cold/warm compare neighbours in time on a shared machine."""
        p = self.profile.name
        runs = {'shelbyfs-cold': [], 'shelbyfs-warm': [], 'local': []}
        mounts = []

        def rounds():
            _warm_page_cache(src)   # local means local: the source tree comes from the page cache
            for i in range(self.args.repeat):
                with self.shelbyfs(self.url('fmnist/packed/manifest.json'), f'{p}-fmnist-{i}') as info:
                    root = info['mount'].path('samples')
                    runs['shelbyfs-cold'].append(self.probe('imagefolder', root, timeout=self.t_epoch))
                    runs['shelbyfs-warm'].append(self.probe('imagefolder', root, timeout=self.t_epoch))
                mounts.append(info)
                runs['local'].append(self.probe('imagefolder', src, timeout=self.t_epoch))
                log(f'{p} imagefolder round {i + 1}/{self.args.repeat}: ' + ', '.join(
                    f'{m} {r[-1]["samples_per_s"]:,.0f}/s' for m, r in runs.items()))

        outcome = self.attempt(rounds)
        for mode in ('local', 'shelbyfs-cold', 'shelbyfs-warm'):
            row = _median_run(runs[mode]) if runs[mode] else dict(outcome)
            if runs[mode] and outcome['status'] != 'ok':
                row['note'] = f'{len(runs[mode])} of {self.args.repeat} rounds; then: {outcome.get("error")}'
            if mode != 'local' and mounts:   # peak RSS and cache counters of the median round's mount
                fields = self.mount_fields(mounts[min(row.get('round', 0), len(mounts) - 1)])
                if mode == 'shelbyfs-warm':
                    fields.pop('mount_s', None)
                row.update(fields)
            self.add_row('imagefolder', mode, row)

    def imagefolder_rclone(self):
        """One round: cold epoch on a fresh rclone mount, then a warm epoch on it."""
        state = {}
        with ExitStack() as stack:
            def cold():
                state['info'] = stack.enter_context(self.rclone(
                    ':http:', ['--http-url', self.url('fmnist/src/'), *RCLONE_READ_FLAGS],
                    f'{self.profile.name}-fmnist'))
                return self.probe('imagefolder', state['info']['mount'].path(), timeout=self.t_epoch)

            def warm():
                if 'info' not in state:
                    raise RowFailed('no mount (the cold pass failed)')
                return self.probe('imagefolder', state['info']['mount'].path(), timeout=self.t_epoch)

            c = self.record('imagefolder', 'rclone-cold', cold)
            w = self.record('imagefolder', 'rclone-warm', warm)
        if 'info' in state:   # sampled at unmount: covers both epochs
            c.update(mount_s=state['info']['mount_s'], rss_peak_mib=state['info']['rss_peak_mib'])
            w.update(rss_peak_mib=state['info']['rss_peak_mib'])

    def page_cache(self, path, size):
        def run():
            self.probe('seq', path, timeout=self.t_io)           # first read: fills the page cache
            r = self.probe('seq', path, timeout=self.t_io)
            _expect_bytes(r, size)
            return r
        self.record('seq', 'page-cache', run, profile=None, workload='seq read (local file, cached)')

    def seq_rows(self, rel, size, rclone):
        """Ceilings (curl-1, curl-8) and cold sequential reads of the big shard."""
        url = self.url(rel)
        p = self.profile.name

        def curl_1():
            rc, out, err, secs = run_bounded(_curl_get(url), self.t_io)
            if rc != 0:
                raise RowFailed(f'curl exit {rc}: {_one_line(err)}')
            got = int(out.split()[0])
            return {'bytes': got, 'seconds': secs, 'mb_per_s': got / MIB / secs}

        def curl_8():
            n = 8
            step = -(-size // n)
            cmds = [_curl_get(url, (i * step, min(size, (i + 1) * step) - 1)) for i in range(n)]
            results, secs = ProcGroup(cmds, self.t_io).run()
            got = 0
            for rc, out, err in results:
                if rc != 0:
                    raise RowFailed(f'curl exit {rc}: {_one_line(err)}')
                got += int(out.split()[0])
            if got != size:
                raise RowFailed(f'8 ranges returned {got} bytes, expected {size}')
            return {'bytes': got, 'seconds': secs, 'mb_per_s': got / MIB / secs}

        def shelby():
            with self.shelbyfs(self.url('big/one/manifest.json'), f'{p}-seq') as info:
                r = self.probe('seq', info['mount'].path('shards/shard-000000.tar'), timeout=self.t_io)
            _expect_bytes(r, size)
            return r | self.mount_fields(info)

        def peer():
            with self.rclone(':http:', ['--http-url', self.url('big/one/'), *RCLONE_READ_FLAGS],
                             f'{p}-seq') as info:
                r = self.probe('seq', info['mount'].path('shard-000000.tar'), timeout=self.t_io)
            _expect_bytes(r, size)
            return r | {'mount_s': info['mount_s'], 'rss_peak_mib': info['rss_peak_mib']}

        specs = [('curl-1', curl_1, {'workload': 'GET whole shard (ceiling)'}),
                 ('curl-8', curl_8, {'workload': '8 parallel range GETs (ceiling)'}),
                 ('shelbyfs-cold', shelby, {'workload': 'seq read 1 shard'})]
        if rclone:
            specs.append(('rclone-cold', peer, {'workload': 'seq read 1 shard'}))
        self.rounds('seq', specs, 'mb_per_s')

    def rand_rows(self, rclone):
        a = self.args
        block = testlib.read_manifest(os.path.join(self.www, 'big', 'one'))['block_size']
        argv = ['--threads', '8', '--seconds', str(a.rand_seconds), '--size', '4096',
                '--distinct', str(block)]
        timeout = a.rand_seconds + 120

        def shelby():
            with self.shelbyfs(self.url('big/one/manifest.json'), f'{self.profile.name}-rand') as info:
                r = self.probe('rand', info['mount'].path('shards/shard-000000.tar'), *argv,
                               timeout=timeout)
            return r | self.mount_fields(info)

        def peer():
            with self.rclone(':http:', ['--http-url', self.url('big/one/'), *RCLONE_READ_FLAGS],
                             f'{self.profile.name}-rand') as info:
                r = self.probe('rand', info['mount'].path('shard-000000.tar'), *argv, timeout=timeout)
            return r | {'mount_s': info['mount_s'], 'rss_peak_mib': info['rss_peak_mib']}

        fields = {'workload': 'cold random 4 KiB reads, 8 threads'}
        specs = [('shelbyfs', shelby, fields)] + ([('rclone', peer, fields)] if rclone else [])
        self.rounds('rand', specs, 'iops')

    def cp_rows(self, src, rclone):
        size = os.path.getsize(src)
        p = self.profile.name

        def curl_put():
            d = _fresh_dir(self.www, 'ckpt-curl')
            rc, out, err, secs = run_bounded(['curl', '-sS', '--fail', '-T', src, '-o', '/dev/null',
                                              '-w', '%{size_upload}', self.url(f'ckpt-curl/{p}.bin')],
                                             self.t_io)
            if rc != 0:
                raise RowFailed(f'curl PUT exit {rc}: {_one_line(err)}')
            on_server = _dir_bytes(d)
            shutil.rmtree(d, ignore_errors=True)
            if on_server < size:
                raise RowFailed(f'server has {on_server} of {size} bytes after PUT')
            return {'bytes': size, 'seconds': secs, 'mb_per_s': size / MIB / secs}

        def shelby():
            d = _fresh_dir(self.www, 'ckpt')
            try:
                with ExitStack() as stack:
                    try:
                        info = stack.enter_context(self.shelbyfs(
                            self.url('fmnist/packed/manifest.json'), f'{p}-cp',
                            options=[f'checkpoints={self.url("ckpt/")}']))
                    except testlib.MountError as e:
                        return {'status': 'unsupported',
                                'error': 'mount with -o checkpoints= failed: ' + _mount_reason(e)}
                    r = _timed_copy(src, info['mount'].path('checkpoints/ckpt-1g.bin'), d, size,
                                    self.t_io)
                return r | self.mount_fields(info)
            finally:
                shutil.rmtree(d, ignore_errors=True)

        def peer():
            d = _fresh_dir(self.www, 'ckpt-rclone')
            try:
                with self.rclone(':webdav:', ['--webdav-url', self.url('ckpt-rclone/'),
                                              '--vfs-cache-mode', 'writes', '--vfs-write-back', '0s'],
                                 f'{p}-cp') as info:
                    r = _timed_copy(src, info['mount'].path('ckpt-1g.bin'), d, size, self.t_io)
                return r | {'mount_s': info['mount_s'], 'rss_peak_mib': info['rss_peak_mib']}
            finally:
                shutil.rmtree(d, ignore_errors=True)

        specs = [('curl-put', curl_put, {'workload': 'WebDAV PUT 1 file (ceiling)'}),
                 ('shelbyfs', shelby, {'workload': 'cp into checkpoints/'})]
        if rclone:
            specs.append(('rclone', peer, {'workload': 'cp into rclone webdav mount'}))
        self.rounds('cp', specs, 'mb_per_s')

    def rss64_rows(self, many_dir, rclone):
        a = self.args
        limit = a.memory_limit
        shards = [s['name'] for s in testlib.read_manifest(many_dir)['shards']]
        total = sum(s['size'] for s in testlib.read_manifest(many_dir)['shards'])
        p = self.profile.name

        def shelby():
            opt = f'memory_limit={limit // MIB}MiB'
            unsupported = ''
            manifest = self.url('big/many/manifest.json')
            with ExitStack() as stack:
                try:
                    info = stack.enter_context(self.shelbyfs(manifest, f'{p}-rss64', options=[opt]))
                except testlib.MountError as e:
                    unsupported = f'-o {opt} refused ({_mount_reason(e)}); measured with cache_size instead'
                    opt = f'cache_size={limit // MIB}MiB'
                    info = stack.enter_context(self.shelbyfs(manifest, f'{p}-rss64', options=[opt]))
                r = self.probe('readers', *[info['mount'].path(f'shards/{s}') for s in shards],
                               timeout=self.t_io)
            _expect_bytes(r, total)
            out = r | self.mount_fields(info) | {'option': opt, 'memory_limit_mib': limit / MIB}
            if unsupported:   # measured all the same; only the RSS target cannot be judged
                out['unsupported'] = unsupported
            return out

        def peer():
            with self.rclone(':http:', ['--http-url', self.url('big/many/'), *RCLONE_READ_FLAGS],
                             f'{p}-rss64') as info:
                r = self.probe('readers', *[info['mount'].path(s) for s in shards], timeout=self.t_io)
            _expect_bytes(r, total)
            return r | {'mount_s': info['mount_s'], 'rss_peak_mib': info['rss_peak_mib'],
                        'option': 'rclone defaults + vfs-cache-mode full'}

        self.record('rss64', 'shelbyfs', shelby, workload='64 files open, 1 reader each')
        if rclone:
            self.record('rss64', 'rclone', peer, workload='64 files open, 1 reader each')

    def m1m_row(self, manifest, samples):
        def run():
            with self.shelbyfs(manifest, 'm1m', mount_timeout=180.0) as info:
                rc, out, err, secs = run_bounded(
                    ['bash', '-c', 'set -o pipefail; find "$1" | wc -l', 'find', info['mount'].path()],
                    timeout=600)
                if rc != 0:
                    raise RowFailed(f'find | wc -l exit {rc}: {_one_line(err)}')
            count = int(out.strip())
            # the mountpoint, samples/, shards/, checkpoints/, sample dirs, samples, shards
            expect = 4 + samples + -(-samples // 1000) + -(-samples // 10000)
            r = {'samples': samples, 'find_s': secs, 'find_count': count} | self.mount_fields(info)
            if count < expect:
                r['note'] = f'find listed {count} entries, expected at least {expect}'
            return r
        self.record('m1m', 'shelbyfs', run, profile=None, workload=f'{samples:,}-sample manifest')

    # -- the whole run ----------------------------------------------------------------
    def run(self, groups, profiles, rclone):
        a = self.args
        builder = datasets.Builder(self.work, datasets.shelbyfs_version(a.shelbyfs))
        need_big = bool({'seq', 'rand', 'cp', 'rss64'} & groups)
        fm_src = fm_packed = None
        if 'imagefolder' in groups:
            fm_src, fm_packed = builder.fmnist(a.images)
        if need_big:
            _, one, many = builder.big(a.shard_size)
            shard = os.path.join(one, 'shard-000000.tar')
            shard_size = os.path.getsize(shard)
            if 'cp' in groups and not fm_packed:
                fm_src, fm_packed = builder.fmnist(a.images)   # cp mounts the small manifest
        # Profile-independent rows first.
        if 'seq' in groups:
            self.page_cache(shard, shard_size)
        if 'm1m' in groups:
            self.m1m_row(builder.m1m(a.m1m_samples), a.m1m_samples)
        for prof in profiles:
            self.profile = prof
            log(f'profile {prof.name}: {prof.describe()}')
            with BenchNginx(self.www, prof) as ng:
                self.nginx = ng
                if 'imagefolder' in groups:
                    self.imagefolder_shelbyfs(fm_src)
                    if rclone:
                        self.imagefolder_rclone()
                if 'seq' in groups:
                    self.seq_rows('big/one/shard-000000.tar', shard_size, rclone)
                if 'rand' in groups:
                    self.rand_rows(rclone)
                if 'cp' in groups:
                    self.cp_rows(shard, rclone)
                if 'rss64' in groups:
                    self.rss64_rows(many, rclone)
                err = ng.error_log()
                if '[emerg]' in err or '[alert]' in err:
                    log(f'nginx error log ({prof.name}):\n{err[-2000:]}')
            self.nginx = None

    @property
    def t_epoch(self):
        return 1800 if not self.args.quick else 600

    @property
    def t_io(self):
        return 1200 if not self.args.quick else 300


# --- small helpers -------------------------------------------------------------------

def _one_line(s):
    return ' '.join(str(s).split())


def _summary(row):
    if row.get('status') not in ('ok', 'unsupported'):
        return f'{row.get("status", "?").upper()}: {row.get("error", "")[:300]}'
    keys = ('samples_per_s', 'first_batch_s', 'mb_per_s', 'iops', 'mount_s', 'find_s',
            'rss_peak_mib', 'cache_hit_ratio')
    s = ', '.join(f'{k}={row[k]:.3g}' for k in keys if isinstance(row.get(k), (int, float)))
    if row.get('status') == 'unsupported':
        s += f' [unsupported: {row.get("error", "")}]'
    elif row.get('unsupported'):
        s += f' [unsupported: {row["unsupported"]}]'
    return s or 'ok'


def _warm_page_cache(root):
    for dirpath, _, files in os.walk(root):
        for fn in files:
            with open(os.path.join(dirpath, fn), 'rb') as f:
                f.read()


def _median_run(runs):
    """The run with the median samples/s (the lower middle one for an even count), with
    its round index and every round's samples/s."""
    order = sorted(range(len(runs)), key=lambda i: runs[i].get('samples_per_s') or 0)
    i = order[(len(order) - 1) // 2]
    return {**runs[i], 'status': 'ok', 'round': i, 'rounds': len(runs),
            'samples_per_s_runs': [r.get('samples_per_s') for r in runs]}


def _expect_bytes(r, size):
    if r.get('bytes') != size:
        raise RowFailed(f'read {r.get("bytes")} bytes, expected {size}')


def _curl_get(url, rng=None):
    cmd = ['curl', '-sS', '--fail', '-o', '/dev/null', '-w', '%{size_download}']
    if rng:
        cmd += ['-r', f'{rng[0]}-{rng[1]}']
    return cmd + [url]


def _fresh_dir(www, name):
    d = os.path.join(www, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def _dir_bytes(d):
    total = 0
    for dirpath, _, files in os.walk(d):
        for fn in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, fn))
            except OSError:
                pass
    return total


def _largest_file(d):
    best = 0
    for dirpath, _, files in os.walk(d):
        for fn in files:
            try:
                best = max(best, os.path.getsize(os.path.join(dirpath, fn)))
            except OSError:
                pass
    return best


def _timed_copy(src, dst, server_dir, size, timeout):
    """cp src dst; seconds until cp exited and a file of >= size bytes is in server_dir."""
    t0 = time.monotonic()
    rc, _, err, _ = run_bounded(['cp', src, dst], timeout)
    cp_s = time.monotonic() - t0
    if rc != 0:
        raise RowFailed(f'cp exit {rc}: {_one_line(err)}')
    deadline = t0 + timeout
    while _largest_file(server_dir) < size:
        if time.monotonic() > deadline:
            raise RowFailed(f'cp exited after {cp_s:.1f}s but the server has no complete object '
                            f'after {timeout}s ({_dir_bytes(server_dir)} bytes under it)')
        time.sleep(0.02)
    secs = time.monotonic() - t0
    return {'bytes': size, 'seconds': secs, 'cp_exit_s': cp_s, 'mb_per_s': size / MIB / secs,
            'server_bytes': _dir_bytes(server_dir)}


def _mount_reason(e):
    """The informative line of a MountError (libfuse's complaint or shelbyfs's message)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if 'unknown option' in ln or ln.startswith('shelbyfs:'):
            return ln
    return _one_line(str(e))[:300]


def _sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _git(*argv):
    try:
        r = subprocess.run(['git', '-C', REPO, *argv], capture_output=True, text=True, timeout=10,
                           check=False)
        return r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ''


def _version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return 'unknown'


def _cpu():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_outputs(out, run):
    profiles = [p['name'] for p in run['meta']['profiles']]
    check_list = report.checks(run['rows'], profiles, run['meta']['memory_limit_mib'])
    info = report.info_ratios(run['rows'], profiles)
    run['checks'] = [c.as_dict() for c in check_list]
    run['context_ratios'] = info
    os.makedirs(out, exist_ok=True)
    md = report.markdown(run, check_list, info)
    svg = report.svg_chart(check_list)
    files = {'results.json': json.dumps(run, indent=2, default=str) + '\n', 'results.md': md,
             'chart.svg': svg + '\n', 'report.html': report.html_page(run, check_list, info, svg)}
    for name, text in files.items():
        tmp = os.path.join(out, name + '.tmp')
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='\n'.join(__doc__.splitlines()[2:]))
    ap.add_argument('--out', default='bench-out', help='output directory (default bench-out/)')
    ap.add_argument('--quick', action='store_true',
                    help='small sizes for a smoke test (64 MiB shard, 2k images, 100k-sample manifest)')
    ap.add_argument('--only', default=','.join(GROUPS),
                    help=f'comma-separated row groups (default all: {",".join(GROUPS)})')
    ap.add_argument('--profiles', default='loopback,remote', help='loopback,remote (default both)')
    ap.add_argument('--shelbyfs', default=os.path.join(REPO, 'build', 'src', 'shelbyfs'),
                    help='shelbyfs binary (default build/src/shelbyfs)')
    ap.add_argument('--keep', action='store_true', help='keep the work dir (datasets, logs)')
    ap.add_argument('--work', default=None, help='work dir to build datasets in and reuse (kept)')
    ap.add_argument('--no-rclone', action='store_true', help='skip the rclone peer rows')
    ap.add_argument('--images', type=int, default=None, help='ImageFolder images (10000; quick 2000)')
    ap.add_argument('--shard-size', type=parse_size, default=None,
                    help='bytes of random data in the big shard (1GiB; quick 64MiB)')
    ap.add_argument('--m1m-samples', type=int, default=None,
                    help='samples in the synthetic manifest (1000000; quick 100000)')
    ap.add_argument('--rand-seconds', type=float, default=None, help='random-read run time (10; quick 3)')
    ap.add_argument('--memory-limit', type=parse_size, default=None,
                    help='memory_limit for the 64-reader row (256MiB; quick 32MiB)')
    ap.add_argument('--repeat', type=int, default=None,
                    help='rounds of the imagefolder, seq, rand and cp rows per profile, '
                         'median reported (3; quick 1)')
    ap.add_argument('--latency-ms', type=float, default=20.0, help='remote profile: delay per request')
    ap.add_argument('--rate', type=parse_size, default=64 * MIB,
                    help='remote profile: bytes/s per response (default 64MiB)')
    a = ap.parse_args()
    q = a.quick
    a.images = a.images or (2000 if q else 10000)
    a.shard_size = a.shard_size or (64 * MIB if q else GIB)
    a.m1m_samples = a.m1m_samples or (100_000 if q else 1_000_000)
    a.rand_seconds = a.rand_seconds or (3.0 if q else 10.0)
    a.repeat = a.repeat or (1 if q else 3)
    a.memory_limit = a.memory_limit or (32 * MIB if q else 256 * MIB)
    if a.shard_size < 64 * MIB or a.shard_size % (64 * 4096):
        ap.error('--shard-size must be at least 64MiB and a multiple of 256KiB')
    groups = {g.strip() for g in a.only.split(',') if g.strip()}
    if not groups or groups - set(GROUPS):
        ap.error(f'--only: unknown group(s) {sorted(groups - set(GROUPS))}; choose from {",".join(GROUPS)}')
    all_profiles = {'loopback': Profile('loopback'),
                    'remote': Profile('remote', latency_ms=a.latency_ms, rate=a.rate)}
    names = [p.strip() for p in a.profiles.split(',') if p.strip()]
    if not names or set(names) - set(all_profiles):
        ap.error('--profiles: choose from loopback,remote')
    profiles = [all_profiles[n] for n in names]

    a.shelbyfs = os.path.abspath(a.shelbyfs)
    os.environ['SHELBYFS_BIN'] = a.shelbyfs
    from testlib.prereq import missing_prereqs
    missing = missing_prereqs()
    if os.geteuid() != 0:
        missing.append('root (FUSE mounts and nginx)')
    if not a.no_rclone and not shutil.which('rclone'):
        missing.append('rclone')
    if missing:
        print('bench: missing prerequisites: ' + ', '.join(missing) + ' (run: bash tools/deps.sh; '
              'meson compile -C build)', file=sys.stderr)
        return 1

    if a.work:
        work = os.path.abspath(a.work)
        os.makedirs(work, exist_ok=True)
    elif a.keep:
        work = tempfile.mkdtemp(prefix='shelbyfs-bench-')
    else:
        work = testlib.make_tmpdir('shelbyfs-bench-')   # removed at exit, even on Ctrl-C
    out = os.path.abspath(a.out)
    log(f'work dir {work}; output {out}')
    # Run a private copy: a concurrent `meson compile` may relink the build's binary mid-run.
    os.makedirs(os.path.join(work, 'bin'), exist_ok=True)
    built, a.shelbyfs = a.shelbyfs, os.path.join(work, 'bin', 'shelbyfs')
    shutil.copy2(built, a.shelbyfs)
    os.environ['SHELBYFS_BIN'] = a.shelbyfs

    run = {'meta': {
        'mode': 'quick' if q else 'full', 'started': datetime.datetime.now().isoformat(timespec='seconds'),
        'commit': ((_git('rev-parse', '--short', 'HEAD') or '?')
                   + (' (dirty tree)' if _git('status', '--porcelain') else '')),
        'host': f'{platform.node()}, {os.cpu_count()} CPUs ({_cpu()}), {platform.release()}',
        'shelbyfs': built, 'shelbyfs_version': datasets.shelbyfs_version(a.shelbyfs),
        'shelbyfs_sha256': _sha256(a.shelbyfs)[:16],
        'nginx': _version(['/usr/sbin/nginx', '-v']), 'rclone': _version(['rclone', 'version']),
        'command': ' '.join([sys.executable] + sys.argv), 'images': a.images,
        'repeat': a.repeat, 'shard_bytes': a.shard_size, 'm1m_samples': a.m1m_samples,
        'rand_seconds': a.rand_seconds, 'memory_limit_mib': a.memory_limit / MIB,
        'groups': sorted(groups),
        'profiles': [p.as_dict() for p in profiles], 'work': work}, 'rows': []}
    bench = Bench(a, work, out)
    run['rows'] = bench.rows
    t0 = time.monotonic()
    rc = 0
    try:
        bench.run(groups, profiles, rclone=not a.no_rclone)
    except KeyboardInterrupt:
        log('interrupted: cleaning up and writing partial results')
        run['meta']['interrupted'] = True
        rc = 130
    except Exception as e:  # noqa: BLE001  (set-up failure: still write what we have)
        log(f'FAILED: {type(e).__name__}: {e}')
        run['meta']['failure'] = f'{type(e).__name__}: {e}'
        rc = 1
    run['meta']['duration_s'] = round(time.monotonic() - t0, 1)
    md = write_outputs(out, run)
    print(md)
    log(f'wrote {out}/results.json, results.md, chart.svg, report.html in {run["meta"]["duration_s"]}s'
        + (f'; work dir kept at {work}' if (a.keep or a.work) else ''))
    if rc == 0 and any(r.get('status') not in ('ok', 'unsupported') for r in bench.rows):
        rc = 1
    return rc


if __name__ == '__main__':
    sys.exit(main())
