"""Gradient errors through real networks against the proven bounds (``approxbp.evidence.grad_error``, quick scale).

Float slack of the rigorous bounds: measured <= bound * (1 + 1e-4) + 1e-6 (both relative to ||G||_F).  Gradients are
float32 (relative rounding about 1e-7 per element), the bounds' norms float64; the forward of the converted model
matches the exact one to rounding, so X and g differ between the runs by about 1e-7 relative."""

from __future__ import annotations

import json
import math

import pytest
import torch

from approxbp.evidence import grad_error
from approxbp.evidence.bounds import piecewise_linear, primitive_objective, spectral_norm
from approxbp.ops.step import step
from approxbp.tables import default_table

RIGOROUS = ("(ii) a-priori", "(ii) a-posteriori", "(iii) input", "(iv) upstream")
LAYERS = {"all-MiniLM-L6-v2": 6, "vit-digits": 4, "llama-bytes": 4}


def holds(row: dict) -> bool:
    return row["measured"] <= row["bound"] * (1 + 1e-4) + 1e-6


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    """The quick study, through the CLI and its JSON file."""
    out = tmp_path_factory.mktemp("grad_error") / "grad_error.json"
    grad_error.main(["--quick", "--out", str(out)])
    return json.loads(out.read_text())


def test_document_has_every_model_table_layer_and_bound(doc):
    assert {"command", "machine", "torch", "models", "rows", "h_vs_htilde"} <= doc.keys()
    assert doc["models"].keys() == LAYERS.keys()
    tables = {s.name for s in grad_error.QUICK_SPECS}
    for model, layers in LAYERS.items():
        for kind in RIGOROUS:
            found = {(r["table"], r["layer"]) for r in doc["rows"] if r["model"] == model and r["bound_kind"] == kind}
            assert found == {(t, layer) for t in tables for layer in range(layers)}, (model, kind)
        assert {h["table"] for h in doc["h_vs_htilde"] if h["model"] == model} == tables
    for r in doc["rows"]:
        assert r["mode"] in ("single-layer", "all-layers") and math.isfinite(r["measured"])
        if r["bound"] is not None:
            assert r["ratio"] == pytest.approx(r["measured"] / r["bound"], rel=1e-5)  # 6 digits in the file


def test_approximation_changes_the_gradients(doc):
    """A conversion that did nothing would satisfy every bound trivially."""
    single = [r["measured"] for r in doc["rows"] if r["mode"] == "single-layer"]
    assert min(single) > 1e-3
    assert all(s["global_relative_error"] > 0.05 for s in doc["summary"])


def test_single_layer_error_is_the_one_predicted_from_the_exact_run(doc):
    """With only layer l approximated, dW1~ - dW1 = (g * (s(z) - h'(z)))^T X exactly: the hooks, the conversion of
    that one layer and the captured quantities agree (to float32 rounding)."""
    rows = [r for r in doc["rows"] if r["bound_kind"] == "(ii) a-priori"]
    assert rows
    for r in rows:
        assert r["measured"] == pytest.approx(r["norms"]["predicted_f"] / r["norms"]["reference_F"], rel=1e-3)


def test_rigorous_bounds_hold_everywhere(doc):
    rows = [r for r in doc["rows"] if r["bound_kind"] in RIGOROUS]
    broken = [(r["model"], r["table"], r["layer"], r["bound_kind"], r["ratio"]) for r in rows if not holds(r)]
    assert rows and not broken


def test_a_posteriori_bound_is_sharper_than_a_priori(doc):
    bounds = {(r["model"], r["table"], r["layer"], r["bound_kind"]): r["bound"] for r in doc["rows"]
              if r["mode"] == "single-layer"}
    pairs = [(v, bounds[(*k[:3], "(ii) a-priori")]) for k, v in bounds.items() if k[3] == "(ii) a-posteriori"]
    assert pairs and all(post <= prior * (1 + 1e-12) for post, prior in pairs)


def test_deliberately_wrong_bounds_are_violated(doc):
    """The same check fails for bound (ii) without its ||X||_2 factor, and with delta replaced by J."""
    rows = [r for r in doc["rows"] if r["bound_kind"] == "(ii) a-priori"]
    without_x = [dict(r, bound=r["norms"]["g_f"] * r["norms"]["delta"] / r["norms"]["reference_F"]) for r in rows]
    j_for_delta = [dict(r, bound=r["norms"]["x_2"] * r["norms"]["g_f"] * r["norms"]["J"] / r["norms"]["reference_F"])
                   for r in rows if r["norms"]["J"] is not None]
    assert j_for_delta
    assert not all(holds(r) for r in without_x)
    assert not all(holds(r) for r in j_for_delta)


def test_h_vs_htilde_distances(doc):
    for h in doc["h_vs_htilde"]:
        assert 0 < h["rel_to_h_network"] < 2 and 0 < h["rel_to_htilde_network"] < 2 and h["sup_gap"] > 0
        if h["kind"] == "primitive":  # the shipped optimum of the paper's J (README: 0.0095069 GELU, 0.0399413 SiLU)
            expected = 0.0399413 if h["model"] == "llama-bytes" else 0.0095069
            assert h["J"] == pytest.approx(expected, abs=1e-6)


def test_piecewise_linear_primitive_of_the_table():
    table = default_table("gelu", 2, "primitive")
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64, requires_grad=True)
    y = piecewise_linear(x, table)
    (slope,) = torch.autograd.grad(y.sum(), x)
    off_knots = (x.detach().unsqueeze(-1) - torch.tensor(table.thresholds, dtype=torch.float64)).abs().min(-1).values
    keep = off_knots > 1e-9
    torch.testing.assert_close(slope[keep], step(x.detach(), table)[keep], rtol=0, atol=1e-12)
    left, right = x < table.thresholds[0], x > table.thresholds[-1]  # relu outside the knots (sum a = 1, sum a c = 0)
    torch.testing.assert_close(y[left].detach(), torch.zeros_like(y[left]), rtol=0, atol=1e-12)
    torch.testing.assert_close(y[right].detach(), x[right].detach(), rtol=0, atol=1e-12)


def test_objective_is_infinite_for_tables_whose_primitive_leaves_relu():
    assert primitive_objective(default_table("gelu", 2, "derivative"), "gelu") is None  # left level -0.046
    assert primitive_objective(default_table("gelu", 1, "primitive"), "gelu") > 0.05


def test_spectral_norm_matches_torch():
    m = torch.randn(70, 9, generator=torch.Generator().manual_seed(0))
    expected = float(torch.linalg.matrix_norm(m.double(), ord=2))
    assert spectral_norm(m) == pytest.approx(expected, rel=1e-12)
    assert spectral_norm(m.T) == pytest.approx(expected, rel=1e-12)


def test_cli_rejects_missing_out_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        grad_error.main(["--quick", "--out", str(tmp_path / "missing" / "x.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --out folder {tmp_path / 'missing'} does not exist\n"

