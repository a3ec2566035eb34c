"""The segmentation peers of Table 1 (U-HVED, Robust-MSeg, mmFormer, RFNet, GSS): each mechanism computed another way.

Tiny volumes (16^3, a 3-level U-Net of widths 4, 8, 16) for the mechanisms;
the real shared cases (``benchmarks/shared_cases.py``, prepared by ``mckd
prepare seg``) for training, resuming and learning.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from conftest import ROOT, shared_path
from helpers import AtIteration
from mckd.build import build_method, build_model
from mckd.config import config_from_dict, load_raw
from mckd.errors import ConfigError
from mckd.experiment import method_config
from mckd.method import MethodServices
from mckd.method.gss import group_target, support_targets, voxel_keep_mask
from mckd.method.mmformer import SelfAttention
from mckd.method.rfnet import RegionAwareFusion, region_maps
from mckd.method.robust_mseg import GatedFusion, style_kl
from mckd.method.uhved import GaussianProductFusion, gaussian_kl, gaussian_product, hved_kl

pytestmark = [pytest.mark.skipif(__import__("importlib").util.find_spec("monai") is None, reason="needs monai"),
              pytest.mark.usefixtures("one_torch_thread")]

MODALITIES = ("flair", "t1", "t1ce", "t2")
PEERS = ("uhved", "robust_mseg", "mmformer", "rfnet", "gss")
SMALL = {"mmformer": {"embed_dim": 16, "mlp_dim": 32, "heads": 2}}  # the transformers at test size


def make(name: str, crop: int = 16, widths: tuple[int, ...] = (4, 8, 16), **options):
    """A peer's method and model for four 16^3 sequences and the three BraTS regions (as ``mckd train`` builds them)."""
    config = config_from_dict({"task": {"name": "segmentation"}, "data": {"name": "brats", "cache": "-"},
                               "model": {"name": "unet3d", "widths": list(widths)},
                               "method": {"name": name, **SMALL.get(name, {}), **options}})
    method = build_method(config, MODALITIES)
    model = build_model(config, MODALITIES, {m: (1, crop, crop, crop) for m in MODALITIES}, 3, method)
    method.setup(MethodServices(task_loss=lambda p, t: torch.nn.functional.binary_cross_entropy_with_logits(
        p.float(), (t > 0).float().expand_as(p)), total_iterations=10))
    return method, model


def volumes(batch: int = 2, crop: int = 16, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, crop, crop, crop, generator=generator) for _ in MODALITIES]


# --- U-HVED: the product of Gaussians, its sample, the KL -------------------------------------------------------


def product_of_two(mu_a, var_a, mu_b, var_b):
    """The product of two Gaussian densities, normalised: the textbook two-term formula."""
    return (mu_a * var_b + mu_b * var_a) / (var_a + var_b), var_a * var_b / (var_a + var_b)


def test_the_product_of_one_gaussian_and_the_prior_is_mu_over_one_plus_var():
    mu, logvar = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    present = torch.tensor([[False, True, False], [True, False, False]])
    mean, log_var = gaussian_product(mu, logvar, present)
    var = logvar.exp()
    for b, n in ((0, 1), (1, 0)):
        assert torch.allclose(mean[b], mu[b, n] / (1 + var[b, n]), atol=1e-5)
        assert torch.allclose(log_var[b].exp(), var[b, n] / (1 + var[b, n]), atol=1e-5)


def test_the_product_of_all_gaussians_and_the_prior_folds_two_at_a_time():
    mu, logvar = torch.randn(1, 4, 3, 2, dtype=torch.float64), torch.randn(1, 4, 3, 2, dtype=torch.float64)
    mean, log_var = gaussian_product(mu, logvar, torch.ones(1, 4, dtype=torch.bool))
    expected_mu, expected_var = torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64)
    for n in range(4):
        expected_mu, expected_var = product_of_two(expected_mu, expected_var, mu[0, n], logvar[0, n].exp())
    assert torch.allclose(mean[0].double(), expected_mu, rtol=1e-4, atol=1e-6)
    assert torch.allclose(log_var[0].exp().double(), expected_var, rtol=1e-4, atol=1e-6)


