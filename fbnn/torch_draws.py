"""What a PyTorch script draws after ``torch.manual_seed(seed)``, from a private generator.

To replay a PyTorch program's run in fbnn: the parameters its ``nn.Linear`` layers start from
(``linear_params``) and the order in which its ``DataLoader(shuffle=True)`` visits the data
(``DataLoaderOrder``, an ``order`` for ``fbnn.fit``). torch's global generator is never read or
changed: every draw comes from a ``torch.Generator`` seeded here.

The accounting, in 32-bit words of torch's CPU generator (a Mersenne twister): a float32
``uniform_`` takes one word per element, an int64 ``random_()`` two, ``randperm(n)`` n - 1
(Fisher-Yates on ``word % (n - i)``). The DataLoader replayed is the one of the seed's era
(torch 1.0), whose iterator draws an int64 base seed from the global generator when it is made,
before its ``RandomSampler`` calls ``torch.randperm(n)`` on that generator; today's DataLoader
seeds a generator of its own instead, so its orders differ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

INT64_WORDS = 2  # an int64 random_() (the DataLoader iterator's base seed) takes two words


def generator(seed: int) -> torch.Generator:
    """A CPU generator in the state ``torch.manual_seed(seed)`` leaves the global one in."""
    return torch.Generator().manual_seed(seed)


def skip(gen: torch.Generator, words: int) -> None:
    """Advance ``gen`` by ``words`` 32-bit words."""
    if words < 0:
        raise ValueError(f"skip: words must be >= 0, got {words}")
    if words:
        torch.empty(words).uniform_(generator=gen)


def linear_params(sizes, gen: torch.Generator) -> dict:
    """Parameters of ``nn.Linear(sizes[i], sizes[i + 1])`` layers made one after another from
    ``gen``, as torch's default init draws them (weight ``(out, in)`` then bias, each
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), named as ``models.mlp`` names them: ``fc{i}.weight``,
    ``fc{i}.bias``. Advances ``gen`` by ``n_words(sizes)``."""
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound sqrt(3) * gain / sqrt(fan_in)
        bound_w = math.sqrt(3.0) * (math.sqrt(2.0 / (1 + 5)) / math.sqrt(n_in))
        params[f"fc{i}.weight"] = torch.empty(n_out, n_in).uniform_(-bound_w, bound_w, generator=gen)
        bound_b = 1 / math.sqrt(n_in)
        params[f"fc{i}.bias"] = torch.empty(n_out).uniform_(-bound_b, bound_b, generator=gen)
    return params


def n_words(sizes) -> int:
    """Words ``linear_params(sizes, ...)`` draws: one per parameter."""
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))


@dataclass(frozen=True)
class DataLoaderOrder:
    """The example order of epoch ``e`` of a torch-1.0 script that seeds the global generator
    with ``seed``, draws ``skip_words`` words (its model's init: ``n_words(sizes)``), then runs
    every epoch as one pass of a shuffling DataLoader over ``n`` examples followed by
    ``eval_loaders`` passes of non-shuffling ones (each only draws its iterator's base seed).

    Call it with an epoch for that epoch's permutation ``(n,)``; a pure function of the epoch
    (the stream is replayed from the seed), so a resumed ``fit`` continues exactly.
    """
    seed: int
    n: int
    skip_words: int
    eval_loaders: int = 1

    def __post_init__(self):
        if self.n < 1 or self.skip_words < 0 or self.eval_loaders < 0:
            raise ValueError(f"DataLoaderOrder: need n >= 1, skip_words >= 0, eval_loaders >= 0; got {self}")

    def __call__(self, epoch: int) -> torch.Tensor:
        if epoch < 0:
            raise ValueError(f"DataLoaderOrder: epoch must be >= 0, got {epoch}")
        gen = generator(self.seed)
        skip(gen, self.skip_words)
        for e in range(epoch + 1):
            skip(gen, INT64_WORDS)
            order = torch.randperm(self.n, generator=gen)
            skip(gen, self.eval_loaders * INT64_WORDS)
        return order
