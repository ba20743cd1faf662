"""Fuzz structured pruning over random architectures.

Builds ``--nets`` random networks from the architecture space the property
tests draw from (``tests/nets.py``: residual, concat, dense, depthwise, depthwise
with a channel multiplier, grouped with 2 and 4 groups, SE, an unused side
branch, a conv applied twice; one net in five also returns its pooled features),
and prunes each with every criterion (or, with ``--sample``, one), each run with
a random planner, target (``ratio`` / ``target_flops`` / ``target_params``),
``round_to``, ``steps`` and ``protect_first``. A run is

* ``ok``: the pruned model runs, its outputs keep their shapes and are finite,
  its parameter count and MACs equal the independent count from the layers'
  constructor attributes (``nets.analytic_params`` / ``nets.analytic_macs``), the
  graph's cost model is exact on it, and the input model is untouched;
* a documented refusal: an ``EdgeslimError`` subclass (counted by type and by
  the start of its message), or ok with a ``PruneWarning`` (nothing removed);
* a crash: any other exception, or a failed check (the first few are kept).

Usage (one thread, as in CI):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/fuzz_prune.py --nets 1000

Writes ``benchmarks/results/fuzz_prune.json``.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import nets  # noqa: E402  (tests/nets.py: the shared architecture space)

import edgeslim  # noqa: E402
from edgeslim.io import atomic_write_json  # noqa: E402
from edgeslim.errors import EdgeslimError  # noqa: E402
from edgeslim.graph import build_dependency_graph  # noqa: E402
from edgeslim.models.utils import flatten_outputs  # noqa: E402
from edgeslim.profile import count_flops, count_params  # noqa: E402
from edgeslim.prune import IMPORTANCES, PruneWarning  # noqa: E402
from edgeslim.prune.planner import ORDERINGS  # noqa: E402

CRITERIA = tuple(IMPORTANCES.names())  # every registered criterion
PLANNERS = tuple(ORDERINGS.names())
TARGETS = ("ratio", "target_flops", "target_params")


def random_options(rng: random.Random, criterion: str, model) -> dict:
    target = rng.choice(TARGETS)
    value = rng.uniform(0.02, 0.8) if target == "ratio" else rng.uniform(0.2, 0.98)
    opts = {"criterion": criterion, "planner": rng.choice(PLANNERS), target: round(value, 3),
            "round_to": rng.choice((1, 1, 2, 4)), "steps": rng.choice((1, 1, 2)),
            "protect_first": rng.random() < 0.7}
    if rng.random() < 0.1:  # leave one block alone
        opts["ignore"] = [f"blocks.{rng.choice([n for n, _ in model.blocks.named_children()])}"]
    return opts


def _shapes(out) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in flatten_outputs(out)]


class CheckFailed(AssertionError):
    """A pruned model that runs but is wrong (raised even under ``python -O``)."""


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


def check_pruned(model, pruned, x, before: dict, ref_shapes: list) -> None:
    """Raise CheckFailed unless the pruned model is sound (see the module docstring)."""
    with torch.no_grad():
        out = pruned(x)
    _expect(_shapes(out) == ref_shapes, f"output shapes {_shapes(out)} != {ref_shapes}")
    _expect(all(torch.isfinite(t).all() for t in flatten_outputs(out)), "non-finite output")
    params, macs = count_params(pruned), count_flops(pruned, x)[1]
    want_params, want_macs = nets.analytic_params(pruned), nets.analytic_macs(pruned, x)
    _expect(params == want_params, f"params {params} != analytic {want_params}")
    _expect(macs == want_macs, f"MACs {macs} != analytic {want_macs}")
    cost, measured = build_dependency_graph(pruned, x).cost(), (macs // x.shape[0], params)
    _expect(cost == measured, f"graph cost {cost} != measured {measured}")
    after = model.state_dict()
    _expect(all(torch.equal(v, after[k]) for k, v in before.items()), "the input model changed")


def run_one(model, x, calib, opts: dict) -> tuple[str, str]:
    """(outcome, detail): 'ok', 'warned', an EdgeslimError type name, or 'crash'."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = _shapes(model(x))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PruneWarning)
            pruned = edgeslim.prune(model, x, calib_data=calib, calib_batches=1, **opts)
        check_pruned(model, pruned, x, before, ref)
    except EdgeslimError as exc:
        return type(exc).__name__, str(exc)
    except Exception as exc:  # noqa: BLE001  (what the fuzzer is for)
        return "crash", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-4)}"
    if any(issubclass(w.category, PruneWarning) for w in caught):
        return "warned", str(next(w.message for w in caught if issubclass(w.category, PruneWarning)))
    return "ok", ""


def _message_kind(outcome: str, message: str) -> str:
    """The start of a message, without the numbers: a key to count causes by."""
    head = message.splitlines()[0] if message else ""
    if outcome != "crash" and ":" in head[:80]:
        head = head.split(":")[0]
    return "".join(c for c in head if not c.isdigit())[:90]


def fuzz(n_nets: int, seed: int, sample: bool, max_crashes: int = 5) -> dict:
    counts: Counter = Counter()
    kinds: Counter = Counter()
    per_criterion: dict[str, Counter] = {c: Counter() for c in CRITERIA}
    crashes: list[dict] = []
    features_nets, start = 0, time.perf_counter()
    for i in range(n_nets):
        rng = random.Random(seed * 1_000_003 + i)
        specs, features = nets.random_specs(rng), rng.random() < 0.2
        features_nets += features
        model = nets.build_random_net(specs, seed=i, features=features)
        x = nets.example_input(2, seed=i)
        calib = (nets.example_input(4, seed=i + 1), torch.randint(0, nets.NUM_CLASSES, (4,)))
        for criterion in (rng.choice(CRITERIA),) if sample else CRITERIA:
            opts = random_options(rng, criterion, model)
            outcome, detail = run_one(model, x, calib, opts)
            counts[outcome] += 1
            per_criterion[criterion][outcome] += 1
            if outcome != "ok":
                kinds[f"{outcome}: {_message_kind(outcome, detail)}"] += 1
            if outcome == "crash" and len(crashes) < max_crashes:
                crashes.append({"net": i, "specs": [s.__dict__ for s in specs], "features": features,
                                "options": opts, "error": detail})
        if (i + 1) % 100 == 0:
            print(f"{i + 1} nets, {sum(counts.values())} runs: {dict(counts)} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return {"nets": n_nets, "runs": sum(counts.values()), "seed": seed,
            "mode": "one random criterion per net" if sample else "every criterion on every net",
            "nets_with_feature_output": features_nets, "outcomes": dict(counts),
            "causes": dict(kinds.most_common()),
            "per_criterion": {c: dict(v) for c, v in per_criterion.items()},
            "first_crashes": crashes, "seconds": round(time.perf_counter() - start, 1),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", action="store_true", help="one random criterion per net, not all 7")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_prune.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    result = fuzz(args.nets, args.seed, args.sample)
    atomic_write_json(args.out, result, indent=2)
    print(json.dumps({k: result[k] for k in ("nets", "runs", "mode", "outcomes", "seconds")}, indent=2))
    for crash in result["first_crashes"]:
        print("\nCRASH", json.dumps(crash, indent=1)[:2000])
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
