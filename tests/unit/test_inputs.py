"""Bad input found without data or weights: a YAML key given twice, an empty item in a list, a config file that is not
text or not a file, and which model names are local paths and which go to the hub."""

from __future__ import annotations

import os
import re

import pytest

from peftbench.config.run_config import build_config, load_yaml
from peftbench.errors import ConfigError
from peftbench.model import load

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    "text,message",
    [
        ("epochs: 1\nlora_r: 4\nepochs: 3\n", "gives key 'epochs' twice (lines 1 and 3)"),
        ("lr_grid:\n  lora: [1e-4]\n  ia3: [1e-3]\n  lora: [3e-4]\n", "gives key 'lora' twice (lines 2 and 4)"),
    ],
    ids=["top-level", "nested"],
)
def test_a_yaml_key_given_twice_is_an_error_naming_it(text, message, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_yaml(path)


def test_a_yaml_merge_key_is_not_a_duplicate(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &base {lora: [4], dora: [8]}\nrank_grid:\n  <<: *base\n  lora: [16]\n")
    assert load_yaml(path)["rank_grid"] == {"lora": [16], "dora": [8]}


@pytest.mark.parametrize(
    "flags,file_values,shown",
    [
        ({"--methods": "lora,,ia3"}, {}, "--methods 'lora,,ia3'"),
        ({"--methods": "lora,ia3,"}, {}, "--methods 'lora,ia3,'"),
        ({"--seeds": "0, ,1"}, {}, "--seeds '0, ,1'"),
        ({"--lora-targets": "c_attn,,c_proj"}, {}, "--lora-targets 'c_attn,,c_proj'"),
        ({}, {"methods": ["lora", None, "ia3"]}, "--methods ['lora', None, 'ia3']"),
        ({}, {"lr_grid": {"lora": [1e-4, ""]}}, "--lr-grid [0.0001, '']"),
    ],
)
def test_an_empty_list_item_is_an_error_naming_the_list(flags, file_values, shown):
    with pytest.raises(ConfigError, match=re.escape(f"{shown} has an empty item")):
        build_config(file_values, flags)


def test_a_list_empty_as_a_whole_is_still_named_empty():
    with pytest.raises(ConfigError, match="--methods is empty"):
        build_config({}, {"--methods": " "})


def test_a_config_that_is_not_text_or_not_a_file_is_named(tmp_path):
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"epochs: 1\n\x80\xff")
    with pytest.raises(ConfigError, match=re.escape("c.yaml' is not UTF-8 text (byte 10 is 0x80)")):
        load_yaml(binary)
    with pytest.raises(ConfigError, match="is a directory, not a regular file"):
        load_yaml(tmp_path)
    os.mkfifo(tmp_path / "pipe.yaml")
    with pytest.raises(ConfigError, match="is a named pipe, not a regular file"):
        load_yaml(tmp_path / "pipe.yaml")


@pytest.mark.parametrize("name", ["gpt2", "HuggingFaceTB/SmolLM2-135M"])
def test_hub_ids_go_to_the_hub(name, monkeypatch):
    def hub(*args, **kwargs):
        raise OSError("asked the hub")

    monkeypatch.setattr(load.AutoConfig, "from_pretrained", hub)
    with pytest.raises(ConfigError, match=f"cannot load model '{re.escape(name)}': asked the hub"):
        load.skeleton(name)


@pytest.mark.parametrize("name", ["./absent", "/absent/model", "~/absent", "models/absent/model"])
def test_paths_that_name_nothing_are_missing_local_models(name):
    with pytest.raises(ConfigError, match=f"model '{re.escape(name)}' does not exist"):
        load.skeleton(name)
