"""Binary convolution and linear layers.

``BinaryConv1d``, ``BinaryConv2d``, ``BinaryConv3d``, ``BinaryConvTranspose1d`` / ``2d`` / ``3d`` and
``BinaryLinear`` take the arguments of the ``torch.nn`` layer they are named after, plus

* ``weight_estimator``: the estimator binarizing the latent weights (name or instance);
* ``input_estimator``: the estimator binarizing the inputs, or ``None`` for real
  activations (1W/32A); defaults to the same kind as ``weight_estimator``, built as it is (from a name or a spec
  dict: one of its own; an instance: that instance, shared, as ``binarize`` shares it);
* ``scaling``: ``"layer"`` (one alpha = mean(abs(W)), not detached, as the paper),
  ``"channel"`` (one alpha per output channel: the mean over its inputs and kernel taps) or ``"none"``.
  A transposed convolution's weight is (in, out / groups, *kernel): its output channels are along dim 1.

Forward: y = op(Q_a(x), Q_w(W) * alpha) in training; in eval mode op(Q_a(x), Q_w(W)) * alpha, the scale after the
sum, so that binary sums are exact integers and a tie is 0, which the next sign takes as +1, as the packed file
does (the same numbers up to float32 rounding). Each layer reports ``precision = 1``
(its weights) and ``input_precision`` (1, or 32 for real activations), so tools
can tell binary layers from float ones without knowing their types.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cuda_ext
from .errors import unknown_choice
from .estimators import SIXTEEN_BIT, Estimator, get_estimator, layer_forms
from .fused import PLAIN, under_dispatch_mode, under_functorch
from .hparams import outside_reste, real_number

SCALINGS = ("layer", "channel", "none")

class _SameAsWeights:
    """``input_estimator``'s default: an estimator of the weight estimator's kind (so said in ``help()``)."""

    def __repr__(self) -> str:
        return "<as weight_estimator>"


_DEFAULT = _SameAsWeights()


def _estimator_spec(spec: Any) -> Estimator:
    """A fresh estimator for a name or a spec dict (``Estimator.spec()``); an instance is used as given (and so
    may be shared)."""
    return Estimator.from_spec(spec) if isinstance(spec, dict) else get_estimator(spec)


def _float_layer_loaded(module: nn.Module, incompatible: Any) -> None:
    """After a binary layer loaded a float layer's state (pretrain in float, binarize, load the float weights):
    its estimators' schedule state is not missing, it stays where it is. A binary layer's state without
    some estimator's state (a 1W/32A layer's in a 1W1A one) is still an error. A module-level function, so
    the model still pickles."""
    prefix = module.__dict__.pop("_float_state", None)
    if prefix is not None:
        ours = {prefix + "weight_estimator._extra_state", prefix + "input_estimator._extra_state"}
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in ours]


class _BinaryMixin:
    """Shared logic of the binary layers: estimators, scaling and the binarized weight."""

    precision = 1
    weight: nn.Parameter

    def _setup(self, weight_estimator: Any, input_estimator: Any, scaling: str | None) -> None:
        scaling = "none" if scaling is None else scaling  # (as binarize and models.create take it: review apifuzz1)
        if scaling not in SCALINGS:
            raise ValueError(unknown_choice("scaling", scaling, SCALINGS))
        self.scaling = scaling
        self.weight_estimator = _estimator_spec(weight_estimator)
        if input_estimator is _DEFAULT:  # built as the weights' is (binarize's activations=True too): a name or a spec
            input_estimator = weight_estimator  # dict gives the inputs their own, an instance is shared, as it is (its
            # class may be one the registry cannot build again: unregistered, or keeping its parent's name)
        self.input_estimator = None if input_estimator is None else _estimator_spec(input_estimator)
        self.register_load_state_dict_post_hook(_float_layer_loaded)

    def get_extra_state(self) -> dict[str, Any]:
        """The layer's own setting that its weights do not show: its scaling (a state loads into a layer of the
        same scaling only)."""
        return {"scaling": self.scaling}

    def set_extra_state(self, state: Any) -> None:
        pass  # (checked by _load_from_state_dict before it comes here)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # a float layer's state (its weight, and no estimator state): its estimators keep their schedules
        self._float_state = prefix if prefix + "weight" in state_dict and not any(
            k.startswith(prefix) and k.endswith("_extra_state") for k in state_dict) else None
        # a state of another scaling would load without a word and give other outputs: refused by name, as an
        # estimator of other settings is
        saved = state_dict.get(prefix + "_extra_state")
        scaling = saved.get("scaling") if isinstance(saved, dict) else None
        if scaling is not None and scaling != self.scaling:
            args[-1].append(f"{prefix}_extra_state: the state of a binary layer with scaling {scaling!r} cannot load "
                            f"into one with scaling {self.scaling!r} (the weights' scale, and so the outputs, would "
                            f"differ); build the model with scaling={scaling!r}")
            return
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]
        missing = args[2]  # (local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if prefix + "_extra_state" in missing:  # a state saved before the layer kept its scaling: it loads as it did
            missing.remove(prefix + "_extra_state")

    @property
    def input_precision(self) -> int:
        return 32 if self.input_estimator is None else 1

    def scale(self) -> Tensor | None:
        """alpha: the scaling factor(s) of the binary weights (with gradient)."""
        return self._scale_of(self.weight)

    def _scale_of(self, w: Tensor) -> Tensor | None:
        if self.scaling == "layer":
            return w.abs().mean()
        if self.scaling == "channel":
            # under torch.fx w is a Proxy, of no known rank: the layer's own (out, in, *kernel_size)
            ndim = 2 + len(getattr(self, "kernel_size", ())) if isinstance(w, torch.fx.Proxy) else w.dim()
            return w.abs().mean(dim=tuple(range(1, ndim)), keepdim=True)
        return None

    def _fused_groups(self) -> int | None:
        """How many alphas the fused ``scaled_sign`` computes, each over a consecutive block of the weight's memory
        (1: the layer's; out_channels: per output channel, dim 0); ``None``: no fused form for this scaling."""
        return {"layer": 1, "channel": self.weight.shape[0]}.get(self.scaling)

    def binary_weight(self) -> Tensor:
        """The weight used in the forward pass: sign(W) (with the estimator's backward) times alpha.

        On a GPU with ``layer`` or ``channel`` scaling this is one fused computation (the estimator's
        ``scaled_sign``: two Triton launches forward and two backward); elsewhere PyTorch ops."""
        scaled_sign = getattr(self.weight_estimator, "scaled_sign", None)  # any module may stand in
        # (a subclass's own scale: the fused weight's mean(abs(w)) is not it)
        groups = None if isinstance(self.weight, torch.fx.Proxy) or self._own_scale() else self._fused_groups()
        if scaled_sign is not None and groups is not None:
            fused = scaled_sign(self.weight, groups)
            if fused is not None:
                return fused
        z, widen = self._computed_weight()
        bw = self.weight_estimator(z)
        alpha = self._scale_of(z) if widen else self.scale()
        y = bw if alpha is None else bw * alpha
        return y.to(self.weight.dtype) if widen else y

    def _computed_weight(self) -> tuple[Tensor, bool]:
        """The latent weight as the binary weight is computed from it, and whether it was widened: a 16-bit weight
        (without a scale of the layer's own) in float32, its result (and gradient) rounded once, as the fused kernels
        do; in 16 bits, dW's two terms were each rounded before they cancelled (review kern1, suggestion 3)."""
        w = self.weight
        # (under torch.fx w is a Proxy, of no known dtype: the parameter's own, so that a traced 16-bit model computes
        # the eager one's numbers; the final cast is to the traced weight's dtype, read when the graph runs)
        real = self._parameters.get("weight") if isinstance(w, torch.fx.Proxy) else w
        widen = real is not None and real.dtype in SIXTEEN_BIT and not self._own_scale()
        return (w.float() if widen else w), widen

    def _eval_forward(self, input: Tensor, op: Callable[[Tensor, Tensor, Tensor | None], Tensor],  # noqa: A002
                      dims: int) -> Tensor:
        """The eval-mode forward: op(Q_a(x), Q_w(W)) * alpha + bias, the scale after the sum (``op``: the layer's
        conv or linear on (inputs, weight, bias); ``dims``: its output's dimensions after the channels). With binary
        inputs each sum of +-1 is an integer, exact in float32 (to 2^24) whatever order the conv adds in, so a tie
        is exactly 0, which the next sign takes as +1, as the packed file's integer sums do; sums of +-alpha rounded
        to +-tiny, and the next sign gave -1 about half the time (review layers1). The same numbers up to rounding
        as ``op(Q_a(x), binary_weight(), bias)``, which training computes (its kernels, its gradients: unchanged)
        and a layer whose weight is not sign(W) times one scale per output channel still computes (a binary_weight,
        a conv or a scale of its own), as does a nested input."""
        x = self.binary_input(input)
        # (a nested tensor, nn.TransformerEncoder's fast path with a padding mask, takes no dense scale or bias: the
        # binary weight inside the sum, as in training)
        parts = None if not isinstance(x, torch.fx.Proxy) and x.is_nested else self._sign_and_scale(dims)
        if parts is None:
            return op(x, self.binary_weight(), self.bias)  # type: ignore[attr-defined]
        sign_w, alpha = parts
        y = op(x, sign_w, None)
        if alpha is not None:  # (in the conv's dtype: a 16-bit layer's, or autocast's, stays that)
            y = y * alpha.to(y.dtype)
        bias = self.bias  # type: ignore[attr-defined]
        return y if bias is None else y + bias.to(y.dtype).reshape(-1, *(1,) * dims)

    def _sign_and_scale(self, dims: int) -> tuple[Tensor, Tensor | None] | None:
        """sign(W) (the weight estimator's, with its backward) and alpha, one number or one per output channel shaped
        to multiply the output, computed as ``binary_weight`` computes them (a 16-bit weight's in float32); ``None``
        where the binary weight is not sign(W) times such a scale: a ``binary_weight`` or ``_conv_forward`` of the
        layer's own, an estimator's own ``scaled_sign``, a ``scale`` of its own of another shape."""
        if "binary_weight" in self.__dict__ or "_conv_forward" in self.__dict__ or _class_steps(
                type(self), ("binary_weight", "_conv_forward")):
            return None
        est = self.weight_estimator  # (its class's method: a bound one's __func__ is not kept under torch.compile)
        if getattr(type(est), "scaled_sign", Estimator.scaled_sign) is not Estimator.scaled_sign \
                or "scaled_sign" in est.__dict__:
            return None
        w = self.weight
        if self._own_scale():  # one number, or one per output channel in a conv's or a linear layer's (out, 1, ...)
            if isinstance(w, torch.fx.Proxy) or isinstance(self, _BinaryConvTranspose):
                return None  # (a traced scale's shape is not known; a transposed weight's output channels are dim 1)
            alpha = self.scale()
            if alpha is None:
                return self.weight_estimator(w), None
            # (a plain number, which sign(W) * alpha takes, or a scale of another shape: the weight inside the sum)
            if not isinstance(alpha, torch.Tensor) or (
                    alpha.numel() != 1 and tuple(alpha.shape) != (w.shape[0],) + (1,) * (w.dim() - 1)):
                return None
            shaped = alpha.reshape(()) if alpha.numel() == 1 else alpha.reshape(-1, *(1,) * dims)
            return self.weight_estimator(w), shaped
        z, widen = self._computed_weight()  # (as binary_weight: alpha from a 16-bit weight's float32 copy)
        sign_w = self.weight_estimator(z)
        return (sign_w.to(w.dtype) if widen else sign_w), self._output_scale(z, dims)  # (+-1: exact in 16 bits)

    def _output_scale(self, w: Tensor, dims: int) -> Tensor | None:
        """``_scale_of(w)`` shaped to multiply the layer's output: one number, or (out_channels, 1 per ``dims``)."""
        alpha = self._scale_of(w)
        return alpha if alpha is None or self.scaling == "layer" else alpha.reshape(-1, *(1,) * dims)

    def _ext_forward(self, x: Tensor, op: int) -> Tensor | None:
        """The layer's forward as one call into the compiled extension (:mod:`reste.cuda_ext`; ``op``: 0 linear, else
        the convolution's spatial dimensions), or ``None`` where it does not take this call. The nodes are those that
        ``binary_input`` and ``binary_weight`` make through it; what the one call saves is their host time in Python,
        which bounds an eager GPU step."""
        # (read from the module's tables, not through nn.Module's __getattr__: a microsecond a layer on a GPU host)
        params, modules = self._parameters, self._modules  # type: ignore[attr-defined]
        w, bias = params.get("weight"), params.get("bias", False)
        # (None, real inputs, is kept as a plain attribute where it was never a module)
        est_x = modules["input_estimator"] if "input_estimator" in modules else self.__dict__.get("input_estimator",
                                                                                                  _ABSENT)
        if w is None or bias is False or est_x is _ABSENT or self.watch_inputs is not None:
            return None  # (a parametrized weight or bias; the first forward's check of the inputs: the module path)
        if not cuda_ext.takes_layer(x, w, bias):  # (never while compiling: the tests below are not traced)
            return None
        if not self.__dict__.keys().isdisjoint(_STEPS) or _class_steps(type(self), _STEPS):
            return None  # a step of the forward of its own (set on the layer, or its class's): the module path
        forms = layer_forms(est_x, modules.get("weight_estimator"))
        groups = 1 if self.scaling == "layer" else self._fused_groups()
        if forms is None or groups is None:
            return None
        if not op:
            return cuda_ext.binary_layer(x, w, bias, *forms, groups, 0)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):  # type: ignore[attr-defined]
            return None  # (a padded copy first, or padding by name: the module path)
        stride, padding, dilation = self.stride, self.padding, self.dilation  # type: ignore[attr-defined]
        if not (type(stride) is tuple and type(padding) is tuple and type(dilation) is tuple):
            # (a number set after construction, m.stride = 2, which F.conv2d takes too: one per spatial dimension)
            stride, padding, dilation = (v if isinstance(v, (tuple, list)) else (v,) * op
                                         for v in (stride, padding, dilation))
        return cuda_ext.binary_layer(x, w, bias, *forms, groups, op, stride, padding, dilation,
                                     self.groups)  # type: ignore[attr-defined]

    def _own_scale(self) -> bool:
        """Whether this layer's class, or this layer itself (a method set on it), has a ``scale`` of its own, which the
        module path's weight calls and a fused weight (mean(abs(w))) would not."""
        return "scale" in self.__dict__ or _class_steps(type(self), ("scale",))

    # ``binarize`` sets this to the layer's name: its first forward checks that the inputs are not all >= 0; and
    # ``inputs_told`` to a flag its model's layers share, so that the model warns once
    watch_inputs: str | None = None
    inputs_told: list[bool] | None = None

    def binary_input(self, x: Tensor) -> Tensor:
        if self.input_estimator is None:
            return x
        # (never while compiling, exporting, tracing or under torch.func's vmap: a data-dependent check would split
        # the graph, differ between torch.jit.trace's two runs, or fail on vmap's batched tensor; nor on a tensor
        # whose values cannot be read: a later, real batch is checked)
        if self.watch_inputs is not None and not _transformed(x) and not _unreadable(x):
            _check_constant_input(self, x)
        return self.input_estimator(x)

    def extra_repr(self) -> str:
        a = "real" if self.input_estimator is None else self.input_estimator.name
        base = super().extra_repr()  # type: ignore[misc]  # the torch.nn layer's
        return f"{base}, weights={self.weight_estimator.name}, inputs={a}, scaling={self.scaling}"


