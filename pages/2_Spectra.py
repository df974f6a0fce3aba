"""Spectra: the singular values and ranks of each run's weight update ΔW, across runs, layers and steps."""
import streamlit as st

from lora_explorer import crossrun, plots, store, ui
from lora_explorer.errors import ConfigError

st.set_page_config(page_title="Spectra · LoRA Explorer", layout="wide")
ui.sidebar()
manager = ui.get_manager()

st.title("Spectra")
st.markdown("What each method's weight update ΔW = W_eff − W0 looks like: how many directions it uses, "
            "how strongly, and in which layers. Recorded during training (`spectra.jsonl`).")

# ---------------------------------------------------------------- which runs, layer, step
infos = ui.runs_with(manager.runs_dir, "spectra.jsonl")
if not infos:
    st.info(f"No run in `{manager.runs_dir}` has recorded spectra yet: train one on the **Train** page "
            "(with *analysis every* above 0).")
    st.stop()
by_id = {info.id: info for info in infos}
chosen = st.multiselect("Runs", list(by_id), default=ui.default_run_ids(infos), key="runs",
                        format_func=lambda run_id: ui.run_option(by_id[run_id]),
                        help="the newest finished runs on one model and task are chosen first")
if not chosen:
    st.info("Choose one or more runs.")
    st.stop()
labels = ui.run_labels([by_id[run_id] for run_id in chosen])
colors = ui.method_colors([by_id[run_id] for run_id in chosen])  # one colour per method on every page
spectra = {}
for run_id in chosen:
    records = store.Run(by_id[run_id].path).spectra()
    if records:
        spectra[labels[run_id]] = records
    else:
        st.warning(f"Run `{run_id}`: spectra.jsonl has no readable line.")
layers = plots.natural_order(record["layer"] for records in spectra.values() for record in records
                             if isinstance(record.get("layer"), str))
steps = sorted({record["step"] for records in spectra.values() for record in records
                if isinstance(record.get("step"), int)})
if not layers or not steps:
    st.stop()

col_layer, col_step, col_view = st.columns([3, 4, 3])
layer = col_layer.selectbox("Layer", layers, key="layer")
with col_step:
    if len(steps) > 1:
        step = st.select_slider("Step", steps, value=steps[-1], key="step",
                                help="a run without a record at this step shows its latest earlier one")
    else:
        step = steps[0]
        st.caption(f"one recorded step: {step}")
view = col_view.radio("View", plots.SPECTRUM_MODES, horizontal=True, key="view",
                      help="normalised and cumulative views compare shapes despite different update sizes")

# ---------------------------------------------------------------- the spectrum, with the toy's true ΔW* where known
true_sigma = None
for run_id in chosen:
    try:
        targets = crossrun.true_spectra(by_id[run_id].path)
    except ConfigError as error:
        st.warning(str(error))
        continue
    if targets is not None:  # the first toy run's teacher: runs on other teacher settings have another ΔW*
        shown = st.toggle(f"show the true ΔW* of {labels[run_id]}'s teacher", value=True, key="truth")
        true_sigma = targets.get(layer) if shown else None
        break
st.subheader("Singular values")
ui.chart(plots.spectrum_figure(spectra, layer, step, mode=view, true_sigma=true_sigma, colors=colors), "spectrum_chart",
         "The singular values of each run's ΔW in this layer at this step: how many directions the update uses "
         "and how strongly.",
         "σᵢ: singular values of ΔW = W_eff − W0 (top 64 stored), log scale. Normalised: σᵢ / ‖ΔW‖_F with "
         "‖ΔW‖_F = σ₁·√(stable rank). Cumulative: Σ_{j≤i} σⱼ² / ‖ΔW‖²_F, the share of the update's energy in "
         "its first i directions. Dashed black: the toy teacher's true update ΔW*.")

# ---------------------------------------------------------------- ranks over training
st.subheader("Rank over training")
ranks = {labels[run_id]: plots.configured_ranks(by_id[run_id].config) for run_id in chosen}
ui.chart(plots.rank_figure(spectra, layer, ranks_by_label=ranks, colors=colors), "rank_chart",
         "How many directions each run's update in this layer uses as training goes on: effective rank solid, "
         "stable rank dotted, the configured r dashed.",
         "Effective rank = exp(−Σ pᵢ log pᵢ) with pᵢ = σᵢ / Σⱼ σⱼ (Roy & Vetterli 2007); stable rank = "
         "‖ΔW‖²_F / σ₁². A rank-r adapter stays at or below r; LoRA-GA and Delta-LoRA at or below 2r; "
         "full FT and DoRA are not bounded.")

heatmap_label = next(iter(spectra))
if len(spectra) > 1:
    heatmap_label = st.selectbox("Run for the layer map", list(spectra), key="heatmap_run")
ui.chart(plots.rank_heatmap_figure(spectra[heatmap_label]), "rank_heatmap",
         f"Effective rank of ΔW in every adapted layer of {heatmap_label}, over training: which layers use more "
         "directions.",
         "Effective rank = exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ / Σⱼ σⱼ, per layer and recorded step.")

# ---------------------------------------------------------------- method-specific records
for run_id in chosen:
    label = labels[run_id]
    try:
        allocation = crossrun.adalora_ranks(by_id[run_id].path)
        split = crossrun.lora_drop_split(by_id[run_id].path)
    except ConfigError as error:
        st.warning(str(error))
        continue
    if allocation is not None:
        st.subheader(f"AdaLoRA rank allocation · {label}")
        ui.chart(plots.adalora_ranks_figure(allocation), f"adalora_{run_id}",
                 "The rank AdaLoRA keeps in each layer as its budget falls from r to the final r: the layers "
                 "it finds important keep more.",
                 "Kept rank = number of unmasked λᵢ in ΔW = P·diag(λ)·Q. The total budget falls from r × layers "
                 "to final r × layers on a cubic schedule; the λᵢ with the lowest score are masked first: the "
                 "moving average of the sensitivity |λᵢ·∂L/∂λᵢ| (with P's column and Q's row) times the moving "
                 "average of its deviation (Zhang et al. 2023).")
    if split is not None:
        st.subheader(f"LoRA-drop layer importance · {label}")
        ui.chart(plots.lora_drop_figure(split), f"lora_drop_{run_id}",
                 "Each layer's share of the stage-1 LoRA output: the most important layers keep their own "
                 "LoRA until their shares reach the threshold; the rest share one LoRA per shape.",
                 "importanceᵢ = Σₓ ‖ΔWᵢ x‖² / Σⱼ Σₓ ‖ΔWⱼ x‖² over the stage-1 sample, with ΔWᵢ the stage-1 "
                 "update of layer i (Zhou et al. 2024).")

with_dora_pattern = {label: records for label, records in spectra.items()
                     if any("delta_m" in record and "delta_d" in record for record in records)}
if with_dora_pattern:
    st.subheader("Magnitude and direction")
    ui.chart(plots.dora_figure(with_dora_pattern, colors=colors), "dora_chart",
             "How much each run changed the length (ΔM) and the direction (ΔD) of the weight's rows, a point per "
             "layer and recorded step: the DoRA paper finds full FT and DoRA trading one for the other (a negative "
             "slope) where LoRA moves both together (a positive one).",
             "ΔM = meanᵢ |‖W_t[i]‖ − ‖W0[i]‖|, ΔD = meanᵢ (1 − cos(W_t[i], W0[i])) over the output rows i of "
             "the effective weight W_t (Liu et al. 2024, who plot them across layers and training steps).")
