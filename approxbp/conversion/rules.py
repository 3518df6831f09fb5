"""What ``approxbp.convert`` may change, per architecture: a table of rules, no per-model code.

A ``Rule`` names block classes (``cls.__name__``, or ``module.qualname`` where a bare name is ambiguous) and, by
attribute paths relative to the block, what its forward does with them:

- ``folds``: pre-norm; the norm's output is read *only* by the listed linear layers.  gamma (and beta) go into those
  layers, the norm becomes MSLayerNorm / MSRMSNorm without affine.
- ``affine``: post-norm LayerNorms (their output is the residual stream): MSLayerNormAffine, same parameters.
- ``acts``: activation modules applied elementwise: ApproxAct.
- ``gated``: an MLP computing ``down(act(gate(x)) * up(x))``: rebuilt around the fused approx_swiglu / approx_geglu.
- ``keep``: norms left alone on purpose, with the reason (final norms: their output is the model's output).

A rule is a claim about the block's forward code; ``tests/convert`` checks every class listed here against the
original model (same outputs, same gradients).  A block with the same structure is converted by adding its class name
to a rule, or without editing this table: ``convert(model, rules=(*RULES, dataclasses.replace(rule, classes=...)))``.
"""

from __future__ import annotations

from dataclasses import dataclass

FINAL_NORM = "final norm: its output is the model's output (and feeds the head), not only linear layers"


@dataclass(frozen=True)
class Fold:
    """A pre-norm whose output only ``readers`` read (``optional`` readers may be absent or None)."""

    norm: str
    readers: tuple[str, ...]
    optional: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatedMLP:
    """An MLP module at ``path`` computing ``down(act(gate(x)) * up(x))`` with these child names."""

    path: str
    gate: str
    up: str
    down: str
    act: str


@dataclass(frozen=True)
class Rule:
    classes: tuple[str, ...]
    folds: tuple[Fold, ...] = ()
    affine: tuple[str, ...] = ()
    acts: tuple[str, ...] = ()
    gated: GatedMLP | None = None
    keep: tuple[tuple[str, str], ...] = ()  # (path, reason)


RULES: tuple[Rule, ...] = (
    # HF BERT family, post-LN: each LayerNorm's output is the residual stream, read by the next layers
    Rule(("BertLayer", "RobertaLayer", "XLMRobertaLayer", "ElectraLayer"),
         affine=("attention.output.LayerNorm", "output.LayerNorm"), acts=("intermediate.intermediate_act_fn",)),
    Rule(("BertEmbeddings", "RobertaEmbeddings", "XLMRobertaEmbeddings", "ElectraEmbeddings"),
         affine=("LayerNorm",)),
    # HF masked-LM heads: dense -> act -> LayerNorm -> (tied) decoder
    Rule(("BertPredictionHeadTransform",), affine=("LayerNorm",), acts=("transform_act_fn",)),
    Rule(("ElectraGeneratorPredictions",), affine=("LayerNorm",), acts=("activation",)),
    Rule(("RobertaLMHead", "XLMRobertaLMHead"), affine=("layer_norm",)),
    # HF ViT family, pre-LN: layernorm_before feeds q/k/v only, layernorm_after feeds fc1 only
    Rule(("ViTLayer", "DeiTLayer"),
         folds=(Fold("layernorm_before", ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
                Fold("layernorm_after", ("mlp.fc1",))),
         acts=("mlp.activation_fn",)),
    Rule(("ViTModel", "DeiTModel"), keep=(("layernorm", FINAL_NORM),)),
    # timm ViT, pre-LN: norm1 feeds the fused qkv (and the optional attention gate), norm2 feeds fc1
    Rule(("timm.models.vision_transformer.Block",),
         folds=(Fold("norm1", ("attn.qkv",), optional=("attn.gate",)), Fold("norm2", ("mlp.fc1",))),
         acts=("mlp.act",),
         keep=(("attn.q_norm", "per-head norm of q, read by the attention product"),
               ("attn.k_norm", "per-head norm of k, read by the attention product"),
               ("attn.norm", "norm of the attention output, not in the fold table"),
               ("mlp.norm", "norm of the MLP's hidden activations, not in the fold table"))),
    Rule(("timm.models.vision_transformer.VisionTransformer",),
         keep=(("norm_pre", "norm before the blocks: its output is the residual stream"), ("norm", FINAL_NORM),
               ("fc_norm", FINAL_NORM))),
    # LLaMA family, pre-RMSNorm: input_layernorm feeds q/k/v, post_attention_layernorm feeds gate/up; SwiGLU MLP
    Rule(("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"),
         folds=(Fold("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                Fold("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
         gated=GatedMLP("mlp", gate="gate_proj", up="up_proj", down="down_proj", act="act_fn"),
         keep=(("self_attn.q_norm", "per-head norm of q, read by the rotary embedding"),
               ("self_attn.k_norm", "per-head norm of k, read by the rotary embedding"))),
    Rule(("LlamaModel", "MistralModel", "Qwen2Model", "Qwen3Model"), keep=(("norm", FINAL_NORM),)),
)

# Activation classes (by ``__name__``; torch's nn.GELU is resolved by its ``approximate``) -> Approx-BP target.
ACTIVATION_TARGETS: dict[str, str] = {
    "GELUActivation": "gelu",  # transformers, erf form (also its gelu_python variant)
    "GELUTanh": "gelu_tanh",  # transformers gelu_pytorch_tanh (alias PytorchGELUTanh)
    "NewGELUActivation": "gelu_tanh",
    "FastGELUActivation": "gelu_tanh",
    "QuickGELUActivation": "quick_gelu",
    "SiLU": "silu",  # torch
    "SiLUActivation": "silu",  # transformers
}
TORCH_GELU_TARGETS = {"none": "gelu", "tanh": "gelu_tanh"}

# RMSNorm classes computing weight * x / sqrt(mean(x^2) + eps), eps in ``variance_epsilon`` (torch's nn.RMSNorm too).
RMS_NORMS: tuple[str, ...] = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")

# approx= mode -> the targets it converts
APPROX_MODES: dict[str, tuple[str, ...]] = {
    "auto": ("gelu", "gelu_tanh", "silu", "quick_gelu"),
    "regelu2": ("gelu", "gelu_tanh"),
    "resilu2": ("silu",),
}


def matches(rule: Rule, cls: type) -> bool:
    return cls.__name__ in rule.classes or f"{cls.__module__}.{cls.__qualname__}" in rule.classes
