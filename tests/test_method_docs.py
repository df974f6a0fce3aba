"""The Learn page's text of every method: present, well-formed LaTeX, and not mixed up between methods."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lora_explorer.methods import REGISTRY

TEXT_FIELDS = ("rule", "trains", "cost", "caveats")
EXPECTED = {"full", "lora", "lora-plus", "rslora", "dora", "vera", "lora-fa", "lora-drop", "adalora", "delta-lora",
            "lora-ga", "lora-pro"}


def text(method_id: str) -> str:
    """trains + cost + caveats of a method, for content checks on the prose."""
    method = REGISTRY[method_id]
    return f"{method.trains} {method.cost} {method.caveats}"


def brace_depths(latex: str):
    """Yield the { } nesting depth after each unescaped brace (\\{ and \\} are literal braces)."""
    depth, i = 0, 0
    while i < len(latex):
        char = latex[i]
        if char == "\\":
            i += 2  # a command's first character, or an escaped brace / backslash
            continue
        if char in "{}":
            depth += 1 if char == "{" else -1
            yield depth
        i += 1


def environment_errors(latex: str) -> list[str]:
    """Unmatched \\begin{env} / \\end{env} pairs, in order."""
    stack, errors = [], []
    for kind, name in re.findall(r"\\(begin|end)\{([^}]*)\}", latex):
        if kind == "begin":
            stack.append(name)
        elif not stack or stack.pop() != name:
            errors.append(f"\\end{{{name}}} without its \\begin")
    return errors + [f"\\begin{{{name}}} never ended" for name in stack]


def test_every_method_is_registered():
    assert set(REGISTRY) == EXPECTED


@pytest.mark.parametrize("method_id", sorted(EXPECTED))
@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_every_method_has_its_learn_text(method_id, field):
    value = getattr(REGISTRY[method_id], field)
    assert isinstance(value, str) and value.strip(), f"{method_id}.{field} is empty"
    assert value == value.strip()
    if field != "rule":
        assert value.endswith("."), f"{method_id}.{field} should be full sentences"


@pytest.mark.parametrize("method_id", sorted(EXPECTED))
def test_rule_is_balanced_latex_for_st_latex(method_id):
    rule = REGISTRY[method_id].rule
    assert not rule.startswith("$") and not rule.endswith("$"), "st.latex takes the formula without $...$"
    assert rule.isascii(), "write symbols as LaTeX commands, not unicode"
    depths = list(brace_depths(rule))
    assert min(depths, default=0) >= 0, "a } closes a brace that was never opened"
    assert not depths or depths[-1] == 0, "unclosed {"
    assert environment_errors(rule) == []
    assert len(re.findall(r"\\left\b", rule)) == len(re.findall(r"\\right\b", rule)), "\\left without \\right"


def test_brace_and_environment_checks_catch_mistakes():
    assert list(brace_depths(r"\frac{a}{b}"))[-1] == 0
    assert list(brace_depths(r"\frac{a}{b"))[-1] == 1
    assert min(brace_depths(r"a} {b")) < 0
    assert list(brace_depths(r"\{ x \}")) == []  # literal braces
    assert environment_errors(r"\begin{aligned} x \end{aligned}") == []
    assert environment_errors(r"\begin{aligned} x \end{array}")
    assert environment_errors(r"\begin{aligned} x")


def test_rules_differ_between_methods():
    rules = [m.rule for m in REGISTRY.values()]
    assert len(set(rules)) == len(rules), "two methods share the same rule: a copy-paste mix-up?"


def test_rules_say_what_distinguishes_each_method():
    rule = {method_id: m.rule for method_id, m in REGISTRY.items()}
    # full FT has no low-rank factors: no standalone A or B (AdamW's A is part of a word)
    assert not re.search(r"(?<![A-Za-z\\])[AB](?![A-Za-z])", rule["full"])
    assert "g_t" in rule["full"]
    for method_id in ("lora", "lora-plus", "rslora", "dora", "lora-fa", "lora-drop", "delta-lora", "lora-ga",
                      "lora-pro"):
        assert "B" in rule[method_id] and "A" in rule[method_id], method_id
    # the scale: alpha/r for LoRA, alpha/sqrt(r) for rsLoRA (and LoRA-GA, which uses rsLoRA's scaling)
    assert r"\frac{\alpha}{r}" in rule["lora"] and r"\sqrt" not in rule["lora"]
    assert r"\frac{\alpha}{\sqrt{r}}" in rule["rslora"]
    assert r"\sqrt{r}" in rule["lora-ga"]
    assert r"\eta_B" in rule["lora-plus"] and r"\eta_A" in rule["lora-plus"]
    # DoRA normalises W0 + sBA row by row and rescales with the trained magnitude
    assert r"\|W_0 + s\,BA\|" in rule["dora"] and "row" in rule["dora"]
    # VeRA: trained scaling vectors around frozen shared matrices
    assert rule["vera"].count(r"\mathrm{diag}") == 2 or r"\Lambda" in rule["vera"]
    assert "A_0" in rule["lora-fa"] and "(A_0 A_0^\\top)^{-1}" in rule["lora-fa"]
    assert r"\mathrm{diag}(\lambda)" in rule["adalora"] and "P" in rule["adalora"] and "Q" in rule["adalora"]
    assert r"\lambda\, s\," in rule["delta-lora"] and "K" in rule["delta-lora"]
    assert "U" in rule["lora-ga"] and "V" in rule["lora-ga"] and r"W_0 &\leftarrow W_0 - s\,B_0 A_0" in rule["lora-ga"]
    assert "P_B" in rule["lora-pro"] and "P_A" in rule["lora-pro"] and r"\mathrm{Adam}" in rule["lora-pro"]
    assert "T" in rule["lora-drop"] and "I_i" in rule["lora-drop"]


def test_prose_matches_its_method():
    assert "frozen" not in REGISTRY["full"].trains.replace("nothing is frozen", "")
    assert "3×" in REGISTRY["full"].cost
    assert "r(m+n)" in REGISTRY["lora"].trains
    assert "m + r" in REGISTRY["vera"].trains and "large r" in REGISTRY["vera"].caveats
    assert "Only B" in REGISTRY["lora-fa"].trains
    assert "loraplus_weight_decay" in REGISTRY["lora-plus"].caveats
    assert "√r" in REGISTRY["rslora"].caveats
    assert "norm" in REGISTRY["dora"].cost and "full rank" in REGISTRY["dora"].caveats
    assert "total_step" in REGISTRY["adalora"].caveats
    assert "ropout" in REGISTRY["delta-lora"].caveats and "2r" in REGISTRY["delta-lora"].caveats
    assert "ga_init" in REGISTRY["lora-ga"].caveats and "rank-2r" in REGISTRY["lora-ga"].caveats
    assert "estimation_batches" in REGISTRY["lora-ga"].cost
    assert "stage" in REGISTRY["lora-drop"].cost
    assert re.search(r"projection|tangent space", text("lora-pro"))
    assert "moments=full" in REGISTRY["lora-pro"].cost
    # method-specific pitfalls stay with their own method
    for method_id in EXPECTED - {"lora-plus"}:
        assert "loraplus_weight_decay" not in text(method_id), method_id
    for method_id in EXPECTED - {"lora-ga"}:
        assert "ga_init" not in text(method_id), method_id
    for method_id in EXPECTED - {"adalora"}:
        assert "total_step" not in text(method_id), method_id


KATEX_CHECK = """
const katex = (await import(process.argv[1])).default;
const rules = JSON.parse(await new Promise(done => { let s = ""; process.stdin.on("data", d => s += d);
                                                     process.stdin.on("end", () => done(s)); }));
