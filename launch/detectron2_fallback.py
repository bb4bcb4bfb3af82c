#!/usr/bin/env python
"""Build and install the registry's detectron2 (``pb1-detectron2==0.6``) without its C++ ops.

Detectron2 has no official release on the package registry. The registry's
``pb1-detectron2==0.6`` sdist is upstream 0.6 Python code *without*
``detectron2/layers/csrc``, so its extension build fails. This script downloads that sdist
into a temporary directory, applies the small compatibility edits listed in ``EDITS`` (each
with the reason), adds a ``detectron2._C`` placeholder that names what is missing when used,
and installs the result into the running interpreter with ``--no-deps``.

What the fallback lacks (everything else this project uses works):
deformable convolution, rotated-box ops (``nms_rotated``, ``ROIAlignRotated``,
``pairwise_iou_rotated``) and the C++ fast path of ``COCOeval``. For those, install detectron2
from its official source: ``D2_SOURCE=/path/to/detectron2 make install``.

Nothing of detectron2 is stored in this repository; the edits are applied at install time.
"""
import glob
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

SDIST_NAME = "pb1-detectron2"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

# (file in the sdist, old text, new text, why)
EDITS = [
    (
        "setup.py",
        "ext_modules=get_extensions(),",
        "ext_modules=[],",
        "the sdist has no detectron2/layers/csrc, so the C++ extension cannot be built",
    ),
    (
        "setup.py",
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        "",
        "the sdist has no configs/ directory; the symlink it would create dangles",
    ),
    (
        "detectron2/data/transforms/transform.py",
        "interp=Image.LINEAR",
        "interp=Image.BILINEAR",
        "Pillow 10 removed Image.LINEAR (it was an alias of BILINEAR)",
    ),
    (
        "detectron2/evaluation/pascal_voc_evaluation.py",
        ".astype(np.bool)",
        ".astype(bool)",
        "numpy 1.24-1.26 have no np.bool",
    ),
    (
        "detectron2/evaluation/sem_seg_evaluation.py",
        "dtype=np.int)",
        "dtype=int)",
        "numpy >= 1.24 has no np.int",
    ),
    (
        "detectron2/evaluation/sem_seg_evaluation.py",
        "np.float)",
        "float)",
        "numpy >= 1.24 has no np.float",
    ),
]

# Imported at top level by deform_conv.py, rotated_boxes.py, roi_align_rotated.py and
# fast_eval_api.py, so detectron2 cannot be imported at all without a detectron2._C module.
C_PLACEHOLDER = '''"""Placeholder for detectron2's C++ ops, which this fallback build does not have.

Written by ugs_d2's launch/detectron2_fallback.py. Any use of a compiled op raises an error
that says how to get the full build.
"""

FALLBACK_BUILD = True


def get_compiler_version():
    return "none (ugs_d2 fallback build without C++ ops)"


def get_cuda_version():
    return "none (ugs_d2 fallback build without C++ ops)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise NotImplementedError(
        f"detectron2._C.{name} is a compiled op that the fallback detectron2 build lacks "
        "(deformable conv, rotated boxes, C++ COCOeval); install the full build with "
        "D2_SOURCE=/path/to/detectron2 make install"
    )
'''


def run(cmd, **kwargs):
    print("[detectron2-fallback] $", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def download_sdist(dest_dir):
    """Fetch the pinned sdist through the package index (PEP 503) and check its sha256.

    ``pip download`` cannot be used: current pip refuses the sdist because its ``[all]`` extra
    declares a direct URL dependency (panopticapi).
    """
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page_url = f"{index}/{SDIST_NAME}/"
    print(f"[detectron2-fallback] looking up {SDIST_FILE} at {page_url}", flush=True)
    with urllib.request.urlopen(page_url, timeout=120) as response:
        page = response.read().decode()
    match = re.search(r'href="([^"#]*%s)[^"]*"' % re.escape(SDIST_FILE), page)
    if match is None:
        raise SystemExit(f"[detectron2-fallback] {page_url} does not list {SDIST_FILE}")
    url = urllib.parse.urljoin(page_url, match.group(1))
    path = os.path.join(dest_dir, SDIST_FILE)
    with urllib.request.urlopen(url, timeout=300) as response, open(path, "wb") as f:
        f.write(response.read())
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"[detectron2-fallback] {url}: sha256 {digest} != expected {SDIST_SHA256}")
    return path


def apply_edits(src_dir):
    for rel_path, old, new, why in EDITS:
        path = os.path.join(src_dir, rel_path)
        with open(path) as f:
            text = f.read()
        if old not in text:
            raise SystemExit(f"[detectron2-fallback] {rel_path}: expected text {old!r} not found")
        with open(path, "w") as f:
            f.write(text.replace(old, new))
        print(f"[detectron2-fallback] patched {rel_path}: {why}")
    with open(os.path.join(src_dir, "detectron2", "_C.py"), "w") as f:
        f.write(C_PLACEHOLDER)


def main():
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    with tempfile.TemporaryDirectory(prefix="d2-fallback-") as tmp:
        with tarfile.open(download_sdist(tmp)) as tar:
            tar.extractall(tmp, filter="data")
        (src_dir,) = [d for d in glob.glob(os.path.join(tmp, "pb1-detectron2-*")) if os.path.isdir(d)]
        apply_edits(src_dir)
        # --no-build-isolation: setup.py imports torch; --no-deps: its metadata pins
        # black==21.4b2 and iopath<0.1.10, and launch/requirements.txt covers what it needs.
        run(pip + ["install", "-q", "--no-deps", "--no-build-isolation", src_dir])


if __name__ == "__main__":
    main()
