"""The equilibrium indicators of the ReSTE paper: estimating error and gradient stability.

* estimating error e = sum over layers of || F(w) - sign(w) ||_2, F the estimator's
  forward-equivalent function, w a layer's latent weights;
* gradient stability s = sum over layers of var(abs(dL/dw)) (unbiased variance),
  read after the backward pass. Higher s means less stable gradients. Layers whose weight
  is frozen (``requires_grad=False``) get no gradient and are left out of s.

Two modes:

``"paper"`` reproduces the authors' ``--cal_ind`` exactly: only binary 3x3 conv
weights (2-D, not transposed: a 1-D conv's kernel is never 3x3); F is the unclipped power function
sign(w) abs(w)^(1/o_end) at o_end (whatever the estimator and the current o), compared with torch.sign (0 for 0);
each epoch reports its last iteration; over the run the error is averaged over
epochs and the stability summed.

``"general"`` works for every estimator: every binary layer (linear, conv of any kind), F is the layer's
own estimator at its current schedule values, sign maps 0 to +1, and each epoch
reports the mean over all its iterations; over the run both are averaged.

Both modes keep the authors' per-layer form: the norm and the variance are taken in each
layer and then summed, which is not the norm or variance of all weights concatenated
(sum_l ||d_l|| >= ||concat d_l||). The modes differ only in the layer set, in F and its o,
in sign(0) and in the averaging.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .errors import unknown_choice
from .estimators import ReSTE, sign
from .hparams import real_number
from .layers import binary_layers, estimators_of

MODES = ("general", "paper")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(unknown_choice("indicator mode", mode, MODES))


def indicator_layers(model: nn.Module, mode: str = "general") -> list[tuple[str, nn.Module]]:
    """The layers the indicators are computed over."""
    _check_mode(mode)
    layers = binary_layers(model)
    if mode == "paper":  # the authors' binary layers: 3x3 2-D convs (never transposed ones)
        layers = [(n, m) for n, m in layers if getattr(m, "kernel_size", None) == (3, 3)
                  and not isinstance(m, nn.modules.conv._ConvTransposeNd)]
    return layers


def _measured_layers(model: nn.Module, mode: str) -> list[tuple[str, nn.Module]]:
    """:func:`indicator_layers`, or a ``ValueError`` saying why there are none (a sum over no layer, 0, would
    read as a network in perfect equilibrium)."""
    layers = indicator_layers(model, mode)
    if not layers:
        if binary_layers(model):  # binary, but no 3x3 conv: an MLP, a transformer, 1x1 or 1-D convs
            raise ValueError("the model has no binary 3x3 conv (2-D), the only layers of the 'paper' indicators "
                             "(the authors'); use mode='general', which reads every binary layer")
        raise ValueError(f"the model has no layers for the {mode!r} indicators (no binary layers); pass the "
                         "model that reste.binarize returned")
    return layers


def _wide(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 where it is (a float64 model's indicators keep its precision)."""
    return t if t.dtype == torch.float64 else t.float()


def paper_forward(w: Tensor, o: float) -> Tensor:
    """The authors' unclipped power function sign(w) abs(w)^(1/o)."""
    return torch.sign(w) * w.abs().pow(1.0 / o)


@torch.no_grad()
def estimating_error(model: nn.Module, mode: str = "general", o_end: float | None = None) -> Tensor:
    """Sum over the indicator layers of || F(w) - sign(w) ||_2 (a 0-dim tensor). ``o_end``: the paper mode's F is
    at it (a number >= 1, refused otherwise: review types1 #1; default: the model's ReSTE o_end, else 3, as
    :class:`EquilibriumMeter` measures: review arch3 #1); the general mode's is each layer's estimator at its
    current o, and does not read it."""
    _check_mode(mode)
    if mode == "paper":
        o_end = _final_o(model) if o_end is None else o_end
        check_o_end(o_end, mode)
    total = None  # summed on the weights' device: a CPU zero copied there would wait for the GPU every step
    for _, layer in _measured_layers(model, mode):
        w = layer.weight.detach()
        if mode == "paper":
            diff = paper_forward(w, o_end) - torch.sign(w)
        else:
            diff = layer.weight_estimator.forward_equivalent(w) - sign(w)
        norm = torch.linalg.vector_norm(_wide(diff))
        total = norm if total is None else total + norm
    return total


