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
(larq's ``CaseOptimizer``; here :class:`Composite`, two optimizers stepped as one). For Bop to see the gradient of
the binary weight itself, binarize with the STE (its backward passes 1 at +-1) and ``scaling="none"`` (with a
scale, the gradient also flows through mean |w|, which Bop never changes)::

    from reste.optim import Bop, Composite, split_binary

    model = reste.binarize(float_model, "ste", scaling="none")
    binary, others = split_binary(model)
    optimizer = Composite(Bop(binary, gamma=1e-3), torch.optim.Adam(others, lr=1e-3))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)  # Adam's lr, Bop's gamma alike
    ...
    loss.backward(); optimizer.step(); optimizer.zero_grad()

``reste train --optimizer bop`` builds just this. Each step's flips are counted on the device (``flips``, and
``flipped`` over every step, with no host sync): the paper's diagnostic of how much the network still changes.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from .estimators import SIXTEEN_BIT
from .hparams import real_number
from .layers import binary_layers

__all__ = ["Bop", "Composite", "split_binary"]

#: Bop's defaults, larq's and the paper's (for runs of hundreds of epochs): ``reste train --optimizer bop`` takes
#: them where ``--bop-gamma`` and ``--bop-threshold`` are not given.
DEFAULT_GAMMA, DEFAULT_THRESHOLD = 1e-4, 1e-8