def test_the_fusion_samples_the_product_in_training_and_gives_its_mean_in_evaluation():
    fusion = GaussianProductFusion(3, [2])
    features = torch.randn(2, 3, 2, 4, 4, 4)
    present = torch.tensor([[True, False, True], [False, True, False]])
    mean, logvar = gaussian_product(*fusion.moments(features, 0), present)
    fusion.eval()
    assert torch.equal(fusion(features, present, 0), mean)
    fusion.train()
    torch.manual_seed(7)
    sample = fusion(features, present, 0)
    torch.manual_seed(7)
    assert torch.allclose(sample, mean + (0.5 * logvar).exp() * torch.randn_like(mean))


def test_the_gaussian_kl_is_torch_distributions_kl_averaged_over_elements():
    mu1, lv1, mu2, lv2 = (torch.randn(2, 3, 4, dtype=torch.float64) for _ in range(4))
    expected = kl_divergence(Normal(mu1, (0.5 * lv1).exp()), Normal(mu2, (0.5 * lv2).exp())).flatten(1).mean(1)
    assert torch.allclose(gaussian_kl(mu1, lv1, mu2, lv2), expected, rtol=1e-5)


def test_the_hved_kl_averages_over_the_subsets_each_sample_has():
    fusion = GaussianProductFusion(2, [3])
    level = torch.randn(2, 2, 3, 2, 2, 2)
    kept = torch.tensor([[True, False], [True, False]])
    available = torch.tensor([[True, True], [True, False]])  # sample 1 lacks modality 1: only the subset {0}
    mu, logvar = fusion.moments(level, 0)
    expected = []
    for b in range(2):
        subsets = [s for s in ([0], [1], [0, 1]) if all(available[b, n] for n in s)]
        q = gaussian_product(mu[b : b + 1], logvar[b : b + 1], kept[b : b + 1])
        inter, prior = 0.0, 0.0
        for s in subsets:
            mask = torch.tensor([[n in s for n in range(2)]])
            qs = gaussian_product(mu[b : b + 1], logvar[b : b + 1], mask)
            inter += gaussian_kl(*q, *qs)
            prior += gaussian_kl(*qs, torch.zeros_like(qs[0]), torch.zeros_like(qs[1]))
        expected.append(inter / max(len(subsets) - 1, 1) + prior / len(subsets))
    assert torch.allclose(hved_kl(fusion, [level], kept, available), torch.stack(expected).mean(), rtol=1e-5)


# --- Robust-MSeg and RFNet: gates that ignore a missing modality --------------------------------------------------


def test_a_gated_fusion_ignores_a_missing_modality_and_reads_a_present_one():
    fusion = GatedFusion(3, [4]).eval()
    features = torch.randn(1, 3, 4, 6, 6, 6)
    present = torch.tensor([[True, False, True]])
    changed = features.clone()
    changed[:, 1] = 100 * torch.randn_like(changed[:, 1])
    assert torch.equal(fusion(features, present, 0), fusion(changed, present, 0))
    changed[:, 2] += 1.0
    assert not torch.allclose(fusion(features, present, 0), fusion(changed, present, 0))
    zeroed, gates = fusion.gate_maps(features, present, 0)
    expected = fusion.mix[0]((zeroed * gates.unsqueeze(2)).flatten(1, 2))
    assert torch.equal(zeroed[:, 1], torch.zeros_like(zeroed[:, 1])) and torch.allclose(fusion(features, present, 0), expected)


