"""builders/contract.py: the typed host <-> node contract (no docker)."""

import pytest

from builders.contract import SCHEMA, ContractError, ModelInfo, NodeSpec, ParentInfo, StepResult, Verification


def spec() -> NodeSpec:
    return NodeSpec(key="m.gguf.F16", kind="gguf-convert", backend="gguf", digest="d" * 64, params={"quant": "F16"},
                    model=ModelInfo("m", "tiny:llama", "tiny-1234567", "0" * 64), inputs={"model": "/in/model"},
                    parents={"reference": ParentInfo("m.reference", "r" * 64, "m")}, out="/node/out",
                    work="/node/work", result="/node/result.json")


def test_spec_round_trips_through_json():
    data = spec().to_json()
    assert data["schema"] == SCHEMA and data["parents"]["reference"] == {"key": "m.reference", "digest": "r" * 64,
                                                                        "built_for": "m"}
    assert NodeSpec.from_json(data) == spec()


@pytest.mark.parametrize("change, words", [
    ({"schema": 1}, "schema 1 is not 2"),
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"model": {"name": "m"}}, "missing"),
])
def test_bad_specs_are_one_line_errors(change, words):
    with pytest.raises(ContractError) as e:
        NodeSpec.from_json({**spec().to_json(), **change}, "spec.json")
    assert words in str(e.value) and str(e.value).startswith("spec.json:") and "\n" not in str(e.value)


def test_step_fields_are_typed_and_the_rest_are_named_reports():
    r = StepResult.from_steps("ok", None, {"a": {"status": "ran"}}, ["a"], 12.5, {
        "verification": {"passed": True, "checks": {"top1": 1.0}, "thresholds": {}, "failures": []},
        "tool_versions": {"x": "1"}, "notes": ["n"], "library": {"file": "a.so"}})
    assert r.verification == Verification(True, {"top1": 1.0}, {}, [])
    assert r.reports == {"library": {"file": "a.so"}} and r.tool_versions == {"x": "1"} and r.notes == ["n"]
    assert StepResult.from_json(r.to_json()) == r


def test_verification_json_keeps_the_core_fields_and_drops_unset_ones():
    assert Verification.none().to_json() == {"passed": None, "checks": {}, "thresholds": None, "failures": [],
                                             "note": "this node has no numeric check"}
    with pytest.raises(ContractError, match="must be an object with `passed`"):
        Verification.from_json({"checks": {}})