_ABSENT = object()
# what a binary layer's forward calls, which a subclass may change (another scale, a conv of its own): the one call
# into the extension would pass over it
_STEPS = ("binary_input", "binary_weight", "scale", "_fused_groups", "_conv_forward")


# per class (weakly: a parametrized layer's class is made for it, and goes with it), per tuple of steps
_OWN_STEPS: weakref.WeakKeyDictionary[type, dict[tuple[str, ...], bool]] = weakref.WeakKeyDictionary()


def _class_steps(cls: type, steps: tuple[str, ...]) -> bool:
    """Whether ``cls``, a subclass of one of the binary layers, defines one of ``steps`` of its own."""
    if torch.compiler.is_compiling():  # (the compiler traces the test itself, not a weak table)
        return _differs(cls, steps)
    known = _OWN_STEPS.get(cls)
    if known is None:
        known = _OWN_STEPS[cls] = {}
    own = known.get(steps)
    if own is None:
        own = known[steps] = _differs(cls, steps)
    return own


def own_steps(layer: nn.Module, steps: tuple[str, ...]) -> list[str]:
    """Which of ``steps`` (methods of reste's binary layers: ``forward``, ``binary_input`` ...) ``layer`` has of its
    own: set on the layer itself, or defined by its class over reste's; ``[]`` for a module that is none of them."""
    if not isinstance(layer, _BinaryMixin):
        return []
    return [step for step in steps if step in layer.__dict__ or _differs(type(layer), (step,))]


