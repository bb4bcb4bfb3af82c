"""``ugs-classes``: keep, drop, rename or merge the classes of a COCO json.

    ugs-classes train.json --drop bike --rename person=pedestrian --merge truck,bus=vehicle --out out.json
    ugs-classes train.json --keep car,person --out cars_people.json

* names are the ``categories[*].name`` of the input (all options refer to the *original* names);
  ``--keep`` / ``--drop`` take one or more names (space- or comma-separated) and exclude each
  other; ``--rename OLD=NEW`` and ``--merge A,B[,...]=NEW`` can be repeated;
* category ids are re-numbered 1..K in the original id order; a merged class takes the position
  of its first member (smallest original id) and that member's other fields (supercategory);
* annotations of dropped classes are removed, every image is kept, annotation ids and the other
  top-level keys (info, licenses) are unchanged;
* a summary (per original class: action, new id, boxes) is printed; the output is written
  atomically and the input is never overwritten unless ``--force``.

Every problem (unknown class name, a class named by two options, two classes ending with the
same name) is a one-line error. :func:`remap_categories` is the pure function behind the CLI.
"""
import argparse
import copy
import os
import sys
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ugs_d2.data.coco_json import DatasetError, read_coco_json
from ugs_d2.fileio import write_json_atomic

__all__ = ["CocoError", "read_coco_json", "remap_categories", "format_summary", "main"]

PROG = "ugs-classes"


class CocoError(DatasetError):
    """A COCO json is missing, malformed, or an option does not fit it; one line."""


def _categories_by_id(coco: Mapping[str, Any]) -> List[dict]:
    """Categories sorted by id; ids and names must be present and unique."""
    seen_ids: Dict[Any, int] = {}
    seen_names: Dict[str, Any] = {}
    for position, cat in enumerate(coco.get("categories", [])):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            raise CocoError(f"categories[{position}] needs an id and a name")
        if cat["id"] in seen_ids:
            raise CocoError(f"categories[{position}] repeats category id {cat['id']}")
        if cat["name"] in seen_names:
            raise CocoError(
                f"categories {seen_names[cat['name']]} and {cat['id']} share the name {cat['name']!r}"
            )
        seen_ids[cat["id"]] = position
        seen_names[cat["name"]] = cat["id"]
    try:
        return sorted(coco.get("categories", []), key=lambda c: c["id"])
    except TypeError:
        raise CocoError("category ids must all be numbers") from None


def _check_known(names: Iterable[str], known: Sequence[str], option: str) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CocoError(
            f"{option}: unknown class {', '.join(repr(n) for n in unknown)} "
            f"(available: {', '.join(known)})"
        )


