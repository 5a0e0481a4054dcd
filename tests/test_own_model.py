"""Binarizing your own model with the Python API (review ownmodel #1-#9): the settings a user hands over as NumPy or
0-dim tensor numbers, binary layers built by hand with an estimator instance, an estimator's g and F on integer
tensors, an estimator without ``_g``, ``split_binary``'s check of g(+-1) over the schedule, where the estimators'
ScheduleWarnings point, FDA's number of terms, and a misspelt ``binarize`` keyword."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import reste
from reste import hparams
from reste.estimators import ScheduleWarning
from reste.optim import Bop, split_binary

from estimator_checks import TableLess


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))


class _Scaled(TableLess):
    """A constructor of its own and no hyper-parameter table: it cannot give a spec."""

    name = "scaled_ownmodel"


class _Wide(reste.STE):
    """Not registered, and keeps the STE's name: the registry would build a plain STE under it."""

    def _g(self, x, clip):
        return 2.0 * (x.abs() <= 2 * clip).to(x.dtype)


class _Other(reste.Estimator):
    """Not registered, with a name of its own."""

    name = "other_ownmodel"
    hyperparameters = (reste.Param("c", float, 1.0, "c", "(0, inf)"),)

    def _g(self, x, c):
        return (x.abs() <= c).to(x.dtype)


# ------------------------------------------------------------------------------------------------- 1: user numbers


def test_bop_settings_and_hyperparameters_take_numpy_and_0dim_numbers():
    """(#1) np.float32 / np.float16 / a 0-dim tensor were refused as "must be in (0, 1]" though in range; now taken
    and kept as Python floats, and a value of the wrong kind is said to be no number. Estimator hyper-parameters take a
    0-dim tensor too (clip_weights' comment said so), through the same helper."""
    w = [nn.Parameter(torch.ones(3))]
    for gamma in (np.float32(1e-3), np.float16(1e-3), torch.tensor(1e-3), np.float64(1e-3), 1e-3):
        group = Bop(w, gamma=gamma).param_groups[0]
        assert type(group["gamma"]) is float and group["gamma"] == pytest.approx(1e-3, rel=1e-3)
    for threshold in (np.float32(1e-6), torch.tensor(1e-6, dtype=torch.float64), 0):
        group = Bop(w, threshold=threshold).param_groups[0]
        assert type(group["threshold"]) is float
    for bad in ("1e-3", True, torch.tensor([1e-3]), torch.tensor(True), None):
        with pytest.raises(ValueError, match=r"^Bop's gamma must be a number in \(0, 1\]"):
            Bop(w, gamma=bad)
    with pytest.raises(ValueError, match=r"^Bop's gamma must be in \(0, 1\] .*got np.float32\(2.0\)"):
        Bop(w, gamma=np.float32(2.0))
    with pytest.raises(ValueError, match=r"^Bop's threshold must be >= 0 and finite, got np.float32\(-1"):
        Bop(w, threshold=np.float32(-1e-6))
    assert reste.optim.check_settings(np.float32(0.5), torch.tensor(0.0)) == (0.5, 0.0)

    est = reste.get_estimator("ste", clip=torch.tensor(1.5))
    assert type(est.clip) is float and est.clip == 1.5
    fda = reste.get_estimator("fda", n=torch.tensor(5), n_end=np.int64(7))
    assert (type(fda.n), fda.n, type(fda.n_end)) == (int, 5, int)
    with pytest.raises(ValueError, match="clip must be a number"):
        reste.get_estimator("ste", clip=torch.tensor([1.5]))
    assert [hparams.real_number(v) for v in (np.float32(0.5), torch.tensor(2), np.array(1.5), True, "1", 1j)] == \
        [0.5, 2, 1.5, None, None, None]


# --------------------------------------------------------------------------- 2, 3: a hand-built layer's inputs