def frozen_layers(model: nn.Module, mode: str = "general") -> list[str]:
    """The indicator layers whose weight is frozen (``requires_grad=False``), or is a single weight (no variance):
    gradient stability leaves them out."""
    return [name for name, layer in indicator_layers(model, mode)
            if not layer.weight.requires_grad or layer.weight.numel() < 2]


@torch.no_grad()
def gradient_stability(model: nn.Module, mode: str = "general") -> Tensor:
    """Sum over the indicator layers of the unbiased variance of abs(grad w) (a 0-dim tensor).

    Layers whose weight is frozen (``requires_grad=False``, e.g. a fine-tuned backbone) get no gradient and are
    left out, and so are layers of a single weight, whose variance is undefined (review math #3: one made the sum
    NaN); a model whose indicator layers are all left out is refused. A layer the step's forward did not use (no
    gradient while others have theirs) is left out of that step, with a warning.
    """
    total = None  # on the gradients' device, as in estimating_error
    layers = _measured_layers(model, mode)
    for name, layer in layers:
        if not layer.weight.requires_grad or layer.weight.numel() < 2:
            continue
        g = layer.weight.grad
        if g is None:
            if any(m.weight.grad is not None for _, m in layers):  # others have theirs: this one was not used
                # (a branch skipped at random, stochastic depth, a routed expert: it trains in other steps, so this
                # step leaves it out; it ended the training loop: review api #10)
                warnings.warn(f"layer {name!r} got no gradient in a step while other binary layers got theirs (the "
                              "forward did not use it: a branch skipped at random, an auxiliary head?): gradient "
                              "stability leaves it out of such steps; freeze it (requires_grad_(False)) if it never "
                              "trains", stacklevel=2)
                continue
            raise RuntimeError(f"layer {name!r} has no gradient: compute the indicators after backward() and "
                               "before zero_grad()")
        var = torch.var(_wide(g.detach().abs()).flatten())
        total = var if total is None else total + var
    if total is None:
        raise ValueError(f"every layer of the {mode!r} indicators is frozen (requires_grad=False) or of a single "
                         "weight: gradient stability has nothing to measure; unfreeze a binary layer or turn the "
                         "indicators off")
    return total


def amp_scale(scaler: Any) -> Tensor | None:
    """The scale of an fp16 ``torch.amp.GradScaler`` now, a 0-dim tensor on its device (no host sync); None where
    it scales nothing (disabled, or no scaler). Read it before ``scaler.step`` and give the one after
    ``scaler.update`` to :func:`amp_skipped`."""
    if scaler is None or not callable(getattr(scaler, "is_enabled", None)) or not scaler.is_enabled():
        return None
    scale = getattr(scaler, "_scale", None)  # (the tensor get_scale() reads with a sync)
    return scale.detach().clone() if isinstance(scale, Tensor) else torch.tensor(float(scaler.get_scale()))


def amp_skipped(before: Tensor | None, after: Tensor | None) -> Tensor | None:
    """Whether the optimizer step between two :func:`amp_scale` readings was skipped (the scaler lowers its scale
    exactly when it skips a step for inf or NaN gradients), a 0-dim bool tensor; None without a scaler."""
    if before is None or after is None:
        return None
    return after < before


# how a run's per-epoch indicators make its run-level values: (estimating error, gradient stability) per mode
RUN_LEVEL = {"general": ("mean over epochs", "mean over epochs"),
             "paper": ("mean over epochs", "sum over epochs")}  # the authors' aggregate
RUN_LEVEL_FIELDS = ("estimating_error", "gradient_stability")  # an epoch's values, as a metrics line holds them


def unmeasured(epoch: dict[str, Any]) -> bool:
    """Whether nothing was measured in the epoch of ``epoch`` (a metrics line, or a history entry): every step of
    it skipped by fp16's scaler, its indicators NaN. Such an epoch is left out of the run's values."""
    return any(isinstance(epoch.get(f), float) and math.isnan(epoch[f]) for f in RUN_LEVEL_FIELDS)


