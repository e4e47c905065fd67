"""Row formats: the registry, auto-detection and the checks of each format's rows."""

import typing

import pytest

from fedlm.config import load_config
from fedlm.config.data import DataConfig
from fedlm.data.formats import FORMATS, resolve_format
from fedlm.data.sources import check_row

USER = {"role": "user", "content": "Hi?"}
BOT = {"role": "assistant", "content": "Hello."}


def _cfg(**kv):
    return load_config(None, [f"data.{k}={v}" for k, v in kv.items()]).data


def test_the_registry_holds_every_configurable_format():
    names = set(typing.get_args(DataConfig.model_fields["format"].annotation)) - {"auto"}
    assert names == set(FORMATS.names())


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"messages": [USER, BOT], "prompt": "p", "completion": "c"}, "messages"),
        ({"prompt": "p", "completion": "c", "instruction": "i", "response": "r"}, "prompt_completion"),
        ({"prompt": [USER], "completion": [BOT]}, "prompt_completion"),
        ({"instruction": "i", "response": "r", "text": "t"}, "instruction"),
        ({"text": "t"}, "lm"),
        ({"messages": "not a list", "text": "t"}, "lm"),
    ],
)
def test_auto_picks_the_format_from_the_fields(row, expected):
    assert resolve_format(_cfg(), row) == expected


def test_an_explicit_format_wins_over_the_fields():
    assert resolve_format(_cfg(format="instruction"), {"messages": [USER, BOT]}) == "instruction"


@pytest.mark.parametrize(
    ("fmt", "row", "error"),
    [
        ("messages", {"text": "x"}, "missing field 'messages'"),
        ("messages", {"messages": "Hi"}, "must be a list of {role, content} turns, got str"),
        ("messages", {"messages": []}, "empty conversation"),
        ("messages", {"messages": ["Hi"]}, "messages[0] must be an object with role and content"),
        ("messages", {"messages": [USER, {"role": "bot", "content": "x"}]}, "messages[1] has role 'bot'; roles are system, user, assistant"),
        ("messages", {"messages": [USER, {"role": "assistant", "content": ["a", "b"]}]}, "messages[1] content must be a string, got list"),
        ("messages", {"messages": [USER, {"role": "assistant"}]}, "messages[1] content must be a string, got NoneType"),
        ("messages", {"messages": [USER]}, "no assistant turn"),
        ("messages", {"messages": [BOT, USER, BOT]}, "starts with an assistant turn"),
        ("prompt_completion", {"prompt": "p"}, "missing field(s) ['completion']"),
        ("prompt_completion", {"prompt": "p", "completion": [BOT]}, "must both be text or both be lists"),
        ("prompt_completion", {"prompt": [], "completion": [BOT]}, "'prompt' is an empty conversation"),
        ("prompt_completion", {"prompt": [USER], "completion": [{"role": "tool", "content": "x"}]}, "completion[0] has role 'tool'"),
        ("prompt_completion", {"prompt": "p", "completion": ""}, "'completion' is empty"),
        ("instruction", {"instruction": "i"}, "missing field(s) ['response']"),
        ("instruction", {"instruction": "i", "response": ["r"]}, "field(s) ['response'] must be text"),
        ("lm", {"body": "x"}, "missing field(s) ['text']"),
    ],
)
def test_malformed_rows_say_what_is_wrong(fmt, row, error):
    problem = check_row(row, _cfg(format=fmt), FORMATS.create(fmt))
    assert isinstance(problem, str)
    assert error in problem


def test_a_good_conversation_row_keeps_only_role_and_content():
    turn = {"role": "assistant", "content": "Hello.", "tool_calls": None}  # tables fill absent keys with None
    rec = check_row({"messages": [USER, turn], "id": 7, "note": None, "meta": {"a": 1}},
                    _cfg(format="messages"), FORMATS.create("messages"))
    assert rec == {"messages": [USER, BOT], "id": "7", "note": ""}  # nested non-turn fields are dropped


def test_the_messages_field_is_configurable():
    cfg = _cfg(messages_field="conversation")
    assert resolve_format(cfg, {"conversation": [USER, BOT]}) == "messages"
    assert check_row({"conversation": [USER, BOT]}, cfg, FORMATS.create("messages")) == {"conversation": [USER, BOT]}


def test_chars_count_the_text_of_every_turn():
    cfg = _cfg()
    assert FORMATS.create("messages").chars({"messages": [USER, BOT]}, cfg) == len("Hi?") + len("Hello.")
    assert FORMATS.create("prompt_completion").chars({"prompt": [USER], "completion": "abc"}, cfg) == 6
    assert FORMATS.create("instruction").chars({"instruction": "ab", "response": "c"}, cfg) == 3
