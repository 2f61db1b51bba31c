"""coreml backend, host side: what keeps the conversion's memory and time bounded by the model.

- the fp16 sweep of the preflight runs lists of similar length as one right-padded batch; its maxima must
  equal those of one pass per list;
- the torch frontend must take each weight as the module's own fp16 tensor: no fp32 copy of a weight in
  the program it builds (coremltools promotes an fp16 weight met by an fp32 activation)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("coremltools")

from builders.backends.coreml import convert, parts, preflight  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    d = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(d)
    return d


def test_length_groups_batch_lists_of_similar_length_only():
    lists = [[1] * n for n in (18, 128, 20, 22, 19, 21, 18)]
    groups = preflight.length_groups(lists)
    assert [[len(t) for t in g] for g in groups] == [[18, 18, 19, 20, 21, 22], [128]]
    for g in groups:
        assert len(g) * max(map(len, g)) <= preflight.PAD_WASTE * sum(map(len, g))
    assert sorted(map(len, (t for g in groups for t in g))) == sorted(map(len, lists))
    assert preflight.length_groups([[1] * 5]) == [[[1] * 5]]


def test_batched_fp16_sweep_equals_one_pass_per_list(model_dir):
    rng = np.random.RandomState(3)
    lists = [list(rng.randint(3, 96, size=n)) for n in (7, 9, 8, 30)]
    batched = preflight.fp16_sweep(model_dir, lists)
    assert len(preflight.length_groups(lists)) == 2  # the three short lists share a pass
    single = {}
    for tokens in lists:  # one list per call: no padding at all
        for name, v in preflight.fp16_sweep(model_dir, [tokens])["per_module"].items():
            single[name] = max(single.get(name, 0.0), v)
    assert batched["per_module"].keys() == single.keys()
    for name, v in single.items():
        assert batched["per_module"][name] == pytest.approx(v, rel=1e-4, abs=1e-4), name
    assert batched["max_abs"] == pytest.approx(max(single.values()), rel=1e-4)


def _frontend_program(module, example, inputs, states=None):
    """The MIL program coremltools' torch frontend builds (no graph passes: the constants as converted)."""
    module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    return ct.convert(traced, inputs=inputs, states=states, convert_to="milinternal",
                      minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT16,
                      pass_pipeline=ct.PassPipeline.EMPTY)


def _weight_consts(prog) -> list:
    out = []
    for fn in prog.functions.values():
        for op in fn.find_ops(op_type="const"):
            v = op.outputs[0].val
            if isinstance(v, np.ndarray) and v.ndim >= 2 and v.size >= 64:
                out.append((op.name, v.dtype))
    return out


def test_the_frontend_keeps_every_weight_fp16_without_copies(model_dir):
    src = convert.Source(model_dir, 16)
    hidden = src.cfg["hidden"]
    chunk = parts.Chunk([src.layer(i) for i in range(2)], src.cfg, src.rope, src.state["model.norm.weight"])
    example = (torch.zeros(1, 4, hidden, dtype=parts.DTYPE), torch.zeros(4, dtype=torch.int32),
               torch.zeros(1, 1, 4, 16, dtype=parts.DTYPE), torch.zeros(1, dtype=torch.int32))
    inputs = [ct.TensorType(name="hidden_states", shape=(1, 4, hidden), dtype=np.float16),
              ct.TensorType(name="position_ids", shape=(4,), dtype=np.int32),
              ct.TensorType(name="causal_mask", shape=(1, 1, 4, 16), dtype=np.float16),
              ct.TensorType(name="current_pos", shape=(1,), dtype=np.int32)]
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=tuple(chunk.kv_cache.shape), dtype=np.float16),
                           name="kv_cache")]
    head = parts.LmHead(src.state["lm_head.weight"], [48, 48], False)
    for prog in (_frontend_program(chunk, example, inputs, states),
                 _frontend_program(head, (torch.zeros(1, 1, hidden, dtype=parts.DTYPE),),
                                   [ct.TensorType(name="hidden_states", shape=(1, 1, hidden), dtype=np.float16)])):
        weights = _weight_consts(prog)
        assert len(weights) >= 2
        assert [w for w in weights if w[1] != np.float16 or w[0].endswith("_promoted")] == []
