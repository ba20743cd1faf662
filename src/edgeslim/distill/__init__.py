"""Knowledge distillation: feature taps, registered losses, layer pairing, the Distiller.

Stage 2 of knowledge-transfer compression (Chen et al., Computer
Communications 2020): the student learns the teacher's intermediate feature
maps (FitNets hints, attention transfer) and its soft, noisy logits (Hinton
KD; Sau & Balasubramanian's noisy teacher) together with the hard labels.
``kd_finetune`` recovers a pruned model by distilling from the unpruned one
(Liu, Zhang, Chen 2020).

Example:
    >>> student = lighten(teacher, x)
    >>> distill(student, teacher, (X, Y), losses="noisy_kd:0.9,hint:1.0,ce:0.1", epochs=30)
"""
from __future__ import annotations

from edgeslim.distill.distiller import (
    DEFAULT_LOSSES,
    PIPELINE_LOSSES,
    Distiller,
    distill,
    kd_finetune,
)
from edgeslim.distill.losses import (
    LOSSES,
    AttentionTransferLoss,
    CrossEntropyLoss,
    DistillLoss,
    HintLoss,
    KDLoss,
    LossContext,
    LossSetup,
    NoisyKDLoss,
    UnknownLossError,
    attention_map,
    build_loss,
    parse_loss_spec,
)
from edgeslim.distill.pairing import LayerPair, find_stage_ends, pair_layers, probe_shapes
from edgeslim.distill.taps import FeatureTaps, resolve_module

__all__ = [
    "DEFAULT_LOSSES",
    "PIPELINE_LOSSES",
    "LOSSES",
    "AttentionTransferLoss",
    "CrossEntropyLoss",
    "DistillLoss",
    "Distiller",
    "FeatureTaps",
    "HintLoss",
    "KDLoss",
    "LayerPair",
    "LossContext",
    "LossSetup",
    "NoisyKDLoss",
    "UnknownLossError",
    "attention_map",
    "build_loss",
    "distill",
    "find_stage_ends",
    "kd_finetune",
    "pair_layers",
    "parse_loss_spec",
    "probe_shapes",
    "resolve_module",
]

from .._callable import make_callable  # noqa: E402

make_callable(__name__, "distill")  # edgeslim.distill is this package *and* the function
