"""What ``approxbp.convert`` may change, per architecture: a table of rules, no per-model code.

A ``Rule`` names block classes (``cls.__name__``, or ``module.qualname`` where a bare name is ambiguous) and, by
attribute paths relative to the block, what its forward does with them:

- ``folds``: pre-norm; the norm's output is read *only* by the listed linear layers.  gamma (and beta) go into those
  layers, the norm becomes MSLayerNorm / MSRMSNorm without affine.
- ``affine``: post-norm LayerNorms (their output is the residual stream): MSLayerNormAffine, same parameters.
- ``acts``: activation modules applied elementwise: ApproxAct.
- ``gated``: an MLP computing ``down(act(gate(x)) * up(x))``: rebuilt around the fused approx_swiglu / approx_geglu.
- ``keep``: norms left alone on purpose, with the reason (final norms: their output is the model's output).
- ``experts``: stacked MoE experts computing ``down_e(act(gate_e(x)) * up_e(x))`` per expert: FusedExperts.

A rule is a claim about the block's forward code; ``tests/convert`` checks every class listed here against the
original model (same outputs, same gradients).  A block with the same structure is converted by adding its class name
to a rule, or without editing this table: ``convert(model, rules=(*RULES, dataclasses.replace(rule, classes=...)))``.
"""

from __future__ import annotations

from dataclasses import dataclass

FINAL_NORM = "final norm: its output is the model's output (and feeds the head), not only linear layers"
RESIDUAL_RMS_NORM = ("RMSNorm of a sublayer's output, added to the residual stream: not a fold, and no later layer "
                     "saves its output, so an output-saving norm would share nothing")


@dataclass(frozen=True)
class Fold:
    """A pre-norm whose output only ``readers`` read (``optional`` readers may be absent or None).  ``shift_free``:
    readers whose output may shift by one constant vector for every token, the keys of softmax attention without a
    position transform (each query's scores shift by a constant, which softmax removes): beta is not folded into
    them, so a bias-free k_proj needs no bias (its gradients are unchanged: the keys' gradients sum to zero)."""

    norm: str
    readers: tuple[str, ...]
    optional: tuple[str, ...] = ()
    shift_free: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatedMLP:
    """An MLP module at ``path`` computing ``down(act(gate(x)) * up(x))`` with these child names; ``up`` None: one
    projection ``gate`` gives both halves, ``g, u = gate(x).chunk(2, -1)``, and the MLP computes ``act(g) * u``;
    ``dropout``: a dropout module applied to the product before ``down``."""

    path: str
    gate: str
    up: str | None
    down: str
    act: str
    dropout: str | None = None


