"""Test data: generate a sample tree, pack it, read the manifest back."""
import json
import os
import random
import subprocess

from .prereq import shelbyfs_bin

LONG_NAME = 'L' * 196 + '.bin'          # 200 characters, one path component
NON_ASCII = ['données/naïve café.txt', '日本語/ファイル.bin', 'emoji-🙂.dat']
BIG_FILE = 'big/random-5MiB.bin'
BIG_SIZE = 5 * 1024 * 1024 + 12345      # spans several 1 MiB blocks, not block aligned


def generate_tree(root, seed=1234, small_files=300, big_size=BIG_SIZE):
    """Write a varied tree under `root`; returns {relative path: bytes}.

    Nested dirs, a hidden file and a hidden dir, an empty file, a 200-char name,
    non-ASCII names, one big random file spanning several blocks, and
    `small_files` small random files spread over a few nested dirs.
    """
    rng = random.Random(seed)
    files = {
        '.hidden': b'hidden file\n',
        '.config/settings.ini': b'[x]\ny=1\n',
        'empty.txt': b'',
        'a/b/c/d/deep.txt': b'deep\n' * 10,
        LONG_NAME: rng.randbytes(3000),
        BIG_FILE: rng.randbytes(big_size),
    }
    for i, name in enumerate(NON_ASCII):
        files[name] = (name * (i + 1)).encode() + rng.randbytes(100 * i)
    for i in range(small_files):
        d = f'small/{i % 7}/{(i // 7) % 3}'
        files[f'{d}/file-{i:04d}.bin'] = rng.randbytes(rng.randint(1, 16 * 1024))
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, 'wb') as f:
            f.write(data)
    return files


def list_tree(root):
    """{relative path: ('f', size) | ('d', 0)} for everything below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel_dir, d))] = ('d', 0)
        for f in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            out[rel] = ('f', os.path.getsize(os.path.join(dirpath, f)))
    return out


def pack(src, out, *args, check=True, timeout=600):
    """Run `shelbyfs pack src out *args`; returns the CompletedProcess."""
    r = subprocess.run([shelbyfs_bin(), 'pack', src, out, *args], capture_output=True,
                       text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f'shelbyfs pack failed ({r.returncode}):\n{r.stdout}\n{r.stderr}')
    return r


def read_manifest(out):
    with open(os.path.join(out, 'manifest.json'), encoding='utf-8') as f:
        return json.load(f)


def write_manifest(path, manifest):
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
