"""The generic path, ``convert(model, example_inputs=...)``, on models no rule covers: a custom pre-LN (LayerNorm or
RMSNorm) / post-LN transformer, torch's TransformerEncoderLayer (norm_first True / False) and transformers' OPTModel.
Same outputs, MS-BP-alone gradients equal (mapped back through the folds), Approx-BP gradients those of the reference
step backward, >= 10% fewer saved bytes, exact revert, peft LoRA; every case the recorded forward cannot show safe is
left, with the reason."""

import copy

import pytest
import torch
from convert_models import (
    grads,
    loss,
    max_relative_diff,
    output,
    relative_diff,
    saved_bytes,
    with_lora,
    with_reference_activations,
)
from torch import nn

from approxbp.conversion import convert, revert
from approxbp.conversion.generic import QUALIFIED_ACTIVATIONS
from approxbp.modules.approx_act import ApproxAct

WIDTH = 32
FORWARD_TOL = 1e-5  # max |y - y_ref| / max |y_ref|, float32 (the target is 1e-4)
GRAD_TOL = 1e-5


class Block(nn.Module):
    """A transformer block from torch modules: pre-LN (norm -> attention / MLP, residual around) or post-LN."""

    def __init__(self, pre: bool, norm: type = nn.LayerNorm):
        super().__init__()
        self.pre = pre
        self.norm1, self.norm2 = norm(WIDTH), norm(WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 2, batch_first=True)
        self.fc1, self.act, self.fc2 = nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x):
        if self.pre:
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.fc2(self.act(self.fc1(self.norm2(x))))
        x = self.norm1(x + self.attn(x, x, x, need_weights=False)[0])
        return self.norm2(x + self.fc2(self.act(self.fc1(x))))