const errors = {};
for (const [id, rule] of Object.entries(rules)) {
  try { katex.renderToString(rule, {displayMode: true, throwOnError: true, strict: "error"}); }
  catch (e) { errors[id] = e.message; }
}
console.log(JSON.stringify(errors));
"""


def streamlit_katex() -> Path | None:
    """The KaTeX build st.latex renders with, shipped in streamlit's frontend as an ES module."""
    try:
        import streamlit
    except ImportError:
        return None
    found = sorted((Path(streamlit.__file__).parent / "static" / "static" / "js").glob("katex.*.js"))
    return found[0] if found else None


def test_rules_render_with_streamlits_katex():
    """Every rule, aligned ones included, through the KaTeX that st.latex uses, in strict mode. Needs node
    and streamlit's bundled KaTeX; skipped without them."""
    node, bundle = shutil.which("node"), streamlit_katex()
    if node is None or bundle is None:
        pytest.skip("needs node and streamlit's bundled KaTeX")
    rules = {method_id: m.rule for method_id, m in REGISTRY.items()}
    done = subprocess.run([node, "--input-type=module", "-e", KATEX_CHECK, bundle.as_uri()], input=json.dumps(rules),
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        pytest.skip(f"could not run streamlit's KaTeX bundle with node: {done.stderr.strip()[-300:]}")
    assert json.loads(done.stdout) == {}
