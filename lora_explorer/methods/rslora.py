"""rsLoRA (Kalajdzievski 2023): LoRA scaled by alpha/sqrt(r) instead of alpha/r, so higher ranks
keep learning (no gradient collapse). At a fixed alpha the scale is sqrt(r) times LoRA's."""
from lora_explorer.methods import _lora
from lora_explorer.methods.base import register

RULE = r"y = W_0 x + s\,BAx, \quad s = \frac{\alpha}{\sqrt{r}}"
TRAINS = "A and B, exactly as in LoRA: r(m+n) parameters per m×n layer; W0 is frozen."
COST = "Identical to LoRA: only the constant scale s differs."
CAVEATS = ("At a fixed α the scale is √r times LoRA's, so re-tune the lr or α before comparing it with LoRA, or the "
           "comparison is confounded. With α/r, learning collapses as r grows and higher ranks stop helping; "
           "α/√r keeps them learning, so rank sweeps look different from LoRA's.")

register(_lora.peft_lora_method("rslora", "LoRA with rank-stable scaling alpha/sqrt(r)",
                                "Kalajdzievski 2023, arXiv:2312.03732",
                                rule=RULE, trains=TRAINS, cost=COST, caveats=CAVEATS, use_rslora=True))