def test_a_region_aware_fusion_weighs_region_averages_and_ignores_a_missing_modality():
    torch.manual_seed(0)
    fusion = RegionAwareFusion(3, 4, 2).eval()
    features = torch.randn(2, 3, 4, 5, 5, 5)
    features[0, 2] = 0.0  # sample 0 lacks modality 2 (the decoder zeroes it)
    maps = torch.rand(2, 2, 5, 5, 5)
    weights = fusion.modality_weights(features, maps)
    for b, k in itertools.product(range(2), range(2)):  # the network's input: mean(f * map) / mean(map) per channel
        size = maps[b, k].mean() + 1e-7
        average = torch.stack([(features[b, n] * maps[b, k]).mean(dim=(1, 2, 3)) for n in range(3)]).flatten() / size
        expected = torch.sigmoid(fusion.weights[k](torch.cat([average, size.reshape(1)])))
        assert torch.allclose(weights[b, k], expected, atol=1e-5)
    regional = [sum(weights[:, k, n].reshape(2, 1, 1, 1, 1) * features[:, n] * maps[:, k : k + 1] for n in range(3))
                for k in range(2)]
    expected = torch.cat([fusion.regions(torch.cat(regional, dim=1)), fusion.shortcut(features.flatten(1, 2))], dim=1)
    assert torch.allclose(fusion(features, maps), expected, atol=1e-5)


def test_region_maps_are_the_sigmoids_and_the_rest_or_the_softmax():
    logits = torch.randn(2, 3, 4, 4, 4)
    sigmoid = region_maps(logits, "sigmoid")
    assert torch.allclose(sigmoid[:, :3], torch.sigmoid(logits))
    assert torch.allclose(sigmoid[:, 3], 1 - torch.sigmoid(logits).max(dim=1).values)
    assert torch.allclose(region_maps(logits, "softmax").sum(dim=1), torch.ones(2, 4, 4, 4))


# --- mmFormer: attention that never reads a masked token ------------------------------------------------------------


def test_attention_never_reads_a_masked_token():
    torch.manual_seed(0)
    attention = SelfAttention(8, 2, dropout=0.0).eval()
    tokens = torch.randn(1, 6, 8)
    keep = torch.tensor([[True, True, False, True, False, True]])
    out = attention(tokens, keep)
    changed = tokens.clone()
    changed[:, ~keep[0]] = 1000 * torch.randn(2, 8)
    kept = keep[0]
    assert torch.allclose(attention(changed, keep)[:, kept], out[:, kept])
    # another way: attention over the kept tokens alone gives the kept tokens' outputs
    assert torch.allclose(attention(tokens[:, kept]), out[:, kept], atol=1e-6)


def test_mmformer_fused_bottleneck_does_not_depend_on_a_missing_modality():
    method, model = make("mmformer")
    model.eval()
    levels = model.encode(volumes(1), torch.ones(1, 4, dtype=torch.bool))
    present = torch.tensor([[True, False, True, True]])
    fused = model.fusion_module(levels[-1], present, len(levels) - 1)
    changed = levels[-1].clone()
    changed[:, 1] = torch.randn_like(changed[:, 1])
    assert torch.allclose(model.fusion_module(changed, present, len(levels) - 1), fused)


# --- GSS: the group's target ---------------------------------------------------------------------------------------


def test_one_leader_teaches_where_confident_members_veto_elsewhere_and_the_minimum_fills_the_rest():
    # voxels: leader confident; leader not, all others confident; neither
    p = torch.tensor([[[0.9, 0.1, 0.5], [0.2, 0.9, 0.5], [0.3, 0.95, 0.1]]])  # (1, N=3, 3 voxels)
    s = torch.tensor([[[0.6, 0.4, 0.52], [0.45, 0.6, 0.5], [0.47, 0.62, 0.3]]])
    available = torch.ones(1, 3, dtype=torch.bool)
    target = group_target(p, s, available, [0], tp=0.75, tm=0.85, dtp=0.3)
    assert torch.allclose(target, torch.tensor([[0.6, 0.0, 0.3]]))
    # a modality the sample lacks is never read: sample without modality 2, the second voxel no longer vetoed
    target = group_target(p, s, torch.tensor([[True, True, False]]), [0], tp=0.75, tm=0.85, dtp=0.3)
    assert torch.allclose(target, torch.tensor([[0.6, 0.0, 0.5]]))