def test_a_hand_built_layer_with_an_instance_of_a_class_without_a_table(isolated):
    """(#2) BinaryLinear(weight_estimator=instance) of a class with a constructor of its own and no table raised
    NotImplementedError (its default input estimator was rebuilt from spec()); now the inputs share the instance, as
    binarize gives them. A spec dict of such a class as binarize's activations says to pass an instance."""
    reste.register_estimator(_Scaled)
    est = _Scaled(2.0)
    for layer in (reste.BinaryLinear(4, 4, weight_estimator=est), reste.BinaryConv2d(2, 2, 3, weight_estimator=est),
                  reste.BinaryConvTranspose1d(2, 2, 3, weight_estimator=est)):
        assert layer.weight_estimator is est and layer.input_estimator is est
    model = reste.binarize(_mlp(), est)
    assert model[2].weight_estimator is est and model[2].input_estimator is est
    for activations in ({"name": "scaled_ownmodel"}, "scaled_ownmodel"):
        with pytest.raises(ValueError, match=r"constructor of its own .* pass an instance, activations=_Scaled\(...\)"):
            reste.binarize(_mlp(), "ste", activations=activations)


def test_a_hand_built_layer_gives_its_inputs_the_weights_own_estimator_class():
    """(#3) the default input estimator was rebuilt by registry name: an unregistered subclass keeping its parent's
    name became the built-in (other gradients, silently), an unregistered class of its own name was "unknown". Now a
    layer built by hand gives its inputs what binarize gives them."""
    layer = reste.BinaryLinear(4, 3, weight_estimator=_Wide(clip=1.0))
    assert type(layer.input_estimator) is _Wide
    x = torch.full((1, 4), 1.5, requires_grad=True)
    layer(x).sum().backward()
    w = layer.binary_weight().detach()
    torch.testing.assert_close(x.grad, 2.0 * w.sum(0, keepdim=True))  # Wide's g(1.5) = 2 (the STE's is 0)
    model = reste.binarize(_mlp(), _Wide())
    assert type(model[2].input_estimator) is type(reste.BinaryLinear(2, 2, weight_estimator=_Wide()).input_estimator)

    other = _Other(c=0.5)
    conv = reste.BinaryConv2d(2, 2, 3, weight_estimator=other)
    assert conv.input_estimator is other
    # a name or a spec dict still gives the inputs an estimator of their own, of the same settings
    spec = reste.BinaryLinear(2, 2, weight_estimator={"name": "reste", "o_end": 5.0})
    assert spec.input_estimator is not spec.weight_estimator and spec.input_estimator.o_end == 5.0


# --------------------------------------------------------------------------------- 4: integer tensors


@pytest.mark.parametrize("name", ["ste", "reste", "approx_sign", "sign_swish", "ede", "rbnn", "dsq", "fda"])
def test_derivative_and_forward_equivalent_refuse_an_integer_tensor_alike(name):
    """(#4) on an integer tensor some estimators gave truncated values (EDE's g as [0, 0, 0, 1, 0, 0, 0]), others a
    KeyError, a finfo TypeError or a cast RuntimeError; now every one says what sign says."""
    est = reste.get_estimator(name)
    for x in (torch.arange(-3, 4), torch.tensor([True, False])):
        for method in ("derivative", "forward_equivalent"):
            with pytest.raises(TypeError, match=rf"^{method} takes floating-point tensors .*got {x.dtype}; convert "
                                                r"with x.float\(\)$"):
                getattr(est, method)(x)
    assert est.derivative(torch.arange(-3, 4).float()).dtype == torch.float32


# ------------------------------------------------------------------------------------------ 5: no _g


def test_register_estimator_refuses_a_class_without_g(isolated):
    """(#5) a class without _g (a typo, or derivative() alone) was registered and binarized, and its first backward
    died with an empty NotImplementedError; now registration refuses it in one line, and an unregistered one's
    backward says what is missing."""
    class NoG(reste.Estimator):
        name = "nog_ownmodel"

        def g(self, x):  # (a typo for _g)
            return torch.ones_like(x)

    class DerivativeOnly(reste.Estimator):
        name = "donly_ownmodel"

        def derivative(self, x):
            return torch.ones_like(x)

    with pytest.raises(ValueError, match=r"^estimator 'nog_ownmodel' \(NoG\) defines no _g \(g\(x\), .*\): define "
                                         r"_g\(self, x, \*\*params\)$"):
        reste.register_estimator(NoG)
    with pytest.raises(ValueError, match=r"'donly_ownmodel' \(DerivativeOnly\) defines no _g .*override of "
                                         r"derivative\(\) does not replace"):
        reste.register_estimator(DerivativeOnly)
    assert "nog_ownmodel" not in reste.list_estimators() and "donly_ownmodel" not in reste.list_estimators()

    layer = reste.BinaryLinear(4, 4, weight_estimator=NoG())
    with pytest.raises(NotImplementedError, match=r"estimator 'nog_ownmodel' \(NoG\) defines no _g .*define _g"):
        layer(torch.randn(2, 4)).sum().backward()


