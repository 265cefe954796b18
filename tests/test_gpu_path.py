"""The GPU path, as far as the CPU can check it: its config keys, FLOPs and MFU, activation checkpointing,
channels_last, the GPU presets, and the GPU bench without a GPU."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import REPO
from train.config import ConfigError, ModelConfig, load_config
from train.data import CachedFakeImages, build_data, use_pinned_memory
from train.distributed import World
from train.flops import (
    Throughput,
    counted_training_flops,
    device_peak_flops,
    non_embedding_params,
    peak_bf16_flops,
    transformer_flops_per_token,
)
from train.loop import build_optimizer, build_run, use_fused
from train.memory import checkpoint_activations, peak_memory_gib
from train.metrics import Metrics
from train.models import TinyGPT, build_model, use_channels_last
from train.precision import set_tf32

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
TINY_GPT = ModelConfig(name="gpt", vocab_size=64, seq_len=32, n_layer=2, n_head=2, d_model=32)


@pytest.mark.parametrize("preset, overrides, key", [
    ("gpt-tiny", ["optim.fused=maybe"], "optim.fused"),
    ("gpt-tiny", ["data.pin_memory=yes"], "data.pin_memory"),
    ("gpt-tiny", ["data.pin_memory=true", "train.device=cpu"], "data.pin_memory"),
    ("gpt-tiny", ["train.tf32=sometimes"], "train.tf32"),
    ("gpt-tiny", ["train.channels_last=true"], "train.channels_last"),
    ("resnet-fake", ["train.channels_last=nhwc"], "train.channels_last"),
    ("digits", ["train.activation_checkpointing=true"], "train.activation_checkpointing"),
    ("gpt-tiny", ["train.activation_checkpointing=1"], "train.activation_checkpointing"),
])
def test_each_new_key_is_refused_in_one_line_naming_it(preset: str, overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(preset, overrides)
    message = str(refused.value)
    assert message.startswith(f"{key}: ") and "\n" not in message, message


def test_the_new_keys_default_to_what_cpu_runs_did_and_take_toml_booleans(tmp_path: Path) -> None:
    cfg = load_config("digits", [])
    assert (cfg.optim.fused, cfg.data.pin_memory, cfg.train.channels_last) == ("auto", "auto", "auto")
    assert cfg.train.tf32 is True and cfg.train.activation_checkpointing is False
    assert cfg.model.tie_embeddings is False
    path = tmp_path / "c.toml"
    path.write_text('[optim]\nfused = false\n[data]\npin_memory = false\n[train]\nchannels_last = true\n')
    cfg = load_config(str(path), [])
    assert (cfg.optim.fused, cfg.data.pin_memory, cfg.train.channels_last) == ("false", "false", "true")
    assert load_config(str(path), []) == load_config(str(path), []).validate()


def test_auto_turns_the_cuda_options_on_only_on_cuda_and_true_on_the_cpu_is_refused_at_run_time() -> None:
    assert [use_fused(c, "adamw", "fsdp") for c in ("auto", "true", "false")] == [True, True, False]
    assert use_fused("auto", "sgd", "ddp") and not use_fused("auto", "sgd", "fsdp")
    assert (use_pinned_memory("auto", CPU), use_pinned_memory("auto", CUDA)) == (False, True)
    with pytest.raises(ConfigError, match=r"^data\.pin_memory: true needs a CUDA device"):
        use_pinned_memory("true", CPU)
    assert use_channels_last("auto", "resnet50", CUDA) and use_channels_last("auto", "cnn", CUDA)
    assert not use_channels_last("auto", "resnet50", CPU) and not use_channels_last("auto", "gpt", CUDA)
    assert use_channels_last("true", "resnet18", CPU) and not use_channels_last("false", "resnet50", CUDA)


def test_the_optimizer_is_fused_unless_turned_off_and_a_cpu_run_keeps_the_tf32_flags() -> None:
    model = nn.Linear(2, 2)
    for name in ("adamw", "sgd"):
        optimizer = build_optimizer(model, load_config("digits", [f"optim.name={name}"]), "ddp")
        assert optimizer.defaults["fused"] is True
        # fused=None, not False, when off: an explicit False would also turn off torch's foreach default on CUDA.
        optimizer = build_optimizer(model, load_config("digits", [f"optim.name={name}", "optim.fused=false"]), "ddp")
        assert optimizer.defaults["fused"] is None and optimizer.defaults["foreach"] is None
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    set_tf32(CPU, not before[0])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_a_cpu_run_is_built_as_before_and_names_what_it_turned_on(tmp_path: Path) -> None:
    world = World(0, 0, 1, CPU)
    tiny = ["data.fake_train_size=64", "data.fake_eval_size=16", f"output_dir={tmp_path}"]
    plain = build_run(load_config("gpt-tiny", tiny), world)
    assert plain.options == ("fused optimizer",) and plain.throughput == Throughput("tokens", 64, None, None)
    assert plain.parts.data.memory_format == torch.preserve_format and not plain.parts.data.loader.pin_memory
    checkpointed = build_run(load_config("gpt-tiny", [*tiny, "train.activation_checkpointing=true"]), world)
    assert checkpointed.options == ("activation checkpointing of 2 blocks", "fused optimizer")
    with pytest.raises(ConfigError, match=r"^data\.pin_memory: true needs a CUDA device and this run trains on cpu"):
        build_run(load_config("gpt-tiny", [*tiny, "data.pin_memory=true"]), world)


def test_gpt2_small_flops_per_token() -> None:
    cfg = load_config("gpt2-small", []).model
    with torch.device("meta"):
        model = TinyGPT(cfg)
    # 12 blocks of 12·768² + 13·768 = 7,087,872 (qkv, proj, MLP weights and biases, two LayerNorms)
    # = 85,054,464; the final LayerNorm 1,536; the head, tied to the token table, 768 · 50,304 =
    # 38,633,472. N = 123,689,472, nanoGPT's non-embedding count; with the position table (786,432)
    # the model has 124,475,904 parameters: GPT-2's 124M.
    assert sum(p.numel() for p in model.parameters()) == 124_475_904
    assert non_embedding_params(model) == 123_689_472
    # 6·N = 742,136,832 plus 12·L·H·Q·T = 12·12·12·64·1024 = 113,246,208: 855,383,040 FLOPs per token,
    # 0.855 GFLOP (nanoGPT's estimate_mfu gives the same for its 50,304-token vocabulary).
    assert transformer_flops_per_token(123_689_472, 12, 12, 64, 1024) == 855_383_040


def test_the_formula_is_what_torch_counts_for_a_training_step() -> None:
    torch.manual_seed(0)
    model = TinyGPT(TINY_GPT)
    batch, t = 3, TINY_GPT.seq_len
    # SDPA's math kernel is plain matmuls, which FlopCounterMode counts (CPU's fused kernel it does not).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, TINY_GPT.vocab_size, (batch, t))).sum().backward()
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert counter.get_total_flops() == transformer_flops_per_token(weights, 2, 2, 16, t) * batch * t
    # N also counts the biases and LayerNorm gains (896 here), as nanoGPT does: 0.1 % of GPT-2 small.
    assert non_embedding_params(model) - weights == 896


def test_a_convnet_is_counted_on_the_meta_device_without_touching_its_statistics() -> None:
    data = build_data(load_config("resnet50", ["data.fake_train_size=2", "data.fake_eval_size=2", "data.image_size=8"]))
    with torch.device("meta"):
        resnet50 = build_model(load_config("resnet50", []).model, data)
    # 4.09 GMACs forward at 224x224, the published figure, so 8.18 GFLOP; x3 with backward.
    assert counted_training_flops(resnet50, (3, 224, 224)) == pytest.approx(24.54e9, rel=1e-3)
    cnn = build_model(load_config("digits", []).model, build_data(load_config("digits", [])))
    before = copy.deepcopy(cnn.state_dict())
    assert counted_training_flops(cnn, (1, 8, 8)) > 0
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989),
    ("NVIDIA H200 NVL", 835), ("NVIDIA GH200 480GB", 989), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100-PCIE-40GB", 312), ("NVIDIA L4", 121), ("NVIDIA L40S", 362), ("NVIDIA B200", 2250),
    ("NVIDIA GB200", 2500), ("NVIDIA RTX A1000", None), ("Tesla V100-SXM2-16GB", None),
])
def test_the_device_table_matches_torchs_device_names(name: str, tflops: float | None) -> None:
    assert peak_bf16_flops(name) == (None if tflops is None else tflops * 1e12)


def test_no_peak_and_no_mfu_on_the_cpu() -> None:
    assert device_peak_flops(CPU) is None
    assert Throughput("tokens", 1024, None, None).window(64, 2.0, 4) == {"tokens_per_s_per_device": 8192.0}
    # 64 sequences of 1024 tokens in 2 s on 4 devices: 8192 tokens/s each; at 0.855 GFLOP a token
    # against 989 TFLOP/s that is 0.708 %.
    window = Throughput("tokens", 1024, 855_383_040, 989e12).window(64, 2.0, 4)
    assert window["mfu"] == pytest.approx(8192 * 855_383_040 / 989e12)


def test_each_logged_row_has_the_rate_per_device_and_the_peak_memory(tmp_path: Path) -> None:
    world = World(0, 0, 1, CPU)
    with Metrics(tmp_path, world, start_step=0, max_steps=2, log_every=2, global_batch=8, tensorboard=False,
                 throughput=Throughput("images", 1, None, None)) as metrics:
        for step in (1, 2):
            metrics.after_step(step, 0, torch.tensor(1.0), torch.tensor(1.0), 1e-3)
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["images_per_s_per_device"] == pytest.approx(row["samples_per_s"]) and "mfu" not in row
    # On the CPU: the process's peak RSS, which holds torch itself.
    assert row["peak_mem_gib"] == peak_memory_gib(CPU) and 0.05 < row["peak_mem_gib"] < 64


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(dropout: float) -> None:
    torch.manual_seed(0)
    plain = TinyGPT(dataclasses.replace(TINY_GPT, dropout=dropout))
    checkpointed = copy.deepcopy(plain)
    assert checkpoint_activations(checkpointed) == 2
    tokens = torch.randint(0, TINY_GPT.vocab_size, (4, TINY_GPT.seq_len + 1))
    losses = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
    assert [name for name, _ in plain.named_parameters()] == [name for name, _ in checkpointed.named_parameters()]
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None and torch.equal(a.grad, b.grad), name


def test_a_resnet_checkpoints_each_residual_block_with_the_same_gradients() -> None:
    data = build_data(load_config("resnet-fake", ["data.fake_train_size=4", "data.fake_eval_size=4"]))
    torch.manual_seed(0)
    plain = build_model(load_config("resnet-fake", []).model, data)
    checkpointed = copy.deepcopy(plain)
    assert checkpoint_activations(checkpointed) == 8
    images = torch.randn(4, 3, 32, 32)
    for model in (plain, checkpointed):
        model(images).square().mean().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None and torch.allclose(a.grad, b.grad, atol=1e-6)
    with pytest.raises(ConfigError, match=r"^train\.activation_checkpointing: SmallCNN has no blocks"):
        checkpoint_activations(build_model(load_config("digits", []).model, build_data(load_config("digits", []))))


def test_channels_last_gives_the_same_outputs() -> None:
    data = build_data(load_config("resnet-fake", ["data.fake_train_size=4", "data.fake_eval_size=4"]))
    torch.manual_seed(0)
    nchw = build_model(load_config("resnet-fake", []).model, data).eval()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32)
    out = nhwc(images.to(memory_format=torch.channels_last))
    assert torch.allclose(nchw(images), out, atol=1e-5, rtol=1e-4)


def test_cached_fake_images_cost_an_index_per_sample() -> None:
    images = CachedFakeImages(1000, 3, 16, 10, seed=0, bank=4)
    x, y = images[5]
    assert len(images) == 1000 and x.shape == (3, 16, 16) and 0 <= int(y) < 10
    assert torch.equal(x, images[1][0]) and x.data_ptr() == images[9][0].data_ptr()
    bundle = build_data(load_config("resnet50", ["data.fake_train_size=8", "data.fake_eval_size=4"]))
    assert (bundle.in_channels, bundle.num_classes, bundle.train[0][0].shape) == (3, 1000, (3, 224, 224))


@pytest.mark.parametrize("preset, world_sizes", [("gpt2-small", "1,2,4,8,16,32"), ("resnet50", "1,2,4,8")])
def test_the_gpu_presets_pass_check_mode_without_importing_torch(preset: str, world_sizes: str) -> None:
    env = {**os.environ, "GANGRUN_CHECK_WORLD_SIZES": world_sizes}
    code = (f"import sys; from train.check import main; code = main(['--config', '{preset}']); "
            "assert 'torch' not in sys.modules, 'check mode imported torch'; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["writes"]["output_dir"] == f"runs/{preset}"
    result = subprocess.run([sys.executable, "-m", "train", "--config", preset], capture_output=True, text=True,
                            env={**env, "GANGRUN_CHECK": "1"}, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_gpu_presets_are_gpt2_small_and_resnet50() -> None:
    gpt = load_config("gpt2-small", [])
    assert (gpt.model.n_layer, gpt.model.n_head, gpt.model.d_model, gpt.model.seq_len, gpt.model.vocab_size) == \
        (12, 12, 768, 1024, 50304)
    assert gpt.model.tie_embeddings and gpt.train.precision == "bf16" and gpt.train.compile
    assert gpt.train.micro_batch_size * gpt.model.seq_len == 16 * 1024
    resnet = load_config("resnet50", [])
    assert (resnet.model.name, resnet.data.dataset, resnet.data.image_size) == ("resnet50", "fake_cached", 224)
    assert resnet.train.precision == "bf16" and resnet.train.channels_last == "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="measures for minutes where there is a GPU")
def test_the_gpu_bench_says_not_run_without_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--json", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [row["name"] for row in rows] == ["GPU: GPT-2 124M tokens/s, ours / plain loop", "GPU: GPT-2 124M MFU",
                                             "GPU: ResNet-50 images/s, ours / plain loop"]
    assert all(row["value"] is None and row["detail"] == "no GPU here" and row["met"] is None for row in rows)
    assert result.stdout.count("not run") == 3


@pytest.mark.parametrize("script, overrides", [
    ("plain_gpt.py", ["model.vocab_size=64", "model.seq_len=16", "model.n_layer=1", "model.n_head=2",
                      "model.d_model=16", "train.global_batch_size=4", "train.micro_batch_size=2"]),
    ("plain_resnet.py", ["data.image_size=32", "model.num_classes=10", "train.global_batch_size=2",
                         "train.micro_batch_size=2"]),
])
def test_the_plain_reference_loops_run(script: str, overrides: list[str]) -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / script), "2", "1", *overrides,
                             "train.compile=false", "train.precision=fp32"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plain ") and float(result.stdout.split()[-1]) > 0