def _differs(cls: type, steps: tuple[str, ...]) -> bool:
    library = next(c for c in cls.__mro__ if c.__module__ == __name__ and not c.__name__.startswith("_"))
    return any(getattr(cls, name, None) is not getattr(library, name, None) for name in steps)


def _may_take(x: Any) -> bool:
    """The first, cheap test of a layer's one call into the compiled extension: a plain tensor (not an fx Proxy,
    whose attributes are traced) that the extension may take."""
    return type(x) in PLAIN and cuda_ext.may_take(x)


def _transformed(x: Tensor) -> bool:
    """Whether ``x`` flows through a compiler, a tracer or a ``torch.func`` transform rather than eagerly."""
    return (isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or under_functorch())


def _unreadable(x: Tensor) -> bool:
    """Whether the values of ``x`` cannot be read back to the host eagerly: the meta device, a nested tensor
    (``nn.TransformerEncoder``'s fast path with a padding mask: review api #6), a tensor subclass, or any tensor under
    a dispatch mode (``FakeTensorMode``: review api #15)."""
    return x.is_meta or x.is_nested or type(x) is not torch.Tensor or under_dispatch_mode()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, then every module back in its own mode (``model.train(was)``
    would put a frozen batch norm inside a training model back in training mode): for the dummy forwards of a
    summary, an export, a check."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def unwatched(model: nn.Module) -> Iterator[None]:
    """Inside the block, forwards of ``model`` leave the first-forward check of the binary layers' inputs (see
    :func:`_check_constant_input`) for a later, real batch: a summary's or an export's zero dummy input (all >= 0,
    and exact zeros after a bias-free conv and an untrained BatchNorm) is no sign of a ReLU before a layer."""
    watched = [(m, m.watch_inputs) for m in model.modules() if getattr(m, "watch_inputs", None) is not None]
    for m, _ in watched:
        m.watch_inputs = None
    try:
        yield
    finally:
        for m, name in watched:
            m.watch_inputs = name


