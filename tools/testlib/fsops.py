"""File-system helpers for tests: whole-file reads and reads that cannot hang the test."""
import hashlib
import subprocess
import sys
import time

# Runs in a child so that a read stuck in the kernel cannot hang the test;
# prints "OK <len> <sha256>" or "ERRNO <n> <message>".
_READER = r'''
import hashlib, os, sys
path, offset, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    fd = os.open(path, os.O_RDONLY)
    try:
        if length < 0:
            chunks = []
            pos = offset
            while True:
                b = os.pread(fd, 1 << 20, pos)
                if not b:
                    break
                chunks.append(b)
                pos += len(b)
            data = b"".join(chunks)
        else:
            data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
except OSError as e:
    print("ERRNO", e.errno, e.strerror)
    sys.exit(0)
print("OK", len(data), hashlib.sha256(data).hexdigest())
'''


class ReadResult:
    def __init__(self, kind, errno=None, length=None, sha256=None, seconds=0.0, detail=''):
        self.kind = kind          # 'ok' | 'errno' | 'timeout' | 'crash'
        self.errno = errno
        self.length = length
        self.sha256 = sha256
        self.seconds = seconds
        self.detail = detail

    def matches(self, data):
        return self.kind == 'ok' and self.sha256 == hashlib.sha256(data).hexdigest()

    def __repr__(self):
        return (f'ReadResult({self.kind}, errno={self.errno}, length={self.length}, '
                f'{self.seconds:.2f}s {self.detail})')


def read_in_subprocess(path, offset=0, length=-1, timeout=60.0):
    """Read `path` in a child process bounded by `timeout` seconds."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, '-c', _READER, path, str(offset), str(length)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pass  # stuck in an uninterruptible kernel wait; the unmount will free it
        return ReadResult('timeout', seconds=time.monotonic() - t0)
    secs = time.monotonic() - t0
    parts = out.split(None, 3)
    if proc.returncode == 0 and parts[:1] == ['OK']:
        return ReadResult('ok', length=int(parts[1]), sha256=parts[2], seconds=secs)
    if proc.returncode == 0 and parts[:1] == ['ERRNO']:
        return ReadResult('errno', errno=int(parts[1]), seconds=secs,
                          detail=' '.join(parts[2:]).strip())
    return ReadResult('crash', seconds=secs, detail=f'rc={proc.returncode} {out} {err}')


def read_file(path):
    with open(path, 'rb') as f:
        return f.read()