class Bop(torch.optim.Optimizer):
    """Binary optimizer: flips each +-1 weight where the moving average of its gradient, ``m``, satisfies
    ``sign(w) * m > threshold``; the weights are +-1 after each step (``sign``, 0 -> +1).

    Args:
        params: the binary weights (``split_binary(model)[0]``), parameter groups, or the binarized model itself
            (its binary layers' weights: ``Bop(model)``). Not ``model.parameters()``: Bop makes every weight it
            trains +-1, BatchNorm's and the float layers' too; given 1-dimensional parameters (biases,
            BatchNorm's) beside weights of 2 or more, it warns.
        gamma: the moving average's rate, in (0, 1].
        threshold: the signal ``sign(w) * m`` must pass to flip a weight, >= 0.

    Each group also has an ``lr``, 1 by default: a factor on gamma (the moving average's rate is ``gamma * lr``),
    there for torch's LR schedulers that scale each group's ``lr`` from where it started (StepLR,
    CosineAnnealingLR, LambdaLR, ExponentialLR, ...): inside a :class:`Composite` they so scale Bop's gamma as they
    scale the other optimizer's learning rate, as ``reste train`` does. Those that set absolute values (OneCycleLR
    and CyclicLR's ``max_lr``/``base_lr``, ReduceLROnPlateau's ``min_lr``) take a list with a value per group,
    this factor's (1 at the peak) among them, and OneCycleLR and CyclicLR ``cycle_momentum=False`` (Bop has no
    momentum or betas to cycle: torch refuses the optimizer otherwise); given one number, they would set the factor
    to another optimizer's learning rate. (Lightning's LearningRateMonitor shows the factor as the group's learning
    rate.)

    State per weight: ``"m"`` (the moving average, in the weight's dtype; in float32 for 16-bit weights, where
    gamma * grad fell below float16's smallest number and bfloat16's 8 bits stopped the average short of the
    gradient, so that no weight flipped). ``state_dict`` holds it, so a resumed
    run flips exactly as an uninterrupted one. ``flips``: a 0-d int64 tensor on the weights' device, the number
    of weights the last step flipped (read it with ``int(bop.flips)``, which waits for the device).
    """

    def __init__(self, params: Iterable[Any], gamma: float = DEFAULT_GAMMA,
                 threshold: float = DEFAULT_THRESHOLD) -> None:
        gamma, threshold = check_settings(gamma, threshold)
        if isinstance(params, nn.Module):  # (review apifuzz1: the model, as a torch optimizer is built on it)
            try:
                params = split_binary(params)[0]
            except ValueError as err:  # (named as the call the user made: review diff34)
                raise ValueError(str(err).replace("split_binary:", "Bop(model):", 1)) from None
        super().__init__(params, {"gamma": gamma, "threshold": threshold, "lr": 1.0})
        _warn_model_parameters([w for group in self.param_groups for w in group["params"]])
        self.flips = torch.zeros((), dtype=torch.int64)
        self.flipped = torch.zeros((), dtype=torch.int64)  # every step's flips added up, in state_dict too

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Bop update of every weight that has a gradient; returns ``closure()`` when given (as torch's
        optimizers do)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rates = [group["gamma"] * group.get("lr", 1.0) for group in self.param_groups]  # (a state saved without lr)
        for group, rate in zip(self.param_groups, rates):  # all checked before any weight moves
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"Bop's rate gamma * lr must be in [0, 1] (the moving average's), got "
                                 f"{group['gamma']!r} * {group.get('lr')!r}; a scheduler's lr is a factor on gamma")
        flips = None
        for group, gamma in zip(self.param_groups, rates):
            threshold = group["threshold"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                if w.grad.is_sparse:
                    raise RuntimeError("Bop does not take sparse gradients")
                state = self.state[w]
                if "m" not in state:
                    state["m"] = torch.zeros_like(w, dtype=_state_dtype(w), memory_format=torch.preserve_format)
                m = state["m"]
                m.add_(w.grad.to(m.dtype) - m, alpha=gamma)
                signs = torch.where(w < 0, -1.0, 1.0).to(m.dtype)
                flip = signs * m > threshold  # (the weight's sign: a latent weight's size plays no part)
                w.copy_(torch.where(flip, -signs, signs))
                count = flip.sum()
                flips = count if flips is None else flips + count.to(flips.device)
        if flips is not None:
            self.flips = flips
            self.flipped = self.flipped.to(flips.device) + flips
        return loss

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state (each weight's ``m``, the groups' settings) and ``"flipped"``, the flips of
        every step so far (an int: this waits for the device)."""
        return {**super().state_dict(), "flipped": int(self.flipped)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        flipped = state.pop("flipped", 0)
        super().load_state_dict(state)  # (which casts each m to its weight's dtype: a 16-bit weight's is put back)
        saved = [state.get("state", {}).get(i, {}) for group in state["param_groups"] for i in group["params"]]
        for w, kept in zip((w for group in self.param_groups for w in group["params"]), saved):
            if isinstance(kept.get("m"), Tensor) and w in self.state:
                self.state[w]["m"] = kept["m"].to(device=w.device, dtype=_state_dtype(w))
        self.flipped = torch.tensor(int(flipped), dtype=torch.int64)


def _state_dtype(w: Tensor) -> torch.dtype:
    """The dtype of a weight's moving average: float32 for a 16-bit weight, else its own."""
    return torch.float32 if w.dtype in SIXTEEN_BIT else w.dtype


def check_settings(gamma: Any, threshold: Any, flags: bool = False) -> tuple[float, float]:
    """``(gamma, threshold)`` as Python floats (a NumPy number or a 0-dim tensor taken as its value); a ``ValueError``
    naming them as the constructor's arguments, or as ``reste train``'s flags, for a ``gamma`` outside (0, 1] or a
    ``threshold`` below 0 or not finite."""
    names = ("--bop-gamma", "--bop-threshold") if flags else ("Bop's gamma", "Bop's threshold")
    checks = ((gamma, lambda v: 0.0 < v <= 1.0, "in (0, 1] (the moving average's rate)"),
              (threshold, lambda v: 0.0 <= v < float("inf"), ">= 0 and finite"))
    values = []
    for name, (value, holds, valid) in zip(names, checks):
        number = real_number(value)
        if number is None or not holds(number):
            kind = "a number " if number is None else ""
            raise ValueError(f"{name} must be {kind}{valid}, got {value!r}")
        values.append(float(number))
    return values[0], values[1]


class Composite(torch.optim.Optimizer):
    """Several optimizers, each over its own parameters, stepped as one (larq's ``CaseOptimizer``): Bop for the
    binary weights and Adam for the rest, as ``reste train --optimizer bop`` builds it::

        binary, others = split_binary(model)
        optimizer = Composite(Bop(binary), torch.optim.Adam(others, lr=1e-3))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)  # Adam's lr and Bop's gamma
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    A ``torch.optim.Optimizer``, so torch's LR schedulers, ``torch.amp.GradScaler`` and Lightning's
    ``configure_optimizers`` take it: ``step`` (a closure evaluated once), ``zero_grad``, ``param_groups`` (all
    members' groups, the same dicts: setting a group's ``lr`` sets the member's; a Bop group's ``lr`` is a factor
    on its gamma), ``state`` (all members' per-parameter state), ``state_dict`` and ``load_state_dict`` (each
    member's), the step hooks. Its parameters belong to its members: ``add_param_group`` is refused (add the group
    to a member).
    """

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        if not optimizers:
            raise ValueError("Composite needs at least one optimizer")
        odd = next((opt for opt in optimizers if not isinstance(opt, torch.optim.Optimizer)), None)
        if odd is not None:  # (review api3, suggestion 2: an AttributeError on its param_groups)
            raise TypeError(f"Composite takes torch optimizers (Bop, Adam, ...), got {type(odd).__name__}")
        owned: set[int] = set()
        for opt in optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in owned:
                        raise ValueError("Composite: a parameter belongs to two of its optimizers; give each "
                                         "parameter to one (split_binary splits a model's)")
                    owned.add(id(p))
        self.optimizers = list(optimizers)
        # torch.optim.Optimizer.__init__ takes parameters of its own, which the members hold here: what the base
        # class's hooks read (defaults, the hook tables) is set as unpickling sets it
        self.__setstate__({})

    def __getstate__(self) -> dict[str, Any]:
        # the members (the base class's pickles param_groups and state, views of theirs here); as the base class,
        # neither the hooks nor a scheduler's wrapper of step (set back on load)
        return {"optimizers": self.optimizers, "defaults": self.defaults}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({"defaults": {}, **state})  # (a Composite pickled before it was an Optimizer has none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise TypeError("Composite's parameters belong to its optimizers: add the group to one of them "
                        "(composite.optimizers[i].add_param_group(...))")

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> dict[Any, Any]:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:  # type: ignore[override]
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Each member's step, in order; ``closure`` (when given) is evaluated once, before them."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for opt, state in zip(self.optimizers, member_states(self, state_dict)):
            opt.load_state_dict(state)

    def __repr__(self) -> str:
        return "Composite(" + ", ".join(type(opt).__name__ for opt in self.optimizers) + ")"


