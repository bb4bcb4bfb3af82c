"""``ugs-bench overhead``: the table, its ratios, the output file, one-line errors."""
import re

import pytest
import torch
from conftest import TINY_RUN

# TINY_RUN without device= (the benchmark takes --device) and with 128 px generated images.
TINY_BENCH = [o for o in TINY_RUN if not o.startswith("device=")] + ["dataset.generate.image_size=128"]


def _rows(report):
    """preset -> {column header: cell} of the results table."""
    table = [line for line in report.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = split(table[0])
    return {cells[0]: dict(zip(header, cells)) for cells in map(split, table[2:])}


def test_overhead_off_and_full_writes_the_table(tmp_path):
    from ugs_d2.cli import bench

    out = tmp_path / "results" / "overhead.md"
    argv = ["overhead", "--presets", "off,full", "--warmup", "1", "--iters", "2", "--repeats", "1",
            "--device", "cpu", "--out", str(out), "--quiet", *TINY_BENCH]
    outcome = bench.run_command_line(argv)

    report = out.read_text()
    assert report == outcome["report"]
    assert "ugs-bench overhead --presets off,full" in report  # the command is recorded
    rows = _rows(report)
    assert set(rows) == {"off", "full"}
    off, full = rows["off"], rows["full"]
    assert off["meta-arch"] == "GeneralizedRCNN" and full["meta-arch"] == "UGSRCNN"
    ratios = [h for h in off if "ratio" in h]
    assert len(ratios) == 5  # step (median, min), memory, inference (median, min)
    assert all(off[h] == "1.00x" for h in ratios)
    for row in (off, full):
        for h in ("step ms (median)", "step ms (min)", "inference ms/img (median)",
                  "inference ms/img (min)"):
            assert float(row[h]) > 0, h
        assert float(row["peak MB"]) > float(row["static MB"]) > 0
        for h in ratios:
            assert re.fullmatch(r"\d+\.\d\dx", row[h]) and float(row[h][:-1]) > 0, (h, row[h])
    assert "**full vs off**" in report

    results = {r.name: r for r in outcome["results"]}
    assert len(results["off"].step_s) == 2 and len(results["full"].infer_s_per_image) == 2
    from ugs_d2.data import synth

    # the synthetic set's classes, not detectron2's default 80
    assert outcome["setup"]["num_classes"] == len(synth.SynthConfig().classes)


def test_unknown_preset_is_one_line_error(tmp_path):
    from ugs_d2.cli import bench

    with pytest.raises(SystemExit) as e:
        bench.main(["overhead", "--presets", "off,fulll", "--out", str(tmp_path / "x.md")])
    message = str(e.value)
    assert message.startswith("ugs-bench: unknown preset 'fulll'") and "full" in message
    assert "\n" not in message
    assert not (tmp_path / "x.md").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("ugs=full", "use --presets"),
        ("device=cpu", "use --device"),
        ("schedule.max_iterr=3", "did you mean schedule.max_iter"),
    ],
)
def test_bad_overrides_are_one_line_errors(tmp_path, override, expected):
    from ugs_d2.cli import bench

    with pytest.raises(SystemExit) as e:
        bench.main(["overhead", "--presets", "off", "--out", str(tmp_path / "x.md"), override])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_help_names_the_command_and_its_options(capsys):
    from ugs_d2.cli import bench

    with pytest.raises(SystemExit) as e:
        bench.main(["overhead", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--presets", "--iters", "--warmup", "--repeats", "--device", "--out", "OVERRIDE"):
        assert option in text


def test_cpu_peak_of_a_known_step():
    """The profiler-based peak of a 2-layer MLP step, against what its tensors must occupy."""
    from ugs_d2.bench.memory import profile_cpu_step_peak
    from ugs_d2.bench.memory import tensor_bytes as _tensor_bytes

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(500, 500), torch.nn.ReLU(), torch.nn.Linear(500, 500))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(256, 500)

    def forward():
        return model(x).sum()

    def backward_step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    backward_step(forward())  # gradients and momentum exist, as after a warmup step
    params = _tensor_bytes(model.parameters())
    grads = _tensor_bytes(p.grad for p in model.parameters())
    momentum = _tensor_bytes(s["momentum_buffer"] for s in optimizer.state.values())
    optimizer.zero_grad(set_to_none=True)
    peak, static = profile_cpu_step_peak(forward, backward_step, params + momentum, grads)

    activation = 256 * 500 * 4  # one (256, 500) float32 tensor
    assert static == params + grads + momentum
    # at least the state + the new gradients + the ReLU output kept for the backward
    assert peak >= static + activation
    # and not more than the state + a handful of activations
    assert peak <= static + 6 * activation