def test_two_leaders_add_their_maximum_where_both_are_sure_to_the_pulled_maximum_where_either_is():
    p = torch.tensor([[[0.9, 0.9, 0.1], [0.8, 0.1, 0.2], [0.1, 0.1, 0.1]]])  # leaders 0, 1; member 2
    s = torch.tensor([[[0.7, 0.6, 0.4], [0.5, 0.4, 0.45], [0.3, 0.2, 0.35]]])
    target = group_target(p, s, torch.ones(1, 3, dtype=torch.bool), [0, 1], tp=0.75, tm=0.85, dtp=0.3)
    both = 0.7 + (0.7 - 0.3 * (0.7 - 0.5))  # voxel 0: the authors' code adds both terms
    either = 0.6 - 0.3 * (0.6 - 0.4)  # voxel 1: leader 0 confident only
    assert torch.allclose(target, torch.tensor([[both, either, 0.35]]))


def test_support_targets_of_sigmoid_regions_are_normalised_against_their_complement():
    logits = [torch.randn(2, 3, 4, 4, 4) for _ in range(4)]
    available = torch.ones(2, 4, dtype=torch.bool)
    targets = support_targets(logits, available, [[2], [2], [0, 3]], "sigmoid", 8.0, 0.75, 0.85, 0.3)
    pairs = targets.reshape(2, 3, 2, 4, 4, 4)
    assert torch.allclose(pairs.sum(dim=2), torch.ones(2, 3, 4, 4, 4))


def test_the_voxel_mask_drops_int_ratio_draws_with_replacement():
    torch.manual_seed(0)
    keep = voxel_keep_mask((3, 10, 10, 10), 0.2, torch.device("cpu"))
    dropped = (keep == 0).flatten(1).sum(dim=1)
    assert ((dropped > 0) & (dropped <= 200)).all() and set(keep.unique().tolist()) == {0.0, 1.0}


def test_gss_leaders_given_must_name_one_group_per_output_channel():
    with pytest.raises(ConfigError, match="one list of leading modalities per channel"):
        make("gss", leaders=[["t1ce"], ["flair"]])
    with pytest.raises(ConfigError, match="no leader among the data's modalities"):
        make("gss", leaders=[["t1ce"], ["t1ce"], ["adc"]])
    method, _ = make("gss", leaders=[["t1ce", "t9"], ["t1"], ["flair", "t2"]])
    assert method.leader_indices == [[2], [1], [0, 3]]


def test_gss_default_leaders_are_brats_s_where_they_fit_and_everyone_elsewhere():
    method, _ = make("gss")
    assert method.leader_indices == [[2], [2], [0, 3]]
    config = config_from_dict({"task": {"name": "segmentation"}, "data": {"name": "brats", "cache": "-"},
                               "model": {"name": "unet3d", "widths": [4, 8, 16]}, "method": {"name": "gss"}})
    method = build_method(config, ("t2", "adc"))
    with pytest.warns(UserWarning, match="every modality leads"):
        build_model(config, ("t2", "adc"), {m: (1, 16, 16, 16) for m in ("t2", "adc")}, 2, method)
    assert method.leader_indices == [[0, 1], [0, 1]]


def test_robust_mseg_style_kl_is_the_code_s_kl_of_the_adain_parameters():
    mu, sigma = torch.randn(2, 5), torch.rand(2, 5) + 0.1
    expected = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(dim=1)
    assert torch.allclose(style_kl(mu, sigma), expected, atol=1e-5)


# --- every peer: missing inputs never read --------------------------------------------------------------------------


@pytest.mark.parametrize("name", PEERS)
def test_a_peer_never_reads_a_missing_input(name):
    method, model = make(name)
    model.eval()
    inputs = volumes()
    present = torch.tensor([[True, False, True, False], [False, False, False, True]])
    poisoned = [x.clone() for x in inputs]
    for n in range(4):
        poisoned[n][~present[:, n]] = float("nan")
    with torch.no_grad():
        clean, dirty = model(inputs, present).prediction, model(poisoned, present).prediction
    assert torch.isfinite(dirty).all() and torch.allclose(clean, dirty)


