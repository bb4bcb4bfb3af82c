"""Every relative link in the project's Markdown resolves: the file exists, and a ``#anchor``
names a heading of the target page (GitHub's slug rules).

Checked: README.md, docs/*.md, projects/**/README.md and results/**/*.md. Links inside fenced
code blocks and inline code are not links and are skipped; absolute URLs are not fetched.
"""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...


def markdown_files():
    """The Markdown files whose links are checked, as paths relative to the repository root."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "projects").glob("**/README.md")), *sorted((ROOT / "results").glob("**/*.md"))]
    return [f.relative_to(ROOT).as_posix() for f in files if f.is_file()]


def prose_lines(text):
    """(line number, line) for the lines outside fenced code blocks (``` or ~~~)."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        marker = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if marker:
            if fence is None:
                fence = marker.group(1)
            elif marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence):
                fence = None
            continue
        if fence is None:
            yield number, line


def github_slug(heading):
    """A heading's anchor as GitHub renders it: markup and punctuation dropped, lower case,
    spaces to hyphens. E.g. ``The UGS keys (`ugs/` group)`` -> ``the-ugs-keys-ugs-group``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    # HTML tags render as nothing, but inside inline code `<name>` is text
    parts = re.split(r"(`+[^`]*`+)", text)
    text = "".join(part if part.startswith("`") else re.sub(r"<[^>]+>", "", part) for part in parts)
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters of any script, digits and _
    return text.replace(" ", "-")


def anchors(text):
    """The set of anchors of a Markdown page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen, result = {}, set()
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(path, text, root=ROOT):
    """'file:line: target: what is wrong' for each relative link of ``text`` (the page at
    ``path``, relative to ``root``) whose file or anchor does not exist."""
    problems, page = [], root / path
    for number, line in prose_lines(text):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1)
            if EXTERNAL.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            where = f"{path}:{number}: {target}"
            if not file_part:  # an anchor of this page
                if anchor and anchor not in anchors(text):
                    problems.append(f"{where}: no heading with anchor #{anchor} in this page")
                continue
            resolved = (page.parent / file_part).resolve()
            if not resolved.exists():
                problems.append(f"{where}: {os.path.relpath(resolved, root.resolve())} does not exist")
                continue
            if anchor and resolved.suffix == ".md" and resolved.is_file():
                if anchor not in anchors(resolved.read_text(encoding="utf-8")):
                    problems.append(f"{where}: no heading with anchor #{anchor} in {resolved.name}")
    return problems


def test_github_slug_matches_hand_computed_anchors():
    assert github_slug("The UGS keys (`ugs/` group)") == "the-ugs-keys-ugs-group"
    assert github_slug("The embedded benchmark: does UGS help here?") == "the-embedded-benchmark-does-ugs-help-here"
    assert github_slug("Resuming and Weights & Biases") == "resuming-and-weights--biases"
    assert github_slug("Small-object augmentations (`augment=<name>`)") == "small-object-augmentations-augmentname"
    assert github_slug("Gradient variance per object size (paper Sec. 4.6, Fig. 2 and 6)") == \
        "gradient-variance-per-object-size-paper-sec-46-fig-2-and-6"
    assert github_slug("See [the docs](docs/index.md)") == "see-the-docs"


def test_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Part one\n\n## Part one\n")
    page = (
        "# Top\n"
        "[ok](docs/a.md) [ok](docs/a.md#part-one) [ok](docs/a.md#part-one-1) [ok](#top) [ok](docs)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#part-two) [bad local](#nowhere)\n"
        "[web](https://example.com/x.md) `[code](nope.md)`\n"
        "```\n[in a fence](nope.md)\n# not a heading\n```\n"
    )
    problems = broken_links("README.md", page, root=tmp_path)
    assert [p.split(": ")[1] for p in problems] == ["docs/b.md", "docs/a.md#part-two", "#nowhere"]
    assert problems[0].startswith("README.md:3: docs/b.md: ")


@pytest.mark.parametrize("path", markdown_files())
def test_relative_links_resolve(path):
    text = (ROOT / path).read_text(encoding="utf-8")
    problems = broken_links(path, text)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_readme_is_a_map():
    """The top-level README stays a map (issue 15: at most 300 lines); topics live in docs/."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move topics into docs/ pages"
