#!/usr/bin/python3
"""Train a tiny CNN on a Fashion-MNIST ImageFolder tree (e.g. <mnt>/samples of a shelbyfs mount).

Uses stock torchvision ImageFolder and a DataLoader, so any directory of
<class>/<image>.png works. Prints the time to the first batch, samples/s per
epoch and the final loss and accuracy.

usage: train_fmnist.py --data DIR [--epochs N] [--batch-size N] [--workers N]
"""
import argparse
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data', required=True, help='ImageFolder root (one sub-directory per class)')
    ap.add_argument('--epochs', type=int, default=1)
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--workers', type=int, default=2, help='DataLoader worker processes')
    ap.add_argument('--lr', type=float, default=0.01)
    ap.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args()
    if args.epochs < 1 or args.batch_size < 1:
        ap.error('--epochs and --batch-size must be >= 1')

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tf = transforms.Compose([transforms.Grayscale(1), transforms.ToTensor(),
                             transforms.Normalize((0.286,), (0.353,))])
    t0 = time.monotonic()
    ds = datasets.ImageFolder(args.data, transform=tf)
    print(f'dataset: {len(ds)} images in {len(ds.classes)} classes '
          f'(indexed in {time.monotonic() - t0:.2f}s): {", ".join(ds.classes)}', flush=True)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        generator=torch.Generator().manual_seed(args.seed))
    model = TinyNet(len(ds.classes))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    loss_avg = acc = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        start = time.monotonic()
        first_batch = None
        seen = correct = 0
        loss_sum = 0.0
        for images, labels in loader:
            if first_batch is None:
                first_batch = time.monotonic() - start
            opt.zero_grad()
            out = model(images)
            loss = loss_fn(out, labels)
            loss.backward()
            opt.step()
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            correct += (out.argmax(1) == labels).sum().item()
        elapsed = time.monotonic() - start
        loss_avg, acc = loss_sum / max(seen, 1), correct / max(seen, 1)
        print(f'epoch {epoch}/{args.epochs}: {seen} samples in {elapsed:.1f}s '
              f'({seen / elapsed:,.0f} samples/s), first batch after {first_batch:.3f}s, '
              f'loss {loss_avg:.4f}, accuracy {acc:.1%}', flush=True)
        # A later change saves a checkpoint here (to <mnt>/checkpoints/).
    print(f'final: loss {loss_avg:.4f}, train accuracy {acc:.1%}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
