#!/usr/bin/python3
"""Train a tiny CNN on a Fashion-MNIST ImageFolder tree (e.g. <mnt>/samples of a shelbyfs mount).

Uses stock torchvision ImageFolder and a DataLoader, so any directory of
<class>/<image>.png works. Prints the time to the first batch, samples/s per
epoch and the final loss and accuracy.

usage: train_fmnist.py --data DIR [--epochs N] [--batch-size N] [--workers N]
                       [--checkpoint-dir DIR [--save-every N] [--keep-steps]]
                       [--max-steps N] [--seed N] [--optimizer adam|sgd] [--log-every N]

Checkpoints (--checkpoint-dir DIR, e.g. <mnt>/checkpoints/run1, or any plain
directory): every --save-every optimizer steps, and once more when training
ends, the script writes DIR/latest.pt atomically:

    torch.save(...) (serialized in memory), written to DIR/latest.pt.tmp-<pid>,
    flush, xattrs, fsync, close, os.rename() over DIR/latest.pt, then fsync
    DIR (best effort).

A failed write, fsync, close or rename prints `save failed step=N error=...`
and exits 1 rather than train on without checkpoints.

Only after the rename returned does it print `saved step=N ...`, so every
printed save is on storage: a crash (SIGKILL, power loss) at any instant
leaves DIR/latest.pt holding the last printed save or a newer one, never a
torn file. With --keep-steps each save also publishes DIR/step-NNNNNN.pt (same
bytes, same temp+fsync+rename pattern, written before latest.pt); without it
the history is whatever the storage keeps: on a shelbyfs mount every published
version of latest.pt stays readable under
<mnt>/checkpoints/.versions/<run>/latest.pt/<time>-<hash>, so --keep-steps is
only needed on plain directories. The user.step and user.loss extended
attributes are set on the open temp file before its fsync, so they are
published with the bytes, when the filesystem supports them (ENOTSUP is
ignored, so plain directories without xattrs work too).

A checkpoint holds: model and optimizer state_dicts, `step` (optimizer steps
done), `epoch` (0-based epoch of the next batch), `position` (samples of that
epoch already consumed), the epoch's running loss/accuracy sums, the RNG
states of torch, python `random` and numpy, and the sampler state: the shuffle
order of epoch E is torch.randperm(len(dataset)) drawn from a generator
seeded with (seed, E), so the order is a pure function of the seed, the epoch
and the dataset, and resuming at (epoch, position) replays exactly the
remaining samples of that epoch. The dataset's length and class list are
stored and checked on resume. DataLoader worker seeds also come from
(seed, epoch). A checkpoint holds only tensors and plain Python values (the
numpy RNG state is stored as a tensor), meant for newer torch's
weights_only=True loading; this script reads its own files with
weights_only=False because torch 1.13's restricted unpickler cannot read
floats (the optimizer's lr, betas, ...).

On start, if DIR/latest.pt exists (or, failing that, the newest loadable
DIR/step-*.pt), training continues from it and prints
`resumed from step=S epoch=E position=P optimizer_step=S`, the next step
printed being S+1. With the same --threads the resumed run is bitwise
identical to an uninterrupted one (same losses, same final weights).

Machine-readable lines on stdout (one per event, flushed):
    step=N epoch=E loss=X                 every --log-every steps (and the last)
    saved step=N path=P bytes=B seconds=T
    resumed from step=S epoch=E position=P optimizer_step=S path=P
    save failed step=N error=E            (then exit status 1)
    done step=N
"""
import argparse
import errno
import glob
import io
import os
import random
import re
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

try:
    import numpy as np
except ImportError:  # numpy is optional: its RNG state is saved only if it is there
    np = None

FORMAT = 'shelbyfs-train-fmnist/1'
LATEST = 'latest.pt'
STEP_RE = re.compile(r'^step-(\d+)\.pt$')


