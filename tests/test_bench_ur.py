"""``ugs-bench ur``: the rho table's numbers follow from the perturbation's definition."""
import pytest

from ugs_d2.cli.bench import run_command_line


def test_ur_table_relative_is_rho_of_the_norm_and_rho_zero_changes_nothing(tmp_path):
    out = tmp_path / "ur.md"
    outcome = run_command_line(
        ["ur", "--norms", "image,relative", "--rhos", "0,0.5", "--train-steps", "0", "--num-batches", "1",
         "--quiet", "--out", str(out), "model.input.min_size_train=[96]", "model.input.max_size_train=96",
         "model.input.min_size_test=96", "model.input.max_size_test=96"]
    )
    rows = {(r["norm"], r["rho"]): r for r in outcome["rows"]}
    for norm in ("image", "relative"):  # the lean UR pass: rho 0 sees the first pass's inputs
        assert rows[(norm, 0.0)]["loss_delta"] == pytest.approx(0.0, abs=1e-6)
    assert rows[("relative", 0.5)]["eps_ratio"] == pytest.approx(0.5, rel=1e-4)
    assert rows[("image", 0.5)]["eps_ratio"] < 0.05  # rho = 0.5 against feature norms >> 1
    text = out.read_text()
    assert "| relative | 0.5 | 0.5 |" in text and text.startswith("# UR: perturbation size")


def test_ur_table_rejects_unknown_norms(tmp_path):
    with pytest.raises(SystemExit, match="--norms: unknown 'global'"):
        run_command_line(["ur", "--norms", "global", "--quiet", "--out", str(tmp_path / "x.md")])
