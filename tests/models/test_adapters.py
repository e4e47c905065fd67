import pytest
import torch
from peft import PeftModel

from fedlm.config.schema import LoraConfig
from fedlm.errors import ModelError
from fedlm.models import AdaptedModel, detect_target_modules, load_base_model


@pytest.fixture
def adapted():
    base, tok = load_base_model("tiny-llama", seed=0)
    return AdaptedModel(base, tok, LoraConfig(r=4, alpha=8))


def test_auto_targets_are_query_and_value_projections():
    base, _ = load_base_model("tiny-llama")
    assert detect_target_modules(base) == ["q_proj", "v_proj"]


def test_unknown_target_module_is_a_clear_error():
    base, tok = load_base_model("tiny-llama")
    with pytest.raises(ModelError, match="not found"):
        AdaptedModel(base, tok, LoraConfig(target_modules=["nope_proj"]))


def test_only_lora_tensors_are_trainable(adapted):
    names = adapted.names()
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    # 2 layers x {q, v} x {A, B}
    assert len(names) == 8
    assert adapted.shapes()[names[0]][0] == 4


def test_state_round_trip_is_exact(adapted):
    state = {k: torch.randn_like(v) for k, v in adapted.get_state().items()}
    adapted.set_state(state)
    back = adapted.get_state()
    assert all(torch.equal(back[k], state[k]) for k in state)
    back[next(iter(back))].add_(1.0)  # a copy: editing it leaves the model alone
    assert torch.equal(adapted.get_state()[next(iter(back))], state[next(iter(back))])


def test_set_state_rejects_mismatched_names(adapted):
    with pytest.raises(ModelError, match="does not match"):
        adapted.set_state({"x": torch.zeros(1)})


def test_saved_adapter_loads_with_peft_and_gives_the_same_logits(adapted, tmp_path):
    state = {k: 0.05 * torch.randn_like(v) for k, v in adapted.get_state().items()}
    adapted.set_state(state)
    adapted.save(tmp_path / "adapter")
    ids = torch.arange(10).unsqueeze(0)
    expected = adapted.model(input_ids=ids).logits
    fresh, _ = load_base_model("tiny-llama", seed=0)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-6)


def test_full_fine_tuning_trains_every_weight(tmp_path):
    base, tok = load_base_model("tiny-llama")
    full = AdaptedModel(base, tok, LoraConfig(enabled=False))
    assert full.num_trainable() == sum(p.numel() for p in base.parameters())


def test_tiny_preset_is_seeded():
    a, _ = load_base_model("tiny-llama", seed=1)
    b, _ = load_base_model("tiny-llama", seed=1)
    c, _ = load_base_model("tiny-llama", seed=2)
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="cannot load model"):
        load_base_model(str(tmp_path / "missing-dir"))
