"""Channel dependency analysis: which channels must be removed together."""
from .dependency import DependencyGraph, Group, build_dependency_graph
from .slicers import SLICERS, Slicer, register_slicer, slicer_for
from .trace import HANDLERS, register_handler, symbolic_trace
from . import radix  # noqa: F401,E402  (registers the radix-axis handlers)

__all__ = [
    "DependencyGraph", "Group", "build_dependency_graph", "Slicer", "SLICERS", "register_slicer",
    "slicer_for", "HANDLERS", "register_handler", "symbolic_trace",
]
