"""The documentation resolves inside the repository: every relative link of README.md, BENCHMARKS.md and docs/*.md
names a file that exists (and, with ``#anchor``, one of its headings, by GitHub's slug rule); code and docs cite
docs/protocol.md, never a protocol file outside the repository, and every section they name is a heading of it."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "BENCHMARKS.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                                              if f.endswith(".md"))
OLD_PROTOCOL = "PROTOCOL" + ".md"   # spelled in two pieces so that this file does not mention it

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text):
    """The lines of a markdown file outside fenced code blocks."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            yield line


def github_slug(heading):
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than - and _ removed, spaces
    to hyphens (github-slugger's rule)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link keeps its text
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path):
    """Every heading anchor of a markdown file; repeats get -1, -2, ... as on GitHub."""
    seen, out = {}, set()
    with open(path, encoding="utf-8") as f:
        for line in prose_lines(f.read()):
            m = HEADING.match(line)
            if not m:
                continue
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_github_slug_follows_githubs_rule():
    # Anchors as GitHub renders them for headings of this repository's docs.
    assert github_slug("`--recipe notebook|paper`") == "--recipe-notebookpaper"
    assert github_slug("The quick CPU recipe (`bash reproduce.sh` without data)") == \
        "the-quick-cpu-recipe-bash-reproducesh-without-data"
    assert github_slug("Runs S0, S and S2: `--quick` just before and after") == "runs-s0-s-and-s2---quick-just-before-and-after"
    assert github_slug("Reproducible corruption") == "reproducible-corruption"


def broken_links(doc):
    """(target, why) for each relative link of ``doc`` (a path relative to ROOT) that does not resolve."""
    path = os.path.join(ROOT, doc)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out = []
    for line in prose_lines(text):
        for target in LINK.findall(re.sub(r"`[^`]*`", "``", line)):   # not inside inline code
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            if os.path.commonpath([ROOT, resolved]) != ROOT:
                out.append((target, "outside the repository"))
            elif not os.path.exists(resolved):
                out.append((target, "no such file"))
            elif anchor and (not resolved.endswith(".md") or anchor not in anchors(resolved)):
                out.append((target, f"no heading #{anchor} in {os.path.relpath(resolved, ROOT)}"))
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_resolves(doc):
    assert broken_links(doc) == []


def test_a_broken_link_is_reported(tmp_path, monkeypatch):
    # The checker itself: a missing file, a missing heading and a path out of the repository are each caught.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Title\n\n## Some `code` here\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) [ok](docs/a.md#some-code-here) [ok](#top) [web](https://example.org/x.md)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nope) [out](../elsewhere.md)\n"
        "```\n[in a code block](nowhere.md)\n```\n# Top\n")
    monkeypatch.setitem(globals(), "ROOT", str(tmp_path))
    assert broken_links("README.md") == [("docs/b.md", "no such file"),
                                         ("docs/a.md#nope", "no heading #nope in docs/a.md"),
                                         ("../elsewhere.md", "outside the repository")]


def tracked_text_files():
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in names.decode().split("\0"):
        if not name or not os.path.isfile(os.path.join(ROOT, name)):
            continue
        try:
            with open(os.path.join(ROOT, name), encoding="utf-8") as f:
                yield name, f.read()
        except UnicodeDecodeError:
            continue


def test_no_file_cites_a_protocol_outside_the_repository():
    mentions = [f"{name}:{i}" for name, text in tracked_text_files()
                for i, line in enumerate(text.splitlines(), 1) if OLD_PROTOCOL in line]
    assert mentions == []


def test_every_cited_protocol_section_is_a_heading():
    # 'docs/protocol.md, "Transforms"' and 'docs/protocol.md ("Metrics")' in a docstring or comment.
    headings = anchors(os.path.join(ROOT, "docs", "protocol.md"))
    cited = [(name, section) for name, text in tracked_text_files()
             for section in re.findall(r'docs/protocol\.md(?:,| \(| )\s*"([^"]+)"', text)]
    assert cited, "no section citations found: the pattern no longer matches how the code cites docs/protocol.md"
    assert [c for c in cited if github_slug(c[1]) not in headings] == []


def test_every_cited_section_of_a_doc_is_one_of_its_headings():
    # 'docs/training.md, "The quick CPU recipe"' (a heading or the start of one), and 'BENCHMARKS.md, Decisions'.
    cited = [(name, doc, section) for name, text in tracked_text_files()
             for doc, section in re.findall(r'((?:docs/[\w-]+|BENCHMARKS|README)\.md)(?:,| \(| )\s*"([^"]+)"', text)]
    cited += [(name, "BENCHMARKS.md", "Decisions") for name, text in tracked_text_files()
              if "BENCHMARKS.md, Decisions" in text]
    assert len({c[1] for c in cited}) >= 3, "the citation pattern no longer matches how the code cites the docs"
    missing = []
    for name, doc, section in cited:
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            titles = [m.group(2) for m in map(HEADING.match, prose_lines(f.read())) if m]
        if not any(github_slug(title).startswith(github_slug(" ".join(section.split()))) for title in titles):
            missing.append((name, doc, section))
    assert missing == []


# Timings and run ids belong in BENCHMARKS.md; code says why in a line and points there. bench.py and benchmarks/
# measure, and tests/ hold the inputs of their own arithmetic, so they are not searched.
MEASUREMENT = re.compile(r"\b[0-9]+(\.[0-9]+)? ?(ms|µs)\b|[0-9.]+x (faster|slower)|[0-9.]+ ?(GB|MB)/s|\bruns? S[0-9]?\b")


def test_code_carries_no_timings():
    found = [f"{name}:{i}: {line.strip()}" for name, text in tracked_text_files()
             if name.endswith((".py", ".sh")) and not name.startswith(("tests/", "bench.py", "benchmarks/"))
             for i, line in enumerate(text.splitlines(), 1) if MEASUREMENT.search(line)]
    assert found == []


def test_readme_leads_with_the_command_and_its_result():
    # nanoGPT's order: the commands, then the time and the table they give, within the first screen; the
    # machine's calibration (its forward time, the VMs' spread, the bf16 choice) lives in BENCHMARKS.md.
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    first_row = next(i for i, line in enumerate(lines, 1) if re.match(r"^\| *(baseline|IBE|SCrIBE) *\|", line))
    assert first_row <= 25
    before = "\n".join(lines[:first_row])
    assert "bash reproduce.sh" in before and "pip install" in before
    for calibration in ("--only machine", "machine_forward", "/proc/cpuinfo", "0.880", "2.4x", "paper (VOC"):
        assert calibration not in before


def test_readme_test_command_is_what_ci_runs():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    command = 'python -m pytest -q -m "not slow" tests'
    assert command in readme and command in ci.splitlines()
