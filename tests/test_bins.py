"""IN grid (Eq. 9), two-hot labels (Eq. 8) and expectation decoding."""
import pytest
import torch

from ugs_d2.bins import expectation, in_grid, two_hot

# (value_range a, modulator b, num_intervals n): paper defaults, uniform, negative, tiny b, n = 1
GRIDS = [
    (2.0, 1.0, 10),
    (5.0, 1.0, 5),
    (3.0, 1.5, 7),
    (2.0, 0.0, 4),
    (1.0, -2.0, 6),
    (4.0, 1e-9, 1),
]



@pytest.mark.parametrize("value_range, modulator, num_intervals", GRIDS)
def test_grid_is_odd_increasing_with_endpoints(value_range, modulator, num_intervals):
    grid = in_grid(value_range, modulator, num_intervals, dtype=torch.float64)
    assert grid.shape == (num_intervals + 1,)
    assert torch.equal(grid, -grid.flip(0))  # odd, exactly
    assert (grid.diff() > 0).all()
    assert grid[0].item() == -value_range and grid[-1].item() == value_range
    assert in_grid(value_range, modulator, num_intervals).dtype == torch.get_default_dtype()


@pytest.mark.parametrize("value_range, num_intervals", [(2.0, 10), (5.0, 5), (3.0, 7)])
def test_zero_modulator_is_exactly_uniform(value_range, num_intervals):
    n = num_intervals
    uniform = [value_range * ((2 * i - n) / n) for i in range(n + 1)]  # u_i = -a + 2a*i/n
    grid = in_grid(value_range, 0.0, n, dtype=torch.float64)
    assert grid.tolist() == uniform  # no exp/expm1 round-off: exactly u
    linspace = torch.linspace(-value_range, value_range, n + 1, dtype=torch.float64)
    torch.testing.assert_close(grid, linspace, rtol=0, atol=1e-14)
    # and it is the b -> 0 limit of the exponential map, not a special case that jumps
    near = in_grid(value_range, 1e-9, num_intervals, dtype=torch.float64)
    torch.testing.assert_close(near, grid, rtol=0, atol=1e-8)


@pytest.mark.parametrize("num_intervals", [4, 5, 10])
def test_larger_modulator_is_denser_near_zero(num_intervals):
    def central_gap(modulator):  # the interval starting at 0 (n even) or around 0 (n odd)
        grid = in_grid(2.0, modulator, num_intervals, dtype=torch.float64)
        mid = num_intervals // 2
        return (grid[mid + 1] - grid[mid]).item()

    gaps = [central_gap(b) for b in (-1.0, 0.0, 0.5, 1.0, 1.5, 3.0)]
    assert all(a > b for a, b in zip(gaps, gaps[1:]))


@pytest.mark.parametrize("bad", [(0.0, 1.0, 10), (-1.0, 1.0, 10), (2.0, 1.0, 0)])
def test_grid_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        in_grid(*bad)


@pytest.mark.parametrize("value_range, modulator, num_intervals", GRIDS)
def test_two_hot_reproduces_in_range_targets(value_range, modulator, num_intervals):
    grid = in_grid(value_range, modulator, num_intervals, dtype=torch.float64)
    targets = torch.cat(
        [
            (torch.rand(3, 50, dtype=torch.float64) * 2 - 1).flatten() * value_range,
            grid,  # exactly on grid points, ends included
            torch.tensor([0.0, 1e-12, -1e-12], dtype=torch.float64),
        ]
    ).view(1, -1)  # any batch shape
    label = two_hot(targets, grid)
    assert label.shape == (*targets.shape, num_intervals + 1)
    assert (label >= 0).all() and ((label > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(label.sum(-1), torch.ones_like(targets), rtol=0, atol=1e-12)
    torch.testing.assert_close(label @ grid, targets, rtol=0, atol=1e-6)
    # the (at most) two non-zero weights sit on neighbouring bins
    nonzero = (label > 0).int()
    first, last = nonzero.argmax(-1), num_intervals - nonzero.flip(-1).argmax(-1)
    assert ((last - first) <= 1).all()


def test_two_hot_clamps_out_of_range_targets():
    grid = in_grid(2.0, 1.0, 10, dtype=torch.float64)
    label = two_hot(torch.tensor([-7.0, -2.0, 2.0, 1e6], dtype=torch.float64), grid)
    assert label[0, 0] == label[1, 0] == 1 and label[2, -1] == label[3, -1] == 1
    assert (label.sum(-1) == 1).all()


def test_two_hot_weights_follow_eq_8():
    grid = torch.tensor([-1.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    label = two_hot(torch.tensor([0.125], dtype=torch.float64), grid)
    torch.testing.assert_close(label[0], torch.tensor([0.0, 0.75, 0.25, 0.0], dtype=torch.float64))


def test_expectation_decodes_logits():
    grid = in_grid(5.0, 1.0, 5)
    uniform = torch.zeros(2, 3, 6)
    torch.testing.assert_close(expectation(uniform, grid), torch.zeros(2, 3))  # odd grid
    targets = torch.tensor([-4.0, -0.3, 0.0, 0.05, 2.5])
    logits = two_hot(targets, grid).clamp_min(1e-30).log()  # softmax(log p) == p
    torch.testing.assert_close(expectation(logits, grid), targets, rtol=0, atol=1e-5)
    extreme = torch.randn(100, 6) * 1e3
    assert expectation(extreme, grid).abs().max() <= 5.0
