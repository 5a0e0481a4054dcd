"""A PyTorch Lightning callback that does what ``reste train`` does around each epoch.

>>> from reste.integrations.lightning import BinarizationCallback
>>> trainer = lightning.Trainer(max_epochs=20, callbacks=[BinarizationCallback(indicators=True)])

At the start of every training epoch it moves the schedule of every estimator of
the LightningModule (``reste.set_progress(module, epoch, epochs)``: ReSTE's o from
1 to o_end) and logs the schedule values (``reste/o``). With ``indicators`` it
runs a ``reste.EquilibriumMeter`` after every optimizer step and logs the epoch's
estimating error and gradient stability (``reste/estimating_error``,
``reste/gradient_stability``) through the trainer's logger at the epoch's end.
Under manual optimization the gradients are read just before each ``opt.step()``
(``on_before_optimizer_step``), so a ``zero_grad()`` right after the step is fine.
Binary layers frozen with ``requires_grad=False`` are left out of gradient stability.
The meter's history and its mode are saved in Lightning checkpoints with the
callback's state; resuming with another indicator mode is refused.

Needs Lightning: ``pip install 'reste[lightning]'``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..indicators import (MODES, EquilibriumMeter, amp_scale, amp_skipped, check_o_end, check_same_indicators,
                          gradient_stability)
from ..layers import binary_layers, set_progress
from ..schedules import length_change
from .tensorboard import layer_indicators, layer_schedules

try:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        from pytorch_lightning import LightningModule, Trainer
        from pytorch_lightning.callbacks import Callback
        from pytorch_lightning.utilities import rank_zero_warn
    except ImportError:
        raise ImportError(
            "reste.integrations.lightning needs PyTorch Lightning: pip install 'reste[lightning]'"
        ) from None


def _indicator_mode(indicators: bool | str) -> str | None:
    """``True`` means the general mode, ``False`` none; a string must be a mode."""
    if indicators is True:
        return "general"
    if indicators is False or indicators is None:
        return None
    if indicators not in MODES:
        raise ValueError(f"unknown indicator mode {indicators!r}; valid: True, False, {', '.join(MODES)}")
    return indicators


class BinarizationCallback(Callback):
    """Move the estimators' schedules each epoch, log them and, optionally, the indicators.

    Args:
        epochs: the length of the schedule in epochs; by default the trainer's
            ``max_epochs`` (needed when the trainer stops by ``max_steps`` only).
        indicators: ``False`` (default), ``True`` or ``"general"`` (every binary
            layer, each estimator's own F, epoch mean) or ``"paper"`` (the authors'
            ``--cal_ind``: binary 3x3 convs, F at ``o_end``, last iteration).
        o_end: the final o for the ``"paper"`` indicators (default: the model's ReSTE ``o_end``, else 3); refused
            with other ``indicators``, which do not read it.
        prefix: the prefix of every logged name.
        module: the attribute of the LightningModule that holds the binary model
            (``"model"``, or a dotted path such as ``"model.backbone"``); by default the LightningModule itself.
        per_step: move the schedules before every training batch, to the fractional epoch
            ``epoch + batch_idx / batches_per_epoch`` (needs a train loader with a length), instead of once
            per epoch as ``reste train``. For runs of a few long epochs: with the per-epoch default a
            1-epoch schedule keeps o at its start (1) for the whole run, and says so once. ``reste/o`` is
            still logged once per epoch, its value at the epoch's start.
        per_layer: also log every estimator's schedule values per layer
            (``<prefix>schedule/<estimator module>/<name>``, at each epoch's start) and, with ``indicators``, the two
            indicators per layer (``<prefix>indicators/<layer>/estimating_error`` and ``.../gradient_stability``,
            at each epoch's last step), as ``reste train --tensorboard`` does: a model whose layers have
            estimators of other kinds or other schedules shows each of them.
    """

    def __init__(
        self,
        epochs: int | None = None,
        indicators: bool | str = False,
        o_end: float | None = None,
        prefix: str = "reste/",
        module: str | None = None,
        per_step: bool = False,
        per_layer: bool = False,
    ) -> None:
        super().__init__()
        if epochs is not None and (isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1):
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        self.epochs = None if epochs is None else int(epochs)
        self.mode = _indicator_mode(indicators)
        check_o_end(o_end, self.mode, "indicators")  # (an o_end the indicators would not read is refused)
        self.o_end = None if o_end is None else float(o_end)
        self.prefix = prefix
        self.module = module
        self.per_step = bool(per_step)
        self.per_layer = bool(per_layer)
        self._told_short = False
        self.meter: EquilibriumMeter | None = None
        self.schedule: dict[str, float] = {}
        self._history: list[dict[str, float]] = []
        self._last_step = -1
        self._epochs_used: int | None = None  # the schedule's length at the last epoch start (saved)
        self._epoch_started: int | None = None  # the epoch whose start hook ran last
        self._stateless_restart = False  # a checkpoint written inside an epoch without its loader's state
        self._saved_epochs: int | None = None  # a checkpoint's, to compare at the next epoch start
        self._saved_indicators: tuple[str | None, float | None] = (None, None)  # a checkpoint's mode and o_end
        self._stability: Any = None  # under manual optimization: the last step's gradient stability
        self._scale: Any = None  # fp16's scale before the last optimizer step (amp_scale)
        self._layers: dict[str, float] | None = None  # per_layer: each layer's indicators at the last step
        self._batch = 0  # the batch index of the step running
        self._closed: dict[str, float] | None = None  # the epoch's values, closed at its last step, to log at its end

    @property
    def state_key(self) -> str:
        """The key of its state in a checkpoint: two callbacks for two modules (``module=``) or with two
        ``prefix``es keep theirs apart; the default one keeps Lightning's key (the class name), which checkpoints
        written before this one have."""
        if self.module is None and self.prefix == "reste/":
            return super().state_key
        return self._generate_state_key(module=self.module, prefix=self.prefix)

    def _model(self, pl_module: LightningModule) -> nn.Module:
        """The module whose binary layers are scheduled."""
        if self.module is None:
            return pl_module
        try:  # a dotted path reaches a nested module ("model.backbone")
            model = pl_module.get_submodule(self.module)
        except AttributeError:
            model = None
        if not isinstance(model, nn.Module):
            raise ValueError(f"the LightningModule has no module attribute {self.module!r}")
        return model

    def _epochs(self, trainer: Trainer) -> int:
        epochs = self.epochs if self.epochs is not None else trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError(
                "BinarizationCallback needs the number of epochs of the schedule: "
                "give the Trainer max_epochs or the callback epochs="
            )
        return int(epochs)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model = self._model(pl_module)
        if not binary_layers(model):
            raise ValueError("BinarizationCallback: the model has no binary layers (see reste.binarize)")
        if self.mode is not None:
            self.meter = EquilibriumMeter(model, self.mode, self.o_end)
            self._check_saved_indicators()
            self.meter.history = [dict(h) for h in self._history]
        self._last_step = trainer.global_step
        self._stability = None

    def _check_saved_indicators(self) -> None:
        if self.meter is not None and self._history:
            check_same_indicators(*self._saved_indicators, self.meter.mode, self.meter.o_end, "BinarizationCallback")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_started = trainer.current_epoch
        epochs = self._epochs(trainer)
        saved, self._saved_epochs = self._saved_epochs, None
        if saved is not None and saved != epochs:  # resumed from a checkpoint with another max_epochs
            told = length_change(saved, epochs, trainer.current_epoch, "the estimators' schedules")
            rank_zero_warn(f"BinarizationCallback: {told}")  # once, not once per process
        self._epochs_used = epochs
        self._closed = None
        if self.per_step and not 0 < trainer.num_training_batches < float("inf"):
            raise ValueError("BinarizationCallback(per_step=True) needs the number of batches per epoch: give the "
                             "Trainer a train loader with a length, or limit_train_batches")
        if epochs == 1 and not self.per_step and not self._told_short:
            self._told_short = True
            rank_zero_warn("BinarizationCallback: a 1-epoch schedule moves once per epoch, so the estimators stay "
                           "at their start (ReSTE's o = 1) for the whole run; use BinarizationCallback(per_step=True) "
                           "to move them every batch")
        self.schedule = set_progress(self._model(pl_module), trainer.current_epoch, epochs)
        values = {k: float(v) for k, v in self.schedule.items()}
        if self.per_layer:
            values.update(layer_schedules(self._model(pl_module)))
        if values:
            pl_module.log_dict(
                {self.prefix + k: v for k, v in values.items()}, on_step=False, on_epoch=True,
                sync_dist=True,  # the same on every process: the mean changes nothing, and DDP does not warn
            )

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        batches = loop.get("epoch_loop.batch_progress") or {}
        inside = (batches.get("current") or {}).get("processed", 0) > 0 and not batches.get("is_last_batch", True)
        # a checkpoint written inside an epoch with no loader state (an older reste's in-memory loader kept none)
        self._stateless_restart = inside and not (loop.get("state_dict") or {}).get("combined_loader")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._stateless_restart:  # (review diff28 #6: Lightning's own warning no longer came)
            self._stateless_restart = False
            if callable(getattr(trainer.train_dataloader, "load_state_dict", None)):  # (Lightning warns of others)
                rank_zero_warn("BinarizationCallback: the checkpoint was written inside an epoch and holds no state "
                               "of the train loader (an older reste's in-memory loader kept none): the resumed epoch "
                               "draws its first batches again, not those it had left")
        if batch_idx == 0 and self._epoch_started != trainer.current_epoch:
            # Lightning restarted a fit from a checkpoint of an epoch's last batch without the next epoch's start
            # hook: that epoch trained at the saved epoch's schedule (review diff28, suggestion 3). (Restarted inside
            # an epoch, the estimators' loaded state is that epoch's, its length the saved one: integ1 #2.)
            self.on_train_epoch_start(trainer, pl_module)
        self._batch = batch_idx
        if self.per_step:
            progress = trainer.current_epoch + batch_idx / trainer.num_training_batches
            set_progress(self._model(pl_module), progress, self._epochs_used or self._epochs(trainer))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Once per optimizer step (not per accumulated micro-batch), after it, like reste train.
        if self.meter is None or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        # a step fp16's scaler skipped (inf or NaN gradients) is left out of the indicators (review math #1)
        skipped, self._scale = amp_skipped(self._scale, amp_scale(_scaler(trainer))), None
        if pl_module.automatic_optimization:  # the gradients are still there (zeroed before the next backward)
            self.meter.update(skipped=skipped)
            if self.per_layer and self._last_batch(trainer, batch_idx):  # now: a validation zeroes them first
                self._layers = layer_indicators(self.meter, stability=skipped is None or not bool(skipped))
        else:
            stability, self._stability = self._stability, None
            if stability is None:  # no optimizer step of the callback's seeing: the gradients are read here
                self.meter.update(skipped=skipped)
            else:
                self.meter.update(stability, skipped=skipped)
            if self._layers is not None and skipped is not None and bool(skipped):  # read before the step, which
                self._layers = {k: v for k, v in self._layers.items()  # the scaler then skipped (review rev15 #10)
                                if not k.endswith("/gradient_stability")}
        if 0 < trainer.num_training_batches < float("inf") and self._last_batch(trainer, batch_idx):
            # the epoch is closed at its last step, not at on_train_epoch_end: a checkpoint Lightning writes between
            # them (validation not every epoch, val_check_interval < 1, every_n_train_steps) held the epochs
            # before it alone, and a resume from it dropped the epoch unsaid (review integ1 #1)
            self._closed = self._close_epoch()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self.meter is not None:  # fp16's scale before the step: lower after it where the scaler skipped it
            self._scale = amp_scale(_scaler(trainer))
        # Manual optimization: the user may zero the gradients right after opt.step(); read them before it.
        if self.meter is not None and not pl_module.automatic_optimization:
            self._stability = gradient_stability(self.meter.model, self.meter.mode)
            if self.per_layer and self._last_batch(trainer, self._batch):
                self._layers = layer_indicators(self.meter)

    @staticmethod
    def _last_batch(trainer: Trainer, batch_idx: int) -> bool:
        """Whether batch ``batch_idx`` is the epoch's last (every batch where the count is not known)."""
        total = trainer.num_training_batches
        return not 0 < total < float("inf") or batch_idx + 1 >= total

    def _close_epoch(self) -> dict[str, float] | None:
        """End the meter's epoch into the history; its values (and per_layer's), or None where nothing was
        measured since the last one."""
        if self.meter is None or self.meter._count == 0:
            return None
        values = dict(self.meter.epoch_end())  # (a copy: the meter keeps its own in its history)
        if self.per_layer:  # the weights and gradients of the epoch's last step, as reste train --tensorboard
            values.update(self._layers if self._layers is not None else layer_indicators(self.meter))
            self._layers = None
        self._history = [dict(h) for h in self.meter.history]
        return values

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.meter is None and self._history:
            # an epoch trained unmeasured ends the history, as a metrics line without indicators ends reste train's
            # (indicators.current_history): a later fit's measured epochs are another history, in any mode, not
            # joined across the gap (review integ1 #3)
            self._history, self._saved_indicators = [], (None, None)
        values, self._closed = self._closed, None
        if values is None:  # (a loader without a length: closed here)
            values = self._close_epoch()
        if values is None:
            return
        # the same on every process too (DDP's weights and averaged gradients)
        pl_module.log_dict({self.prefix + k: v for k, v in values.items()}, on_step=False, on_epoch=True,
                           sync_dist=True)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._saved_epochs = None  # a checkpoint of a fit with no epoch left: nothing for the next fit to compare

    @property
    def history(self) -> list[dict[str, float]]:
        """The indicators of every finished epoch (``estimating_error``, ``gradient_stability``), in the process
        that trained. Under ``strategy="ddp_spawn"`` the launching process's callback stays empty: the values are
        in the logger, ``trainer.callback_metrics`` and the checkpoint's ``callbacks`` state."""
        return [dict(h) for h in self._history]

    def state_dict(self) -> dict[str, Any]:
        # (review integ1 #2) a fit resumed inside an epoch starts no epoch before its next: the loaded length stays
        epochs = self._epochs_used if self._epochs_used is not None else self._saved_epochs
        state: dict[str, Any] = {"history": self.history, "epochs": epochs}
        if self.meter is not None:  # what the history was measured with (a resume in another mode is refused)
            state.update(mode=self.meter.mode, o_end=self.meter.o_end)
        elif self._history:  # a fit without the meter keeps the loaded history's (review integ1 #3)
            state.update(zip(("mode", "o_end"), self._saved_indicators))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._history = [dict(h) for h in state_dict.get("history", [])]
        self._saved_indicators = (state_dict.get("mode"), state_dict.get("o_end"))  # absent in older checkpoints
        self._check_saved_indicators()  # here if the meter exists, else at on_fit_start
        # compared at the next epoch start (some strategies restore after on_fit_start, the default one before)
        self._saved_epochs = state_dict.get("epochs")
        if self.meter is not None:
            self.meter.history = self.history


def _scaler(trainer: Any) -> Any:
    """The fp16 ``GradScaler`` of the trainer's precision (``precision="16-mixed"``), or None."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
