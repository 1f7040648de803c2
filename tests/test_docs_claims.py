"""Every measured figure in the docs names the JSON it comes from, and equals what that JSON says.

Convention: right after a figure, an HTML comment (invisible when rendered)

    183.4 img/s <!-- claim: 183.4 = {perf_h100.json:measurements[arch=R-50-D8 & backend=torch-optimized-graph & precision=fp8 & batch=8].img_per_s} -->

says which value of which file under bench/results/ it is: `{FILE:PATH}` references, combined by
+ - * / and parentheses (e.g. a speed-up in percent). PATH is dotted keys and `[...]` steps: an
index, or `key=value & key=value` selecting the one list element whose fields match. The value,
rounded to the figure's decimals, must equal the figure; the figure must appear in the visible
text of the same paragraph, list item or table row; the file must be named visibly
(`bench/results/FILE`) in the same section. Any visible number that looks like a measurement
(img/s, ms, TFLOP/s, GB/s, fps, %, a decimal number of seconds) without a claim in its block
fails, unless it is a configured value listed in SETTINGS. bench/RESULTS.md's generated part is
checked by regeneration (tests/test_bench_results.py); its hand-written notes are checked here.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.results_table import END_OF_GENERATED

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOCS = ["README.md", "service/README.md", "deploy/README.md", "bench/RESULTS.md"]
# Figures that are configuration or targets, not measurements: (doc, the phrase that holds it).
SETTINGS = {
    ("deploy/README.md", "a CPU target\nof 75 %"),
    ("service/README.md", "buckets from 1 ms to 10 s"),
}

CLAIM = re.compile(r"<!--\s*claim:\s*(?P<figure>\d[\d,]*(?:\.\d+)?)\s*=\s*(?P<expr>.*?)\s*-->", re.DOTALL)
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
REF = re.compile(r"\{(?P<file>[\w.-]+\.json):(?P<path>[^{}]+)\}")
NUMBER = r"\d[\d,]*(?:\.\d+)?"
MEASURED = re.compile(
    rf"(?<![\w.\-/])(?P<a>{NUMBER})(?:\s?(?:-|–|to)\s?(?P<b>{NUMBER}))?\s?"
    r"(?P<unit>img/s|images/s|ms\b|TFLOP/s|GB/s|fps\b|%|s\b)"
)
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@dataclass
class Block:
    """A paragraph, list item, table row or heading, with the visible text of its section."""

    doc: str
    line: int
    text: str
    section: str = ""

    @property
    def visible(self) -> str:
        return COMMENT.sub("", self.text)


def blocks(doc: str, text: str) -> list[Block]:
    """Split markdown into blocks, skipping fenced code (commands, not claims)."""
    out: list[Block] = []
    current: Block | None = None
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, current = not fenced, None
            continue
        if fenced or not line.strip():
            current = None
            continue
        starts_new = line.startswith(("#", "|")) or re.match(r"\s*(?:[-*]|\d+\.)\s", line)
        if current is None or starts_new:
            current = Block(doc, number, line)
            out.append(current)
        else:
            current.text += "\n" + line
        if line.startswith(("#", "|")):
            current = None
    section: list[Block] = []
    for block in out + [Block(doc, 0, "# end")]:
        if block.text.startswith("#"):
            visible = "\n".join(b.visible for b in section)
            for b in section:
                b.section = visible
            section = []
        section.append(block)
    return out


def resolve(file: str, path: str):
    """The value at ``path`` in bench/results/``file``."""
    value = json.loads((RESULTS / file).read_text())
    for key, selector in re.findall(r"\.?([\w-]+)|\[([^\]]+)\]", path.strip()):
        if key:
            value = value[key]
        elif selector.strip().isdigit():
            value = value[int(selector)]
        else:
            wanted = dict(part.strip().split("=", 1) for part in selector.split("&"))
            hits = [v for v in value if all(str(v.get(k.strip())) == w.strip() for k, w in wanted.items())]
            assert len(hits) == 1, f"{file}:{path}: [{selector}] matches {len(hits)} elements"
            value = hits[0]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{file}:{path} is {value!r}, not a number"
    return value


def evaluate(expr: str) -> tuple[float, set[str]]:
    """An arithmetic expression over {FILE:PATH} references -> its value and the files it reads."""
    values: dict[str, float] = {}
    files: set[str] = set()

    def substitute(m: re.Match) -> str:
        files.add(m["file"])
        values[f"v{len(values)}"] = resolve(m["file"], m["path"])
        return f"v{len(values) - 1}"

    tree = ast.parse(REF.sub(substitute, expr), mode="eval").body

    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id in values:
            return values[node.id]
        raise ValueError(f"not allowed in a claim: {ast.dump(node)}")

    return walk(tree), files


def decimals(figure: str) -> int:
    return len(figure.split(".")[1]) if "." in figure else 0


def problems(block: Block, settings: set[tuple[str, str]] = SETTINGS) -> list[str]:
    """What is wrong with one block's figures and claims (empty when all are true and cited)."""
    where = f"{block.doc}:{block.line}"
    found: list[str] = []
    claimed: set[str] = set()
    visible = block.visible
    for claim in CLAIM.finditer(block.text):
        figure = claim["figure"]
        claimed.add(figure.replace(",", ""))
        try:
            value, files = evaluate(claim["expr"])
        except (KeyError, IndexError, AssertionError, ValueError, SyntaxError, FileNotFoundError) as e:
            found.append(f"{where}: claim {figure} does not resolve: {e!r}")
            continue
        stated = float(figure.replace(",", ""))
        if round(value, decimals(figure)) != stated:
            found.append(f"{where}: the text says {figure}, the JSON gives {value:.6g}")
        if not re.search(rf"(?<![\d.]){re.escape(figure)}(?![\d])", visible):
            found.append(f"{where}: claim {figure} is not next to that figure in the text")
        found += [f"{where}: {figure} comes from {f}, but its section never names bench/results/{f}"
                  for f in sorted(files) if f"bench/results/{f}" not in block.section]  # fmt: skip
    exempt = "\n".join(phrase for doc, phrase in settings if doc == block.doc and phrase in visible)
    scanned = re.sub(r"`[^`]*`", "", visible)
    for m in MEASURED.finditer(scanned):
        numbers = [n for n in (m["a"], m["b"]) if n]
        if m["unit"] == "s" and not any("." in n for n in numbers):
            continue  # whole seconds are timeouts and intervals; measured durations carry decimals
        for n in numbers:
            if n.replace(",", "") not in claimed and not re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", exempt):
                found.append(f"{where}: '{m[0]}' looks measured but has no claim naming its JSON")
    return found


