#!/usr/bin/python3
"""Workload probes for tools/bench.py, each run in its own child process.

The parent bounds every probe with a timeout and kills its process group if it
hangs (a read stuck in a FUSE mount cannot hang the benchmark). Each probe
prints exactly one JSON object on stdout; timings are taken inside the probe,
after interpreter start-up and imports, with time.monotonic().

  probe.py imagefolder ROOT [--batch-size 64] [--workers 2] [--seed 0]
      torchvision ImageFolder(ROOT, ToTensor()) and one shuffled DataLoader epoch.
      init_s: ImageFolder construction (directory walk + stat of every file);
      first_batch_s: construction start -> first batch in hand (includes init_s and
      DataLoader worker start-up: what a user waits before training starts);
      epoch_s: iter(loader) -> last batch; samples_per_s = n / epoch_s;
      total_s = init_s + epoch_s.
  probe.py seq PATH [--buffer 1MiB]
      read PATH start to end with readinto() of --buffer bytes:
      bytes, seconds, mb_per_s (MiB/s), first_byte_s.
  probe.py rand PATH [--threads 8] [--seconds 10] [--size 4096] [--seed 1] [--distinct N]
      --threads threads, each with its own descriptor (POSIX_FADV_RANDOM, as fio
      does for random jobs), pread --size bytes at random --size-aligned offsets
      until --seconds pass: reads, iops, p50/p99 latency in ms. With --distinct N
      every read falls in a different N-byte block (blocks in random order) and the
      run also ends when the blocks run out: on a fresh mount every read is a miss.
  probe.py readers PATH... [--buffer 1MiB]
      open every PATH first (all open at once), then one thread per file reads it
      to the end: files, bytes, seconds, mb_per_s (aggregate).
"""
import argparse
import json
import os
import random
import sys
import threading
import time

MIB = 1 << 20


def _emit(obj):
    print(json.dumps(obj), flush=True)


def imagefolder(args):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    t0 = time.monotonic()
    ds = datasets.ImageFolder(args.root, transform=transforms.ToTensor())
    t_init = time.monotonic()
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        generator=torch.Generator().manual_seed(args.seed))
    first = None
    n = 0
    label_sum = 0
    t_iter = time.monotonic()
    for images, labels in loader:
        if first is None:
            first = time.monotonic()
        n += len(labels)
        label_sum += int(labels.sum())
    t_end = time.monotonic()
    epoch = t_end - t_iter
    _emit({'n': n, 'classes': len(ds.classes), 'label_sum': label_sum,
           'init_s': t_init - t0, 'first_batch_s': (first or t_end) - t0,
           'epoch_s': epoch, 'samples_per_s': n / epoch if epoch > 0 else None,
           'total_s': (t_init - t0) + epoch})


def seq(args):
    buf = bytearray(args.buffer)
    view = memoryview(buf)
    total = 0
    first = None
    t0 = time.monotonic()
    with open(args.path, 'rb', buffering=0) as f:
        while True:
            n = f.readinto(view)
            if first is None:
                first = time.monotonic() - t0
            if not n:
                break
            total += n
    secs = time.monotonic() - t0
    _emit({'bytes': total, 'seconds': secs, 'first_byte_s': first,
           'mb_per_s': total / MIB / secs if secs > 0 else None})


def rand(args):
    size = os.path.getsize(args.path)
    slots = max(1, size // args.size)
    deadline = time.monotonic() + args.seconds
    lat = [[] for _ in range(args.threads)]
    errors = []
    start = threading.Barrier(args.threads + 1)
    if args.distinct:
        # Cold reads: one read in each --distinct-sized block, blocks in random order.
        rng = random.Random(args.seed)
        blocks = list(range((size + args.distinct - 1) // args.distinct))
        rng.shuffle(blocks)
        per_block = max(1, args.distinct // args.size)
        offsets = iter([b * args.distinct + rng.randrange(per_block) * args.size for b in blocks])
        lock = threading.Lock()

        def next_offset(_rng):
            with lock:
                off = next(offsets, None)
            return off if off is None or off < size else (size - 1) // args.size * args.size
    else:
        def next_offset(rng):
            return rng.randrange(slots) * args.size

    def worker(i):
        rng = random.Random(args.seed * 1000 + i)
        fd = os.open(args.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            start.wait()
            mine = lat[i]
            while time.monotonic() < deadline:
                off = next_offset(rng)
                if off is None:
                    break
                t = time.monotonic()
                got = os.pread(fd, args.size, off)
                mine.append(time.monotonic() - t)
                if len(got) != min(args.size, size - off):
                    raise OSError(f'short read at {off}: {len(got)} bytes')
        except Exception as e:  # noqa: BLE001  (reported to the parent, not raised)
            errors.append(f'thread {i}: {e}')
            try:
                start.abort()
            except threading.BrokenBarrierError:
                pass
        finally:
            os.close(fd)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.threads)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    try:
        start.wait()
        t0 = time.monotonic()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    all_lat = sorted(x for per in lat for x in per)
    n = len(all_lat)

    def pct(p):
        return all_lat[min(n - 1, int(p * n))] * 1000 if n else None

    _emit({'reads': n, 'seconds': secs, 'iops': n / secs if secs > 0 else None,
           'threads': args.threads, 'size': args.size, 'p50_ms': pct(0.50), 'p99_ms': pct(0.99),
           'errors': errors[:5]})
    if errors:
        sys.exit(1)


def readers(args):
    fds = [os.open(p, os.O_RDONLY) for p in args.paths]
    totals = [0] * len(fds)
    errors = []
    start = threading.Barrier(len(fds) + 1)

    def worker(i):
        buf = bytearray(args.buffer)
        try:
            start.wait()
            with os.fdopen(fds[i], 'rb', buffering=0, closefd=False) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    totals[i] += n
        except Exception as e:  # noqa: BLE001
            errors.append(f'{args.paths[i]}: {e}')

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(fds))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    for fd in fds:
        os.close(fd)
    total = sum(totals)
    _emit({'files': len(fds), 'bytes': total, 'seconds': secs,
           'mb_per_s': total / MIB / secs if secs > 0 else None, 'errors': errors[:5]})
    if errors:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    p = sub.add_parser('imagefolder')
    p.add_argument('root')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p = sub.add_parser('seq')
    p.add_argument('path')
    p.add_argument('--buffer', type=int, default=MIB)
    p = sub.add_parser('rand')
    p.add_argument('path')
    p.add_argument('--threads', type=int, default=8)
    p.add_argument('--seconds', type=float, default=10.0)
    p.add_argument('--size', type=int, default=4096)
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--distinct', type=int, default=0,
                   help='cold mode: one read per block of this size, blocks in random order')
    p = sub.add_parser('readers')
    p.add_argument('paths', nargs='+')
    p.add_argument('--buffer', type=int, default=MIB)
    args = ap.parse_args()
    {'imagefolder': imagefolder, 'seq': seq, 'rand': rand, 'readers': readers}[args.cmd](args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
