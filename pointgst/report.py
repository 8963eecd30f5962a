"""``parameter_report``: trainable vs. total parameters of a (wrapped) backbone, per module, beside the
paper's figure where the paper gives one."""

from dataclasses import dataclass, field

from torch import nn

from pointgst.tuner.keys import is_backbone_copy, part_of
from pointgst.tuner.peft_model import method_name

#: the papers' trainable-parameter figures (README / each method's paper), by (architecture, method)
PAPER_FIGURES = {
    ("point_mae", "pcsa"): "0.6M trainable (2.77% of 22.1M)",
    ("pointgpt_l", "pcsa"): "2.4M trainable (0.67% of 360.5M)",
    ("point_mae", "dapt"): "1.1M trainable (DAPT paper)",
    ("point_mae", "idpt"): "1.7M trainable (IDPT paper)",
    ("point_mae", "gaprompt"): "2.19% trainable (GAPrompt paper abstract)",
    ("point_mae", "ppt"): "1.05M trainable (PPT abstract v2; v1 wrote 1.05%)",
}


@dataclass
class ParameterReport:
    """Trainable parameters of a model, grouped by the part they belong to.

    ``backbone_total`` counts the plain backbone once (not the copies peft keeps of the head or the tokens),
    so ``ratio = trainable / backbone_total`` is the figure papers quote.
    """

    architecture: str
    method: str
    trainable: int
    backbone_total: int
    breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.trainable / self.backbone_total

    @property
    def paper_figure(self) -> str | None:
        return PAPER_FIGURES.get((self.architecture, self.method))

    def __str__(self) -> str:
        width = max([len(k) for k in self.breakdown] + [24])
        lines = [f"{self.architecture} + {self.method}",
                 f"  {'trainable parameters':<{width}} {self.trainable:>13,}",
                 f"  {'backbone parameters':<{width}} {self.backbone_total:>13,}",
                 f"  {'trainable ratio':<{width}} {100 * self.ratio:>12.2f}%"]
        if self.paper_figure:
            lines.append(f"  {'paper':<{width}} {self.paper_figure}")
        lines.append("  trainable, by part:")
        lines += [f"    {name:<{width - 2}} {count:>13,}" for name, count in self.breakdown.items()]
        return "\n".join(lines)


def parameter_report(model: nn.Module) -> ParameterReport:
    """Report a peft-wrapped backbone (or a plain one, where every trainable parameter counts)."""
    backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    configs = getattr(model, "peft_config", {})
    if configs:
        method = method_name(model.active_peft_config)
    else:
        method = getattr(model, "tuning_method", None) or "full"
    breakdown: dict[str, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            part = part_of(name)
            if getattr(backbone, "task", "") == "segmentation" and part in backbone.head_modules:
                part = "segmentation head"
            breakdown[part] = breakdown.get(part, 0) + param.numel()
    total = sum(p.numel() for name, p in backbone.named_parameters() if not is_backbone_copy(name))
    return ParameterReport(architecture=getattr(backbone, "architecture", type(backbone).__name__), method=method,
                           trainable=sum(breakdown.values()), backbone_total=total, breakdown=dict(breakdown))