def model_device(model: nn.Module, default: Any = None) -> Any:
    """The device of ``model``'s first parameter or buffer (where it runs), ``default`` for a model of neither."""
    return next((t.device for t in itertools.chain(model.parameters(), model.buffers())), default)


def dummy_forward(model: nn.Module, input_size: tuple[int, ...], *, one_line: bool = True) -> Any:
    """One forward of ``model`` on zeros of shape ``(1, *input_size)`` (on its parameters' device and dtype) in eval
    mode (each module back in its own mode after: a frozen BatchNorm stays frozen), without gradients or the input
    check (:func:`unwatched`: a zero input is no sign of a ReLU before a binary layer), for a summary or an export.
    Where the model cannot take that size: its own error in one line, or as it is raised (``one_line=False``)."""
    from .errors import UsageError

    param = next(model.parameters(), None)
    kwargs = {} if param is None else {"device": param.device, "dtype": param.dtype}
    with torch.no_grad(), unwatched(model), eval_mode(model):
        try:
            return model(torch.zeros(1, *input_size, **kwargs))
        except Exception as err:  # noqa: BLE001 - the model's own error, in one line
            if not one_line:
                raise
            first = str(err).strip().splitlines()[0][:150] if str(err).strip() else type(err).__name__
            raise UsageError(f"the model fails on an input of input_size {tuple(input_size)} ({first}); check "
                             "input_size against the model") from None