class TinyNet(nn.Module):
    """Two conv layers and one linear layer: about 5k parameters, fast on 2 CPU cores."""

    def __init__(self, classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 28 -> 14
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 14 -> 7
        )
        self.head = nn.Linear(16 * 7 * 7, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def log(msg):
    print(msg, flush=True)


# -- data order ---------------------------------------------------------------

def epoch_seed(seed, epoch):
    """A distinct 63-bit seed per (run seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) & ((1 << 63) - 1)


def epoch_order(n, seed, epoch):
    """The shuffle order of `epoch`: a pure function of (n, seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch))).tolist()


# -- RNG state ------------------------------------------------------------------

def rng_state():
    state = {'torch': torch.get_rng_state(), 'python': random.getstate()}
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # Kept as a tensor and plain numbers so that weights_only loading works.
        state['numpy'] = {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)),
                          'pos': int(pos), 'has_gauss': int(has_gauss), 'gauss': float(gauss)}
    return state


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    if np is not None and 'numpy' in state:
        s = state['numpy']
        np.random.set_state((s['kind'], s['keys'].numpy().astype(np.uint32), s['pos'],
                             s['has_gauss'], s['gauss']))


def optimizer_step_count(opt):
    """Adam's per-parameter step counter (None for optimizers without one)."""
    steps = {int(s['step']) for s in opt.state.values() if 'step' in s}
    if not steps:
        return None
    return steps.pop() if len(steps) == 1 else sorted(steps)


# -- checkpoint files -------------------------------------------------------------

def set_xattrs(fd, attrs):
    """Best effort: user.* attributes on an open file; unsupported filesystems are fine."""
    for name, value in attrs.items():
        try:
            os.setxattr(fd, name, value.encode())
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                return
            log(f'warning: setxattr {name}: {e}')
            return


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EROFS):
            raise
    finally:
        os.close(fd)


