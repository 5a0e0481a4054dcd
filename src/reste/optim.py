"""Bop, the latent-free binary optimizer (Helwegen et al., NeurIPS 2019, "Latent Weights Do Not Exist"),
beside the estimators: another way to train the binary weights.

An estimator trains a float latent weight whose sign is the binary one. Bop keeps no latent weight: each binary
weight is +-1, and it flips where an exponential moving average m of its gradient is strong enough and points the
same way as the weight (a step along -m would cross zero):

    m <- m + gamma (g - m)
    w <- -sign(w)  where  sign(w) m > threshold,  else sign(w)   (sign(0) = +1)

``gamma`` plays the part of a learning rate (larger: faster and noisier), ``threshold`` the part of a
minimum signal (too high: nothing flips; too low: noise flips weights). The defaults are larq's and the
paper's, gamma 1e-4 and threshold 1e-8, for runs of hundreds of epochs; a short run needs a larger gamma.

Bop trains the binary weights only; the other parameters (batch norms, float layers) keep an ordinary optimizer
(larq's ``CaseOptimizer``: here two optimizers, each stepped). For Bop to see the gradient of the binary weight
itself, binarize with the STE (its backward passes 1 at +-1) and ``scaling="none"`` (with a scale, the
gradient also flows through mean |w|, which Bop never changes)::

    from reste.optim import Bop, split_binary

    model = reste.binarize(float_model, "ste", scaling="none")
    binary, others = split_binary(model)
    bop, adam = Bop(binary, gamma=1e-3), torch.optim.Adam(others, lr=1e-3)
    ...
    loss.backward(); bop.step(); adam.step(); bop.zero_grad(); adam.zero_grad()

Each step's flips are counted on the device (``flips``, no host sync): the paper's diagnostic of how much the
network still changes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from .layers import binary_layers

__all__ = ["Bop", "split_binary"]


class Bop(torch.optim.Optimizer):
    """Binary optimizer: flips each +-1 weight where the moving average of its gradient, ``m``, satisfies
    ``sign(w) * m > threshold``; the weights are +-1 after each step (``sign``, 0 -> +1).

    Args:
        params: the binary weights (``split_binary(model)[0]``) or parameter groups.
        gamma: the moving average's rate, in (0, 1].
        threshold: the signal ``sign(w) * m`` must pass to flip a weight, >= 0.

    State per weight: ``"m"`` (the moving average, in the weight's dtype). ``state_dict`` holds it, so a resumed
    run flips exactly as an uninterrupted one. ``flips``: a 0-d int64 tensor on the weights' device, the number
    of weights the last step flipped (read it with ``int(bop.flips)``, which waits for the device).
    """

    def __init__(self, params: Iterable[Any], gamma: float = 1e-4, threshold: float = 1e-8) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"Bop's gamma must be in (0, 1], got {gamma!r}")
        if not threshold >= 0.0:
            raise ValueError(f"Bop's threshold must be >= 0, got {threshold!r}")
        super().__init__(params, {"gamma": gamma, "threshold": threshold})
        self.flips = torch.zeros((), dtype=torch.int64)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Bop update of every weight that has a gradient; returns ``closure()`` when given (as torch's
        optimizers do)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        flips = None
        for group in self.param_groups:
            gamma, threshold = group["gamma"], group["threshold"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                if w.grad.is_sparse:
                    raise RuntimeError("Bop does not take sparse gradients")
                state = self.state[w]
                if "m" not in state:
                    state["m"] = torch.zeros_like(w, memory_format=torch.preserve_format)
                m = state["m"]
                m.add_(w.grad.to(m.dtype) - m, alpha=gamma)
                signs = torch.where(w < 0, -1.0, 1.0).to(w.dtype)
                flip = signs * m > threshold  # (the weight's sign: a latent weight's size plays no part)
                w.copy_(torch.where(flip, -signs, signs))
                count = flip.sum()
                flips = count if flips is None else flips + count.to(flips.device)
        if flips is not None:
            self.flips = flips
        return loss


def split_binary(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(the weights of ``model``'s binary layers, every other parameter): Bop's and another optimizer's. A weight
    shared by several layers is listed once; a frozen one (``requires_grad=False``) is left out of both."""
    layers = binary_layers(model)
    if not layers:
        raise ValueError("split_binary: the model has no binary layer; pass the model that reste.binarize returned")
    seen: set[int] = set()
    binary = []
    for _, layer in layers:
        w = layer.weight
        if id(w) not in seen:
            seen.add(id(w))
            if w.requires_grad:
                binary.append(w)
    if not binary:
        raise ValueError("split_binary: every binary weight of the model is frozen (requires_grad=False): "
                         "there is nothing for Bop to train")
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return binary, others
