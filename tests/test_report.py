"""Run reports: files, tables, plots, self-contained HTML, per-layer views, deploy.md."""
from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.export import export_onnx
from edgeslim.models import create_model
from edgeslim.report import channels_per_layer, per_layer_latency, write_deploy_md, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = [
    {"stage": "input", "accuracy": 0.99, "params": 61706, "nonzero_params": 61706, "flops": 846_000,
     "bytes": 246_824, "latency_ms": 0.60, "onnx_latency_ms": 0.05, "wall_s": 0.0},
    {"stage": "prune | global", "accuracy": 0.985, "params": 15_426, "nonzero_params": 15_426,
     "flops": 211_500, "bytes": 61_704, "latency_ms": 0.30, "wall_s": 12.5},
    {"stage": "weights", "accuracy": 0.9875, "params": 15_426, "nonzero_params": 3_085, "flops": 211_500,
     "latency_ms": 0.30, "wall_s": 4.0},
    {"stage": "quantize", "accuracy": 0.9875, "params": 15_426, "latency_ms": 0.31,
     "int8_accuracy": 0.987, "int8_latency_ms": 0.1},
]


def _md_images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown)


def _md_table_rows(markdown: str) -> list[list[str]]:
    """Body rows of the first markdown table (header and alignment rows dropped)."""
    lines = markdown.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [re.split(r"(?<!\\)\|", ln)[1:-1] for ln in lines[start + 2:end]]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    run = tmp_path_factory.mktemp("run")
    lenet = create_model("lenet5")
    before = channels_per_layer(lenet)
    after = {k: max(1, v // 2) for k, v in before.items()}
    latency = {"features.0": 0.05, "features.1": 0.01, "classifier.0": 0.02}
    paths = write_report(run, STAGES, title="LeNet-5 <demo>", channels_before=before,
                         channels_after=after, layer_latency=latency)
    return run, paths


def test_files_exist_and_images_referenced_exist(report) -> None:
    run, paths = report
    assert paths["markdown"] == run / "report.md" and paths["html"] == run / "report.html"
    assert all(p.is_file() for p in paths.values())
    images = _md_images(paths["markdown"].read_text())
    assert len(images) == 6  # three trade-offs, latency and size, channels, latency per layer
    for ref in images:
        assert not Path(ref).is_absolute() and (run / ref).is_file()
        assert (run / ref).read_bytes().startswith(PNG_MAGIC)
    assert {str((run / ref).resolve()) for ref in images} == {
        str(p.resolve()) for k, p in paths.items() if k not in ("markdown", "html")}


def test_markdown_table_one_row_per_stage_with_ratios(report) -> None:
    _, paths = report
    rows = _md_table_rows(paths["markdown"].read_text())
    assert len(rows) == len(STAGES)
    assert [r[1].strip() for r in rows] == ["input", "prune \\| global", "weights", "quantize"]
    header = [h.strip() for h in paths["markdown"].read_text().splitlines()[6].split("|")[1:-1]]
    cell = {name: [r[header.index(name)].strip() for r in rows] for name in header}
    assert cell["params ×"] == ["1.00x", f"{61706 / 15426:.2f}x", f"{61706 / 15426:.2f}x", f"{61706 / 15426:.2f}x"]
    assert cell["nonzero ×"][2] == f"{61706 / 3085:.2f}x" and cell["nonzero ×"][3] == "-"
    assert cell["latency ×"][1] == "2.00x"
    assert cell["Δ acc (pts)"] == ["+0.00", "-0.50", "-0.25", "-0.25"]
    assert cell["int8 ms"] == ["-", "-", "-", "0.100"]
    assert cell["onnxruntime ms"] == ["0.050", "-", "-", "-"] and cell["onnxruntime ×"] == ["1.00x", "-", "-", "-"]


def test_html_is_self_contained(report) -> None:
    run, paths = report
    page = paths["html"].read_text()
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page and "url(" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    on_disk = {(run / ref).read_bytes() for ref in _md_images(paths["markdown"].read_text())}
    assert embedded == on_disk
    first_table = page[page.index("<table>"):page.index("</table>")]
    assert first_table.count("<tr>") == len(STAGES) + 1
    assert "LeNet-5 &lt;demo&gt;" in page  # user text is escaped


def test_plots_skipped_without_data(tmp_path) -> None:
    paths = write_report(tmp_path, [{"stage": "a", "params": 10}, {"stage": "b"}])
    markdown = paths["markdown"].read_text()
    assert set(paths) == {"markdown", "html"} and _md_images(markdown) == []
    rows = _md_table_rows(markdown)
    assert len(rows) == 2 and [c.strip() for c in rows[1]] == ["1", "b", "-", "-"]


def test_bad_stages_rejected(tmp_path) -> None:
    with pytest.raises(ConfigError, match="non-empty list"):
        write_report(tmp_path, [])


def test_channels_per_layer_lenet() -> None:
    assert channels_per_layer(create_model("lenet5")) == {
        "features.0": 6, "features.3": 16, "classifier.0": 120, "classifier.2": 84, "classifier.4": 10}


class _SharedRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.act = nn.Linear(4, 4), nn.Linear(4, 2), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.b(self.act(self.a(x))))


def test_per_layer_latency_covers_leaves_and_cleans_up() -> None:
    model = create_model("lenet5").train()
    previous = torch.get_num_threads()
    latency = per_layer_latency(model, torch.randn(1, 1, 28, 28), runs=3, warmup=1)
    leaves = [n for n, m in model.named_modules() if not list(m.children())]
    assert list(latency) == leaves  # execution order equals definition order in LeNet-5
    assert all(v > 0 for v in latency.values())
    assert model.training and torch.get_num_threads() == previous
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    shared = per_layer_latency(_SharedRelu(), torch.randn(2, 4), runs=2, warmup=0)
    assert list(shared) == ["a", "act", "b"]


def test_per_layer_latency_rejects_bad_counts() -> None:
    with pytest.raises(ConfigError, match="runs >= 1"):
        per_layer_latency(create_model("lenet5"), torch.randn(1, 1, 28, 28), runs=0)


# ------------------------------------------------------------------ deploy.md
@pytest.mark.parametrize("channels,side,mean,std,classes", [
    (1, 28, (0.1307,), (0.3081,), [f"digit {i}" for i in range(10)]),
    (3, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), None),
    (3, 32, None, None, None),
])
def test_deploy_snippet_runs_and_matches_pytorch(tmp_path, channels, side, mean, std, classes) -> None:
    """The snippet in deploy.md, run as a script, predicts what PyTorch predicts on the same image."""
    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=channels, input_size=side).eval()
    export_onnx(model, torch.randn(1, channels, side, side), tmp_path / "model.onnx")
    path = write_deploy_md(tmp_path, (channels, side, side), mean, std, class_names=classes)
    text = path.read_text()
    assert f"[N, {channels}, {side}, {side}]" in text
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 14
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, channels), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(tmp_path / "image.png")
    (tmp_path / "snippet.py").write_text(code)  # the test's own file, run as a script
    out = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    label, score = out.stdout.strip().rsplit(" ", 1)
    m = torch.tensor(mean or (0.0,) * channels).view(-1, 1, 1)
    s = torch.tensor(std or (1.0,) * channels).view(-1, 1, 1)
    x = ((torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - m) / s)[None]
    with torch.no_grad():
        logits = model(x)[0]
    k = int(logits.argmax())
    assert label == (classes[k] if classes else str(k))
    assert abs(float(score) - float(logits.max())) <= 1e-4


