"""`reste train --optimizer bop`: Bop over the binary weights and Adam over the rest, as one optimizer
(reste.optim.Composite); gamma on the learning-rate schedule; each epoch's flips in its metrics line; exact
resume inside an epoch; the settings it refuses; and each optimizer's own learning rate where the data set's
recipe is another optimizer's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reste
from reste import engine, models, rundir, runinfo
from reste.checkpoint import load_checkpoint
from reste.config import TrainConfig
from reste.cudagraph import load_optimizer_state
from reste.errors import UsageError
from reste.optim import DEFAULT_GAMMA, DEFAULT_THRESHOLD, Bop, Composite, split_binary
from reste.schedules import learning_rate

from run_checks import stop_in_epoch_2

pytestmark = pytest.mark.usefixtures("one_thread_module")


def quiet(_msg):
    pass


def bop(**kw) -> TrainConfig:
    base = dict(dataset="digits", epochs=3, batch_size=64, seed=1, optimizer="bop", estimator="ste",
                scaling="none", bop_gamma=1e-3, bop_threshold=1e-7)
    base.update(kw)
    return TrainConfig(**base)


def strip(lines):
    return [{k: v for k, v in m.items() if k != "time"} for m in lines]


def test_a_bop_run_trains_plus_minus_one_weights_and_logs_its_flips(tmp_path):
    lines = []
    result = engine.train(bop(epochs=4), tmp_path / "r", progress=False, log=lines.append)
    assert result["best_acc"] > 85.0
    assert "bop gamma 0.001 threshold 1e-07 (adam lr 0.001 for the float parameters)" in lines[0]
    metrics = rundir.read_metrics(tmp_path / "r")
    for m in metrics:  # gamma follows the lr schedule: bop_gamma * lr / --lr
        assert m["lr"] == learning_rate(1e-3, m["epoch"] - 1, 4)
        assert m["bop_gamma"] == pytest.approx(1e-3 * m["lr"] / 1e-3, rel=1e-15)
    flips = [m["bop_flips"] for m in metrics]
    assert all(isinstance(f, int) for f in flips) and flips[0] > flips[-1] > 0
    assert f"flips {flips[0]:,}" in lines[1] and "gamma 0.001 " in lines[1]
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    bop_state, adam_state = ckpt["optimizer"]["optimizers"]
    assert bop_state["flipped"] == sum(flips)  # the epochs' counts add up to every step's
    assert "exp_avg" in next(iter(adam_state["state"].values()))
    model = models.create(ckpt["model_name"], **ckpt["model_options"], estimator="ste", scaling="none")
    model.load_state_dict(ckpt["model"])
    binary, _ = split_binary(model)
    assert all(set(w.unique().tolist()) == {-1.0, 1.0} for w in binary)  # no latent weights: each is +-1
    assert "bop gamma 0.001 threshold 1e-07" in runinfo.show_run(tmp_path / "r")


def test_a_bop_run_stopped_inside_an_epoch_resumes_exactly(tmp_path):
    cfg = bop()
    engine.train(cfg, tmp_path / "full", progress=False, log=quiet)
    stop_in_epoch_2(cfg, tmp_path / "cut", quiet, step=10, steps=23)
    engine.resume(tmp_path / "cut", progress=False, log=quiet)
    full, cut = rundir.read_metrics(tmp_path / "full"), rundir.read_metrics(tmp_path / "cut")
    assert strip(full) == strip(cut) and full[1]["bop_flips"] > 0  # epoch 2's flips counted across the stop
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "cut"))
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items() if isinstance(v, torch.Tensor))
    assert a["optimizer"]["optimizers"][0]["flipped"] == b["optimizer"]["optimizers"][0]["flipped"]


def test_defaults_come_from_reste_optim_and_each_optimizer_gets_its_own_lr():
    cfg = TrainConfig(optimizer="bop", estimator="ste", scaling="none").resolve()
    assert (cfg.bop_gamma, cfg.bop_threshold, cfg.lr) == (DEFAULT_GAMMA, DEFAULT_THRESHOLD, 1e-3)
    assert TrainConfig().resolve().lr == 0.1  # digits' recipe: SGD at 0.1
    assert TrainConfig(optimizer="sgd").resolve().lr == 0.1  # the recipe's own optimizer keeps its lr
    assert TrainConfig(optimizer="adam").resolve().lr == 1e-3  # not SGD's 0.1
    assert TrainConfig(optimizer="adam", lr=0.05).resolve().lr == 0.05
    assert TrainConfig(dataset="fashion-mnist", optimizer="sgd").resolve().lr == 0.1  # its recipe: Adam at 1e-3
    assert TrainConfig(optimizer="sgd", dataset="cifar10", download=True).resolve().lr == 0.1
    assert TrainConfig(optimizer="adamw", dataset="cifar10", download=True).resolve().lr == 1e-3
    assert TrainConfig().resolve().bop_gamma is None  # Bop's settings belong to --optimizer bop alone
    # (review rev10 #2) a preset's lr is its SGD's too
    from reste.config import config_from_preset

    assert config_from_preset("cifar10-resnet20-ste", optimizer="adam").lr == 1e-3
    assert config_from_preset("cifar10-resnet20-ste", optimizer="adam", lr=0.01).lr == 0.01
    assert config_from_preset("cifar10-resnet20-ste", optimizer="sgd").lr == 0.1


@pytest.mark.parametrize("changes, text", [
    (dict(estimator="reste"), "add --estimator ste --scaling none"),
    (dict(scaling="layer"), "add --estimator ste --scaling none"),
    (dict(estimator_options={"clip": 0.5}), "--clip must be >= 1, got 0.5"),
    (dict(model="digits", estimator="reste", scaling="layer"), "'digits' is full precision"),
    (dict(cuda_graphs=True), "--cuda-graphs cannot be combined with --optimizer bop"),
    (dict(bop_gamma=0.0), r"--bop-gamma must be in \(0, 1\]"),
    (dict(bop_gamma=2.0), r"--bop-gamma must be in \(0, 1\]"),
    (dict(bop_threshold=-1.0), "--bop-threshold must be >= 0"),
    (dict(bop_threshold=float("inf")), "--bop-threshold must be >= 0 and finite"),
    (dict(bop_gamma="0.1"), "--bop-gamma must be int or float"),
    (dict(optimizer="sgd", bop_gamma=None), "--bop-threshold is a setting of Bop: add --optimizer bop"),
    (dict(optimizer="adam", bop_threshold=None), "--bop-gamma is a setting of Bop: add --optimizer bop"),
])
def test_settings_bop_cannot_train_with_are_refused_in_one_line(changes, text):
    with pytest.raises(UsageError, match=text):
        bop(**changes).resolve()


def test_the_command_line_takes_bop_and_its_flags(tmp_path, capsys):
    from reste.cli import main

    main(["train", "--optimizer", "bop", "--estimator", "ste", "--scaling", "none", "--bop-gamma", "0.002",
          "--bop-threshold", "0", "--print-config"])
    out = capsys.readouterr().out
    assert '"bop_gamma": 0.002' in out and '"bop_threshold": 0' in out and '"lr": 0.001' in out
    assert main(["train", "--optimizer", "bop"]) == 2
    assert "add --estimator ste --scaling none" in capsys.readouterr().err


def test_composite_shares_its_members_groups_and_state_and_loads_as_it_saved():
    torch.manual_seed(0)
    model = reste.binarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                                         nn.Flatten(), nn.Linear(4, 2)), "ste", scaling="none")
    binary, others = split_binary(model)

    def make():
        return Composite(Bop(binary, gamma=0.5, threshold=0.0), torch.optim.Adam(others, lr=1e-2))

    opt = make()
    assert len(opt.param_groups) == 2 and opt.param_groups[1] is opt.optimizers[1].param_groups[0]
    opt.param_groups[1]["lr"] = 0.5  # a group set through the composite is the member's
    assert opt.optimizers[1].param_groups[0]["lr"] == 0.5
    x = torch.randn(8, 1, 5, 5)
    model(x).square().mean().backward()
    opt.step()
    assert set(opt.state) == set(binary) | {p for p in others if p.grad is not None}
    saved = opt.state_dict()
    other = make()
    load_optimizer_state(other, saved)  # as a resume loads it: each member's own settings kept
    assert other.optimizers[1].param_groups[0]["lr"] == 1e-2
    assert other.optimizers[0].flipped.item() == opt.optimizers[0].flipped.item() > 0
    assert torch.equal(other.state[binary[0]]["m"], opt.state[binary[0]]["m"])
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="belongs to two"):
        Composite(Bop(binary), torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="not the state of a Composite of 2 optimizers"):
        other.load_state_dict(torch.optim.Adam(others).state_dict())
    members = saved["optimizers"]  # (review mut9 #8) a composite's state of another number of members
    for states in (members[:1], members + members[1:]):
        with pytest.raises(ValueError, match="not the state of a Composite of 2 optimizers"):
            other.load_state_dict({**saved, "optimizers": states})


def test_torchs_lr_schedulers_drive_adams_lr_and_bops_gamma_alike():
    """(review userA #14) Composite is a torch.optim.Optimizer: a scheduler takes it, scales Adam's lr and Bop's lr
    (a factor on gamma, 1 at first) from where they started, as `reste train` scales gamma; Bop's moving average
    then moves at gamma * lr. It pickles and deep-copies without a scheduler's wrapper; add_param_group is refused;
    a rate past 1 is refused before any weight moves."""
    import copy
    import pickle

    w, b = nn.Parameter(torch.ones(4)), nn.Parameter(torch.zeros(2))
    bop = Bop([w], gamma=0.5, threshold=10.0)  # (no flips: m alone is followed)
    opt = Composite(bop, torch.optim.SGD([b], lr=0.2))
    assert isinstance(opt, torch.optim.Optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    m = torch.zeros(4)
    for epoch in range(3):
        factor = 0.5 ** epoch
        assert [g["lr"] for g in opt.param_groups] == [factor, 0.2 * factor]
        w.grad, b.grad = torch.ones(4), torch.ones(2)
        opt.step()
        m = m + 0.5 * factor * (1 - m)
        torch.testing.assert_close(bop.state[w]["m"], m, rtol=1e-6, atol=0)
        scheduler.step()
    for copied in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        assert type(copied) is Composite and copied.param_groups[0]["lr"] == 0.125 and "step" not in vars(copied)
    with pytest.raises(TypeError, match="add the group to one of them"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(1))]})
    bop.param_groups[0]["lr"] = 4.0
    before = w.detach().clone(), bop.state[w]["m"].clone()
    with pytest.raises(ValueError, match=r"Bop's rate gamma \* lr must be in \[0, 1\]"):
        opt.step()
    assert torch.equal(w.detach(), before[0]) and torch.equal(bop.state[w]["m"], before[1])


def test_lightning_fits_and_resumes_a_composite_with_a_scheduler(tmp_path):
    """Lightning's configure_optimizers takes the Composite and its scheduler; its checkpoint resumes Bop's state."""
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = reste.binarize(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
                                                    nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                                                    nn.Linear(4 * 36, 3)), "ste", scaling="none")

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            binary, others = split_binary(self.net)
            self.bop = Bop(binary, gamma=0.05)
            opt = Composite(self.bop, torch.optim.Adam(others, lr=1e-2))
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, 4)}

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 1, 6, 6),
                                                                      torch.randint(0, 3, (32,))), batch_size=8)
    quiet = dict(enable_progress_bar=False, logger=False, enable_model_summary=False, accelerator="cpu")
    first = Module()
    L.Trainer(max_epochs=2, default_root_dir=tmp_path / "a", **quiet).fit(first, data)
    assert first.bop.param_groups[0]["lr"] == pytest.approx(0.5) and int(first.bop.flipped) > 0
    checkpoint = next((tmp_path / "a").rglob("*.ckpt"))
    again = Module()
    L.Trainer(max_epochs=2, default_root_dir=tmp_path / "b", **quiet).fit(again, data, ckpt_path=checkpoint)
    assert int(again.bop.flipped) == int(first.bop.flipped)  # restored, nothing trained past max_epochs
    assert torch.equal(again.bop.state[again.bop.param_groups[0]["params"][0]]["m"],
                       first.bop.state[first.bop.param_groups[0]["params"][0]]["m"])


def test_a_grad_scaler_unscales_every_members_gradients():
    """fp16 training steps the optimizer through torch.amp.GradScaler: Bop must see the unscaled gradient."""
    w = nn.Parameter(torch.ones(3))
    b = nn.Parameter(torch.zeros(3))
    opt = Composite(Bop([w], gamma=1.0, threshold=0.5), torch.optim.SGD([b], lr=1.0))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    loss = (w * torch.tensor([0.4, 0.6, -1.0])).sum() + b.sum()
    scaler.scale(loss).backward()
    scaler.step(opt)
    assert w.tolist() == [1.0, -1.0, 1.0]  # m = g: 0.6 > 0.5 flips, 0.4 does not (scaled, all would)
    assert b.tolist() == [-1.0, -1.0, -1.0]


def test_build_optimizer_builds_bop_as_a_composite_over_split_binary():
    cfg = bop(weight_decay=1e-4, lr=2e-3).resolve()
    model = engine.build_model(cfg, 10)
    opt = engine.build_optimizer(cfg, model)
    assert isinstance(opt, Composite) and [type(o) for o in opt.optimizers] == [Bop, torch.optim.Adam]
    binary, others = split_binary(model)
    assert opt.optimizers[0].param_groups[0]["params"] == binary
    assert opt.optimizers[1].param_groups[0]["params"] == others
    assert opt.optimizers[1].param_groups[0]["weight_decay"] == 1e-4
    engine.set_rates(opt, 1e-3, cfg)  # half the peak lr: half gamma
    assert opt.optimizers[0].param_groups[0]["gamma"] == pytest.approx(5e-4)
    assert opt.optimizers[1].param_groups[0]["lr"] == 1e-3
    assert opt.optimizers[0].param_groups[0]["lr"] == 1.0  # (Bop's factor on gamma stays: gamma itself moved)


def test_a_bop_run_resumed_under_another_optimizer_leaves_bops_settings(tmp_path):
    """(review rev10 #1) config.json's bop_gamma went on into an sgd resume, which refused it as a flag never
    given; now leaving bop drops Bop's settings, the optimizer starts afresh, and the note names the lr kept."""
    engine.train(bop(epochs=1), tmp_path / "r", progress=False, log=quiet)
    lines = []
    engine.resume(tmp_path / "r", {"optimizer": "sgd", "epochs": 2}, force=True, progress=False, log=lines.append)
    saved = rundir.saved_config(tmp_path / "r")
    assert (saved.optimizer, saved.bop_gamma, saved.bop_threshold) == ("sgd", None, None)
    assert any("the optimizer changes from bop to sgd; its state (momentum, moments) starts afresh, at lr 0.001 "
               "(--lr changes it; sgd's usual one is 0.1)" in m for m in lines)
    assert "bop_flips" in rundir.read_metrics(tmp_path / "r")[0] and "bop_flips" not in rundir.read_metrics(
        tmp_path / "r")[1]
    with pytest.raises(UsageError, match="--bop-gamma is a setting of Bop"):  # given with sgd: still refused
        engine.resume(tmp_path / "r", {"epochs": 3, "bop_gamma": 0.01}, force=True, progress=False, log=quiet)


def test_the_command_line_can_turn_cuda_graphs_off_for_a_resume_under_bop(tmp_path, capsys):
    """(review rev10 #1) a run recorded with --cuda-graphs could not switch to bop: no flag turned graphs off."""
    from reste.cli import main

    engine.train(bop(epochs=1, optimizer="sgd", bop_gamma=None, bop_threshold=None), tmp_path / "r",
                 progress=False, log=quiet)
    path = tmp_path / "r" / "config.json"
    path.write_text(path.read_text().replace('"cuda_graphs": false', '"cuda_graphs": true'))
    assert main(["train", "--resume", str(tmp_path / "r"), "--optimizer", "bop", "--epochs", "2", "--force",
                 "--no-progress"]) == 2
    assert "--cuda-graphs cannot be combined with --optimizer bop" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "r"), "--optimizer", "bop", "--no-cuda-graphs", "--epochs", "2",
                 "--force", "--no-progress"]) == 0
    saved = rundir.saved_config(tmp_path / "r")
    assert (saved.optimizer, saved.cuda_graphs, saved.bop_gamma) == ("bop", False, DEFAULT_GAMMA)


def test_a_sweep_over_optimizers_gives_bops_settings_to_bop_alone():
    """(review rev10 #1) --grid optimizer=sgd,bop with --bop-gamma refused the sgd setting for a flag meant for
    bop's; a bop_gamma axis makes one sgd setting, not one per value."""
    from reste.experiments import expand_grid, parse_grid

    base = TrainConfig(dataset="digits", epochs=1, estimator="ste", scaling="none", bop_threshold=1e-6)
    settings = expand_grid(base, parse_grid(["optimizer=sgd,bop", "bop_gamma=0.001,0.01"]))
    assert [s.label for s in settings] == ["optimizer=sgd", "optimizer=bop,bop_gamma=0.001",
                                           "optimizer=bop,bop_gamma=0.01"]
    assert [(s.config.bop_gamma, s.config.bop_threshold) for s in settings] == [(None, None), (0.001, 1e-6),
                                                                                (0.01, 1e-6)]
    for s in settings:
        s.config.resolve()  # each one trains