# ------------------------------------------------------------------------------ 6: split_binary over the schedule


def test_split_binary_checks_g_at_signs_across_the_schedule():
    """(#6) ReSTE's g(+-1) is 1 at o = 1, where its schedule starts, and 1/o_end at its end: split_binary tested the
    current point only and let ReSTE (the default estimator) through; now it checks both ends, on copies."""
    model = reste.binarize(_mlp(), "reste", scaling="none")
    with pytest.warns(UserWarning, match=r"'2' \(reste: g\(-1\), g\(\+1\) = 0.333, 0.333 at the end of its schedule"):
        split_binary(model)
    assert model[2].weight_estimator.o == 1.0  # the layer's own estimator did not move
    reste.set_progress(model, 5, 10)
    with pytest.warns(UserWarning, match=r"'2' \(reste: g\(-1\), g\(\+1\) = 0.\d+, 0.\d+\)"):  # now, mid-schedule
        split_binary(model)
    assert model[2].weight_estimator.o > 1.0
    for fit in (reste.binarize(_mlp(), "ste", scaling="none"),
                reste.binarize(_mlp(), "reste", scaling="none", schedule="constant")):  # o held at 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            split_binary(fit)


# ---------------------------------------------------------------------------------- 7: ScheduleWarning's line


def test_schedule_warnings_name_the_users_line_however_the_estimator_is_made():
    """(#7) made by name (binarize, get_estimator, a layer's spec dict), an estimator's ScheduleWarning named reste's
    own get_estimator line; now the first line outside reste, the user's, as for a constructor called directly."""
    makers = (lambda: reste.binarize(_mlp(), "reste", o_end=1.0),
              lambda: reste.get_estimator("ede", t_min=5.0, t_max=1.0),
              lambda: reste.get_estimator("dsq", schedule="constant", alpha_end=0.1),
              lambda: reste.ReSTE(o=2.0, o_end=1.0),
              lambda: reste.BinaryLinear(2, 2, weight_estimator={"name": "reste", "o_end": 1.0}))
    for make in makers:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make()
        told = [w for w in caught if issubclass(w.category, ScheduleWarning)]
        assert told and all(w.filename == __file__ for w in told), [(w.filename, w.lineno) for w in told]


# ------------------------------------------------------------------------------------ 8: FDA's terms


def test_fda_docstring_gives_the_last_epochs_number_of_terms():
    """(#8) the docstring said the last of E epochs uses n_end - 1 terms, which holds only for E >= n_end - n; it
    now gives the formula, which the schedule follows for every E."""
    assert "n_end - ceil((n_end - n)/E)" in reste.FDA.__doc__ and "E >= n_end - n" in reste.FDA.__doc__
    for n, n_end in ((9, 18), (2, 7), (4, 4)):
        for epochs in range(1, 25):
            est = reste.get_estimator("fda", n=n, n_end=n_end)
            est.set_progress(epochs - 1, epochs)
            assert est.n == n_end - math.ceil((n_end - n) / epochs), (n, n_end, epochs)


# ---------------------------------------------------------------------------------- 9: binarize's keywords


def test_a_misspelt_binarize_keyword_is_named_as_binarizes():
    """(#9) activation=, scale=, in_place= were blamed on the estimator ("bad hyper-parameters for estimator
    'reste'", or "only with an estimator name" for an instance); now a TypeError as Python words one, with the
    keyword meant. A keyword that is some estimator's stays the estimator's error."""
    cases = (("reste", "activation", "activations"), ("reste", "scale", "scaling"), ("ste", "in_place", "inplace"),
             (reste.ReSTE(), "activation", "activations"), ("approx_sign", "keep_frist", "keep_first"))
    for est, bad, meant in cases:
        message = f"binarize() got an unexpected keyword argument '{bad}'; did you mean '{meant}'?"
        with pytest.raises(TypeError) as err:
            reste.binarize(_mlp(), est, **{bad: False})
        assert str(err.value) == message
    with pytest.raises(ValueError, match="bad hyper-parameters for estimator 'ste': no o; valid: clip"):
        reste.binarize(_mlp(), "ste", o=2.0)
    with pytest.raises(ValueError, match="bad hyper-parameters for estimator 'ste': no bogus"):
        reste.binarize(_mlp(), "ste", bogus=1)