def run_level(history: list[dict[str, float]], mode: str = "general") -> dict[str, float]:
    """A run's values from its per-epoch ones (``history``, oldest first): paper mode averages the error and
    sums the stability over epochs, as the authors; general mode averages both (:data:`RUN_LEVEL`). An epoch of
    which nothing was measured (every step skipped by fp16's scaler: NaN) is left out of both (review stats1 #1);
    NaN where no epoch was measured."""
    _check_mode(mode)
    if not history:
        return {}
    measured = [h for h in history if not unmeasured(h)]
    if not measured:
        return {f: math.nan for f in RUN_LEVEL_FIELDS}
    history = measured
    n = len(history)
    err = sum(h["estimating_error"] for h in history) / n
    stab = sum(h["gradient_stability"] for h in history)
    return {"estimating_error": err, "gradient_stability": stab if mode == "paper" else stab / n}


# the field of a metrics.jsonl line with indicators that says how they were measured: the paper mode's o_end (F at
# it), null in the general mode (each layer's estimator at its current o); a line written before it was recorded has
# none, and counts as measured in the run's mode
MEASURE = "indicators_o_end"


def current_history(lines: list[dict[str, Any]], mode: str | None = None
                    ) -> tuple[list[dict[str, Any]], str, float | None]:
    """The metrics lines of a run (``lines``, one per epoch, oldest first) that its indicator history holds now, as
    ``reste train``'s meter keeps it across resumes: the last ones measured as the newest (its mode, and in the paper
    mode its o_end, :data:`MEASURE`). A line without indicators, or measured otherwise (a ``--resume --force`` with
    another ``--indicators`` or o_end, which starts the history again), ends it; a line that does not record how
    (written before it was) counts as measured in ``mode``, the run's (None: the general mode). Returns the lines,
    their mode and their paper o_end (None: the general mode, or not recorded)."""
    kept: list[dict[str, Any]] = []
    newest: tuple[str, float | None] | None = None
    for line in reversed(lines):
        if not all(k in line for k in RUN_LEVEL_FIELDS):
            break
        if MEASURE in line:
            how = ("general", None) if line[MEASURE] is None else ("paper", float(line[MEASURE]))
            if newest is not None and how != newest:
                break
            newest = how
        kept.append(line)
    how = newest or (mode or "general", None)
    return kept[::-1], how[0], how[1]


def saved_measure(state: Any) -> tuple[int, float | None] | None:
    """From a checkpoint's meter state (:meth:`EquilibriumMeter.state_dict`): how many epochs its history holds, and
    their :data:`MEASURE` value; None where it holds none. A resume writes that value into those epochs' lines where
    a version before :data:`MEASURE` left it out, so a later change of mode is told apart (review diff11 #1)."""
    if not isinstance(state, dict) or not isinstance(state.get("history"), list) or state.get("mode") not in MODES:
        return None
    o_end = state.get("o_end")
    if state["mode"] == "paper" and not isinstance(o_end, (int, float)):
        return None
    return len(state["history"]), (float(o_end) if state["mode"] == "paper" else None)


def run_indicators(lines: list[dict[str, Any]], mode: str | None = None) -> dict[str, Any] | None:
    """A run's run-level indicators from its metrics lines, those of its current history alone
    (:func:`current_history`, :func:`run_level`), as its training's last line gives them: ``mode``, ``o_end`` (the
    paper mode's, where the lines record it), ``epochs`` (those measured), ``unmeasured`` (epochs of which nothing
    was measured, every step skipped: left out), ``first_epoch``, ``estimating_error`` and ``gradient_stability``;
    None where they hold none."""
    history, measured, o_end = current_history(lines, mode)
    if not history:
        return None
    # (review diff26 #5) the epochs the values are made of: one of which nothing was measured (NaN) is left out
    gaps = sum(map(unmeasured, history))
    return {"mode": measured, "o_end": o_end, "epochs": len(history) - gaps, "unmeasured": gaps,
            "first_epoch": history[0]["epoch"], **run_level(history, measured)}


