"""A run's identity in a sweep: its canonical settings and their hash.

Two grids that ask for the same training share its runs: a run folder is named after
:func:`config_key` of the canonical config, which leaves out the seed (a folder of its own)
and the settings that cannot change the result (``reste.rundir.RESUME_FREE``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings

from ..config import TrainConfig, as_recorded
from ..rundir import IDENTITY_FREE  # (the seed has a folder of its own)

FREE_FIELDS = IDENTITY_FREE  # the name this module gave them before rundir owned them


def canonical(config: TrainConfig) -> TrainConfig:
    """The resolved config with the estimator's hyper-parameters written out in full."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. ReSTE's "schedule never changes" for o_end = 1
        return as_recorded(config.resolve())


def canonical_saved(config: TrainConfig) -> TrainConfig:
    """:func:`canonical` of a config read from a file (a sweep.json's setting, a run's config.json), whose plugins
    are not imported: a sweep folder from elsewhere could name code of its own there, run by a report or a rerun.
    The estimators and models of plugins already loaded (``--plugin``) count; the plugins stay recorded (they
    are no part of a run's identity)."""
    return dataclasses.replace(canonical(dataclasses.replace(config, plugins=[])), plugins=config.plugins)


def config_key(config: TrainConfig) -> str:
    """A short hash of everything in ``config`` that can change the result, except the seed.

    Fields at their default value are left out, so a field added to ``TrainConfig`` later (with
    a default that keeps the old behaviour) does not rename, and retrain, the runs of a sweep.
    """
    defaults = TrainConfig().to_dict()
    data = {k: v for k, v in config.to_dict().items() if k not in IDENTITY_FREE and v != defaults.get(k, object())}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]
