"""Research-harness glue around ``ugs-train``: Hydra callbacks (sweep collection)."""
