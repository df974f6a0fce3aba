"""LoRA (Hu et al. 2021): W = W0 + (alpha/r)·B·A with A random and B = 0; only A and B train."""
from lora_explorer.methods import _lora
from lora_explorer.methods.base import register

RULE = r"y = W_0 x + s\,BAx, \quad s = \frac{\alpha}{r}, \quad A_0\;\mathrm{random},\; B_0 = 0"
TRAINS = "A and B: r(m+n) parameters per m×n layer; W0 is frozen."
COST = ("The baseline: gradients and AdamW state for only r(m+n) parameters per layer, and two thin matmuls "
        "(A x, then B(A x)) added to each forward. Merging sBA into W0 after training removes the extra "
        "inference cost.")
CAVEATS = ("ΔW = sBA has rank at most r. The step size of the product scales with s = α/r, so α and the learning "
           "rate are coupled: with Adam, changing α is roughly like changing the lr.")

register(_lora.peft_lora_method("lora", "low-rank update W0 + (alpha/r)·B·A; base frozen",
                                "Hu et al. 2021, arXiv:2106.09685",
                                rule=RULE, trains=TRAINS, cost=COST, caveats=CAVEATS))
