#!/usr/bin/python3
"""Integration: stock torchvision ImageFolder over a shelbyfs mount equals the local copy.

Converts Fashion-MNIST images to a PNG ImageFolder tree, packs it with default
options, serves it with nginx, mounts the URL and compares every tensor and
label a DataLoader (2 workers) yields from the mount with those from the source
directory. Timings are printed for information only.
Run: SHELBYFS_BIN=build/src/shelbyfs /usr/bin/python3 tests/integration/test_imagefolder.py
"""
import os
import shutil
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tools'))
import testlib  # noqa: E402

COUNT = int(os.environ.get('SHELBYFS_IMAGEFOLDER_COUNT', '2000'))


def load_all(root):
    """(dataset, [(image tensor batch, label batch)], seconds to first batch, total seconds)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    t0 = time.monotonic()
    ds = datasets.ImageFolder(root, transform=transforms.ToTensor())
    loader = DataLoader(ds, batch_size=64, shuffle=False, num_workers=2)
    batches, first = [], None
    for images, labels in loader:
        if first is None:
            first = time.monotonic() - t0
        batches.append((images, labels))
    return ds, batches, first, time.monotonic() - t0


class ImageFolderTests(unittest.TestCase):
    def test_imagefolder_over_mount_matches_local(self):
        import torch

        torch.set_num_threads(2)
        tmp = testlib.make_tmpdir('shelbyfs-test-imagefolder-')
        self.addCleanup(shutil.rmtree, tmp, True)
        src, out = os.path.join(tmp, 'src'), os.path.join(tmp, 'out')
        t0 = time.monotonic()
        counts = testlib.fmnist_to_imagefolder(src, COUNT, 'train')
        self.assertEqual(sum(counts.values()), COUNT)
        t1 = time.monotonic()
        r = testlib.pack(src, out)
        t2 = time.monotonic()
        print(f'\nconvert {COUNT} images: {t1 - t0:.2f}s; pack: {t2 - t1:.2f}s '
              f'({r.stdout.strip() or "no summary"})', file=sys.stderr)

        local_ds, local_batches, local_first, local_total = load_all(src)
        with testlib.Nginx(out) as n, testlib.Mount(n.url('manifest.json')) as m:
            mnt_ds, mnt_batches, mnt_first, mnt_total = load_all(m.path('samples'))
            # Second pass: blocks are cached now.
            _, _, warm_first, warm_total = load_all(m.path('samples'))

        self.assertEqual(len(mnt_ds), COUNT)
        self.assertEqual(len(local_ds), COUNT)
        self.assertEqual(mnt_ds.classes, sorted(testlib.CLASS_NAMES))
        self.assertEqual(mnt_ds.classes, local_ds.classes)
        self.assertEqual(mnt_ds.class_to_idx, local_ds.class_to_idx)
        self.assertEqual([os.path.relpath(p, m.path('samples')) for p, _ in mnt_ds.samples],
                         [os.path.relpath(p, src) for p, _ in local_ds.samples])
        self.assertEqual(len(mnt_batches), len(local_batches))
        seen = 0
        for i, ((mi, ml), (li, ll)) in enumerate(zip(mnt_batches, local_batches)):
            self.assertTrue(torch.equal(ml, ll), f'batch {i}: labels differ')
            self.assertTrue(torch.equal(mi, li), f'batch {i}: images differ')
            seen += len(ml)
        self.assertEqual(seen, COUNT)

        for name, first, total in (('local dir', local_first, local_total),
                                   ('shelbyfs cold', mnt_first, mnt_total),
                                   ('shelbyfs warm', warm_first, warm_total)):
            print(f'{name:>14}: first batch {first:.3f}s, {COUNT / total:,.0f} samples/s '
                  f'({total:.2f}s)', file=sys.stderr)


if __name__ == '__main__':
    testlib.require_prereqs(extra_modules=('numpy', 'PIL', 'torch', 'torchvision'))
    unittest.main(verbosity=2)
