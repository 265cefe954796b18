"""Job layering (flags > GANGRUN_* > gangrun.toml profile > defaults), per engine, and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.errors import SpecError
from launcher.profiles import resolve
from launcher.spec import Entrypoint, NodeRange, parse_nnodes, parse_nproc_per_node

ENTRY = Entrypoint("train", is_module=True)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gangrun.toml"
    path.write_text(text)
    return path


def test_defaults():
    spec, options = resolve(ENTRY, "local", {}, environ={"GANGRUN_CONFIG": "/nonexistent/gangrun.toml"})
    assert spec.nnodes == NodeRange(1, 1) and spec.nproc_per_node == 1 and spec.job_name == "train"
    assert options.stop_grace_s == 30


def test_precedence_flags_over_env_over_file(tmp_path):
    path = write(tmp_path, """
nproc_per_node = 2
max_restarts = 1
image = "base:1"
[env]
A = "file"
B = "file"
[slurm]
partition = "cpu"
container_runtime = "podman"
[profile.big]
nnodes = "2:4"
image = "big:1"
[profile.big.slurm]
qos = "high"
""")
    environ = {"GANGRUN_MAX_RESTARTS": "5", "GANGRUN_IMAGE": "env:1"}
    spec, slurm = resolve(ENTRY, "slurm", {"image": "flag:1", "env": {"B": "flag"}}, profile="big",
                          profile_file=path, environ=environ)
    assert spec.nnodes == NodeRange(2, 4)
    assert spec.nproc_per_node == 2
    assert spec.max_restarts == 5
    assert spec.image == "flag:1"
    assert spec.env == {"A": "file", "B": "flag"}
    assert slurm.partition == "cpu" and slurm.qos == "high"


def test_profile_from_environment(tmp_path):
    path = write(tmp_path, "[profile.two]\nnproc_per_node = 2\n")
    spec, _ = resolve(ENTRY, "local", {}, environ={"GANGRUN_PROFILE": "two", "GANGRUN_CONFIG": str(path)})
    assert spec.nproc_per_node == 2


@pytest.mark.parametrize("text, field", [
    ("nprocs = 2", "nprocs"),
    ('max_restarts = "many"', "max_restarts"),
    ("[slurm]\npartitoin = 'x'", "slurm.partitoin"),
    ("nnodes = '3:2'", "nnodes"),
    ("nproc_per_node = 0", "nproc_per_node"),
    ("time = '90 minutes'", "time"),
    ("nnodes = ", "gangrun.toml"),
])
def test_bad_profile_names_the_field(tmp_path, text, field):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        resolve(ENTRY, "slurm", {}, profile_file=path, environ={})
    message = str(err.value)
    assert field in message and "\n" not in message


def test_unknown_profile_lists_the_known_ones(tmp_path):
    path = write(tmp_path, "[profile.a]\n[profile.b]\n")
    with pytest.raises(SpecError, match="use one of: a, b"):
        resolve(ENTRY, "local", {}, profile="c", profile_file=path, environ={})


@pytest.mark.parametrize("text", ["0", "3:2", "x", "1:2:3", "-1"])
def test_bad_nnodes(text):
    with pytest.raises(SpecError, match="nnodes"):
        parse_nnodes(text)


def test_nproc_auto_and_numbers():
    assert parse_nproc_per_node("auto") == "auto"
    assert parse_nproc_per_node(" 4 ") == 4
    with pytest.raises(SpecError, match="nproc_per_node"):
        parse_nproc_per_node("0")


@pytest.mark.parametrize("flags, field", [
    ({"gpus_per_node": 2, "nproc_per_node": 4}, "nproc_per_node"),
    ({"rdzv_endpoint": "host"}, "rdzv_endpoint"),
    ({"rdzv_endpoint": "host:70000"}, "rdzv_endpoint"),
    ({"env": {"1BAD": "x"}}, "env"),
    ({"name": "bad name!"}, "name"),
])
def test_validation(flags, field):
    with pytest.raises(SpecError) as err:
        resolve(ENTRY, "local", flags, environ={"GANGRUN_CONFIG": "/nonexistent"})
    assert str(err.value).startswith(field)