def composite_states(state_dict: Any) -> list[Any] | None:
    """The members' states where ``state_dict`` has the form of a ``Composite.state_dict()``, else None."""
    states = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
    return states if isinstance(states, list) else None


def member_states(composite: Composite, state_dict: Any) -> list[dict[str, Any]]:
    """The members' states in a ``Composite.state_dict()``; a ``ValueError`` where it is not one of as many."""
    states = composite_states(state_dict)
    if states is None or len(states) != len(composite.optimizers):
        raise ValueError(f"not the state of a Composite of {len(composite.optimizers)} optimizers "
                         f"({', '.join(type(o).__name__ for o in composite.optimizers)})")
    return states


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
    _warn_unfit_layers(layers)
    return binary, others


def _warn_model_parameters(params: list[Tensor]) -> None:
    """Warn when Bop is given vectors (biases, BatchNorm's weights and biases) beside weight tensors of 2 or more
    dimensions: most likely ``model.parameters()``, whose every parameter Bop would set to +-1, the float layers'
    and BatchNorm's among them (review apifuzz1). No binary layer's weight is 1-dimensional."""
    vectors = [tuple(p.shape) for p in params if p.dim() <= 1]
    if vectors and any(p.dim() >= 2 for p in params):
        warnings.warn(f"Bop was given {len(vectors)} parameter(s) of 1 dimension (shapes {vectors[:3]}"
                      f"{', ...' if len(vectors) > 3 else ''}: biases or BatchNorm's?) beside weight tensors: it sets "
                      "every weight it trains to +-1; pass Bop(model) or split_binary(model)[0], and the other "
                      "parameters to another optimizer (reste.optim.Composite)", stacklevel=3)


def _warn_unfit_layers(layers: list[tuple[str, nn.Module]]) -> None:
    """Warn about binary layers whose weight gradient is not that of the binary weight itself: an estimator whose
    g at +-1 is not 1, now or at either end of its schedule (ApproxSign's and, late in their schedules, EDE's and
    RBNN's are 0: Bop never flips those weights again; ReSTE's falls to 1/o_end, scaling down what Bop accumulates;
    SignSwish's is negative: it flips them the wrong way) or a weight scale (its gradient also flows through
    mean |w|, which Bop never changes). ``reste train --optimizer bop`` refuses both."""
    unfit = []
    for name, layer in layers:
        est = layer.weight_estimator
        off = _g_at_signs(est, layer.weight.dtype)
        if off is not None:
            g, when = off
            unfit.append(f"{name!r} ({est.name}: g(-1), g(+1) = {float(g[0]):.3g}, {float(g[1]):.3g}{when})")
        elif layer.scaling != "none":
            unfit.append(f"{name!r} (scaling {layer.scaling!r})")
    if unfit:
        more = f" and {len(unfit) - 3} more" if len(unfit) > 3 else ""
        warnings.warn(f"split_binary: Bop reads the gradient of each binary weight itself, which these layers do not "
                      f"give: {', '.join(unfit[:3])}{more}; binarize with 'ste' (clip >= 1) and scaling='none'",
                      UserWarning, stacklevel=3)


def _g_at_signs(est: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, str] | None:
    """(g(-1) and g(+1), where) for an estimator whose g at +-1 is not 1 now, at the start or at the end of its schedule
    (ReSTE's is 1 at its start, o = 1, and 1/o_end at its end), each end taken on a copy; ``None`` where it is 1 at all
    three."""
    ones = torch.tensor([-1.0, 1.0], dtype=dtype)
    for epoch, when in ((None, ""), (0, " at the start of its schedule"), (1, " at the end of its schedule")):
        probe = est
        if epoch is not None:
            probe = copy.deepcopy(est)  # (the layer's own estimator keeps its place in the schedule)
            probe.set_progress(epoch, 1)
        with torch.no_grad():
            g = probe.derivative(ones)
        if not bool((g == 1).all()):
            return g, when
    return None
