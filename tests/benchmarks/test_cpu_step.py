"""python -m benchmarks.cpu_step: paired rounds, a ratio per converted variant, JSON with the environment."""

import json

from benchmarks import cpu_step


def test_quick_run_writes_paired_ratios(tmp_path):
    out = tmp_path / "step.json"
    assert cpu_step.main(["--quick", "--rounds", "3", "--warmup", "1", "--threads", "1", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["quick"] and document["threads"] == 1 and document["environment"]["device"] == "cpu"
    for name in cpu_step.MODELS:
        result = document["results"][name]
        assert set(result["step_s"]) == {"baseline", "convert", "convert, torch reference"}
        for ratio in result["ratio"].values():
            assert ratio["rounds"] == 3 and ratio["q1"] <= ratio["median"] <= ratio["q3"] and ratio["median"] > 0


def test_the_variants_share_their_initial_weights():
    models, _ = cpu_step.variants("llama", quick=True)
    (base, _), (converted, _), (same, _) = models.values()
    assert converted is same and base is not converted
    assert base.lm_head.weight.equal(converted.lm_head.weight)