def check_same_indicators(saved_mode: str | None, saved_o_end: float | None, mode: str, o_end: float | None,
                          who: str) -> None:
    """Refuse (ValueError) to continue a history measured in another mode, or in the paper mode at another o_end;
    ``None`` (not saved) passes."""
    if saved_mode is not None and saved_mode != mode:
        raise ValueError(f"{who}: the saved indicator history is in the {saved_mode!r} mode, this run's is {mode!r}; "
                         f"the two cannot be mixed: resume with indicators={saved_mode!r} or start a new run")
    if (mode == "paper" and saved_mode == "paper" and saved_o_end is not None and o_end is not None
            and float(saved_o_end) != float(o_end)):
        raise ValueError(f"{who}: the saved paper-mode history was measured at o_end={saved_o_end:g}, this run's is "
                         f"{o_end:g}; resume with o_end={saved_o_end:g} or start a new run")


def check_o_end(o_end: Any, mode: str | None, argument: str = "mode") -> None:
    """Refuse (ValueError) an ``o_end`` that is not a number >= 1, or one given for indicators other than the paper
    mode's (``mode``, given as ``argument``), which alone read it."""
    if o_end is None:
        return
    number = real_number(o_end)  # (a NumPy number or a 0-dim tensor too, as ReSTE's o_end: review diff11 #6)
    if number is None or not 1.0 <= number < math.inf:
        # as ReSTE's o_end (review api #2)
        raise ValueError(f"o_end must be a number >= 1 (the paper mode's F is sign(w) abs(w)^(1/o_end)), got "
                         f"{o_end!r}")
    if mode != "paper":  # it would change nothing (review paper #3)
        raise ValueError(f"o_end applies to the 'paper' indicators only (their F is at o_end; the general mode's is "
                         f"each layer's estimator at its current o): drop o_end, or pass {argument}='paper'")


def _final_o(model: nn.Module) -> float:
    """The paper mode's o_end when none is given: the model's ReSTE o_end (a subclass's too), else the paper's 3;
    another estimator's hyper-parameter of that name is not ReSTE's (review extend #9: a plugin's moved it to 7)."""
    for est in estimators_of(model):
        if isinstance(est, ReSTE) and isinstance(getattr(est, "o_end", None), (int, float)):
            return float(est.o_end)
    return 3.0


