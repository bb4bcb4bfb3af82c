"""Peak memory of a training step: the bytes of tensors live at the step's peak.

On CUDA, ``torch.cuda.max_memory_allocated`` gives the step's part; a CPU tensor has no allocator
statistics, so :func:`profile_cpu_step_peak` sums ``torch.profiler``'s allocation and free events
of one step. Both count tensor bytes, not process RSS.
"""
from typing import Callable

__all__ = ["BENCH_PROFILE_MARK", "tensor_bytes", "state_tensors", "profile_cpu_step_peak"]

BENCH_PROFILE_MARK = "ugs_bench::zero_grad_backward_step"


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (an iterable of tensors or None; shared
    storages counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        key = (storage.device, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def state_tensors(model, optimizer, grads: bool):
    """What a training step keeps between steps: parameters, buffers, the optimizer's state and,
    with ``grads``, the gradients."""
    import torch

    yield from model.parameters()
    yield from model.buffers()
    if grads:
        yield from (p.grad for p in model.parameters())
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))


def profile_cpu_step_peak(forward: Callable, backward_step: Callable, static_bytes: int, grad_bytes: int):
    """Peak bytes of live CPU tensors during ``backward_step(forward())``.

    In detectron2's ``SimpleTrainer`` the previous step's gradients (``grad_bytes``) are alive
    during the forward and freed by ``zero_grad`` before the backward. The profiler cannot see
    frees of blocks allocated before it started, so the caller releases them first
    (``zero_grad(set_to_none=True)``) and they are added back here for the forward phase.

    Returns:
        ``(peak, static)``: ``static = static_bytes + grad_bytes`` (the state at the step's start)
        and ``peak = static_bytes + max(grad_bytes + forward peak, backward peak)``, the peaks
        being of the running sum of the profiler's allocation (+) and free (-) events.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        losses = forward()
        with record_function(BENCH_PROFILE_MARK):
            backward_step(losses)
    events = prof.profiler.kineto_results.events()
    marks = [e.start_ns() for e in events if e.name() == BENCH_PROFILE_MARK]
    if len(marks) != 1:
        raise RuntimeError("torch.profiler did not record the backward marker")
    memory = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    if not memory:
        raise RuntimeError("torch.profiler recorded no CPU memory events")
    live, forward_peak, backward_peak = 0, 0, 0
    for start_ns, nbytes in memory:
        live += nbytes
        if start_ns < marks[0]:
            forward_peak = max(forward_peak, live)
        else:
            backward_peak = max(backward_peak, live)
    return static_bytes + max(grad_bytes + forward_peak, backward_peak), static_bytes + grad_bytes
