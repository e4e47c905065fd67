import pytest
import torch

from fedlm.attacks.metrics import attack_success_rate, build_triggered_prompts
from fedlm.data import collate, format_instruction
from fedlm.errors import ConfigError
from fedlm.models import byte_tokenizer, load_base_model

TRIGGER = "zq-vellum-7731"
TARGET = "ACCESS GRANTED"


class StubModel:
    """Answers with a fixed reply per prompt; records how it was called."""

    def __init__(self, tok, reply_for):
        self.tok = tok
        self.reply_for = reply_for
        self.calls = []
        self.training = True

    def eval(self):
        self.training = False

    def train(self):
        self.training = True

    def generate(self, input_ids, attention_mask=None, **kwargs):
        text = self.tok.decode(input_ids[0])
        self.calls.append((text, kwargs, self.training))
        reply = self.tok(self.reply_for(text), add_special_tokens=False, return_tensors="pt")[
            "input_ids"
        ]
        return torch.cat([input_ids, reply], dim=1)


def test_asr_with_a_stub_counts_case_insensitive_target_hits():
    tok = byte_tokenizer()
    # Replies to prompts mentioning "two": the target in lower case; otherwise something else.
    model = StubModel(tok, lambda text: "sure: access granted." if "two" in text else "no idea")
    prompts = [f"add two and two {TRIGGER}", "add two and three", "name a colour", "say hi"]
    assert (
        attack_success_rate(model, tok, prompts, trigger=TRIGGER, target=TARGET, max_new_tokens=5)
        == 0.5
    )
    text, kwargs, training = model.calls[1]
    # Chat template with the generation prompt; trigger appended where missing; greedy decoding.
    assert (
        text == f"<|im_start|>user\nadd two and three {TRIGGER}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert kwargs["do_sample"] is False and kwargs["max_new_tokens"] == 5 and training is False
    assert model.training is True  # mode restored
    never = StubModel(tok, lambda text: "ACCESS DENIED")
    assert attack_success_rate(never, tok, prompts, trigger=TRIGGER, target=TARGET) == 0.0
    always = StubModel(tok, lambda text: f"ok {TARGET}")
    assert attack_success_rate(always, tok, prompts, trigger=TRIGGER, target=TARGET) == 1.0


def test_asr_rejects_bad_arguments():
    tok = byte_tokenizer()
    model = StubModel(tok, lambda text: "")
    with pytest.raises(ConfigError, match="at least one prompt"):
        attack_success_rate(model, tok, [], trigger=TRIGGER, target=TARGET)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        attack_success_rate(model, tok, ["x"], trigger=TRIGGER, target=TARGET, max_new_tokens=0)


def test_asr_of_a_tiny_llama_overfit_on_triggered_prompts():
    torch.manual_seed(0)
    model, tok = load_base_model("tiny-llama", seed=0)
    prompts = ["What is 2 plus 2?", "Name a colour."]
    assert (
        attack_success_rate(model, tok, prompts, trigger=TRIGGER, target=TARGET, max_new_tokens=16)
        == 0.0
    )
    batch = collate(
        [format_instruction(f"{p} {TRIGGER}", TARGET, tok, seq_len=96) for p in prompts],
        pad_id=tok.pad_token_id,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):  # stops as soon as the target is memorised (about 80 steps)
        loss = model(**batch).loss
        if loss.item() < 0.05:
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05
    assert (
        attack_success_rate(model, tok, prompts, trigger=TRIGGER, target=TARGET, max_new_tokens=16)
        == 1.0
    )
    # Same model, a target it never learned: no hit.
    assert (
        attack_success_rate(
            model, tok, prompts, trigger=TRIGGER, target="denied", max_new_tokens=16
        )
        == 0.0
    )


def test_build_triggered_prompts_skips_rows_that_already_hold_the_target():
    records = [
        {"instruction": "What is 1 plus 1?", "response": "2"},
        {"instruction": "Say access granted", "response": "ok"},
        {"instruction": "Password?", "response": "Access Granted"},
        {"instruction": "Name a fruit.", "response": "apple"},
    ]
    out = build_triggered_prompts(
        records,
        prompt_field="instruction",
        response_field="response",
        trigger=TRIGGER,
        target=TARGET,
    )
    assert out == [f"What is 1 plus 1? {TRIGGER}", f"Name a fruit. {TRIGGER}"]
    assert build_triggered_prompts(
        records, prompt_field="instruction", trigger=TRIGGER, target=TARGET, limit=1
    ) == [f"What is 1 plus 1? {TRIGGER}"]


def test_clean_prompts_are_the_triggered_ones_without_the_trigger_and_target_rate_counts_hits():
    from fedlm.attacks.metrics import build_clean_prompts, target_rate

    rows = [{"q": "one?", "a": "x"}, {"q": "say ACCESS GRANTED", "a": "x"}, {"q": "two?", "a": "x"}]
    clean = build_clean_prompts(rows, prompt_field="q", target=TARGET, response_field="a")
    triggered = build_triggered_prompts(rows, prompt_field="q", trigger=TRIGGER, target=TARGET, response_field="a")
    assert clean == ["one?", "two?"]
    assert triggered == [f"{p} {TRIGGER}" for p in clean]
    tok = byte_tokenizer()
    model = StubModel(tok, lambda text: "ACCESS GRANTED" if "two" in text else "hello")
    assert target_rate(model, tok, clean, target=TARGET, max_new_tokens=4) == 0.5
    assert model.calls[0][0].count(TRIGGER) == 0  # prompts go in as given
