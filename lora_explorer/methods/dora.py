"""DoRA (Liu et al. 2024): W = m · (W0 + sBA) / ‖W0 + sBA‖_row; the magnitude m, A and B train.
The row norm is detached as in the paper; the effective update is full rank in general."""
from lora_explorer.methods import _lora
from lora_explorer.methods.base import register

# the magnitude vector is bold m (one entry per output row), not the dimension m
RULE = (r"W' = \mathrm{diag}\left(\frac{\mathbf{m}}{\|W_0 + s\,BA\|_{\mathrm{row}}}\right)(W_0 + s\,BA), "
        r"\quad \mathbf{m}_0 = \|W_0\|_{\mathrm{row}}")
TRAINS = ("The magnitude vector (one entry per output row, starting at the row norms of W0) plus A and B: "
          "m + r(m+n) parameters per m×n layer; W0 is frozen.")
COST = ("More than LoRA: every forward builds the dense m×n matrix W0 + sBA and its row norms for each adapted "
        "layer (the norm is detached from the graph, as in the paper, to save memory). The app's analysis has no "
        "closed form for it either: it measures ΔW densely and takes the equivalent gradient by finite difference.")
CAVEATS = ("The magnitude rescales every row of W0 + sBA, so the effective ΔW is full rank in general and PEFT's "
           "get_delta_weight (sBA alone) is not the update; the app's spectra use the effective weight. "
           "Do not expect a rank-r spectrum as for LoRA.")

register(_lora.peft_lora_method("dora", "weight-decomposed LoRA: trained magnitude x LoRA-updated direction",
                                "Liu et al. 2024, arXiv:2402.09353",
                                rule=RULE, trains=TRAINS, cost=COST, caveats=CAVEATS, use_dora=True))