def doc_blocks(doc: str) -> list[Block]:
    text = (REPO / doc).read_text()
    if doc == "bench/RESULTS.md":
        assert END_OF_GENERATED in text, "bench/RESULTS.md lost its generated part's end marker"
        text = "#\n" + text.split(END_OF_GENERATED, 1)[1]  # the hand-written notes, as their own section
    return blocks(doc, text)


@pytest.mark.parametrize("doc", DOCS)
def test_every_measured_figure_is_cited_and_true(doc):
    found = [p for block in doc_blocks(doc) for p in problems(block)]
    assert not found, "\n".join(found)


def test_the_docs_cite_measurements_at_all():
    claims = [c for doc in DOCS for c in CLAIM.finditer((REPO / doc).read_text())]
    assert len(claims) >= 15  # the README's and deploy README's GPU and CPU figures


def check(text: str, settings=frozenset()) -> list[str]:
    return [p for b in blocks("t.md", text) for p in problems(b, settings)]


R50_FP8 = "{perf_h100.json:measurements[arch=R-50-D8 & backend=torch-optimized-graph & precision=fp8 & batch=8].img_per_s}"


def test_a_true_cited_figure_passes():
    assert check(f"# GPU\n\nfp8: 183.4 img/s <!-- claim: 183.4 = {R50_FP8} --> (bench/results/perf_h100.json).\n") == []


def test_a_wrong_figure_fails():
    assert "the JSON gives 183.4" in check(f"# GPU\n\n185.0 img/s <!-- claim: 185.0 = {R50_FP8} --> (bench/results/perf_h100.json)\n")[0]


def test_a_figure_without_a_claim_fails_and_a_listed_setting_does_not():
    assert "no claim" in check("# GPU\n\nIt runs at 183.4 img/s and takes 3.8 ms.\n")[0]
    assert len(check("# GPU\n\nIt runs at 183.4 img/s and takes 3.8 ms.\n")) == 2
    assert "no claim" in check("# CPU\n\nfp8 is 5-7% faster\n")[0]
    assert check("# HPA\n\ntarget of 75 %\n", {("t.md", "target of 75 %")}) == []
    assert check("# Drain\n\nwaits 5 s, then 30 s more\n") == []  # whole seconds: settings


def test_a_claim_whose_file_is_not_named_in_its_section_fails():
    found = check(f"# GPU\n\n183.4 img/s <!-- claim: 183.4 = {R50_FP8} -->\n\n# Other\n\nbench/results/perf_h100.json\n")
    assert found == ["t.md:3: 183.4 comes from perf_h100.json, but its section never names bench/results/perf_h100.json"]


def test_expressions_selectors_and_ambiguity():
    speedup = f"100 * ({R50_FP8} / {R50_FP8.replace('fp8', 'fp16')} - 1)"
    assert round(evaluate(speedup)[0], 1) == 7.4  # 183.4 / 170.7
    with pytest.raises(AssertionError, match="matches 2 elements"):
        resolve("perf_h100.json", "measurements[arch=R-50-D8 & backend=torch-optimized-graph & precision=fp8].img_per_s")
    assert "does not resolve" in check("# X\n\n1.0 ms <!-- claim: 1.0 = __import__('os') --> bench/results/perf_h100.json\n")[0]