def _check_constant_input(layer: "_BinaryMixin", x: Tensor) -> None:
    """Once per layer (at its first forward), once per model (per ``binarize``: its layers share ``inputs_told``):
    warn when a binarized layer's inputs are all >= 0 (a ReLU before it, as in torchvision's and timm's ResNets),
    which sign makes +1 everywhere. Once per process was too few: a second model, in a notebook or a script comparing
    architectures, was not told."""
    if not x.numel():  # an empty batch tells nothing: the next one is checked
        return
    name, layer.watch_inputs = layer.watch_inputs, None
    told = layer.inputs_told if layer.inputs_told is not None else [False]
    if told[0] or not x.is_floating_point() or not bool((x.detach() >= 0).all()):
        return
    told[0] = True
    warnings.warn(
        f"binarize: the inputs of binary layer {name!r} are all >= 0 (a ReLU before it, or images in [0, 1] into a "
        "binarized first layer?), and likely those of the layers like it: sign makes them +1 everywhere, so they "
        "carry nothing and the layers before get no useful gradient (in conv-BN-ReLU networks, torchvision's "
        "MobileNetV2 among them, the gradients can then overflow through the batch norms, to NaN within a few "
        "steps); binarize with activations=False (1W/32A), or put the sign before the ReLU (BatchNorm -> sign -> "
        "conv, as the zoo's blocks do)",
        stacklevel=outside_reste("torch", "torchvision", "timm", "transformers"))  # the user's model(x)


