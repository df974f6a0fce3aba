"""LoRA Explorer: the Streamlit entry point and home page. Streamlit discovers the other pages
in `pages/` (one thin file each), which keeps deep links such as /Train working.

Run with:  streamlit run app.py
"""
import pandas as pd
import streamlit as st

from lora_explorer import models, ui
from lora_explorer.methods import REGISTRY

st.set_page_config(page_title="LoRA Explorer", page_icon=":material/tune:", layout="wide")
ui.sidebar()
st.title("LoRA Explorer")
st.markdown(
    "Train a small model with a fine-tuning method — full fine-tuning or a LoRA variant — "
    "**in the background**, and watch its loss curves while it runs. Every method trains on the "
    "same data with the same seed, so runs can be compared fairly. Jobs keep running when you "
    "switch pages or close the tab, and each run is saved as a folder of plain files "
    "(config, metrics, summary, weights)."
)
st.subheader("How to start")
st.markdown(
    "1. Pick **Train** in the sidebar.\n"
    "2. Choose a model, a task and a method; the defaults work offline:\n"
    + "".join(f"   - `{name}` — {model.summary} (task `{model.default_task}`)\n"
              for name, model in models.BUILTIN_MODELS.items())
    + "3. Press **Start**: the loss curve fills in live; **Stop** ends a run after its current step. "
    "Or open *Compare methods* and launch a sweep of several methods and seeds at once.\n"
    "4. **Compare** overlays runs and their cost; **Spectra** shows the singular values of each "
    "method's weight update ΔW; **Alignment** shows how closely each method's steps follow full "
    "fine-tuning's gradient; **Learn** explains every method and runs presets that test what "
    "practitioners report.\n\n"
    "A Hugging Face hub id or a local model directory also works, and so does your own CSV/JSONL "
    "data (`text` and `label` columns) for text models."
)
st.subheader("Methods")
st.dataframe(
    pd.DataFrame([{"id": m.id, "summary": m.summary, "paper": m.paper or "—"} for m in REGISTRY.values()]),
    hide_index=True, key="methods_table",
)

