"""Fashion-MNIST (gzipped IDX) -> torchvision ImageFolder tree of PNGs.

Writes OUT/<class name>/<index>.png, index being the image's position in the
split (zero-padded so names sort in order). Needs numpy and PIL only.
"""
import gzip
import os

import numpy as np

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
CLASS_NAMES = ['T-shirt_top', 'Trouser', 'Pullover', 'Dress', 'Coat',
               'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle_boot']


def read_idx(path):
    """Parse an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f'{path}: not an IDX file')
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4',
             0x0E: '>f8'}.get(data[2])
    if dtype is None:
        raise ValueError(f'{path}: unknown IDX type 0x{data[2]:02x}')
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    expect = int(np.prod(dims)) if dims else 0
    if arr.size != expect:
        raise ValueError(f'{path}: expected {expect} items, found {arr.size}')
    return arr.reshape(dims)


def load(split='train', data_dir=DEFAULT_DIR):
    if split not in ('train', 't10k'):
        raise ValueError(f'split must be train or t10k, not {split!r}')
    images = read_idx(os.path.join(data_dir, f'{split}-images-idx3-ubyte.gz'))
    labels = read_idx(os.path.join(data_dir, f'{split}-labels-idx1-ubyte.gz'))
    if len(images) != len(labels):
        raise ValueError(f'{split}: {len(images)} images but {len(labels)} labels')
    return images, labels


def convert(out_dir, count=None, split='train', data_dir=DEFAULT_DIR):
    """Write the first `count` images (all if None); returns {class name: n written}."""
    from PIL import Image

    images, labels = load(split, data_dir)
    n = len(images) if count is None else min(count, len(images))
    if count is not None and count > len(images):
        raise ValueError(f'{split} has only {len(images)} images, asked for {count}')
    width = max(5, len(str(len(images) - 1)))
    for name in CLASS_NAMES:
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
    counts = dict.fromkeys(CLASS_NAMES, 0)
    for i in range(n):
        name = CLASS_NAMES[int(labels[i])]
        Image.fromarray(images[i], mode='L').save(
            os.path.join(out_dir, name, f'{i:0{width}d}.png'), optimize=False)
        counts[name] += 1
    return counts
