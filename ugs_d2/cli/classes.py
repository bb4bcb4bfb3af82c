"""``ugs-classes``: keep, drop, rename or merge the classes of a COCO json.

    ugs-classes train.json --drop bike --rename person=pedestrian --merge truck,bus=vehicle --out out.json
    ugs-classes train.json --keep car,person --out cars_people.json

* ``--keep`` / ``--drop`` take one or more names (space- or comma-separated) and exclude each
  other; ``--rename OLD=NEW`` and ``--merge A,B[,...]=NEW`` can be repeated; all options refer
  to the *original* names; ids become 1..K (the rules: :mod:`ugs_d2.data.classes`);
* a summary (per original class: action, new id, boxes) is printed; the output is written
  atomically and the input is never overwritten unless ``--force``.

Every problem is a one-line error. :func:`ugs_d2.data.classes.remap_categories` is the pure
function behind the CLI.
"""
import argparse
import os
import sys
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ugs_d2.data.classes import remap_categories
from ugs_d2.data.coco_json import CocoError, DatasetError, read_coco_json
from ugs_d2.fileio import write_json_atomic
from ugs_d2.interrupts import console_entry

__all__ = ["format_summary", "main"]

PROG = "ugs-classes"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The printed summary: totals, then one line per original class."""
    rows = summary["classes"]
    lines = [
        f"classes: {len(rows)} -> {len(summary['result'])}; annotations: "
        f"{summary['annotations_before']} -> {summary['annotations_after']} "
        f"({summary['annotations_before'] - summary['annotations_after']} removed); "
        f"images: {summary['images']} (all kept)"
    ]
    counts = Counter(r["action"] for r in rows)
    lines.append(", ".join(f"{counts[a]} {a}" for a in ("kept", "dropped", "renamed", "merged")))
    w = max([len("class")] + [len(str(r["name"])) for r in rows])
    v = max([len("new class")] + [len(str(r["new_name"] or "-")) for r in rows])
    lines.append(f"{'id':>6}  {'class':<{w}}  {'action':<8}  {'new id':>6}  {'new class':<{v}}  "
                 f"{'boxes':>7}  {'new class boxes':>15}")
    after = {c["id"]: c["annotations"] for c in summary["result"]}
    for r in rows:
        new_id = "-" if r["new_id"] is None else str(r["new_id"])
        new_boxes = "-" if r["new_id"] is None else str(after[r["new_id"]])
        lines.append(
            f"{r['id']!s:>6}  {r['name']:<{w}}  {r['action']:<8}  {new_id:>6}  "
            f"{r['new_name'] or '-':<{v}}  {r['annotations']:>7}  {new_boxes:>15}"
        )
    return "\n".join(lines) + "\n"


def _names(values: Optional[List[str]]) -> Optional[List[str]]:
    if values is None:
        return None
    return [n.strip() for value in values for n in value.split(",") if n.strip()]


def _pair(option: str, text: str) -> Tuple[str, str]:
    left, sep, right = text.rpartition("=")
    if not sep or not left.strip() or not right.strip():
        raise CocoError(f"{option} {text!r}: expected {'OLD=NEW' if option == '--rename' else 'A,B=NEW'}")
    return left.strip(), right.strip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Keep, drop, rename or merge the classes of a COCO json; category ids are "
        "re-numbered 1..K in the original order and a summary is printed.",
    )
    parser.add_argument("in_json", metavar="IN_JSON", help="input COCO json")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--keep", nargs="+", action="extend", metavar="NAME",
                       help="keep only these classes (space- or comma-separated)")
    which.add_argument("--drop", nargs="+", action="extend", metavar="NAME",
                       help="drop these classes and their annotations (images are kept)")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename a class (repeatable)")
    parser.add_argument("--merge", action="append", default=[], metavar="A,B=NEW",
                        help="merge classes into one named NEW (repeatable)")
    parser.add_argument("--out", required=True, metavar="OUT_JSON", help="output COCO json")
    parser.add_argument("--force", action="store_true", help="allow OUT_JSON to be IN_JSON")
    return parser


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line (``ugs-classes: ...``)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rename: Dict[str, str] = {}
        for text in args.rename:
            old, new = _pair("--rename", text)
            if old in rename:
                raise CocoError(f"--rename: class {old!r} is renamed twice")
            rename[old] = new
        merge = []
        for text in args.merge:
            sources, target = _pair("--merge", text)
            merge.append(([n.strip() for n in sources.split(",") if n.strip()], target))
        same = os.path.exists(args.out) and os.path.exists(args.in_json) and os.path.samefile(args.out, args.in_json)
        if same and not args.force:
            raise CocoError(f"--out {args.out} is the input file (use --force to overwrite it)")
        if os.path.isdir(args.out):
            raise CocoError(f"--out {args.out} is a directory")
        coco = read_coco_json(args.in_json)
        new_coco, summary = remap_categories(
            coco, keep=_names(args.keep), drop=_names(args.drop), rename=rename, merge=merge
        )
        write_json_atomic(args.out, new_coco)
    except (DatasetError, OSError) as e:
        raise SystemExit(f"{PROG}: {e}") from None
    print(format_summary(summary), end="")
    print(f"[{PROG}] wrote {args.out}", file=sys.stderr)


main = console_entry(PROG, _main)


if __name__ == "__main__":
    main()