class _BinaryConv(_BinaryMixin):
    """The binary convolutions' constructor and forward: the ``nn.ConvNd`` arguments, then the keyword-only
    ``weight_estimator``, ``input_estimator`` and ``scaling``."""

    def __init__(self, *args: Any, weight_estimator: Any = "reste", input_estimator: Any = _DEFAULT,
                 scaling: str = "layer", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # the torch.nn convolution's (after this mixin in the MRO)
        self._setup(weight_estimator, input_estimator, scaling)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.ConvNd's name: layer(input=x) keeps working
        if not self.training:  # type: ignore[attr-defined]  # (the scale after the sum: _eval_forward)
            return self._eval_forward(input, self._conv_forward, len(self.kernel_size))  # type: ignore
        y = self._ext_forward(input, len(self.kernel_size)) if _may_take(input) else None  # type: ignore
        if y is not None:
            return y
        x = self.binary_input(input)
        return self._conv_forward(x, self.binary_weight(), self.bias)  # type: ignore[attr-defined]


class BinaryConv1d(_BinaryConv, nn.Conv1d):
    """1-D convolution (audio, keyword spotting, sensor signals: (N, C, L) inputs) with binary weights (and binary
    inputs unless ``input_estimator=None``); ``channel`` scaling takes one alpha per output channel over its
    (in_channels / groups, kernel) weights. Arguments: ``nn.Conv1d``'s, then ``weight_estimator``,
    ``input_estimator`` and ``scaling`` by keyword."""


class BinaryConv2d(_BinaryConv, nn.Conv2d):
    """2-D convolution with binary weights (and binary inputs unless ``input_estimator=None``). Arguments:
    ``nn.Conv2d``'s, then ``weight_estimator``, ``input_estimator`` and ``scaling`` by keyword."""


def _signature(conv: type) -> inspect.Signature:
    """``conv``'s constructor arguments and the estimator keywords: what ``help()``, ``inspect`` and IDEs show of a
    binary convolution (its own ``__init__`` passes the former on as ``*args, **kwargs``)."""
    base = [p for p in inspect.signature(conv.__init__).parameters.values() if p.name != "self"]
    own = inspect.signature(_BinaryConv.__init__).parameters
    keywords = [own[k] for k in ("weight_estimator", "input_estimator", "scaling")]
    return inspect.Signature(base + keywords)


class BinaryConv3d(_BinaryConv, nn.Conv3d):
    """3-D convolution (video, volumes: (N, C, D, H, W) inputs) with binary weights (and binary inputs unless
    ``input_estimator=None``). Arguments: ``nn.Conv3d``'s, then ``weight_estimator``, ``input_estimator`` and
    ``scaling`` by keyword. Trains and saves like the others;
    ``export_onnx`` writes it, the packed format does not."""


@torch.fx.wrap
def _conv_transpose_to(x: Tensor, binary_x: Tensor, weight: Tensor, bias: Tensor | None, output_size: list[int],
                       stride: tuple[int, ...], padding: tuple[int, ...], kernel_size: tuple[int, ...],
                       groups: int, dilation: tuple[int, ...]) -> Tensor:
    """The transposed convolution of ``binary_x`` whose output padding makes ``output_size`` for the input ``x``, as
    ``nn.ConvTransposeNd`` finds it (its checks and errors). One call under torch.fx, which cannot trace the padding:
    it reads and compares the input's sizes (and before torch 2.9 the conv refused a traced padding: review
    compat1 #4)."""
    dims = len(kernel_size)
    pad = nn.modules.conv._ConvTransposeNd._output_padding(  # (its self is read only without an output_size)
        None, x, output_size, stride, padding, kernel_size, dims, dilation)  # type: ignore[arg-type]
    return _CONV_TRANSPOSE[dims - 1](binary_x, weight, bias, stride, padding, pad, groups, dilation)


_CONV_TRANSPOSE = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)  # by spatial dimensions


