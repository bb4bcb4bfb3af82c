"""Keep, drop, rename or merge the classes of a COCO detection dict (behind ``ugs-classes``).

* names are the ``categories[*].name`` of the input (all options refer to the *original* names);
  ``keep`` and ``drop`` exclude each other;
* category ids are re-numbered 1..K in the original id order; a merged class takes the position
  of its first member (smallest original id) and that member's other fields (supercategory);
* annotations of dropped classes are removed, every image is kept, annotation ids and the other
  top-level keys (info, licenses) are unchanged.

Every problem (unknown class name, a class named by two options, two classes ending with the
same name) is a one-line :class:`~ugs_d2.data.coco_json.CocoError` that names the option.
"""
import copy
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from ugs_d2.data.coco_json import CocoError

__all__ = ["remap_categories"]

Merge = Sequence[Tuple[Sequence[str], str]]  # (original names, new name) pairs


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


def _dropped(names: Sequence[str], keep: Optional[Sequence[str]], drop: Optional[Sequence[str]]) -> Set[str]:
    """The original names that ``keep`` leaves out or ``drop`` names."""
    if keep is not None:
        _check_known(keep, names, "--keep")
        return {n for n in names if n not in set(keep)}
    _check_known(drop or [], names, "--drop")
    return set(drop or [])


def _merge_targets(names: Sequence[str], merge: Merge) -> Dict[str, str]:
    """Original name -> the class it is merged into."""
    target_of: Dict[str, str] = {}
    for sources, target in merge:
        if len(set(sources)) < 2:
            raise CocoError(f"--merge {','.join(sources)}={target}: needs at least two classes "
                            "(use --rename for one)")
        _check_known(sources, names, "--merge")
        for name in sources:
            if name in target_of:
                raise CocoError(f"--merge: class {name!r} is merged twice")
            target_of[name] = target
    return target_of


def _check_consistent(names: Sequence[str], dropped: Set[str], rename: Mapping[str, str],
                      target_of: Mapping[str, str], keep_given: bool) -> None:
    """No class renamed and merged, renamed or merged and dropped, or given an empty name."""
    both = [n for n in names if n in rename and n in target_of]
    if both:
        raise CocoError(f"class {both[0]!r} is both renamed and merged")
    removed = [n for n in names if (n in rename or n in target_of) and n in dropped]
    if removed:
        option = "--keep leaves it out" if keep_given else "--drop removes it"
        raise CocoError(f"class {removed[0]!r} is renamed or merged, but {option}")
    for name, new in list(rename.items()) + list(target_of.items()):
        if not isinstance(new, str) or not new.strip():
            raise CocoError(f"class {name!r}: the new name must not be empty")


def _new_categories(categories: Sequence[dict], dropped: Set[str], rename: Mapping[str, str],
                    target_of: Mapping[str, str]) -> Tuple[List[dict], Dict[Any, int], List[dict]]:
    """The new classes in original id order (a merged class sits at its first member).

    Returns the new categories (each with ``_sources``: its original names), original id -> new
    id, and one summary row per original class (``id``, ``name``, ``action``, ``new_id``,
    ``new_name``).
    """
    new_cats: List[dict] = []
    new_id_of: Dict[Any, int] = {}
    rows: List[dict] = []
    merged_into: Dict[str, dict] = {}  # merge target -> its new category
    for cat in categories:
        name = cat["name"]
        if name in dropped:
            rows.append({"id": cat["id"], "name": name, "action": "dropped", "new_id": None, "new_name": None})
            continue
        if name in target_of and target_of[name] in merged_into:  # a later member joins its class
            new_cat = merged_into[target_of[name]]
            new_cat["_sources"].append(name)
        else:
            target = target_of.get(name, rename.get(name, name))
            new_cat = dict(copy.deepcopy(cat), id=len(new_cats) + 1, name=target, _sources=[name])
            new_cats.append(new_cat)
            if name in target_of:
                merged_into[target] = new_cat
        action = "merged" if name in target_of else "renamed" if name in rename else "kept"
        new_id_of[cat["id"]] = new_cat["id"]
        rows.append({"id": cat["id"], "name": name, "action": action, "new_id": new_cat["id"],
                     "new_name": new_cat["name"]})
    duplicates = [n for n, k in Counter(c["name"] for c in new_cats).items() if k > 1]
    if duplicates:
        raise CocoError(
            f"two classes would be named {', '.join(repr(n) for n in duplicates)} "
            "(merge them with --merge instead)"
        )
    return new_cats, new_id_of, rows


def _remap_annotations(annotations: Sequence[Any], old_ids: Set[Any],
                       new_id_of: Mapping[Any, int]) -> Tuple[List[dict], Counter]:
    """Copies of the kept annotations with their new category id, and the count per old id."""
    kept = []
    before: Counter = Counter()
    for position, ann in enumerate(annotations):
        cid = ann.get("category_id") if isinstance(ann, dict) else None
        if cid not in old_ids:
            raise CocoError(
                f"annotations[{position}] has category_id {cid!r}, which is not in 'categories'"
            )
        before[cid] += 1
        if cid in new_id_of:
            kept.append(dict(copy.deepcopy(ann), category_id=new_id_of[cid]))
    return kept, before


def remap_categories(
    coco: Mapping[str, Any],
    keep: Optional[Sequence[str]] = None,
    drop: Optional[Sequence[str]] = None,
    rename: Optional[Mapping[str, str]] = None,
    merge: Optional[Merge] = None,
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
    dropped = _dropped(names, keep, drop)
    _check_known(rename, names, "--rename")
    target_of = _merge_targets(names, [(list(sources), target) for sources, target in (merge or [])])
    _check_consistent(names, dropped, rename, target_of, keep is not None)
    new_cats, new_id_of, rows = _new_categories(categories, dropped, rename, target_of)
    annotations, before = _remap_annotations(coco.get("annotations", []), {c["id"] for c in categories}, new_id_of)

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
    summary = {
        "classes": rows,
        "result": result,
        "annotations_before": sum(before.values()),
        "annotations_after": len(annotations),
        "images": len(coco.get("images", [])),
    }
    # keep the input's key order
    return {key: new_coco[key] for key in list(coco.keys()) if key in new_coco}, summary