@dataclass(frozen=True)
class Rule:
    classes: tuple[str, ...]
    folds: tuple[Fold, ...] = ()
    affine: tuple[str, ...] = ()
    acts: tuple[str, ...] = ()
    gated: GatedMLP | None = None
    keep: tuple[tuple[str, str], ...] = ()  # (path, reason)
    experts: str | None = None  # stacked MoE experts (READERS' gate_up_proj layout) computing act(gate) * up


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
    # --- decoder families (issue 13) ---
    # Gemma: pre-RMSNorms computing (1 + weight) * x / rms (OFFSET_RMS_NORMS), tanh-GeGLU MLP
    Rule(("GemmaDecoderLayer",),
         folds=(Fold("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                Fold("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
         gated=GatedMLP("mlp", gate="gate_proj", up="up_proj", down="down_proj", act="act_fn")),
    # Gemma 2 / Gemma 3 text: sandwich norms; post_attention_layernorm and post_feedforward_layernorm normalise the
    # attention / MLP output that is added to the residual: not folds, and no output-saving affine RMSNorm op exists
    Rule(("Gemma2DecoderLayer", "Gemma3DecoderLayer"),
         folds=(Fold("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                Fold("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
         gated=GatedMLP("mlp", gate="gate_proj", up="up_proj", down="down_proj", act="act_fn"),
         keep=(("post_attention_layernorm", RESIDUAL_RMS_NORM), ("post_feedforward_layernorm", RESIDUAL_RMS_NORM),
               ("self_attn.q_norm", "per-head norm of q, read by the rotary embedding"),
               ("self_attn.k_norm", "per-head norm of k, read by the rotary embedding"))),
    # Phi-3: fused qkv_proj; gate_up_proj's output halves are (gate, up)
    Rule(("Phi3DecoderLayer",),
         folds=(Fold("input_layernorm", ("self_attn.qkv_proj",)),
                Fold("post_attention_layernorm", ("mlp.gate_up_proj",))),
         gated=GatedMLP("mlp", gate="gate_up_proj", up=None, down="down_proj", act="activation_fn")),
    # Mixture of experts: post_attention_layernorm's output is read by the router and by every expert's stacked
    # gate_up_proj (READERS); Qwen2-MoE adds a shared SwiGLU expert and its sigmoid gate.  Routing is untouched.
    Rule(("MixtralDecoderLayer", "Qwen3MoeDecoderLayer"),
         folds=(Fold("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                Fold("post_attention_layernorm", ("mlp.gate", "mlp.experts"))),
         experts="mlp.experts",
         keep=(("self_attn.q_norm", "per-head norm of q, read by the rotary embedding"),
               ("self_attn.k_norm", "per-head norm of k, read by the rotary embedding"))),
    Rule(("Qwen2MoeDecoderLayer",),
         folds=(Fold("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                Fold("post_attention_layernorm", ("mlp.gate", "mlp.experts", "mlp.shared_expert.gate_proj",
                                                  "mlp.shared_expert.up_proj", "mlp.shared_expert_gate"))),
         gated=GatedMLP("mlp.shared_expert", gate="gate_proj", up="up_proj", down="down_proj", act="act_fn"),
         experts="mlp.experts"),
    # OLMo 2: no pre-norms (q/k/v and gate/up read the residual stream); both norms normalise a sublayer's output
    Rule(("Olmo2DecoderLayer",),
         gated=GatedMLP("mlp", gate="gate_proj", up="up_proj", down="down_proj", act="act_fn"),
         keep=(("post_attention_layernorm", RESIDUAL_RMS_NORM), ("post_feedforward_layernorm", RESIDUAL_RMS_NORM),
               ("self_attn.q_norm", "norm of the q projection, read by the rotary embedding"),
               ("self_attn.k_norm", "norm of the k projection, read by the rotary embedding"))),
    # GPT-2, pre-LN: ln_1 feeds the fused c_attn, ln_2 feeds c_fc (Conv1D readers, READERS); gelu_new
    Rule(("GPT2Block",),
         folds=(Fold("ln_1", ("attn.c_attn",)), Fold("ln_2", ("mlp.c_fc",))),
         acts=("mlp.act",),
         keep=(("ln_cross_attn", "cross-attention norm: its output is read by q_attn, not in the fold table"),)),
    # GPT-NeoX (Pythia): both norms are pre-norms, with or without use_parallel_residual
    Rule(("GPTNeoXLayer",),
         folds=(Fold("input_layernorm", ("attention.query_key_value",)),
                Fold("post_attention_layernorm", ("mlp.dense_h_to_4h",))),
         acts=("mlp.act",)),
    # Granite: LLaMA's block with residual and attention multipliers outside the norms
    Rule(("GraniteDecoderLayer",),
         folds=(Fold("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                Fold("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
         gated=GatedMLP("mlp", gate="gate_proj", up="up_proj", down="down_proj", act="act_fn")),
    Rule(("GemmaModel", "Gemma2Model", "Gemma3TextModel", "Phi3Model", "MixtralModel", "Qwen2MoeModel",
          "Qwen3MoeModel", "Olmo2Model", "GraniteModel"), keep=(("norm", FINAL_NORM),)),
    Rule(("GPT2Model",), keep=(("ln_f", FINAL_NORM),)),
    Rule(("GPTNeoXModel",), keep=(("final_layer_norm", FINAL_NORM),)),
    # --- encoder and vision families (issue 13) ---
    # CLIP and SigLIP towers, pre-LN: layer_norm1 feeds q/k/v only, layer_norm2 feeds fc1 only (quick_gelu / tanh-GELU)
    Rule(("CLIPEncoderLayer", "SiglipEncoderLayer"),
         folds=(Fold("layer_norm1", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                Fold("layer_norm2", ("mlp.fc1",))),
         acts=("mlp.activation_fn",)),
    Rule(("CLIPTextModel", "SiglipTextModel"), keep=(("final_layer_norm", FINAL_NORM),)),
    Rule(("CLIPVisionModel", "SiglipVisionModel"),
         keep=(("pre_layrnorm", "norm before the blocks: its output is the residual stream"),
               ("post_layernorm", FINAL_NORM))),
    # SigLIP's attention-pooling head: layernorm feeds mlp.fc1 only (the residual adds its input)
    Rule(("SiglipMultiheadAttentionPoolingHead",), folds=(Fold("layernorm", ("mlp.fc1",)),),
         acts=("mlp.activation_fn",)),
    # DINOv2, pre-LN with layer scale after attention and MLP; norm2 feeds fc1, or gate/up of the SwiGLU variant
    Rule(("Dinov2Layer",),
         folds=(Fold("norm1", ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
                Fold("norm2", (), optional=("mlp.fc1", "mlp.gate_proj", "mlp.up_proj")))),
    Rule(("Dinov2MLP",), acts=("activation_fn",)),
    Rule(("Dinov2SwiGLUFFN",), acts=("act_fn",)),  # act(gate) * up unfused: the rule on Dinov2Layer serves both MLPs
    Rule(("Dinov2Model",), keep=(("layernorm", FINAL_NORM),)),
    # DeBERTa-v2/v3, post-LN as BERT (disentangled attention untouched)
    Rule(("DebertaV2Layer",), affine=("attention.output.LayerNorm", "output.LayerNorm"),
         acts=("intermediate.intermediate_act_fn",)),
    Rule(("DebertaV2Embeddings", "transformers.models.deberta_v2.modeling_deberta_v2.ConvLayer"),
         keep=(("LayerNorm", "its output is multiplied by the attention mask: an output-saving norm saves no less"),)),
    Rule(("DebertaV2Encoder",),
         keep=(("LayerNorm", "norm of the relative position embeddings, a parameter: no activation to share"),)),
    Rule(("DebertaV2LMPredictionHead", "LegacyDebertaV2PredictionHeadTransform"), affine=("LayerNorm",),
         acts=("transform_act_fn",)),
    # T5 (encoder and decoder), pre-RMSNorm without mean or bias; cross-attention's norm feeds only q (k/v read the
    # encoder output); the FF norm feeds wi, or wi_0 and wi_1 (gated-gelu).  The gated MLP keeps act(wi_0) * wi_1
    # unfused: T5 applies dropout and a cast to wo's dtype before wo.
    Rule(("T5LayerSelfAttention",),
         folds=(Fold("layer_norm", ("SelfAttention.q", "SelfAttention.k", "SelfAttention.v")),)),
    Rule(("T5LayerCrossAttention",), folds=(Fold("layer_norm", ("EncDecAttention.q",)),)),
    Rule(("T5LayerFF",),
         folds=(Fold("layer_norm", (), optional=("DenseReluDense.wi", "DenseReluDense.wi_0", "DenseReluDense.wi_1")),)),
    Rule(("T5DenseActDense", "T5DenseGatedActDense"), acts=("act",)),
    Rule(("T5Stack",), keep=(("final_layer_norm", FINAL_NORM),)),
    # ModernBERT, pre-LN with bias-free norms (attn_norm is nn.Identity in layer 0); Wi's output halves are (input,
    # gate) of the GeGLU act(input) * gate, then dropout and Wo
    Rule(("ModernBertEncoderLayer",),
         folds=(Fold("attn_norm", ("attn.Wqkv",)), Fold("mlp_norm", ("mlp.Wi",))),
         gated=GatedMLP("mlp", gate="Wi", up=None, down="Wo", act="act", dropout="drop")),
    Rule(("ModernBertEmbeddings",), affine=("norm",)),  # its output is the residual stream (and layer 0's Wqkv input)
    Rule(("ModernBertPredictionHead",), affine=("norm",), acts=("act",)),
    Rule(("ModernBertModel",), keep=(("final_norm", FINAL_NORM),)),
    # Whisper, pre-LN encoder and decoder: the cross-attention's norm feeds only its q (k/v read the encoder output);
    # k_proj has no bias and no position transform: beta is not folded into it (shift_free)
    Rule(("WhisperEncoderLayer",),
         folds=(Fold("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                     shift_free=("self_attn.k_proj",)),
                Fold("final_layer_norm", ("fc1",))),
         acts=("activation_fn",)),
    Rule(("WhisperDecoderLayer",),
         folds=(Fold("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                     shift_free=("self_attn.k_proj",)),
                Fold("encoder_attn_layer_norm", ("encoder_attn.q_proj",)), Fold("final_layer_norm", ("fc1",))),
         acts=("activation_fn",)),
    Rule(("WhisperEncoder", "WhisperDecoder"), keep=(("layer_norm", FINAL_NORM),)),
    # Swin: layernorm_after feeds mlp.fc1 only; layernorm_before's output is zero-padded to whole windows before q/k/v
    Rule(("SwinLayer",), folds=(Fold("layernorm_after", ("mlp.fc1",)),), acts=("mlp.activation_fn",),
         keep=(("layernorm_before", "its output is zero-padded to whole windows before q/k/v: a folded beta would "
                                    "reach the padded tokens"),)),
    Rule(("SwinPatchMerging",), keep=(("norm", "its reader, reduction, has no bias to take beta"),)),
    Rule(("SwinEmbeddings",), keep=(("norm", "norm after the patch embedding: its output is the residual stream"),)),
    Rule(("SwinModel",), keep=(("layernorm", FINAL_NORM),)),
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

# RMSNorm classes computing weight * x / sqrt(mean(x^2) + eps), eps in ``variance_epsilon`` (torch's nn.RMSNorm too).
RMS_NORMS: tuple[str, ...] = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm",
                              # --- decoder families (issue 13) ---
                              "Phi3RMSNorm", "MixtralRMSNorm", "Qwen2MoeRMSNorm", "Qwen3MoeRMSNorm", "Olmo2RMSNorm",
                              "GraniteRMSNorm",
                              # --- encoder and vision families (issue 13) ---
                              "T5LayerNorm")
# --- decoder families (issue 13) ---
# RMSNorm classes computing (1 + weight) * x / sqrt(mean(x^2) + eps), eps in ``eps``: gamma = 1 + weight is folded.
OFFSET_RMS_NORMS: tuple[str, ...] = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")


@dataclass(frozen=True)
class ReaderLayout:
    """A norm's reader other than nn.Linear computing x @ W^T (+ b) per output: its weight's input features lie on
    axis ``in_dim`` of parameter ``weight``; ``bias`` names its bias (None: it has none)."""

    weight: str = "weight"
    bias: str | None = "bias"
    in_dim: int = -1


# Reader classes (by ``__name__``) -> layout; nn.Linear is ReaderLayout() itself.
READERS: dict[str, ReaderLayout] = {
    "Conv1D": ReaderLayout(in_dim=0),  # transformers' GPT-2 Conv1D: x @ W + b, W of shape (in, out)
    # MoE routers: F.linear(x, weight), no bias; experts: F.linear(x, gate_up_proj[e]) for every expert e
    **{f"{family}TopKRouter": ReaderLayout(bias=None) for family in ("Mixtral", "Qwen2Moe", "Qwen3Moe")},
    **{f"{family}Experts": ReaderLayout("gate_up_proj", None) for family in ("Mixtral", "Qwen2Moe", "Qwen3Moe")},
}

# approx= mode -> the targets it converts
APPROX_MODES: dict[str, tuple[str, ...]] = {
    "auto": ("gelu", "gelu_tanh", "silu", "quick_gelu"),
    "regelu2": ("gelu", "gelu_tanh"),
    "resilu2": ("silu",),
}


def matches(rule: Rule, cls: type) -> bool:
    return cls.__name__ in rule.classes or f"{cls.__module__}.{cls.__qualname__}" in rule.classes
