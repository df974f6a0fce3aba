"""The Learn page: every method's rule and text, "try it", and presets whose findings come from runs."""
import dataclasses

from streamlit.testing.v1 import AppTest

from lora_explorer import presets, ui
from lora_explorer.config import RunConfig
from lora_explorer.methods import REGISTRY
from conftest import open_page
from test_app import run_until

LEARN = "pages/5_Learn.py"


def learn_page() -> AppTest:
    return open_page(LEARN)


def test_every_method_has_its_rule_text_and_try_it(app_runs):
    at = learn_page()
    assert len(at.latex) == len(REGISTRY)
    for method, latex in zip(REGISTRY.values(), at.latex):
        assert method.rule in latex.value
    text = " ".join(block.value for block in at.markdown)
    for method in REGISTRY.values():
        assert method.trains in text and method.caveats in text
    at.button(key="try_lora-pro").click().run()
    assert not at.exception and at.selectbox(key="method").value == "lora-pro"


def test_a_preset_runs_and_its_findings_quote_the_runs(app_runs, monkeypatch):
    short = dataclasses.replace(presets.PRESETS["alignment"], base=RunConfig(model="toy", steps=12))
    monkeypatch.setitem(presets.PRESETS, "alignment", short)
    at = learn_page()
    at.button(key="preset_alignment").click().run()
    assert not at.exception and not at.error
    sweep = presets.latest_sweep("alignment", app_runs)
    assert sweep is not None and sweep.methods == ["lora", "lora-ga", "lora-pro", "full"]
    run_until(at, lambda at: any("What our runs show" in block.value for block in at.markdown), timeout=120,
              what="the preset's findings")
    (block,) = [block.value for block in at.markdown if "What our runs show" in block.value]
    for line in presets.findings("alignment", app_runs):
        assert line in block
    assert ui.get_manager().snapshots()[0].config.group == sweep.id
