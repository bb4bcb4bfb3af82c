"""Argument types and checks shared by the ``ugs-data`` subcommands."""
import argparse

__all__ = ["non_negative_int", "positive_int", "check_output_dir"]


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a positive integer, got 0")
    return value


def check_output_dir(path: str) -> None:
    """The output must be a directory (or not exist yet) under a writable parent."""
    from ugs_d2.fileio import output_problem

    problem = output_problem(path, directory=True)
    if problem:
        raise SystemExit(f"ugs-data: --out {path} {problem}")
