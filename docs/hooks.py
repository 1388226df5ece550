"""mkdocs hook: the committed benchmark results (their README tables, plots, JSON) and the
benchmark configurations become part of the site under ``benchmarks/``, so the docs show the
results as committed, not a copy. The pages link to them as ``../benchmarks/...`` (right
when GitHub shows ``docs/``); on the site they sit beside the pages, so the links are
rewritten to ``benchmarks/...``."""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("benchmarks/results", "benchmarks/configs", "benchmarks/gpu/README.md")
KINDS = {".md", ".png", ".json", ".svg"}


def on_files(files: Files, config) -> Files:
    for shared in SHARED:
        base = ROOT / shared
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in paths:
            if path.suffix in KINDS and "rows" not in path.relative_to(ROOT).parts:
                files.append(File(str(path.relative_to(ROOT)), str(ROOT), config["site_dir"],
                                  config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace("](../benchmarks/", "](benchmarks/")
