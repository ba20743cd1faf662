"""Structured (channel) pruning, EasiEdge ADMM pruning and unstructured weight pruning."""
from __future__ import annotations

from .._callable import make_callable
from .._lazy import lazy_getattr
from . import information_gain  # noqa: F401  (registers the information-gain criteria)
from .api import PruneArgumentError, PruneConfig, PruneWarning, plain_finetune, prune, prune_
from .importance import IMPORTANCES, Importance, ImportanceContext, get_importance
from .planner import Budget, Constraints, plan_removal
from .surgery import apply_plan, plan_to_removal, prune_channels_, removal_to_plan

# Modules that pull in more machinery load on first use.
_LAZY = {
    "admm_prune": "edgeslim.prune.admm",
    "prune_weights": "edgeslim.prune.unstructured",
    "iterative_prune_weights": "edgeslim.prune.unstructured",
    "MaskEnforcer": "edgeslim.prune.unstructured",
}

__all__ = [
    "prune", "prune_", "PruneConfig", "PruneWarning", "PruneArgumentError", "plain_finetune",
    "IMPORTANCES", "Importance",
    "ImportanceContext", "get_importance", "Budget", "Constraints", "plan_removal", "apply_plan",
    "plan_to_removal", "prune_channels_", "removal_to_plan", *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY)


make_callable(__name__, "prune")  # edgeslim.prune is this package *and* the function
