#!/usr/bin/python3
"""Convert Fashion-MNIST (gzipped IDX) into a torchvision ImageFolder tree of PNGs.

usage: fmnist_to_imagefolder.py [--count N] [--split train|t10k] [--data-dir DIR] OUT_DIR
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import fmnist  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('out_dir')
    ap.add_argument('--count', type=int, default=None, help='first N images (default: all)')
    ap.add_argument('--split', choices=['train', 't10k'], default='train')
    ap.add_argument('--data-dir', default=fmnist.DEFAULT_DIR,
                    help=f'directory with the *-ubyte.gz files (default {fmnist.DEFAULT_DIR})')
    args = ap.parse_args()
    if args.count is not None and args.count < 0:
        ap.error('--count must be >= 0')
    t0 = time.monotonic()
    try:
        counts = fmnist.convert(args.out_dir, args.count, args.split, args.data_dir)
    except (OSError, ValueError) as e:
        print(f'fmnist_to_imagefolder: {e}', file=sys.stderr)
        return 1
    total = sum(counts.values())
    print(f'wrote {total} PNGs in {len(counts)} classes to {args.out_dir} '
          f'in {time.monotonic() - t0:.1f}s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