class EquilibriumMeter:
    """Collects the two indicators over training.

    Call ``update()`` after every optimizer step (the gradients must still be
    there, or pass the step's stability read before they went: ``update(stability=gradient_stability(model))``),
    ``epoch_end()`` once per epoch (returns that epoch's values) and
    ``summary()`` at the end. ``state_dict``/``load_state_dict`` carry the history
    across a resume (a history of another mode is refused). ``o_end``: the paper mode's F is at it (default: the
    model's ReSTE o_end, else 3); the general mode reads none, and refuses one.

    >>> meter = EquilibriumMeter(model, mode="paper", o_end=3.0)
    """

    def __init__(self, model: nn.Module, mode: str = "general", o_end: float | None = None) -> None:
        layers = _measured_layers(model, mode)
        if all(layer.weight.numel() < 2 or not layer.weight.requires_grad for _, layer in layers):
            # known before any step (review rev14 #10, rev15 #9)
            raise ValueError(f"every binary layer of the {mode!r} indicators is frozen (requires_grad=False) or has "
                             "a single weight: gradient stability has nothing to measure; unfreeze a binary layer or "
                             "turn the indicators off")
        if mode == "general":  # F of each layer's estimator: one without it is refused now, not after a step
            lacking = sorted({est.name for _, layer in indicator_layers(model, mode)
                              for est in [getattr(layer, "weight_estimator", None)]
                              if callable(getattr(est, "defines_f", None)) and not est.defines_f()})
            if lacking:
                raise ValueError(f"the 'general' indicators need each estimator's F(x), and estimator(s) "
                                 f"{', '.join(map(repr, lacking))} define no _f; give the class an _f (the "
                                 "antiderivative of its _g), or use mode='paper', which needs none")
        check_o_end(o_end, mode)
        self.model, self.mode, self.o_end = model, mode, _final_o(model) if o_end is None else float(o_end)
        self.history: list[dict[str, float]] = []
        self._told_frozen = False
        self._reset()

    @property
    def every_step(self) -> bool:
        """Whether each step's ``update()`` counts: in the general mode (an epoch's mean); in the paper mode only
        an epoch's last counts, and a caller that knows which step that is may update there alone."""
        return self.mode != "paper"

    def _reset(self) -> None:
        self._error: Tensor | None = None
        self._stability: Tensor | None = None
        self._count = 0  # update() calls
        self._taken: Tensor | int = 0  # of them, the steps the optimizer took (general mode)

    def update(self, stability: Tensor | None = None, skipped: Tensor | bool | None = None) -> None:
        """Add one step's values; ``stability``: this step's :func:`gradient_stability`, read earlier by a caller
        whose gradients are gone by now (a loop that calls ``zero_grad()`` right after ``step()``); ``skipped``:
        whether the optimizer left this step out (an fp16 ``GradScaler`` that found inf or NaN gradients, see
        :func:`amp_skipped`), a bool or a 0-dim bool tensor (read without a host sync). A skipped step's values
        are left out: its gradients are inf or NaN by definition, and made the epoch's stability NaN (review
        math #1). In the paper mode the epoch's value is then its last step that was not skipped, so a caller
        whose steps may be skipped updates at every step."""
        if stability is not None and not isinstance(stability, Tensor) and real_number(stability) is None:
            raise TypeError(f"EquilibriumMeter.update: stability is gradient_stability(model)'s value (a tensor or a "
                            f"number), got {stability!r}"[:200])  # (review apifuzz1: failed at the next update)
        _check_skipped("EquilibriumMeter.update", skipped)
        if not self._told_frozen:
            self._told_frozen = True
            frozen = frozen_layers(self.model, self.mode)
            if frozen:
                warnings.warn(f"EquilibriumMeter: {len(frozen)} of {len(indicator_layers(self.model, self.mode))} "
                              f"binary layers are frozen or of one weight ({', '.join(frozen)}) and left out of "
                              "gradient stability",
                              UserWarning, stacklevel=2)
        e = estimating_error(self.model, self.mode, self.o_end)
        s = gradient_stability(self.model, self.mode) if stability is None else stability
        if not isinstance(s, Tensor):  # (a number read with .item(): as the tensor it was)
            s = torch.tensor(real_number(s), dtype=e.dtype, device=e.device)
        self._count += 1
        if skipped is not None:
            taken = ~torch.as_tensor(skipped, dtype=torch.bool, device=e.device)
            if self.mode == "paper":  # the last step taken (a skipped first one stands until a step is taken)
                if self._error is not None:
                    e, s = torch.where(taken, e, self._error), torch.where(taken, s, self._stability)
            else:
                zero = torch.zeros((), dtype=e.dtype, device=e.device)
                e, s = torch.where(taken, e, zero), torch.where(taken, s, zero.to(s.dtype))
            self._taken = self._taken + taken.to(torch.long)  # (the paper mode's too: epoch_end tells a NaN
            # of steps taken, a NaN gradient, from an epoch of skipped steps alone)
        else:
            self._taken = self._taken + 1
        if self.mode == "paper" or self._error is None:  # paper: keep the last iteration only
            self._error, self._stability = e, s
        else:
            self._error, self._stability = self._error + e, self._stability + s

    def partial_state(self) -> dict[str, Any]:
        """The running sums inside an epoch (tensors on the gradients' device), which a mid-epoch checkpoint keeps
        so that its epoch's values are those of an uninterrupted run (:meth:`load_partial_state`)."""
        return {"error": self._error, "stability": self._stability, "count": self._count, "taken": self._taken,
                "mode": self.mode}

    def load_partial_state(self, state: dict[str, Any]) -> None:
        """Continue an epoch from :meth:`partial_state`'s sums (a state saved before ``taken`` was kept: every
        step counted). The sums of another mode (a resume with another ``--indicators --force``) are not this
        mode's: the epoch then counts its steps from here (review rev15 #6)."""
        if state.get("mode", self.mode) != self.mode:
            self._reset()
            return
        self._error, self._stability, self._count = state["error"], state["stability"], int(state["count"])
        self._taken = state.get("taken", self._count)

    def epoch_end(self) -> dict[str, float]:
        if self._count == 0:
            raise RuntimeError("no update() since the last epoch_end()")
        taken = int(self._taken)
        n = 1 if self.mode == "paper" else taken
        nan = float("nan")  # (every step of the epoch skipped: nothing measured)
        values = {
            "estimating_error": float(self._error) / n if n else nan,
            "gradient_stability": float(self._stability) / n if n else nan,
        }
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if taken and bad:  # (review research1: summary() leaves a NaN epoch out as one of skipped steps, silently)
            what = " and ".join(f"{k.replace('_', ' ')} ({v})" for k, v in bad.items())
            # a NaN epoch is left out of the run's values (unmeasured); an inf one is in them (review mut13)
            then = ("summary() and the run-level values leave this epoch out, as one whose every step fp16's scaler "
                    "skipped" if any(math.isnan(v) for v in bad.values()) else "summary()'s and the run-level values "
                    "are then inf too")
            warnings.warn(f"EquilibriumMeter: this epoch's {what} is not finite though {taken} step"
                          f"{'s were' if taken > 1 else ' was'} measured: a weight or a gradient held inf or NaN (an "
                          f"estimator's g that returns NaN or inf, or a loss that overflowed?); {then}", UserWarning,
                          stacklevel=2)
        if values["gradient_stability"] == 0.0 and self._count > 1:  # (review newuser2 #2: zeroed gradients read
            # as a perfectly stable one; an epoch, not a first step, which a zero-initialised residual branch zeroes)
            warnings.warn("EquilibriumMeter: the gradient stability of this epoch is 0: every gradient it read was "
                          "zero; compute the indicators after backward() and before zero_grad() (zero_grad("
                          "set_to_none=False) leaves zeros)", UserWarning, stacklevel=2)
        self.history.append(values)
        self._reset()
        return values

    def summary(self) -> dict[str, float]:
        """Run-level values (:func:`run_level`)."""
        return run_level(self.history, self.mode)

    def measure(self) -> dict[str, float | None]:
        """How this meter measures, as each metrics line with its values records it (:data:`MEASURE`)."""
        return {MEASURE: self.o_end if self.mode == "paper" else None}

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "o_end": self.o_end, "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a saved history; refused when it was measured in another mode (or, in the paper mode, at another
        o_end): the two could not be averaged together. A state without them (an older one) is taken as it is."""
        check_same_indicators(state.get("mode"), state.get("o_end"), self.mode, self.o_end, "EquilibriumMeter")
        self.history = [dict(h) for h in state["history"]]


def _check_skipped(who: str, skipped: Any) -> None:
    """Refuse an update's ``skipped`` that is none of None, a bool (Python's or NumPy's) or a bool tensor
    (:func:`amp_skipped`'s), before it fails deep inside (review apifuzz1)."""
    if not (skipped is None or isinstance(skipped, bool) or type(skipped).__name__ in ("bool", "bool_")
            or isinstance(skipped, Tensor) and skipped.dtype == torch.bool):
        raise TypeError(f"{who}: skipped is True, False or a bool tensor (amp_skipped's), got {skipped!r}"[:200])


class FlipRatio:
    """The share of binary weights whose sign an optimizer step changed (larq's ``flip_ratio`` metric): a latent
    weight moves every step, its sign only when it crosses 0, and a ratio that falls towards 0 says that the binary
    network has stopped changing. The sign is the one the forward pass uses (0 -> +1), so the ratio counts what the
    network computes with; a Bop model's steps count as its ``flips`` do.

    Build it on the model to train (after its weights are loaded: the first step is compared with them), call
    ``update()`` after every ``optimizer.step()`` and ``epoch_end()`` once per epoch (the mean of its steps' ratios,
    over all the binary weights and per layer). Frozen binary weights (``requires_grad=False``) are left out, and a
    weight shared by two binary layers counts once. ``update`` returns the step's ratio as a 0-dim tensor on the
    weights' device (no host synchronisation until ``epoch_end``). Called every N steps, ``update`` counts the net
    sign changes over those steps (a weight flipped twice counts 0), and ``epoch_end`` averages over the calls.

    >>> flips = FlipRatio(model)
    >>> optimizer.step(); flips.update()
    >>> flips.epoch_end()    # {'flip_ratio': 0.0031, 'layers': {'1': 0.0042, '3': 0.0027}}
    """

    def __init__(self, model: nn.Module) -> None:
        seen: set[int] = set()
        self.layers: list[tuple[str, nn.Module]] = []
        for name, layer in binary_layers(model):
            if layer.weight.requires_grad and id(layer.weight) not in seen:
                seen.add(id(layer.weight))
                self.layers.append((name, layer))
        if not self.layers:
            raise ValueError("FlipRatio: the model has no trainable binary weight (pass the model that reste.binarize "
                             "returned; frozen weights, requires_grad=False, never flip)")
        self._sizes = [layer.weight.numel() for _, layer in self.layers]
        self._total = float(sum(self._sizes))
        self._size_tensor = torch.tensor(self._sizes, dtype=torch.float64)  # (moved to the weights' device once:
        # a list copied to a GPU each step would wait for the device there, what update() promises not to do)
        self._signs = self._read()
        self.history: list[dict[str, Any]] = []
        self._sums: Tensor | None = None  # per layer: the sum over this epoch's steps of its flipped share
        self._taken: Tensor | int | None = None  # the steps of this epoch the optimizer took (not skipped)
        self._steps = 0

    def _read(self) -> list[Tensor]:
        return [layer.weight.detach() < 0 for _, layer in self.layers]

    @torch.no_grad()
    def update(self, skipped: Tensor | bool | None = None) -> Tensor:
        """Compare every binary weight's sign with the last update's (or the construction's); returns the share
        of all of them that flipped. ``skipped``: whether the optimizer left this step out (fp16's scaler, as
        :func:`amp_skipped` tells it, a bool or a 0-dim bool tensor): such a step is left out of the epoch's mean, as
        :class:`EquilibriumMeter` leaves it out (its 0 flips pulled the mean down: review research2)."""
        _check_skipped("FlipRatio.update", skipped)
        signs = self._read()
        # (a model moved to another device since the last update, model.to("cuda") after FlipRatio(model): the kept
        # signs follow it, as the running sums do)
        counts = torch.stack([(new != old.to(new.device)).sum().to(signs[0].device)
                              for new, old in zip(signs, self._signs)])
        self._signs = signs
        if self._size_tensor.device != counts.device:
            self._size_tensor = self._size_tensor.to(counts.device)
        sizes = self._size_tensor
        shares = counts.double() / sizes
        taken: Tensor | int = 1
        if skipped is not None:  # (a skipped step's shares count 0, and so does the step)
            taken = (~torch.as_tensor(skipped, dtype=torch.bool, device=shares.device)).double()
            shares = shares * taken
        self._sums = shares if self._sums is None else self._sums.to(shares.device) + shares
        if isinstance(self._taken, Tensor) and isinstance(taken, Tensor):  # (the weights moved: it follows them)
            self._taken = self._taken.to(taken.device)
        self._taken = taken if self._taken is None else self._taken + taken
        self._steps += 1
        return counts.sum().double() / self._total

    def epoch_end(self) -> dict[str, Any]:
        """This epoch's mean flip ratio over its steps (``flip_ratio``, all binary weights: each step's share
        weighted by the layers' sizes) and each layer's (``layers``, by module name); the sums start again."""
        if self._steps == 0 or self._sums is None or self._taken is None:
            raise RuntimeError("no update() since the last epoch_end()")
        taken = float(self._taken)
        per_layer = (self._sums / taken).tolist() if taken else [math.nan] * len(self.layers)  # (every step skipped)
        total = sum(r * n for r, n in zip(per_layer, self._sizes)) / self._total
        values = {"flip_ratio": total, "layers": {name: r for (name, _), r in zip(self.layers, per_layer)}}
        self.history.append(values)
        self._sums, self._taken, self._steps = None, None, 0
        return values

    def state_dict(self) -> dict[str, Any]:
        """The epochs' values so far (``history``), for a checkpoint: a resumed run's ``load_state_dict`` keeps
        them. The signs are read again from the weights as they are loaded, at construction."""
        return {"history": [dict(h, layers=dict(h["layers"])) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back :meth:`state_dict`'s history."""
        if not isinstance(state, dict) or not isinstance(state.get("history"), list):
            raise ValueError("FlipRatio.load_state_dict takes what state_dict() returned: {'history': [...]}")
        self.history = [dict(h, layers=dict(h["layers"])) for h in state["history"]]
