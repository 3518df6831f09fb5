"""Tiny models of every architecture the conversion rules cover (hidden 32, 2 layers), their inputs, a loss, and the
helpers the conversion tests share."""

from __future__ import annotations

import copy

import torch
from torch import nn

from approxbp.conversion import convert, revert
from approxbp.conversion.fold import base_linear, layout
from approxbp.conversion.plan import norm_gamma
from approxbp.ops.step import step
from approxbp.saved import record_saved

HIDDEN = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
VOCAB = 64


def _tokens() -> dict:
    return {"input_ids": torch.randint(1, VOCAB, (2, 8))}


def _pixels(size: int) -> dict:
    return {"pixel_values": torch.randn(2, 3, size, size)}


def _hf(name: str) -> tuple[nn.Module, dict]:
    import transformers as T

    text = dict(vocab_size=VOCAB, **HIDDEN)
    decoder = dict(text, num_key_value_heads=1)
    builders = {
        "bert": lambda: T.BertModel(T.BertConfig(**text, **NO_DROPOUT)),
        "bert-mlm": lambda: T.BertForMaskedLM(T.BertConfig(**text, **NO_DROPOUT)),
        "roberta-mlm": lambda: T.RobertaForMaskedLM(T.RobertaConfig(**text, **NO_DROPOUT)),
        "xlm-roberta-mlm": lambda: T.XLMRobertaForMaskedLM(T.XLMRobertaConfig(**text, **NO_DROPOUT)),
        "electra-mlm": lambda: T.ElectraForMaskedLM(T.ElectraConfig(**text, embedding_size=16, **NO_DROPOUT)),
        "vit": lambda: T.ViTForImageClassification(T.ViTConfig(image_size=8, patch_size=4, num_labels=3, **HIDDEN)),
        "deit": lambda: T.DeiTForImageClassification(T.DeiTConfig(image_size=8, patch_size=4, num_labels=3,
                                                                  **HIDDEN)),
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**decoder, tie_word_embeddings=True)),
        "llama-geglu": lambda: T.LlamaForCausalLM(T.LlamaConfig(**decoder, hidden_act="gelu")),
        "llama-geglu-tanh": lambda: T.LlamaForCausalLM(T.LlamaConfig(**decoder, hidden_act="gelu_pytorch_tanh")),
        "llama-quickgelu": lambda: T.LlamaForCausalLM(T.LlamaConfig(**decoder, hidden_act="quick_gelu")),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**decoder)),
        "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**decoder)),
        "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**decoder, head_dim=16)),
    }
    model = builders[name]()
    return model, _pixels(8) if name in ("vit", "deit") else _tokens()


def _timm(name: str) -> tuple[nn.Module, dict]:
    import timm

    extra = {"timm-vit": {}, "timm-vit-qknorm-layerscale": dict(qk_norm=True, init_values=0.1, pre_norm=True)}[name]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=3, **extra)
    return model, {"x": torch.randn(2, 3, 16, 16)}


HF_MODELS = ("bert", "bert-mlm", "roberta-mlm", "xlm-roberta-mlm", "electra-mlm", "vit", "deit", "llama", "llama-geglu",
             "llama-geglu-tanh", "llama-quickgelu", "mistral", "qwen2", "qwen3")
TIMM_MODELS = ("timm-vit", "timm-vit-qknorm-layerscale")
ALL_MODELS = HF_MODELS + TIMM_MODELS


def expected_kinds(name: str, approx: str | None) -> set[str]:
    """The kinds of change ``convert(approx=approx, norms="ms")`` makes to model ``name``."""
    post_ln = name.startswith(("bert", "roberta", "xlm", "electra"))
    kinds = {"affine-norm" if post_ln else "folded-norm"}
    if approx:
        gated = name.startswith(("llama", "mistral", "qwen")) and name != "llama-quickgelu"
        kinds.add("gated-mlp" if gated else "activation")
    return kinds


def randomise_norms(model: nn.Module) -> None:
    """Every norm's weight = 1 + N(0, 0.5^2) and bias = N(0, 0.2^2), in place, so that folding is not trivial."""
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__.endswith("Norm") and getattr(m, "weight", None) is not None:
                m.weight.copy_(1 + 0.5 * torch.randn_like(m.weight))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.2 * torch.randn_like(m.bias))


def build(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, dict]:
    """(model in eval mode with randomised norm affines, inputs): gamma = 1 + N(0, 0.5^2), beta = N(0, 0.2^2), so
    that folding is not trivial."""
    torch.manual_seed(seed)
    model, inputs = _timm(name) if name.startswith("timm") else _hf(name)
    randomise_norms(model)
    return model.to(dtype).eval(), {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def with_lora(model: nn.Module, targets: list[str], dropout: float = 0.0, adapter: str = "default") -> nn.Module:
    """``model`` under a peft LoRA adapter on ``targets``, B random too (``init_lora_weights=False``), in eval mode; an
    existing PeftModel gets a further adapter named ``adapter``."""
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=dropout, init_lora_weights=False)
    if isinstance(model, PeftModel):
        model.add_adapter(adapter, config)
        return model
    return get_peft_model(model, config, adapter_name=adapter).eval()


