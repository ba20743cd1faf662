"""The model registry: ``register_model``, ``create_model``, ``list_models`` (timm style).

``create_model`` records how a model was built in ``edgeslim.info(model).arch`` (an
:class:`~edgeslim.modelinfo.Arch` with the factory name and *all* its keyword arguments,
defaults included), so a saved or pruned model can be rebuilt from a manifest
without pickling any class.
"""
from __future__ import annotations

import fnmatch
import inspect
import json
from collections.abc import Callable
from typing import Any

from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.modelinfo import Arch, info
from edgeslim.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")


def register_model(name: str | None = None) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a model factory function under ``name``.

    The factory must take ``num_classes`` and ``in_channels`` keyword arguments,
    JSON-serialisable keyword arguments only (no ``**kwargs``), and return a
    module with a ``default_input_size`` attribute ``(C, H, W)``.
    """
    return MODELS.register(name)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob ``pattern``."""
    names = MODELS.names()
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def _bind_kwargs(name: str, factory: ModelFactory, kwargs: dict[str, Any]) -> dict[str, Any]:
    """All keyword arguments of ``factory`` (defaults applied), as JSON-compatible values."""
    signature = inspect.signature(factory)
    try:
        bound = signature.bind(**kwargs)
    except TypeError as exc:
        valid = ", ".join(signature.parameters)
        raise ConfigError(
            f"model {name!r} does not accept these arguments ({exc}); valid arguments: {valid}"
        ) from exc
    bound.apply_defaults()
    try:
        # Round trip so tuples become lists: the recorded kwargs are exactly what
        # a JSON manifest gives back, and rebuilding from it gives the same model.
        return json.loads(json.dumps(dict(bound.arguments)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"arguments of model {name!r} must be JSON-serialisable (numbers, strings, "
            f"lists) so the model can be saved without pickling: {exc}"
        ) from exc


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a registered model and record its architecture in ``edgeslim.info(model).arch``.

    Args:
        name: a name from :func:`list_models` (case-insensitive).
        num_classes: size of the classifier output.
        **kwargs: model-specific arguments (``in_channels``, ``width_mult``, ...).

    Returns:
        The freshly initialised model; ``edgeslim.info(model).arch`` is ``Arch(name, kwargs)``.

    Raises:
        RegistryError: unknown ``name`` (the message lists the valid names).
        ConfigError: an argument the model does not accept or that is not JSON-serialisable.
    """
    factory = MODELS.get(name)
    arch_kwargs = _bind_kwargs(name, factory, {"num_classes": num_classes, **kwargs})
    model = factory(**arch_kwargs)
    info(model).arch = Arch(name.lower(), arch_kwargs)
    return model