def remap_categories(
    coco: Mapping[str, Any],
    keep: Optional[Sequence[str]] = None,
    drop: Optional[Sequence[str]] = None,
    rename: Optional[Mapping[str, str]] = None,
    merge: Optional[Sequence[Tuple[Sequence[str], str]]] = None,
) -> Tuple[dict, dict]:
    """Filter / rename / merge the categories of a COCO dict; ids become 1..K.

    Args:
        coco: a COCO detection dict (not modified).
        keep: names to keep (all others are dropped); exclusive with ``drop``.
        drop: names to drop.
        rename: original name -> new name.
        merge: ``(sources, target)`` pairs: at least two original names become one class.

    Returns:
        ``(new_coco, summary)``. ``summary`` has ``classes`` (one row per original class, in id
        order: ``id``, ``name``, ``action`` in kept/dropped/renamed/merged, ``new_id``,
        ``new_name``, ``annotations``), ``result`` (one row per new class: ``id``, ``name``,
        ``sources``, ``annotations``), ``annotations_before`` / ``_after`` and ``images``.

    Raises:
        CocoError: unknown names, a name used by two options, duplicate resulting names,
            annotations with a category id that is not in ``categories``.
    """
    if keep is not None and drop is not None:
        raise CocoError("--keep and --drop exclude each other")
    categories = _categories_by_id(coco)
    names = [c["name"] for c in categories]
    rename = dict(rename or {})
    merge = [(list(sources), target) for sources, target in (merge or [])]

    if keep is not None:
        _check_known(keep, names, "--keep")
        dropped = {n for n in names if n not in set(keep)}
    else:
        _check_known(drop or [], names, "--drop")
        dropped = set(drop or [])
    _check_known(rename, names, "--rename")

    target_of: Dict[str, str] = {}  # original name -> merge target
    for sources, target in merge:
        if len(set(sources)) < 2:
            raise CocoError(f"--merge {','.join(sources)}={target}: needs at least two classes "
                            "(use --rename for one)")
        _check_known(sources, names, "--merge")
        for name in sources:
            if name in target_of:
                raise CocoError(f"--merge: class {name!r} is merged twice")
            target_of[name] = target
    both = [n for n in names if n in rename and n in target_of]
    if both:
        raise CocoError(f"class {both[0]!r} is both renamed and merged")
    removed = [n for n in names if (n in rename or n in target_of) and n in dropped]
    if removed:
        option = "--keep leaves it out" if keep is not None else "--drop removes it"
        raise CocoError(f"class {removed[0]!r} is renamed or merged, but {option}")
    for name, new in list(rename.items()) + [(n, t) for n, t in target_of.items()]:
        if not isinstance(new, str) or not new.strip():
            raise CocoError(f"class {name!r}: the new name must not be empty")

    # new classes in original id order; a merged class sits at its first member
    new_cats: List[dict] = []
    new_id_of: Dict[Any, int] = {}  # original id -> new id
    rows: List[dict] = []
    index_of_target: Dict[str, int] = {}
    for cat in categories:
        name = cat["name"]
        if name in dropped:
            rows.append({"id": cat["id"], "name": name, "action": "dropped", "new_id": None, "new_name": None})
            continue
        if name in target_of:
            target, action = target_of[name], "merged"
            if target in index_of_target:
                new_cat = new_cats[index_of_target[target]]
                new_cat["_sources"].append(name)
                new_id_of[cat["id"]] = new_cat["id"]
                rows.append({"id": cat["id"], "name": name, "action": action,
                             "new_id": new_cat["id"], "new_name": target})
                continue
            index_of_target[target] = len(new_cats)
        elif name in rename:
            target, action = rename[name], "renamed"
        else:
            target, action = name, "kept"
        new_cat = dict(copy.deepcopy(cat), id=len(new_cats) + 1, name=target, _sources=[name])
        new_cats.append(new_cat)
        new_id_of[cat["id"]] = new_cat["id"]
        rows.append({"id": cat["id"], "name": name, "action": action, "new_id": new_cat["id"], "new_name": target})

    duplicates = [n for n, k in Counter(c["name"] for c in new_cats).items() if k > 1]
    if duplicates:
        raise CocoError(
            f"two classes would be named {', '.join(repr(n) for n in duplicates)} "
            "(merge them with --merge instead)"
        )

    old_ids = {c["id"] for c in categories}
    annotations = []
    before: Counter = Counter()
    for position, ann in enumerate(coco.get("annotations", [])):
        cid = ann.get("category_id") if isinstance(ann, dict) else None
        if cid not in old_ids:
            raise CocoError(
                f"annotations[{position}] has category_id {cid!r}, which is not in 'categories'"
            )
        before[cid] += 1
        if cid in new_id_of:
            annotations.append(dict(copy.deepcopy(ann), category_id=new_id_of[cid]))
    after = Counter(a["category_id"] for a in annotations)

    for row in rows:
        row["annotations"] = before[row["id"]]
    result = [
        {"id": c["id"], "name": c["name"], "sources": c.pop("_sources"), "annotations": after[c["id"]]}
        for c in new_cats
    ]
    new_coco = {key: copy.deepcopy(value) for key, value in coco.items() if key not in ("annotations", "categories")}
    new_coco["annotations"] = annotations
    new_coco["categories"] = new_cats
    # keep the input's key order
    new_coco = {key: new_coco[key] for key in list(coco.keys()) if key in new_coco}
    summary = {
        "classes": rows,
        "result": result,
        "annotations_before": sum(before.values()),
        "annotations_after": len(annotations),
        "images": len(coco.get("images", [])),
    }
    return new_coco, summary


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


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line, Ctrl-C / SIGTERM too (exit 130 / 143)."""
    from ugs_d2.interrupts import interruptible

    with interruptible(PROG, "rerun the same command"):
        _main(argv)


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


if __name__ == "__main__":
    main()