@pytest.mark.parametrize("name", PEERS)
def test_a_peer_s_training_step_never_reads_what_the_data_lack(name):
    method, model = make(name)
    inputs = volumes()
    data = torch.tensor([[True, True, True, False], [True, False, True, True]])  # what each sample has
    for n in range(4):
        inputs[n][~data[:, n]] = float("nan")
    batch = {"inputs": inputs, "present": data, "target": (torch.rand(2, 1, 16, 16, 16) > 0.8).to(torch.uint8)}
    method.iterations_done = 9  # past RFNet's fusion start and GSS's self-support start
    step = method.training_step(model, batch, data & torch.tensor([[True, False, True, False], [True, False, False, True]]))
    step.loss.backward()
    assert torch.isfinite(step.loss) and set(step.logged) == set(method.loss_names())
    assert all(torch.isfinite(p.grad).all() for p in [*model.parameters(), *method.parts.parameters()] if p.grad is not None)


def test_auxiliary_kept_reads_only_the_kept_modalities():
    method, model = make("rfnet", auxiliary="kept")
    inputs = volumes()
    kept = torch.tensor([[True, False, True, False], [False, False, True, True]])
    for n in range(4):
        inputs[n][~kept[:, n]] = float("nan")  # the data have them; with auxiliary: kept they are not read
    batch = {"inputs": inputs, "present": torch.ones(2, 4, dtype=torch.bool), "target": torch.zeros(2, 1, 16, 16, 16)}
    assert torch.isfinite(method.training_step(model, batch, kept).loss)


def test_the_published_optimizer_is_the_authors_adam_over_the_model_and_the_parts():
    method, model = make("mmformer")
    default = lambda params: __import__("mckd.method.base", fromlist=["Optimization"]).Optimization(  # noqa: E731
        "model", torch.optim.SGD(list(params), lr=0.1), schedule=lambda k: 0.5)
    (optimization,) = method.configure_optimizers(model, default)
    group = optimization.optimizer.param_groups[0]
    assert isinstance(optimization.optimizer, torch.optim.Adam) and (group["lr"], group["weight_decay"], group["amsgrad"]) == (2e-4, 1e-4, True)
    assert optimization.schedule(3) == 0.5  # the config's schedule
    assert len(group["params"]) == len([*model.parameters(), *method.parts.parameters()])


# --- on the real cases: a trained run resumes bit-exact, and predicts -----------------------------------------------


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """The five shared patients (benchmarks/shared_cases.py) prepared by ``mckd prepare seg``, once per module."""
    data = shared_path()
    root = tmp_path_factory.mktemp("peers")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shared_cases.py"), str(root / "cases"), "--data",
                    str(data)], check=True, capture_output=True, env=env)
    subprocess.run([sys.executable, "-m", "mckd.cli", "prepare", "seg", str(root / "cases"), str(root / "cache"),
                    "--allow-missing", "--workers", "2"], check=True, capture_output=True, env=env)
    return root


def tiny_run(name: str, cache: Path, *overrides: str):
    return config_from_dict(method_config(load_raw(ROOT / "configs" / "table1_cpu.yaml"), name, [
        f"data.cache={cache}", "data.train_cases=[Brats18_2013_21_1,brats_2013_pat0005_1]",
        "data.val_cases=[brats_2013_pat0003_1]", "data.test_cases=[BraTS2021_00006]", "data.crop=[16,16,16]",
        "data.downsample=4", "model.widths=[4,8,16]", "train.iterations=8", "train.log_every=2",
        "train.progress=false", "train.deterministic=true", *(f"method.{k}={v}" for k, v in SMALL.get(name, {}).items()),
        *overrides]))


