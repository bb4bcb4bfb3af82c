"""The benchmarks behind ``ugs-bench``: one module per benchmark (its spec dataclass, the
measurement and the report), the shared timing and reporting in :mod:`ugs_d2.bench.common`.
``ugs_d2/cli/bench*.py`` only parse the command line and call these."""
