"""Bad input to convert / revert / plan_activations / calibrate: one clear error naming what was given and what is
expected, before anything runs (issue 11); NaN pre-activations seen by calibrate are named by layer."""

import warnings

import pytest
import torch
from transformers import BertConfig, BertModel

from approxbp.calibration import calibrate
from approxbp.conversion import convert, plan_activations, revert

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ACTS = [f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(2)]


def tiny() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(**TINY)).eval()


def batches(n: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (2, 8), generator=g)} for _ in range(n)]


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("call", [convert, revert, plan_activations, lambda m: calibrate(m, batches())],
                         ids=["convert", "revert", "plan_activations", "calibrate"])
@pytest.mark.parametrize("given", ["a string", {"input_ids": 0}, None])
def test_a_non_module_model_is_a_type_error_naming_what_was_given(call, given):
    with pytest.raises(TypeError, match=r"torch\.nn\.Module") as error:
        call(given)
    assert type(given).__name__ in one_line(error)


@pytest.mark.parametrize("given,hint", [(torch.zeros(2, 8, dtype=torch.long), r"\[tensor\]"),
                                        ({"input_ids": torch.zeros(2, 8, dtype=torch.long)}, r"\[dict\]")])
def test_calibrate_refuses_a_single_batch_as_batches(given, hint):
    model = tiny()
    with pytest.raises(TypeError, match=hint) as error:
        calibrate(model, given)
    assert "iterable of batches" in one_line(error)
    with pytest.raises(TypeError, match=hint):
        convert(model, calibration_data=given)
    assert not hasattr(model, "_approxbp_conversion")


def test_calibrate_refuses_a_meta_model_up_front():
    with torch.device("meta"):
        model = BertModel(BertConfig(**TINY))
    with pytest.raises(ValueError, match="meta") as error:
        calibrate(model, batches())
    assert "embeddings.word_embeddings.weight" in one_line(error)


def nan_into_activation(model: BertModel, layer: int, fraction: float):
    """Forward hook on ``layer``'s intermediate dense: the first ``fraction`` of each output's elements become NaN."""

    def hook(_module, _args, out):
        out = out.clone()
        out.view(-1)[: round(fraction * out.numel())] = float("nan")
        return out

    return model.encoder.layer[layer].intermediate.dense.register_forward_hook(hook)


def test_an_activation_that_saw_only_nan_is_named():
    model = tiny()
    nan_into_activation(model, 0, 1.0)
    with pytest.raises(ValueError, match=ACTS[0]) as error:
        calibrate(model, batches())
    assert "NaN" in one_line(error) and str(2 * 2 * 8 * 64) in one_line(error)


def test_dropped_nan_are_reported_by_layer_and_count():
    model = tiny()
    nan_into_activation(model, 1, 0.25)  # the last layer: the NaNs reach no other activation
    with pytest.warns(UserWarning, match=rf"{ACTS[1]}: 512 of 2048") as record:  # 2 batches x 2 x 8 x 64, 1/4 NaN
        tables = calibrate(model, batches())
    assert len(record) == 1 and ACTS[0] not in str(record[0].message)
    assert list(tables) == ACTS


def test_clean_calibration_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate(tiny(), batches())
