"""Alignment: how close each method's gradient steps and final update come to full fine-tuning's."""
import streamlit as st

from lora_explorer import crossrun, plots, store, ui
from lora_explorer.errors import ConfigError

st.set_page_config(page_title="Alignment · LoRA Explorer", layout="wide")
ui.sidebar()
manager = ui.get_manager()

st.title("Alignment with full fine-tuning")
st.markdown("How close each method comes to full fine-tuning: its gradient step at every recorded step "
            "(`alignment.jsonl`), and its final update and weights compared with a full fine-tuning run's.")

infos = ui.runs_with(manager.runs_dir, "alignment.jsonl", "spectra.jsonl")
if not infos:
    st.info(f"No analysed run in `{manager.runs_dir}` yet: train one on the **Train** page.")
    st.stop()
by_id = {info.id: info for info in infos}
aligned = [info for info in infos if (info.path / "alignment.jsonl").exists()]
chosen = st.multiselect("Runs", list(by_id), default=ui.default_run_ids(infos, first_from=aligned), key="runs",
                        format_func=lambda run_id: ui.run_option(by_id[run_id]),
                        help="the newest finished runs on one model and task are chosen first")
if not chosen:
    st.info("Choose one or more runs.")
    st.stop()
labels = ui.run_labels([by_id[run_id] for run_id in chosen])
colors = ui.method_colors([by_id[run_id] for run_id in chosen])  # one colour per method on every page

# ---------------------------------------------------------------- gradient alignment during training
st.subheader("Gradient alignment during training")
alignment, missing = {}, []
for run_id in chosen:
    if not (by_id[run_id].path / "alignment.jsonl").exists():
        missing.append(run_id)
        continue
    records = store.Run(by_id[run_id].path).alignment()
    if records:
        alignment[labels[run_id]] = records
    else:
        st.warning(f"Run `{run_id}`: alignment.jsonl has no readable line.")
if missing:
    st.info("No gradient alignment recorded (no alignment.jsonl) for " + ", ".join(f"`{i}`" for i in missing)
            + ". Runs trained by a version that records it have one.")
if alignment:
    per_layer = st.toggle("one line per layer", key="per_layer", help="off: the mean over the adapted layers")
    ui.chart(plots.alignment_figure(alignment, per_layer=per_layer, colors=colors), "alignment_chart",
             "How well each method's gradient step points where full fine-tuning's gradient points, at the "
             "method's own weights (1 = the same direction); dashed and dotted: the best a rank-r and a rank-2r "
             "step could do.",
             "cos = ⟨g̃, g⟩_F / (‖g̃‖_F ‖g‖_F), g = ∂L/∂W the full gradient, g̃ the full-size gradient the method "
             "actually follows. Best rank-k cos = √(Σ_{i≤k} σᵢ(g)² / Σᵢ σᵢ(g)²), reached by the top-k SVD of g. "
             "Step s = at the weights after s updates.")
    ui.chart(plots.first_step_alignment_figure(alignment, colors=colors), "first_step_chart",
             "Alignment at the initial point, before any update, mean over layers: LoRA-GA's initialisation "
             "aims at the rank-2r bound (marker).",
             "cos(g̃, g) at step 0 averaged over layers; markers: the rank-r and rank-2r bounds "
             "√(Σ_{i≤k} σᵢ(g)² / Σᵢ σᵢ(g)²), k = r, 2r.")

# ---------------------------------------------------------------- final update against a full fine-tuning run
st.subheader("Final update against full fine-tuning")
first = by_id[chosen[0]]
references = {info.id: info for info in store.list_runs(manager.runs_dir) if info.config.get("method") == "full"
              and info.status in crossrun.FINISHED and ui.same_model_and_task(info, first)}
if not references:
    st.info(f"No finished full fine-tuning run on model `{first.config.get('model')}` and task "
            f"`{ui.task_label(first.config.get('task'))}`: train one (method `full`) to compare with.")
    st.stop()
reference = references[st.selectbox("Full fine-tuning run", list(references), key="reference",
                                    format_func=lambda run_id: ui.run_option(references[run_id]))]
others = [by_id[run_id] for run_id in chosen if run_id != reference.id]
compared = [info for info in others if info.status in crossrun.FINISHED and ui.same_model_and_task(info, first)]
skipped = [info.id for info in others if info not in compared]
if skipped:
    st.caption("Not compared (unfinished, or another model or task): " + ", ".join(f"`{i}`" for i in skipped))
MAX_K = 64
configured = [rank for info in compared for rank in plots.configured_ranks(info.config).values()]
col_k, col_top, col_threshold = st.columns(3)
k = col_k.number_input("k: directions compared", 1, MAX_K, min(MAX_K, max(configured or [8])), key="k",
                       help="top-k singular vectors of each ΔW; defaults to the largest configured rank")
top_k = col_top.number_input("top-k for intruders", 1, MAX_K, 10, key="top_k")
threshold = col_threshold.number_input("intruder threshold", 0.05, 0.95, 0.5, 0.05, key="threshold",
                                       help="a direction is an intruder when its best |cos| with every "
                                            "pretrained singular vector is below this")

overlaps, intruders = {}, {}
reference_label = ui.run_labels([reference])[reference.id]
colors = {**ui.method_colors([reference]), **colors}
with st.spinner("Rebuilding the trained models…"):
    for info in [*compared, reference]:
        label = labels.get(info.id, reference_label)
        try:
            if info is not reference:
                overlaps[label] = ui.subspace_overlap(str(info.path), str(reference.path), int(k),
                                                      (info.summary.get("finished_at"),
                                                       reference.summary.get("finished_at")))
            intruders[label] = ui.intruder_dimensions(str(info.path), int(top_k), float(threshold),
                                                      info.summary.get("finished_at"))
        except ConfigError as error:
            st.warning(str(error))
if compared:
    ui.chart(plots.overlap_figure(overlaps, int(k), reference=reference_label, colors=colors), "overlap_chart",
             f"How much of {reference_label}'s top-{k} update directions each run's final update shares, per "
             "layer (1 = the same subspace).",
             "φ = ‖U_aᵀ U_b‖²_F / k, U = the top-k left singular vectors of each run's final ΔW (Hu et al. 2021). "
             "Two random k-dimensional subspaces of an m-dimensional space give about k/m. k drops to an "
             "update's rank where that is smaller; no bar where an update is 0.")
ui.chart(plots.intruder_figure(intruders, int(top_k), colors=colors), "intruder_chart",
         "New directions among the top singular vectors of each run's trained weights, far from every pretrained "
         "direction: Shuttleworth et al. find these 'intruder dimensions' after LoRA, rarely after full FT.",
         f"Count of i ≤ {top_k} with maxⱼ |⟨uᵢ(W0 + ΔW), uⱼ(W0)⟩| < {threshold:g}, u = left singular vectors "
         "(arXiv 2410.21228; the detection in peft's lora/intruders.py).")
