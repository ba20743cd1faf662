"""Which stage outputs are *trained*: the rule the report uses to draw untrained stages apart.

A stage's output model is **untrained** when its structure was changed and it has
not been trained since. Each stage kind has one *effect* on that status, decided
from its config alone (so it is known before the stage runs and the same on resume):

- ``TRAINS``: the stage ends by fitting the model's weights (``train``, ``distill``
  and ``finetune`` with epochs > 0; a prune stage that fine-tunes after every step;
  EasiEdge, whose ADMM epochs train the model towards the pruned structure; a
  streamline merge whose reborn layers are fitted or retrained; ``load``, whose saved
  model is taken as trained).
- ``RESHAPES``: it changes the structure and trains nothing after (``lighten``; a prune
  stage without fine-tuning; a streamline merge with no fitting steps and no retraining).
- ``KEEPS``: the output computes what the input did, so the status carries over
  (exact merges, ``quantize``, ``export``, ``profile``, a stage with 0 epochs).

The run's input model is trained when the recipe loads it from a checkpoint and
untrained when it is a freshly initialised zoo model. A stage kind without an entry
in :data:`EFFECTS` keeps the status (it is assumed not to change the model).
"""
from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Callable

from . import configs as R

if TYPE_CHECKING:
    from .recipe import Recipe


class Effect(Enum):
    """What a stage does to the training status of the model it hands on."""

    TRAINS = "trains"
    RESHAPES = "reshapes"
    KEEPS = "keeps"


def _epochs(epochs: int) -> Effect:
    return Effect.TRAINS if epochs > 0 else Effect.KEEPS


def _prune(cfg: R.PruneStage) -> Effect:
    if cfg.method == "easiedge":
        tunes = cfg.admm_epochs > 0 or (cfg.finetune != "none" and cfg.finetune_epochs > 0)
    else:
        tunes = cfg.finetune != "none" and cfg.finetune_epochs > 0
    return Effect.TRAINS if tunes else Effect.RESHAPES


def _merge(cfg: R.MergeStage) -> Effect:
    if cfg.retrain_epochs > 0 or (cfg.mode == "streamline" and cfg.steps > 0):
        return Effect.TRAINS
    return Effect.KEEPS if cfg.mode == "exact" else Effect.RESHAPES


#: stage config type -> its effect on the training status (see the module doc)
EFFECTS: dict[type, Callable[[Any], Effect]] = {
    R.TrainStage: lambda cfg: _epochs(cfg.epochs),
    R.LoadStage: lambda cfg: Effect.TRAINS,
    R.LightenStage: lambda cfg: Effect.RESHAPES,
    R.DistillStage: lambda cfg: _epochs(cfg.epochs),
    R.FinetuneStage: lambda cfg: _epochs(cfg.epochs),
    R.PruneStage: _prune,
    R.MergeStage: _merge,
}


def stage_effect(cfg: Any) -> Effect:
    """The effect of one stage config (``KEEPS`` for a kind without an entry)."""
    rule = EFFECTS.get(type(cfg))
    return Effect.KEEPS if rule is None else rule(cfg)


def trained_flags(recipe: Recipe) -> list[bool]:
    """``[input trained?, after stage 0 trained?, ...]``: one flag per row of ``state.json``."""
    flags = [bool(recipe.model.checkpoint)]
    for stage in recipe.stages:
        effect = stage_effect(stage.config)
        flags.append(flags[-1] if effect is Effect.KEEPS else effect is Effect.TRAINS)
    return flags