class Transformer(nn.Module):
    def __init__(self, pre: bool = True, norm: type = nn.LayerNorm):
        super().__init__()
        self.blocks = nn.ModuleList([Block(pre, norm) for _ in range(2)])
        self.norm, self.head = norm(WIDTH), nn.Linear(WIDTH, 3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class Encoder(nn.Module):
    """Two torch TransformerEncoderLayers with an nn.GELU module as activation."""

    def __init__(self, norm_first: bool):
        super().__init__()
        layer = nn.TransformerEncoderLayer(WIDTH, 2, 4 * WIDTH, dropout=0.0, activation=nn.GELU(), batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.encoder(x)


def _opt():
    import transformers as T

    config = T.OPTConfig(vocab_size=64, hidden_size=WIDTH, num_hidden_layers=2, ffn_dim=4 * WIDTH,
                         num_attention_heads=2, word_embed_proj_dim=WIDTH, max_position_embeddings=64,
                         activation_function="gelu", dropout=0.0, attention_dropout=0.0)
    return T.OPTModel(config), {"input_ids": torch.randint(2, 64, (2, 8))}


def build(name: str):
    """(model in eval mode with randomised LayerNorm affines, inputs)."""
    torch.manual_seed(0)
    x = {"x": torch.randn(2, 6, WIDTH)}
    model, inputs = {"pre-ln": lambda: (Transformer(True), x), "post-ln": lambda: (Transformer(False), x),
                     "pre-rmsnorm": lambda: (Transformer(True, nn.RMSNorm), x),
                     "encoder-norm-first": lambda: (Encoder(True), x), "encoder-post-ln": lambda: (Encoder(False), x),
                     "opt": _opt}[name]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                m.weight.copy_(1 + 0.5 * torch.randn_like(m.weight))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return model.eval(), inputs


# model -> (folded norms, converted activations, norms left with the reason's key words)
EXPECTED = {
    "pre-ln": ({"blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "norm"},
               {"blocks.0.act", "blocks.1.act"}, {}),
    "pre-rmsnorm": ({"blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "norm"},
                    {"blocks.0.act", "blocks.1.act"}, {}),
    "post-ln": ({"norm"}, {"blocks.0.act", "blocks.1.act"},
                {"blocks.0.norm1": "add", "blocks.0.norm2": "add", "blocks.1.norm1": "add",
                 "blocks.1.norm2": "read by torch layer_norm"}),
    "encoder-norm-first": ({f"encoder.layers.{i}.norm{j}" for i in (0, 1) for j in (1, 2)},
                           {"encoder.layers.0.activation", "encoder.layers.1.activation"}, {}),
    "encoder-post-ln": (set(), {"encoder.layers.0.activation", "encoder.layers.1.activation"},
                        {f"encoder.layers.{i}.norm{j}": "add" if (i, j) != (1, 2) else "model's output"
                         for i in (0, 1) for j in (1, 2)}),
    "opt": ({f"decoder.layers.{i}.{n}" for i in (0, 1) for n in ("self_attn_layer_norm", "final_layer_norm")},
            {"decoder.layers.0.activation_fn", "decoder.layers.1.activation_fn"},
            {"decoder.final_layer_norm": "model's output"}),
}
MODELS = tuple(EXPECTED)


def mapped_grads(converted: dict, original: nn.Module, report) -> dict:
    """The converted model's gradients mapped to the original parameters (approxbp.conversion.fold's docstring);
    an nn.MultiheadAttention reader's linear map is its in_proj."""
    params, mapped = dict(original.named_parameters()), dict(converted)
    for change in report.changes:
        if not change.readers:
            continue
        gamma, beta = params[f"{change.name}.weight"].detach(), params.get(f"{change.name}.bias")
        dgamma, dbeta = torch.zeros_like(gamma), None if beta is None else torch.zeros_like(beta)
        for reader in change.readers:
            prefix = f"{reader}.in_proj_" if f"{reader}.in_proj_weight" in params else f"{reader}."
            weight, dweight = params[prefix + "weight"].detach(), converted[prefix + "weight"]
            mapped[prefix + "weight"] = dweight * gamma
            dgamma += (dweight * weight).sum(0)
            if beta is not None:
                mapped[prefix + "weight"] += torch.outer(converted[prefix + "bias"], beta.detach())
                dbeta += weight.T @ converted[prefix + "bias"]
        mapped[f"{change.name}.weight"] = dgamma
        if beta is not None:
            mapped[f"{change.name}.bias"] = dbeta
    return mapped


@pytest.mark.parametrize("name", MODELS)
def test_generic_conversion_is_exact_saves_memory_and_reverts(name):
    model, inputs = build(name)
    original, state = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    report = convert(model, example_inputs=inputs)
    folded, activations, left = EXPECTED[name]
    assert {c.name for c in report.changes if c.kind == "folded-norm"} == folded
    assert set(report.activations) == activations
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons.keys() == left.keys()
    assert all(words in reasons[n] for n, words in left.items()), reasons
    assert relative_diff(output(model, inputs), output(original, inputs)) <= FORWARD_TOL
    with torch.no_grad():  # torch's inference fast paths (TransformerEncoderLayer, MultiheadAttention) too
        assert relative_diff(output(model, inputs), output(original, inputs)) <= FORWARD_TOL
    assert saved_bytes(model, inputs) <= 0.9 * saved_bytes(original, inputs)

    reference = with_reference_activations(original, model, report.activations)
    loss(model, inputs).backward()
    loss(reference, inputs).backward()
    assert max_relative_diff(mapped_grads(grads(model), original, report), grads(reference)) <= GRAD_TOL

    revert(model)
    assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()]
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


@pytest.mark.parametrize("name", ["pre-ln", "pre-rmsnorm", "encoder-norm-first", "opt"])
def test_gradients_with_ms_bp_alone_are_the_originals(name):
    model, inputs = build(name)
    original = copy.deepcopy(model)
    report = convert(model, approx=None, example_inputs=inputs)
    assert {c.kind for c in report.changes} == {"folded-norm"}
    loss(model, inputs).backward()
    loss(original, inputs).backward()
    assert max_relative_diff(mapped_grads(grads(model), original, report), grads(original)) <= GRAD_TOL


@pytest.mark.parametrize("name,targets", [("pre-ln", ["fc1", "fc2"]), ("opt", ["q_proj", "v_proj", "fc1"])])
def test_peft_lora_readers_are_folded(name, targets):
    model, inputs = build(name)
    model = with_lora(model, targets, dropout=0.1)
    original, state = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    report = convert(model, example_inputs=inputs)
    assert sum(r.endswith(".fc1") for c in report.changes for r in c.readers) == 2
    assert relative_diff(output(model, inputs), output(original, inputs)) <= FORWARD_TOL
    revert(model)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


def test_peft_lora_on_multihead_attention_is_left():
    """peft's LoRA wrapper of an nn.MultiheadAttention merges its delta into in_proj for each forward (changing the
    base weights by rounding, converted or not): the norm it reads is left."""
    model, inputs = build("pre-ln")
    model = with_lora(model, ["attn"])
    report = convert(model, example_inputs=inputs)
    wrapped = [s.name for s in report.skipped if "is the base layer of base_model.model.blocks" in s.reason]
    assert wrapped == ["base_model.model.blocks.0.norm1", "base_model.model.blocks.1.norm1"]


class Reuse(nn.Module):
    """Norm outputs read by something else too: a residual add, a dropout, a second norm, a shared linear, a tied
    weight, a view; one norm never called, one whose output is cached; an in-place activation.  One clean norm."""

    def __init__(self):
        super().__init__()
        self.norms = nn.ModuleDict({k: nn.LayerNorm(WIDTH) for k in ("residual", "dropout", "norm", "shared", "tied",
                                                                     "view", "unused", "kept", "clean")})
        self.fc, self.shared, self.tied, self.clean = (nn.Linear(WIDTH, WIDTH) for _ in range(4))
        self.embed = nn.Embedding(WIDTH, WIDTH)
        self.tied.weight = self.embed.weight
        self.drop, self.after = nn.Dropout(0.1), nn.LayerNorm(WIDTH)
        self.inplace = nn.SiLU(inplace=True)
        self.cache = []

    def forward(self, x):
        n = self.norms
        h = n["residual"](x)
        x = x + h + self.fc(h)
        x = x + self.fc(self.drop(n["dropout"](x)))
        x = x + self.after(n["norm"](x))
        x = self.shared(n["shared"](x)) + self.shared(x)
        x = x + self.tied(n["tied"](x))
        x = x + self.fc(n["view"](x).reshape(-1, WIDTH)).reshape(x.shape)
        self.cache = [n["kept"](x)]
        x = x + self.clean(n["clean"](x))
        return self.inplace(self.fc(x)), self.fc(self.cache[0])


def test_what_cannot_be_shown_safe_is_left_with_the_reason():
    torch.manual_seed(0)
    model, x = Reuse().eval(), torch.randn(2, 6, WIDTH)
    report = convert(model, example_inputs=(x,))
    reasons = {s.name: s.reason for s in report.skipped}
    expected = {"norms.residual": "read by torch add", "norms.dropout": "read by torch dropout",
                "norms.norm": "read by torch layer_norm", "norms.shared": "also reads other inputs",
                "norms.tied": "shares (ties) parameters", "norms.view": "read by torch reshape",
                "norms.unused": "not called", "norms.kept": "kept after the forward",
                "inplace": "in-place"}
    assert all(words in reasons[n] for n, words in expected.items()), reasons
    assert [c.name for c in report.changes] == ["norms.clean"]


def test_attention_read_other_than_query_key_value_is_left():
    class CrossAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.attn = nn.LayerNorm(WIDTH), nn.MultiheadAttention(WIDTH, 2, batch_first=True)

        def forward(self, x, memory):
            return self.attn(self.norm(x), memory, memory, need_weights=False)[0]

    model, inputs = CrossAttention().eval(), (torch.randn(2, 6, WIDTH), torch.randn(2, 4, WIDTH))
    with pytest.raises(ValueError, match="query = key = value"):  # UnsupportedModelError: nothing converted
        convert(model, example_inputs=inputs)


def test_the_recorded_forward_leaves_no_trace():
    """Training flags, buffers (BatchNorm running stats, updated in train mode) and the RNG stream are restored."""
    model = nn.Sequential(nn.BatchNorm1d(6), nn.LayerNorm(WIDTH), nn.Linear(WIDTH, WIDTH), nn.Dropout(0.5)).eval()
    buffers, x = copy.deepcopy(dict(model.named_buffers())), torch.randn(2, 6, WIDTH)
    torch.manual_seed(1)
    expected_draw = torch.rand(3)
    torch.manual_seed(1)
    convert(model, approx=None, example_inputs=x)
    assert torch.equal(torch.rand(3), expected_draw)
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())


def test_rules_take_precedence_and_inputs_are_checked():
    import transformers as T

    torch.manual_seed(0)
    config = T.ViTConfig(image_size=8, patch_size=4, num_labels=3, hidden_size=WIDTH, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)
    inputs = {"pixel_values": torch.randn(1, 3, 8, 8)}
    by_rules = convert(T.ViTForImageClassification(config).eval())
    both = convert(T.ViTForImageClassification(config).eval(), example_inputs=inputs)
    assert both.changes == by_rules.changes
    assert [s.name for s in both.skipped] == [s.name for s in by_rules.skipped]
    with pytest.raises(TypeError, match="example_inputs must be"):
        convert(Transformer().eval(), example_inputs="x")
    with pytest.raises(RuntimeError, match="forward on example_inputs failed in train mode"):
        convert(Transformer().eval(), example_inputs=(torch.randn(2, 6, WIDTH + 1),))


@pytest.mark.parametrize("qualified", sorted(QUALIFIED_ACTIVATIONS))
def test_listed_activation_classes_compute_their_targets(qualified):
    import importlib

    module, _, name = qualified.rpartition(".")
    activation = getattr(importlib.import_module(module), name)()
    x = torch.linspace(-8, 8, 4001)
    assert relative_diff(ApproxAct(QUALIFIED_ACTIVATIONS[qualified])(x), activation(x)) <= 1e-6
