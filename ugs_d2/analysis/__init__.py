"""What the commands report about runs and datasets: sweep collection and statistics, the
gradient-variance tables, dataset health and class statistics. ``ugs_d2/cli/`` parses and prints."""