def test_deploy_rejects_bad_shapes(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        write_deploy_md(tmp_path, (28, 28), None, None)
    with pytest.raises(ConfigError, match="2 values for 3 input channels"):
        write_deploy_md(tmp_path, (3, 32, 32), (0.5, 0.5), None)


def test_channels_plot_from_one_dict(tmp_path) -> None:
    paths = write_report(tmp_path, [{"stage": "a"}], channels_after={"conv": 8, "fc": 10})
    assert set(paths) == {"markdown", "html", "channels_per_layer"}
    assert _md_images(paths["markdown"].read_text()) == ["plots/channels_per_layer.png"]


def test_accuracy_against_the_baseline_section(tmp_path: Path) -> None:
    from edgeslim.train import paired_accuracy_change

    ref = torch.tensor([True] * 980 + [False] * 20)
    new = ref.clone()
    new[:12] = False  # 12 lost
    new[980:985] = True  # 5 gained
    change = {"stage": "train"} | paired_accuracy_change(ref, new)
    stages = [{"stage": "train", "accuracy": 0.98}, {"stage": "prune", "accuracy": 0.973, "vs_baseline": change}]
    md = write_report(tmp_path, stages)["markdown"].read_text()
    section = md.split("## Accuracy against the baseline", 1)[1]
    row = _md_table_rows(section)[0]
    assert [c.strip() for c in row[:3]] == ["1", "prune", "-0.70"]
    assert [c.strip() for c in row[4:6]] == ["12", "5"]
    lo, hi = change["ci_pts"]
    assert row[3].strip() == f"[{lo:+.2f}, {hi:+.2f}]" and lo < 0 < hi  # 7 net of 1,000: not resolved
    assert "baseline (train) on the same 1,000 test images" in section
    assert "Accuracy against the baseline" not in write_report(tmp_path / "b", STAGES)["markdown"].read_text()
