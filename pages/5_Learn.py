"""Learn: what each method does and costs, and presets that put practitioners' claims to the test."""
import streamlit as st

from lora_explorer import presets, ui
from lora_explorer.errors import ConfigError
from lora_explorer.methods import REGISTRY

st.set_page_config(page_title="Learn · LoRA Explorer", layout="wide")
ui.sidebar()
manager = ui.get_manager()

st.title("Learn")
st.markdown(r"$W_0 \in \mathbb{R}^{m \times n}$ is the pretrained weight of a layer ($y = W_0 x$), "
            r"$A \in \mathbb{R}^{r \times n}$ and $B \in \mathbb{R}^{m \times r}$ the LoRA factors, "
            r"$s = \alpha / r$ their scale, $g = \partial L / \partial W$ the full fine-tuning gradient.")
tab_methods, tab_presets = st.tabs(["Methods", "Presets: test a claim"])

with tab_methods:
    for method in REGISTRY.values():
        with st.expander(f"**{method.id}** · {method.summary}"):
            st.latex(method.rule)
            st.markdown(f"**Trains.** {method.trains}")
            st.markdown(f"**Cost.** {method.cost}")
            st.markdown(f"**Caveats.** {method.caveats}")
            if method.paper:
                st.caption(method.paper)
            if st.button("Try it", key=f"try_{method.id}", help="open the Train page with this method chosen"):
                st.switch_page("pages/1_Train.py", query_params={"method": method.id})

with tab_presets:
    st.markdown("Each preset is a saved sweep on a built-in model. When its runs have finished, the text "
                "under it is computed from them: what they measured, also where it differs from the claim.")
    for preset in presets.PRESETS.values():
        st.subheader(preset.title)
        st.markdown(f"**The claim.** {preset.claim}")
        st.markdown(f"**Where to look.** {preset.look_for}")
        st.caption(ui.preset_summary(preset))
        if st.button("Run this preset", key=f"preset_{preset.id}"):
            try:
                _, job_ids = presets.launch(preset.id, manager)
            except ConfigError as error:
                st.error(str(error))
            else:
                ui.watch_job(job_ids[0])
        sweep = presets.latest_sweep(preset.id, manager.runs_dir)
        if sweep is None:
            continue
        done, total = ui.sweep_progress(sweep, manager.runs_dir)
        st.page_link("pages/4_Compare.py", label=f"Open sweep {sweep.id} in Compare ({done}/{total} runs finished)",
                     icon=":material/stacked_line_chart:", query_params={"sweep": sweep.id})
        if done < total:
            st.info("The findings appear when every run of the sweep has finished "
                    "(the Train page's queue shows their progress).")
            continue
        findings = presets.findings(preset.id, manager.runs_dir)
        if findings:
            st.markdown("**What our runs show.**\n" + "\n".join(f"- {line}" for line in findings))
        else:
            st.warning("The sweep's runs finished, but not the ones this comparison needs (some failed or "
                       "were stopped): run the preset again.")