@pytest.mark.parametrize("name", ["uhved", "gss"])
def test_a_stopped_peer_resumes_bit_exact(shared_cache, tmp_path, name):
    from mckd.checkpoint import load_checkpoint
    from mckd.rundir import RunDir
    from mckd.train import TrainingInterrupted, train

    config = tiny_run(name, shared_cache / "cache", "method.support_start=0.5" if name == "gss" else "seed=0")
    train(config, tmp_path / "straight")
    with pytest.raises(TrainingInterrupted):
        train(config, tmp_path / "stopped", callbacks=[AtIteration(3, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    train(config, tmp_path / "stopped", resume=True)
    a, _ = load_checkpoint(RunDir(tmp_path / "straight").checkpoint)
    b, _ = load_checkpoint(RunDir(tmp_path / "stopped").checkpoint)
    assert sorted(a) == sorted(b) and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert any(k.startswith("parts.") for k in a)  # the method's own modules are in the checkpoint


def test_the_loop_tells_a_method_the_run_s_iterations(shared_cache, tmp_path):
    from mckd.train import train

    experiment = train(tiny_run("rfnet", shared_cache / "cache", "train.iterations=3"), tmp_path / "run")
    assert experiment.method.services.total_iterations == 3 and experiment.method.iterations_done == 3


# --- the Table 1 command and the cost script ---------------------------------------------------------------------


def test_table1_writes_every_subset_row_and_mckd_s_paired_test_from_the_runs(tmp_path):
    from scipy import stats

    subsets = ["+".join(s) for k in range(1, 5) for s in itertools.combinations(MODALITIES, k)]
    generator = torch.Generator().manual_seed(0)
    dice = {m: torch.rand(len(subsets), 3, generator=generator).tolist() for m in ("mckd", "uhved", "gss")}
    for method, values in dice.items():
        run = tmp_path / "fold_1" / method / "seed_0"
        (run / "eval").mkdir(parents=True)
        (run / "data.json").write_text('{"modalities": ["flair", "t1", "t1ce", "t2"]}')
        lines = ["subset,size,samples,dice_mean,dice_et,dice_tc,dice_wt,hd95_et,hd95_tc,hd95_wt"]
        lines += [f"{s},{s.count('+') + 1},1,0,{v[0]},{v[1]},{v[2]},{10 * v[0]},{10 * v[1]},{10 * v[2]}"
                  for s, v in zip(subsets, values)]
        (run / "eval" / "subsets.csv").write_text("\n".join(lines) + "\n")
    split = tmp_path / "split.yaml"
    split.write_text("folds:\n  - {name: '1', train: [a], val: [b], test: [c]}\n")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table1.py"), "configs/table1_cpu.yaml", "--out",
                           str(tmp_path), "--split", str(split), "--methods", "mckd", "uhved", "gss", "--tables-only"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "table1.md").read_text()
    et = text.split("## Dice (%), ET")[1].split("##")[0]
    assert sum(line.startswith("| ●") or line.startswith("| ○") for line in et.splitlines()) == 15
    a, b = [v[0] for v in dice["mckd"]], [v[0] for v in dice["gss"]]
    p = stats.ttest_rel(a, b, alternative="greater").pvalue
    p_row = next(line for line in et.splitlines() if line.startswith("| p ("))
    assert p_row.rstrip(" |").endswith(f"{p:.2g}")
    assert f"**{100 * sum(a) / 15:.2f}**" in et and "63.74 / 79.15 / 86.90" in text


def test_table1_names_the_signal_that_killed_a_benchmark_which_leaves_no_message():
    import importlib.util

    spec = importlib.util.spec_from_file_location("table1", ROOT / "benchmarks" / "table1.py")
    table1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table1)
    killed = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert killed.returncode == -signal.SIGKILL
    assert "SIGKILL" in table1.exit_cause(killed.returncode) and "dmesg" in table1.exit_cause(killed.returncode)
    failed = subprocess.run([sys.executable, "-c", "raise SystemExit(2)"])
    assert table1.exit_cause(failed.returncode).startswith("exit status 2")


def test_table1_runs_every_method_on_a_fold_of_the_shared_cases(shared_cache, tmp_path):
    split = tmp_path / "split.yaml"
    split.write_text("folds:\n  - name: '1'\n    train: [brats_2013_pat0003_1, Brats18_2013_21_1]\n"
                     "    val: [brats_2013_pat0005_1]\n    test: [BraTS2021_00006]\n")
    overrides = [f"data.cache={shared_cache / 'cache'}", "data.crop=[16,16,16]", "data.downsample=4",
                 "model.widths=[4,8,16]", "train.iterations=4", "train.progress=false", "method.meta=false",
                 "method.embed_dim=16", "method.mlp_dim=32", "method.heads=2", "task.overlap=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table1.py"), str(ROOT / "configs" / "table1_cpu.yaml"),
                           "--out", str(tmp_path / "out"), "--split", str(split), "--methods", "baseline", "mmformer",
                           "--set", *overrides], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    wt = (tmp_path / "out" / "table1.md").read_text().split("## Dice (%), WT")[1].split("##")[0]
    rows = [line for line in wt.splitlines() if line.startswith("| ●") or line.startswith("| ○")]
    assert len(rows) == 15 and all("–" not in row for row in rows)  # the test case has all four sequences