class _BinaryConvTranspose(_BinaryConv):
    """The binary transposed convolutions: ``nn.ConvTransposeNd``'s forward (``output_size`` included) on the
    binary inputs and weights. Their weight is (in_channels, out_channels / groups, *kernel_size), so ``channel``
    scaling takes the mean over each output channel's (in_channels / groups, kernel) weights, as for a conv."""

    def _scale_of(self, w: Tensor) -> Tensor | None:
        # (``_scale_of``, not ``scale``: a 16-bit weight's binary form computes its scale from the float32 weight
        # through it, which must be this per-output-channel one)
        if self.scaling != "channel":
            return super()._scale_of(w)
        g, rows = self.groups, self.in_channels // self.groups  # type: ignore[attr-defined]
        ndim = 2 + len(self.kernel_size)  # type: ignore[attr-defined]  # (known under torch.fx too)
        # (in, out/g, *k) -> (g, in/g, out/g, *k): the mean over in/g and the kernel, then repeated on each weight row
        per_group = w.abs().unflatten(0, (g, rows)).mean(dim=(1, *range(3, ndim + 1)), keepdim=True)
        return per_group.expand(g, rows, *[-1] * (ndim - 1)).flatten(0, 1)

    def _fused_groups(self) -> int | None:
        return 1 if self.scaling == "layer" else None  # an output channel's weights are not consecutive in memory

    def _output_scale(self, w: Tensor, dims: int) -> Tensor | None:
        alpha = self._scale_of(w)
        if alpha is None or self.scaling == "layer":
            return alpha
        # (in, out/g, 1, ...), each group's rows the same: its first row, (g, out/g, 1, ...), is the output channels'
        g = self.groups  # type: ignore[attr-defined]
        return alpha.unflatten(0, (g, self.in_channels // g))[:, 0].reshape(-1, *(1,) * dims)  # type: ignore

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:  # noqa: A002 - torch's names
        if not self.training:  # type: ignore[attr-defined]  # (the scale after the sum: _eval_forward)
            return self._eval_forward(input, lambda x, w, b: self._transposed(input, x, w, b, output_size),
                                      len(self.kernel_size))  # type: ignore[attr-defined]
        return self._transposed(input, self.binary_input(input), self.binary_weight(), self.bias,  # type: ignore
                                output_size)

    def _transposed(self, input: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None,  # noqa: A002
                    output_size: list[int] | None) -> Tensor:
        """The transposed conv of the binary inputs ``x`` (``input``: the layer's own, whose sizes ``output_size``
        is read against), as ``forward`` computes it."""
        if output_size is not None:
            return _conv_transpose_to(input, x, weight, bias, output_size, self.stride,  # type: ignore[attr-defined]
                                      self.padding, self.kernel_size, self.groups,  # type: ignore[attr-defined]
                                      self.dilation)  # type: ignore[attr-defined]
        conv = _CONV_TRANSPOSE[len(self.kernel_size) - 1]  # type: ignore[attr-defined]
        return conv(x, weight, bias, self.stride, self.padding, self.output_padding,  # type: ignore[attr-defined]
                    self.groups, self.dilation)  # type: ignore[attr-defined]


class BinaryConvTranspose1d(_BinaryConvTranspose, nn.ConvTranspose1d):
    """1-D transposed convolution with binary weights (and binary inputs unless ``input_estimator=None``).
    Arguments: ``nn.ConvTranspose1d``'s, then the estimator keywords; ``export_onnx`` writes it,
    the packed format does not."""


class BinaryConvTranspose2d(_BinaryConvTranspose, nn.ConvTranspose2d):
    """2-D transposed convolution (the upsampling path of a segmentation net or a decoder) with binary weights
    (and binary inputs unless ``input_estimator=None``). Arguments: ``nn.ConvTranspose2d``'s, then the estimator
    keywords; ``export_onnx`` writes it, the packed format does not."""


class BinaryConvTranspose3d(_BinaryConvTranspose, nn.ConvTranspose3d):
    """3-D transposed convolution with binary weights (and binary inputs unless ``input_estimator=None``).
    Arguments: ``nn.ConvTranspose3d``'s, then the estimator keywords; ``export_onnx`` writes it,
    the packed format does not."""


for _conv, _base in ((BinaryConv1d, nn.Conv1d), (BinaryConv2d, nn.Conv2d), (BinaryConv3d, nn.Conv3d),
                     (BinaryConvTranspose1d, nn.ConvTranspose1d), (BinaryConvTranspose2d, nn.ConvTranspose2d),
                     (BinaryConvTranspose3d, nn.ConvTranspose3d)):
    _conv.__signature__ = _signature(_base)  # type: ignore[attr-defined]


class BinaryLinear(_BinaryMixin, nn.Linear):
    """Linear layer with binary weights (and binary inputs unless ``input_estimator=None``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        weight_estimator: Any = "reste",
        input_estimator: Any = _DEFAULT,
        scaling: str = "layer",
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._setup(weight_estimator, input_estimator, scaling)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Linear's name: layer(input=x) keeps working
        if not self.training:  # (the scale after the sum: _eval_forward)
            return self._eval_forward(input, F.linear, 0)
        y = self._ext_forward(input, 0) if _may_take(input) else None
        if y is not None:
            return y
        return F.linear(self.binary_input(input), self.binary_weight(), self.bias)


def _a_model(model: Any) -> None:
    """A ``TypeError`` for what is no ``nn.Module`` (a string, ``model.parameters()``, a list of layers), which the
    functions taking the model read as one: an AttributeError ("'str' object has no attribute 'named_modules'") from
    inside (review apifuzz1)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected the model (a torch.nn.Module: the one reste.binarize returned), got "
                        f"{type(model).__name__}; pass the model itself (an nn.ModuleList or nn.Sequential for layers)")


def binary_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every layer of ``model`` with 1-bit weights."""
    _a_model(model)
    return [(n, m) for n, m in model.named_modules() if getattr(m, "precision", 32) == 1]


@torch.no_grad()
def clip_weights(model: nn.Module, bound: float = 1.0) -> int:
    """Clamp the latent weights of every binary layer of ``model`` to [-bound, bound], in place (larq's
    ``weight_clip``; BinaryConnect's clipping); call it after each ``optimizer.step()``. A latent weight past
    an estimator's window (STE's clip, ReSTE's t) gets no gradient through it and would stay there. The
    signs are untouched, the layer scale (mean abs weight) may shrink. A frozen weight (``requires_grad=False``: a
    fine-tuned backbone) is left as it is: clamping it would change its scale, and so the outputs of a layer
    that is not trained. Returns the number of layers clipped."""
    number = real_number(bound)  # a NumPy number or a 0-dim tensor (a value read from a table), as the
    if number is None or not number > 0:  # hyper-parameters take them
        raise ValueError(f"bound must be a number > 0, got {bound!r}")
    bound = float(number)
    layers = binary_layers(model)
    if not layers:
        _nothing_binary("clip_weights")
    clipped = [m for _, m in layers if m.weight.requires_grad]
    floats = {id(p): name for name, m in model.named_modules() if getattr(m, "precision", 32) != 1
              for p in m.parameters(recurse=False)}
    tied = [floats[id(m.weight)] for m in clipped if id(m.weight) in floats]
    if tied:  # (weight tying survives binarize) clamping the binary weight clamps the float layer's too
        warnings.warn(f"clip_weights: the binary weights clamped are also the weights of the float layer(s) "
                      f"{', '.join(map(repr, tied[:3]))} (tied), which are clamped with them; untie them to clip the "
                      "binary ones alone (review ownmodel, suggestion)", UserWarning, stacklevel=2)
    with torch.no_grad():
        for m in clipped:
            m.weight.clamp_(-bound, bound)
    return len(clipped)


def estimators_of(model: nn.Module) -> list[Estimator]:
    """Every estimator in ``model`` (each instance once)."""
    _a_model(model)
    seen: dict[int, Estimator] = {}
    for m in model.modules():
        if isinstance(m, Estimator):
            seen.setdefault(id(m), m)
    return list(seen.values())


def set_progress(model: nn.Module, epoch: float, epochs: int) -> dict[str, float]:
    """Set the training progress on every estimator of ``model``.

    Returns the schedule values after the update (e.g. ``{"o": 1.58}``), taken from
    the first estimator that has any, for logging.
    """
    # a 0-d tensor or NumPy scalar as the plain number it holds: the schedules compute in Python floats
    epoch, epochs = (v.item() if hasattr(v, "item") and getattr(v, "ndim", None) == 0 else v for v in (epoch, epochs))
    values: dict[str, float] = {}
    estimators = estimators_of(model)
    if not estimators:
        _nothing_binary("set_progress")
    for est in estimators:
        est.set_progress(epoch, epochs)
        if not values:
            values = dict(est.schedule_values())
    return values


def _nothing_binary(what: str) -> None:
    warnings.warn(f"{what}: the model has no binary layer, so this does nothing; pass the model that "
                  "reste.binarize returned (a copy unless inplace=True)", stacklevel=3)


def schedule_values(model: nn.Module) -> dict[str, float]:
    """The current schedule values of the first scheduled estimator of ``model`` (what a run's metrics line logs):
    in a model of two kinds (EDE weights, ReSTE inputs) the other kind's are not among them; each estimator's own
    ``schedule_values()``, or ``reste.integrations.tensorboard.layer_schedules(model)``, gives every layer's."""
    for est in estimators_of(model):
        if est.schedule_values():
            return dict(est.schedule_values())
    return {}
