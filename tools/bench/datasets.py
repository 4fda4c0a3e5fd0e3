"""The benchmark's data, built once per work dir and reused while its parameters match.

Layout under WORK/www (the tree nginx serves):
  fmnist/src/<class>/<index>.png   Fashion-MNIST train images (ImageFolder; rclone reads these)
  fmnist/packed/                   `shelbyfs pack` of fmnist/src (default options)
  big/src/f00.bin ... f63.bin      64 files of random bytes, BIG/64 each
  big/one/                         big/src packed into ONE shard of ~BIG bytes (seq/rand/cp rows)
  big/many/                        big/src packed one file per shard: 64 shards (64-reader row)
WORK/m1m/manifest.json: a synthetic manifest of N samples whose shards do not exist.
WORK/stamps/<name>.json records the parameters each part was built with.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import testlib

MIB = 1 << 20
FILES = 64


def _log(msg):
    print(f'[bench] {msg}', file=sys.stderr, flush=True)


class Builder:
    def __init__(self, work, shelbyfs_version):
        self.work = work
        self.www = os.path.join(work, 'www')
        self.version = shelbyfs_version
        os.makedirs(os.path.join(work, 'stamps'), exist_ok=True)
        os.makedirs(self.www, exist_ok=True)

    def _fresh(self, name, params, paths):
        """True if `name` was built with `params` and all `paths` exist."""
        try:
            with open(os.path.join(self.work, 'stamps', f'{name}.json')) as f:
                return json.load(f) == params and all(os.path.exists(p) for p in paths)
        except (OSError, ValueError):
            return False

    def _stamp(self, name, params):
        with open(os.path.join(self.work, 'stamps', f'{name}.json'), 'w') as f:
            json.dump(params, f)

    def _unstamp(self, name):
        try:
            os.remove(os.path.join(self.work, 'stamps', f'{name}.json'))
        except FileNotFoundError:
            pass

    def fmnist(self, count):
        """(source ImageFolder dir, packed dir with manifest.json) of `count` images."""
        root = os.path.join(self.www, 'fmnist')
        src, packed = os.path.join(root, 'src'), os.path.join(root, 'packed')
        params = {'count': count, 'shelbyfs': self.version}
        if self._fresh('fmnist', params, [src, os.path.join(packed, 'manifest.json')]):
            return src, packed
        self._unstamp('fmnist')
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.monotonic()
        testlib.fmnist_to_imagefolder(src, count, 'train')
        t1 = time.monotonic()
        testlib.pack(src, packed, '--no-progress')
        _log(f'fmnist: {count} PNGs in {t1 - t0:.1f}s, packed in {time.monotonic() - t1:.1f}s')
        self._stamp('fmnist', params)
        return src, packed

    def big(self, total):
        """(src dir of 64 random files, one-shard pack dir, 64-shard pack dir); `total` bytes in all."""
        root = os.path.join(self.www, 'big')
        src, one, many = (os.path.join(root, d) for d in ('src', 'one', 'many'))
        per = total // FILES
        params = {'total': total, 'files': FILES, 'shelbyfs': self.version}
        if self._fresh('big', params, [os.path.join(one, 'manifest.json'),
                                       os.path.join(many, 'manifest.json')]):
            return src, one, many
        self._unstamp('big')
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(src)
        t0 = time.monotonic()
        rng = _rng(12345)
        for i in range(FILES):
            with open(os.path.join(src, f'f{i:02d}.bin'), 'wb') as f:
                left = per
                while left:
                    n = min(left, 16 * MIB)
                    f.write(rng(n))
                    left -= n
        t1 = time.monotonic()
        # One shard holding everything (a sample bigger than --shard-size gets a
        # shard of its own, so the target only has to exceed the total) ...
        testlib.pack(src, one, '--no-progress', '--shard-size', str(2 * total + 64 * MIB))
        # ... and one shard per file (each file + its tar header exceeds `per`).
        testlib.pack(src, many, '--no-progress', '--shard-size', str(per))
        shards_one = len(testlib.read_manifest(one)['shards'])
        shards_many = len(testlib.read_manifest(many)['shards'])
        if shards_one != 1 or shards_many != FILES:
            raise RuntimeError(f'big: expected 1 and {FILES} shards, got {shards_one} and {shards_many}')
        _log(f'big: {FILES} x {per / MIB:g} MiB random in {t1 - t0:.1f}s, '
             f'packed twice in {time.monotonic() - t1:.1f}s')
        self._stamp('big', params)
        return src, one, many

    def m1m(self, samples):
        """Path of a synthetic manifest with `samples` samples (1000 per directory)."""
        root = os.path.join(self.work, 'm1m')
        path = os.path.join(root, 'manifest.json')
        params = {'samples': samples, 'format': 1}
        if self._fresh('m1m', params, [path]):
            return path
        self._unstamp('m1m')
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        t0 = time.monotonic()
        write_synthetic_manifest(path, samples)
        _log(f'm1m: {samples} samples, {os.path.getsize(path) / MIB:.0f} MiB manifest '
             f'in {time.monotonic() - t0:.1f}s')
        self._stamp('m1m', params)
        return path


def _rng(seed):
    """A fast `n -> n random bytes` function (numpy if present)."""
    try:
        import numpy as np
        gen = np.random.default_rng(seed)
        return gen.bytes
    except ImportError:
        import random
        r = random.Random(seed)
        return r.randbytes


def write_synthetic_manifest(path, samples, per_dir=1000, per_shard=10000, sample_size=1000,
                             block_size=MIB):
    """Write a valid manifest (man/shelbyfs-manifest.5) for `samples` samples.

    Samples are d<NNNN>/<NNNNNNN>.png, `per_dir` to a directory, laid out in
    shards of `per_shard` like pack would (512-byte header, data padded to 512).
    The shards themselves are never written: mount, stat and readdir need only
    the manifest. Hashes are well-formed placeholders.
    """
    stride = 512 + (sample_size + 511) // 512 * 512
    nshards = (samples + per_shard - 1) // per_shard
    fake = '0123456789abcdef' * 2
    out = ['{\n"format": "shelbyfs-manifest",\n"version": 1,\n', f'"block_size": {block_size},\n',
           '"shards": [\n']
    for s in range(nshards):
        n = min(per_shard, samples - s * per_shard)
        size = n * stride + 1024
        blocks = ','.join(['"' + fake + '"'] * ((size + block_size - 1) // block_size))
        out.append(f'{{"name": "shard-{s:06d}.tar", "location": "shard-{s:06d}.tar", "size": {size}, '
                   f'"xxh3_128": "{fake}", "blocks": [{blocks}]}}{"," if s + 1 < nshards else ""}\n')
    out.append('],\n"samples": [\n')
    for i in range(samples):
        s, k = divmod(i, per_shard)
        out.append(f'{{"path": "d{i // per_dir:04d}/{i:07d}.png", "shard": {s}, '
                   f'"offset": {k * stride + 512}, "size": {sample_size}, "xxh3_128": "{fake}"}}'
                   f'{"," if i + 1 < samples else ""}\n')
    out.append(']\n}\n')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.writelines(out)
    os.replace(tmp, path)


def shelbyfs_version(binary):
    try:
        r = subprocess.run([binary, '--version'], capture_output=True, text=True, timeout=10,
                           check=False)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return 'unknown'