def atomic_write(directory, name, data, attrs):
    """Write `data` to directory/name via a temp file + fsync + rename."""
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f'{name}.tmp-{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            set_xattrs(f.fileno(), attrs)
            os.fsync(f.fileno())
        os.rename(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return final


def save_checkpoint(directory, ckpt, keep_steps):
    t0 = time.monotonic()
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    data = buf.getvalue()
    step = ckpt['step']
    attrs = {'user.step': str(step), 'user.loss': f'{ckpt["loss"]:.6f}'}
    if keep_steps:
        atomic_write(directory, f'step-{step:06d}.pt', data, attrs)
    path = atomic_write(directory, LATEST, data, attrs)
    fsync_dir(directory)
    return path, len(data), time.monotonic() - t0


def load_file(path):
    with open(path, 'rb') as f:
        ckpt = torch.load(f, map_location='cpu', weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get('format') != FORMAT:
        raise ValueError(f'{path}: not a {FORMAT} checkpoint')
    return ckpt


def find_checkpoint(directory):
    """(path, checkpoint) of latest.pt, else of the newest loadable step-*.pt; (None, None) if none."""
    candidates = [os.path.join(directory, LATEST)]
    steps = sorted(((int(m.group(1)), n) for n in os.listdir(directory)
                    if (m := STEP_RE.match(n))), reverse=True)
    candidates += [os.path.join(directory, n) for _, n in steps]
    for path in candidates:
        if not os.path.exists(path):
            continue
        try:
            return path, load_file(path)
        except Exception as e:  # noqa: BLE001 - a bad file must not stop us trying older ones
            log(f'warning: cannot load {path}: {e}')
    return None, None


def remove_stale_temps(directory):
    """Temp files a killed run left behind (never published; removal is best effort)."""
    for path in glob.glob(os.path.join(glob.escape(directory), '*.pt.tmp-*')):
        try:
            os.unlink(path)
        except OSError:
            pass


# -- main -------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', required=True, help='ImageFolder root (one sub-directory per class)')
    ap.add_argument('--epochs', type=int, default=None,
                    help='epochs to train (default 1, or unbounded when --max-steps is given)')
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--workers', type=int, default=2, help='DataLoader worker processes')
    ap.add_argument('--optimizer', choices=['adam', 'sgd'], default='adam')
    ap.add_argument('--lr', type=float, default=None,
                    help='learning rate (default 0.001 for adam, 0.01 for sgd)')
    ap.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
    ap.add_argument('--seed', type=int, default=0, help='model init and shuffle order')
    ap.add_argument('--checkpoint-dir', help='save DIR/latest.pt here and resume from it')
    ap.add_argument('--save-every', type=int, default=100, help='steps between checkpoints')
    ap.add_argument('--keep-steps', action='store_true',
                    help='also keep DIR/step-NNNNNN.pt for every save')
    ap.add_argument('--max-steps', type=int, default=None, help='stop after this many steps in total')
    ap.add_argument('--log-every', type=int, default=50, help='print a step= line every N steps (0: never)')
    args = ap.parse_args()
    if args.epochs is None:
        args.epochs = 1 if args.max_steps is None else 1 << 30
    if args.epochs < 1 or args.batch_size < 1:
        ap.error('--epochs and --batch-size must be >= 1')
    if args.save_every < 1:
        ap.error('--save-every must be >= 1')
    if args.max_steps is not None and args.max_steps < 0:
        ap.error('--max-steps must be >= 0')
    if args.lr is None:
        args.lr = 0.001 if args.optimizer == 'adam' else 0.01
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if np is not None:
        np.random.seed(args.seed % (1 << 32))
    tf = transforms.Compose([transforms.Grayscale(1), transforms.ToTensor(),
                             transforms.Normalize((0.286,), (0.353,))])
    t0 = time.monotonic()
    ds = datasets.ImageFolder(args.data, transform=tf)
    n = len(ds)
    print(f'dataset: {n} images in {len(ds.classes)} classes '
          f'(indexed in {time.monotonic() - t0:.2f}s): {", ".join(ds.classes)}', flush=True)
    if n == 0:
        print('train_fmnist: the dataset is empty', file=sys.stderr)
        return 1
    model = TinyNet(len(ds.classes))
    if args.optimizer == 'adam':
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    step = epoch = position = 0
    stats = {'seen': 0, 'loss_sum': 0.0, 'correct': 0}
    ckdir = args.checkpoint_dir
    if ckdir:
        os.makedirs(ckdir, exist_ok=True)
        remove_stale_temps(ckdir)
        path, ckpt = find_checkpoint(ckdir)
        if ckpt is not None:
            if ckpt['dataset'] != {'size': n, 'classes': list(ds.classes)}:
                print(f'train_fmnist: {path} was made for a different dataset '
                      f'({ckpt["dataset"]["size"]} images)', file=sys.stderr)
                return 1
            if ckpt['args']['optimizer'] != args.optimizer:
                print(f'train_fmnist: {path} was made with --optimizer {ckpt["args"]["optimizer"]}',
                      file=sys.stderr)
                return 1
            if ckpt['args']['seed'] != args.seed:
                log(f'warning: {path} used --seed {ckpt["args"]["seed"]}; keeping its data order')
                args.seed = ckpt['args']['seed']
            model.load_state_dict(ckpt['model'])
            opt.load_state_dict(ckpt['optimizer'])
            step, epoch, position = ckpt['step'], ckpt['epoch'], ckpt['position']
            stats = dict(ckpt['epoch_stats'])
            set_rng_state(ckpt['rng'])
            log(f'resumed from step={step} epoch={epoch} position={position} '
                f'optimizer_step={optimizer_step_count(opt)} path={path}')

    last_saved = step if ckdir else None
    loss_val = float('nan')
    saves = []

    def checkpoint():
        nonlocal last_saved
        ckpt = {
            'format': FORMAT,
            'model': model.state_dict(),
            'optimizer': opt.state_dict(),
            'step': step, 'epoch': epoch, 'position': position,
            'epoch_stats': dict(stats),
            'loss': loss_val,
            'rng': rng_state(),
            'sampler': {'kind': 'randperm', 'seed': args.seed, 'epoch': epoch, 'position': position,
                        'epoch_seed': epoch_seed(args.seed, epoch)},
            'dataset': {'size': n, 'classes': list(ds.classes)},
            'args': {'optimizer': args.optimizer, 'lr': args.lr, 'batch_size': args.batch_size,
                     'seed': args.seed},
        }
        try:
            path, size, secs = save_checkpoint(ckdir, ckpt, args.keep_steps)
        except OSError as e:
            # Never carry on silently without checkpoints: a restart resumes
            # from the last save that was printed.
            log(f'save failed step={step} error={e}')
            raise SystemExit(1) from e
        last_saved = step
        saves.append(secs)
        log(f'saved step={step} path={path} bytes={size} seconds={secs:.3f}')

    def done():
        return args.max_steps is not None and step >= args.max_steps

    loss_avg = stats['loss_sum'] / max(stats['seen'], 1)
    acc = stats['correct'] / max(stats['seen'], 1)
    train_start, start_step = time.monotonic(), step
    while epoch < args.epochs and not done():
        if position >= n:           # saved exactly at the end of an epoch
            epoch, position = epoch + 1, 0
            stats = {'seen': 0, 'loss_sum': 0.0, 'correct': 0}
            continue
        order = epoch_order(n, args.seed, epoch)[position:]
        loader = DataLoader(ds, batch_size=args.batch_size, sampler=order,
                            num_workers=args.workers,
                            generator=torch.Generator().manual_seed(epoch_seed(args.seed, epoch) + 1))
        model.train()
        start = time.monotonic()
        first_batch = None
        seen_here = 0
        for images, labels in loader:
            if first_batch is None:
                first_batch = time.monotonic() - start
            opt.zero_grad()
            out = model(images)
            loss = loss_fn(out, labels)
            loss.backward()
            opt.step()
            step += 1
            position += len(labels)
            seen_here += len(labels)
            loss_val = loss.item()
            stats['seen'] += len(labels)
            stats['loss_sum'] += loss_val * len(labels)
            stats['correct'] += (out.argmax(1) == labels).sum().item()
            if args.log_every and (step % args.log_every == 0 or done()):
                log(f'step={step} epoch={epoch} loss={loss_val:.6f}')
            if ckdir and step % args.save_every == 0:
                checkpoint()
            if done():
                break
        elapsed = time.monotonic() - start
        loss_avg = stats['loss_sum'] / max(stats['seen'], 1)
        acc = stats['correct'] / max(stats['seen'], 1)
        partial = '' if position >= n else f' (stopped at sample {position}/{n})'
        of = f'/{args.epochs}' if args.epochs < 1 << 30 else ''
        print(f'epoch {epoch + 1}{of}: {seen_here} samples in {elapsed:.1f}s '
              f'({seen_here / max(elapsed, 1e-9):,.0f} samples/s), first batch after '
              f'{first_batch or 0.0:.3f}s, loss {loss_avg:.4f}, accuracy {acc:.1%}{partial}',
              flush=True)
        if position >= n and not done():
            epoch, position = epoch + 1, 0
            stats = {'seen': 0, 'loss_sum': 0.0, 'correct': 0}
    if ckdir and last_saved != step:
        checkpoint()
    secs = time.monotonic() - train_start
    if step > start_step:
        print(f'trained steps {start_step + 1}..{step} in {secs:.1f}s '
              f'({(step - start_step) / max(secs, 1e-9):.1f} steps/s)'
              + (f', {len(saves)} saves, {sum(saves) / len(saves) * 1000:.1f} ms per save'
                 if saves else ''), flush=True)
    print(f'final: loss {loss_avg:.4f}, train accuracy {acc:.1%}', flush=True)
    log(f'done step={step}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
