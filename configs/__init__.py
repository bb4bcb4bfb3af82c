# configs/ is installed as the package ugs_d2.configs (setup.py maps it), so that Hydra finds it
# through pkg://ugs_d2.configs from any directory; this file makes it an importable package.