def output(model: nn.Module, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    return out if isinstance(out, torch.Tensor) else out[0]


def loss(model: nn.Module, inputs: dict) -> torch.Tensor:
    """A fixed random projection of the output (the same for every call with the same output shape)."""
    y = output(model, inputs)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(y.dtype)
    return (y * weights).sum()


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def original_grads(converted: dict[str, torch.Tensor], original: nn.Module, report) -> dict[str, torch.Tensor]:
    """The converted model's gradients mapped to the original parameters, for any reader layout (weight W with its
    input features on axis ``in_dim``) and gamma = weight or 1 + weight:
    dW = dW' * gamma + db' beta, db = db', dgamma = sum_r sum_out(dW'_r * W_r), dbeta = sum_r sum_out(W_r * db'_r)."""
    params, mapped = dict(original.named_parameters()), dict(converted)
    for change in report.changes:
        if not change.readers:
            continue
        norm = original.get_submodule(change.name)
        gamma, beta = norm_gamma(norm).detach(), getattr(norm, "bias", None)
        dgamma, dbeta = torch.zeros_like(gamma), None if beta is None else torch.zeros_like(beta)
        for reader in change.readers:
            where = layout(base_linear(original.get_submodule(reader)))
            key = f"{reader}.{where.weight}"
            weight, dweight = params[key].detach(), converted[key]
            dim = where.in_dim % weight.dim()
            shape = [-1 if d == dim else 1 for d in range(weight.dim())]
            outputs = [d for d in range(weight.dim()) if d != dim]
            mapped[key] = dweight * gamma.reshape(shape)
            dgamma += (dweight * weight).sum(outputs)
            if beta is not None:
                dbias = converted[f"{reader}.bias"].unsqueeze(dim)
                mapped[key] = mapped[key] + dbias * beta.detach().reshape(shape)
                dbeta += (weight * dbias).sum(outputs)
        mapped[f"{change.name}.weight"] = dgamma
        if beta is not None:
            mapped[f"{change.name}.bias"] = dbeta
    return mapped


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale else (a - b).abs().max().item()


def max_relative_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over tensors of max |a - b| / max |b|, the scale floored at 1e-4 of the largest gradient (gradients that
    vanish in theory, such as a key bias's, are rounding noise)."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    floor = 1e-4 * max(t.abs().max().item() for t in b.values())
    return max((a[k] - b[k]).abs().max().item() / max(b[k].abs().max().item(), floor) for k in b)


class _StepBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, act, table):
        ctx.save_for_backward(x)
        ctx.table = table
        return act(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return (grad.float() * step(x, ctx.table)).to(grad.dtype), None, None


class ReferenceApproxBP(nn.Module):
    """The original activation module with the backward grad * step(x): Approx-BP written independently of approxbp's
    ops, applied to the unconverted model."""

    def __init__(self, act: nn.Module, table):
        super().__init__()
        self.act, self.table = act, table

    def forward(self, x):
        return _StepBackward.apply(x, self.act, self.table)


def with_reference_activations(model: nn.Module, converted: nn.Module, names) -> nn.Module:
    """A copy of ``model`` whose activations ``names`` get the backward of the tables ``converted`` uses there."""
    reference, modules = copy.deepcopy(model), dict(converted.named_modules())
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = reference.get_submodule(parent_name)
        setattr(parent, attr, ReferenceApproxBP(getattr(parent, attr), modules[name].table))
    return reference


def saved_bytes(model: nn.Module, inputs: dict) -> int:
    """Bytes autograd saves for one forward of ``loss`` (approxbp.saved.record_saved)."""
    with record_saved(model) as record:
        loss(model, inputs)
    return record.bytes


def check_revert(model: nn.Module, original: nn.Module, state: dict) -> None:
    """revert(model) gives back the original's module classes and its state_dict bit for bit."""
    revert(model)
    assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()]
    reverted = model.state_dict()
    assert reverted.keys() == state.keys()
    assert all(torch.equal(reverted[k], state[k]) for k in state)


def check_matches_original(model: nn.Module, inputs: dict, approx: str | None, kinds: set[str],
                           forward_tol: float = 1e-5, grad_tol: float = 1e-5, mapped_grads=None,
                           comparable=lambda gradients: gradients) -> None:
    """convert(model, approx=approx) against a copy of the original: the changes are of ``kinds``; outputs agree to
    ``forward_tol`` (max |y - y_ref| / max |y_ref|); gradients, the folded ones mapped back
    (``mapped_grads(model, original, report)``, default ``original_grads``) and those ``comparable`` keeps, equal to
    ``grad_tol`` the original's whose activations alone get the step backward, and differ from the original's with
    Approx-BP; revert restores the model bit for bit."""
    original, state = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    report = convert(model, approx=approx)
    assert not report.unexpected, report
    assert {c.kind for c in report.changes} == kinds
    assert relative_diff(output(model, inputs), output(original, inputs)) <= forward_tol

    reference = with_reference_activations(original, model, report.activations) if approx else original
    loss(model, inputs).backward()
    loss(reference, inputs).backward()
    mapped = comparable(mapped_grads(model, original, report) if mapped_grads
                        else original_grads(grads(model), original, report))
    assert max_relative_diff(mapped, comparable(grads(reference))) <= grad_tol
    if approx:  # the activation backward really changed
        original.zero_grad()
        loss(original, inputs).backward()
        assert max_relative_diff(mapped, comparable(grads(original))) > 100 * grad_tol
    check_revert(model, original, state)
