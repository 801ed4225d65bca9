"""The documentation site builds with warnings as errors, shows the generated reports, documents every public
module, and its product text names no issue numbers."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
API_PACKAGES = ("runtime", "shards", "foundation", "tokenizer", "pretrain", "finetune")
# The reports the site includes as they are (docs/generated/*.md hold one include line each).
GENERATED = {"downstream.md": "benchmarks/results/results.md", "ablations.md": "benchmarks/results/ablations.md",
             "gpu.md": "benchmarks/results/gpu/gpu.md"}


def _plugins_missing() -> list[str]:
    return [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python", "pymdownx")
            if importlib.util.find_spec(m.split(".")[0]) is None
            or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = _plugins_missing()
    if missing:
        pytest.skip(f"the docs extra is not installed ({', '.join(missing)} missing): pip install -e \".[docs]\"")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_the_site_builds_with_warnings_as_errors(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("index.html")}
    expected = {"index.html", "getting-started/index.html", "data/index.html", "readers/index.html",
                "backbone/index.html", "tokenizer/index.html", "gpu/index.html", "pretraining/index.html",
                "finetuning/index.html", "checkpoints/index.html", "configuration/index.html",
                "benchmarks/index.html", "results/index.html", "api/index.html"}
    assert expected <= pages, sorted(expected - pages)


def test_the_generated_reports_are_included_not_copied(site):
    for page, source in GENERATED.items():
        assert (DOCS / "generated" / page).read_text().strip() == f'--8<-- "{source}"', page
        report = (REPO / source).read_text()
        # a table row of the report (or, in a report without a table, its first sentence) appears on the built
        # page, so the include happened
        lines = [line for line in report.splitlines() if line.strip() and not line.startswith("#")]
        row = next((line for line in lines if line.startswith("| ") and "---" not in line), None)
        fragment = row.split("|")[1].strip().strip("`") if row else lines[0].split("`")[0].strip()
        assert fragment in _text(site / "generated" / Path(page).stem / "index.html"), (page, fragment)


def test_the_api_pages_render_docstrings(site):
    text = _text(site / "api" / "foundation" / "index.html")
    assert "foundation.ssm" in text and "selective_scan" in text
    assert ":class:" not in text and ":func:" not in text  # the roles hook strips Sphinx role prefixes


def public_modules(package: str) -> list[str]:
    names = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__main__" or any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("package", API_PACKAGES)
def test_the_api_reference_lists_every_public_module(package):
    listed = re.findall(r"^::: ([\w.]+)$", (DOCS / "api" / f"{package}.md").read_text(), re.M)
    assert sorted(listed) == sorted(public_modules(package)), (
        f"docs/api/{package}.md: add {sorted(set(public_modules(package)) - set(listed))}, "
        f"remove {sorted(set(listed) - set(public_modules(package)))}")


def test_every_page_is_in_the_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")]
    assert [p for p in pages if p not in nav] == []


HISTORY = re.compile(r"\bissues? #?\d+|\bpreviously\b|\bthe fix of\b|\bold behaviou?r\b", re.I)


def test_product_text_names_no_issue_numbers_or_history():
    texts = [REPO / "README.md", *DOCS.rglob("*.md")]
    for package in (*API_PACKAGES, "benchmarks"):
        texts += sorted((REPO / package).rglob("*.py"))
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in texts
            for n, line in enumerate(p.read_text().splitlines(), 1) if HISTORY.search(line)]
    assert hits == []


def test_the_site_names_no_stored_ablation_run():
    """Ablation runs come and go in benchmarks/results/: the site reaches them only through the generated
    ablations.md, so deleting a folder can never break the build."""
    folders = sorted(d.name for d in (REPO / "benchmarks" / "results").glob("ablation-*"))
    # a folder by its path, a run by its name in code spans (`legacy-x`) or as the option's value
    patterns = [rf"(?<![\w-]){re.escape(f)}(?![\w-])" for f in folders]
    patterns += [rf"`{re.escape(n)}`|--ablation {re.escape(n)}(?![\w-])"
                 for n in (f.removeprefix("ablation-") for f in folders)]
    pages = [REPO / "mkdocs.yml", *DOCS.rglob("*.md")]
    hits = [f"{p.relative_to(REPO)}: {pat}" for p in pages for pat in patterns if re.search(pat, p.read_text())]
    assert hits == []


def test_the_readme_keeps_the_blocks_the_benchmark_writes():
    from benchmarks import gpu, report, report_ablations

    readme = (REPO / "README.md").read_text()
    for module in (report, report_ablations):
        assert readme.count(module.README_BEGIN) == 1 and readme.count(module.README_END) == 1, module.__name__
        assert readme.index(module.README_BEGIN) < readme.index(module.README_END)
    assert gpu.README_BEGIN not in readme  # the GPU report lives on the site only


def test_the_readme_keeps_the_two_commands_ci_reads():
    readme = (REPO / "README.md").read_text()
    for marker, command in (("main", "accelerate launch --config_file pretrain/configs/accelerate.yaml pretrain/run.py"),
                            ("tests", 'pip install -e ".[dev]" && python -m pytest')):
        block = readme.split(f"<!-- command: {marker} -->\n```bash\n", 1)[1].split("\n```", 1)[0]
        assert command in block, marker
    assert len(readme.splitlines()) <= 250