def test_the_cost_script_times_each_method_in_a_process_of_its_own(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seg_method_cost.py"), "--methods", "baseline", "uhved",
                           "--crop", "16", "16", "16", "--set", "model.widths=[4,8,16]", "--iterations", "1",
                           "--warmup", "1", "--json", str(tmp_path / "cost.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    import json

    results = json.loads((tmp_path / "cost.json").read_text())
    assert [r["method"] for r in results] == ["baseline", "uhved"]
    assert all(r["s_per_iteration"] > 0 and r["peak_gib"] > 0 for r in results)
    assert results[1]["training_only_parameters"] > 0  # U-HVED's reconstruction decoders


def test_gpu_check_methods_dispatches_to_the_cost_script_and_asks_for_a_gpu():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--methods", "--help"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "--crop-of" in done.stdout and "every method of Table 1" in done.stdout
    if not torch.cuda.is_available():
        done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--methods"], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=120)
        assert done.returncode == 2 and "no CUDA device" in done.stderr


# --- each peer learns: every region predicted on a training case ---------------------------------------------------

LEARNING = ["data.crop=[24,24,24]", "data.downsample=2", "model.widths=[4,8,16]", "data.foreground_prob=1.0",
            "train.lr=0.01"]  # 80 iterations: about 1.5 min for RFNet on one busy core, longer for the others
CHEAP = {"rfnet"}  # the others run with MCKD_LEARNING_TESTS=all (benchmarks/seg_learning.py reports every method)
# Measured with benchmarks/seg_learning.py (5 Dec 2026): at LEARNING and 80 iterations RFNet, GSS and mmFormer
# predict every region; Robust-MSeg predicts no ET at 80 iterations and every region at 160; U-HVED predicts no ET
# at 80 or 160 (untested guess: 4 latent channels at the first level, sampled in training) and every region at
# 80 on configs/table1_cpu.yaml's own network (widths 8..64, 3 mm voxels, 32^3 crops, Adam 3e-3).
SETTINGS = {"robust_mseg": (160, LEARNING), "uhved": (80, [])}  # (iterations, overrides); others (80, LEARNING)


@pytest.mark.parametrize("name", PEERS)
def test_a_peer_learns_every_region_of_a_training_case(shared_cache, tmp_path, name):
    if name not in CHEAP and os.environ.get("MCKD_LEARNING_TESTS") != "all":
        pytest.skip("minutes per method on a CPU: set MCKD_LEARNING_TESTS=all")
    import json

    iterations, overrides = SETTINGS.get(name, (80, LEARNING))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seg_learning.py"), "--cases",
                           str(shared_cache / "cases"), "--cache", str(shared_cache / "cache"), "--methods", name,
                           "--iterations", str(iterations), "--json", str(tmp_path / "learnt.json"), "--set", *overrides],
                          capture_output=True, text=True, env=env, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = json.loads((tmp_path / "learnt.json").read_text())
    assert min(result["dice_et"], result["dice_tc"], result["dice_wt"]) > 0.05, result  # Dice from the label file
