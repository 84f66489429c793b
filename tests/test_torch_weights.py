"""PyTorch state_dicts -> hfcjax linen variables: the same logits as the PyTorch model.

The PyTorch models (benchmarks/torch_resnet.py) follow torchvision's ResNet, RobustBench's (and
pytorch-cifar's) CIFAR ResNet / PreActResNet and RobustBench's WideResNet, with the same tensor
names; random weights and random BatchNorm statistics, evaluated in eval mode.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from benchmarks.torch_resnet import (Basic, Bottleneck, PreActResNet18, ResNet, WideResNet)  # noqa: E402
from hfcjax import evaluate, external, torch_weights  # noqa: E402

FAST_COMPILE = True  # compilation is most of this module's in-process time (conftest._fast_compile)


def randomised(model, seed=0):
    """Random weights (torch's init) and random BatchNorm affine and running statistics."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def same_logits(model, arch, size=32, n=4, relative=None, **options):
    """Converted logits equal torch's: within 1e-4 * max(1, max |logit|), or with `relative`
    within relative * max |logit| (RobustBench parity: 1e-5)."""
    x = np.random.default_rng(1).random((n, size, size, 3), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    module, variables = torch_weights.convert(model.state_dict(), arch, **options)
    got = np.asarray(module.apply(variables, x))
    scale = float(np.abs(expected).max()) if relative else max(1.0, float(np.abs(expected).max()))
    assert np.abs(got - expected).max() <= (relative or 1e-4) * scale, (np.abs(got - expected).max(), scale)
    return module, variables


@pytest.mark.parametrize("arch,block,blocks", [("resnet18", Basic, (2, 2, 2, 2)),
                                               ("resnet50", Bottleneck, (3, 4, 6, 3))])
@pytest.mark.parametrize("imagenet", [True, False])
def test_resnets_torchvision_and_cifar_forms(arch, block, blocks, imagenet):
    # 64 x 64 keeps every stride-2 layer on even sizes, where padding conventions differ.
    same_logits(randomised(ResNet(block, blocks, imagenet)), arch, size=64 if imagenet else 32)


@pytest.mark.parametrize("bn_before_fc", [True, False])
@pytest.mark.parametrize("out_shortcut", [True, False])
def test_preact_resnet18_both_shortcut_conventions(bn_before_fc, out_shortcut):
    same_logits(randomised(PreActResNet18(bn_before_fc, out_shortcut)), "preact_resnet18",
                shortcut_from_input=not out_shortcut)


def test_wide_resnet_28_10():
    module, variables = same_logits(randomised(WideResNet(28, 10)), "wrn28_10", n=2)
    assert (module.n, tuple(module.widths)) == (4, (160, 320, 640))
    assert sum(x.size for x in __import__("jax").tree.leaves(variables["params"])) == 36_479_194


def test_other_widths_and_depths_are_read_off_the_tensors():
    module, _ = same_logits(randomised(WideResNet(16, 2, classes=7)), "wrn")
    assert (module.n, tuple(module.widths), module.num_classes) == (2, (32, 64, 128), 7)


def test_load_reads_a_saved_file_with_wrappers_and_dataparallel_prefix(tmp_path):
    model = randomised(ResNet(Basic, (2, 2, 2, 2), False))
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    module, variables = torch_weights.load(path, "resnet18")
    x = np.random.default_rng(2).random((2, 32, 32, 3), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(module.apply(variables, x), expected, atol=1e-4 * max(1, np.abs(expected).max()))


def test_converted_model_goes_through_the_analysis_with_its_normalisation(tmp_path):
    """A converted model is a (module, variables) pair: the whole report runs, smoothing its stem."""
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    model = randomised(WideResNet(10, 1))
    pair = torch_weights.convert(model.state_dict(), "wrn")
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    x = images.astype(np.float32) / 255
    with torch.no_grad():
        labels = model(torch.from_numpy((x - np.array(mean, np.float32)) / np.array(std, np.float32))
                       .permute(0, 3, 1, 2)).argmax(1).numpy()
    result = evaluate.analyse_model(
        pair, images, labels, tmp_path, preprocess=external.Preprocess(mean, std),
        evaluation=dict(rhos=(0.0, 1.0), batch_size=8, recalibrate_bn="no"), spectra=dict(enabled=False),
        robustness=dict(eps=(0.03,), pgd_steps=2, strong_restarts=1, square_queries=0))
    rows = {r.name: r for r in result["robustness"]}
    assert rows["rho=0"].clean == 1.0  # labels are the torch model's own predictions, normalised the same way
    assert rows["rho=1"].roughness < rows["rho=0"].roughness
    assert (tmp_path / "robustness.md").exists() and (tmp_path / "frequency.md").exists()


@pytest.mark.parametrize("change,message", [
    (lambda sd: sd.pop("layer1.0.bn1.running_var"), "no tensor 'layer1.0.bn1.running_var'"),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(3)), "1 tensors of the state_dict have no place"),
    (lambda sd: sd.__setitem__("layer1.0.conv1.weight", torch.zeros(64, 64, 5, 5)), "needs shape (3, 3, 64, 64)"),
])
def test_a_mismatched_state_dict_is_one_line(change, message):
    sd = dict(ResNet(Basic, (2, 2, 2, 2), False).state_dict())
    change(sd)
    with pytest.raises(ValueError, match=__import__("re").escape(message)) as e:
        torch_weights.convert(sd, "resnet18")
    assert "\n" not in str(e.value)


def test_wrong_architecture_and_unreadable_file_are_one_line(tmp_path):
    sd = ResNet(Basic, (2, 2, 2, 2), False).state_dict()
    with pytest.raises(ValueError, match=r"is the architecture right\? \(it converts as --arch resnet18\)"):
        torch_weights.convert(sd, "resnet50")
    with pytest.raises(ValueError, match="unknown architecture 'vit'"):
        torch_weights.convert(sd, "vit")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"torch.load cannot read it \(UnpicklingError: Unsupported operand") as error:
        torch_weights.load(bad, "resnet18")
    assert "weights_only" not in str(error.value)  # torch's advice names a flag hfcjax has no use for
    with pytest.raises(ValueError, match="no such file"):
        torch_weights.load(tmp_path / "missing.pt", "resnet18")


def test_command_line_reads_a_torch_file(tmp_path, run_cli):
    import json

    model = randomised(WideResNet(10, 1))  # small: the command line compiles the whole grid for it
    torch.save(model.state_dict(), tmp_path / "wrn.pt")
    images = np.random.default_rng(4).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        labels = model(torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2)).argmax(1).numpy()
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    base = ["--data", tmp_path / "data.npz", "--out", tmp_path / "report", "--config.evals.robustness.eps=(0.03,)",
            "--config.evals.robustness.pgd_steps=1", "--config.evals.robustness.strong_restarts=1",
            "--config.evals.robustness.square_queries=0", "--config.evaluation.batch_size=6",
            "--config.evaluation.rhos=(0,)", "--config.evals.spectra.enabled=False",
            "--config.evals.frequency.enabled=False"]  # the report's other sections: the test above
    code, _, err = run_cli(evaluate.main, *base, "--torch_weights", tmp_path / "wrn.pt", "--arch", "wrn")
    assert code == 0, err[-2000:]
    assert json.loads((tmp_path / "report" / "robustness.json").read_text())["rows"][0]["clean"] == 1.0
    for extra, message in (([], "--torch_weights needs --arch"), (["--arch", "resnet50"], "(it converts as --arch wrn)")):
        code, _, err = run_cli(evaluate.main, *base, "--torch_weights", tmp_path / "wrn.pt", *extra)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and len(errors) == 1 and message in errors[0], err[-2000:]


class Pickled:  # a custom class: torch's weights-only loader refuses it, nothing is executed
    pass


def test_a_pickled_object_is_refused_without_torchs_weights_only_advice(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save({"model": Pickled(), "w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"holds pickled Python objects besides tensors .* torch.save\(model.state_"
                                         r"dict\(\), path\)\.$") as error:
        torch_weights.load(path, "resnet18")
    assert "weights_only" not in str(error.value)


@pytest.mark.parametrize("activation, padding", [("swish", 0), ("relu", 0), ("swish", 4)])
def test_deepmind_wide_resnet_gives_robustbenchs_logits(activation, padding):
    """Any depth and width; mean/std buffers stay inside; swish; input padding (a 40x40 map)."""
    from benchmarks.torch_dm import DMWideResNet

    model = randomised(DMWideResNet(classes=10, depth=16, width=2, activation=activation, padding=padding))
    module, _ = same_logits(model, "dm_wrn", relative=1e-5, activation=activation, padding=padding)
    assert (module.depth, module.width, module.activation) == (16, 2, activation)
    assert module.mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_deepmind_preact_resnet18_gives_robustbenchs_logits():
    from benchmarks.torch_dm import DMPreActResNet

    same_logits(randomised(DMPreActResNet(activation="swish")), "dm_preact_resnet18", n=2, relative=1e-5,
                activation="swish")
    with pytest.raises(ValueError, match=r"has \(2, 2, 2, 2\) blocks per stage, not \(3, 4, 6, 3\)"):
        torch_weights.convert(DMPreActResNet().state_dict(), "dm_preact_resnet34")
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        torch_weights.convert(DMPreActResNet().state_dict(), "dm_preact_resnet18", activation="gelu")


def test_robustbench_model_fills_in_the_architecture_runs_autoattack_and_prints_the_leaderboard(tmp_path, run_cli):
    import json

    from benchmarks.torch_dm import DMPreActResNet

    model = randomised(DMPreActResNet(activation="swish"))
    torch.save(model.state_dict(), tmp_path / "r18.pt")
    images = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        labels = model(torch.from_numpy(images.astype(np.float32) / 255).permute(0, 3, 1, 2)).argmax(1).numpy()
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    base = ["--data", tmp_path / "data.npz", "--out", tmp_path / "report", "--torch_weights", tmp_path / "r18.pt",
            "--config.evals.robustness.enabled=False", "--config.evals.spectra.enabled=False",
            "--config.evals.frequency.enabled=False", "--config.evals.checks.enabled=False",
            "--config.evaluation.rhos=(0,)", "--config.evaluation.batch_size=4", "--config.evals.autoattack.version=custom",
            "--config.evals.autoattack.attacks=('apgd-ce',)", "--config.evals.autoattack.apgd_steps=2"]
    code, _, err = run_cli(evaluate.main, *base, "--robustbench_model", "Rebuffi2021Fixing_R18_ddpm")
    assert code == 0, err[-2000:]
    saved = json.loads((tmp_path / "report" / "autoattack.json").read_text())
    assert saved["eps"] == pytest.approx(8 / 255) and saved["norm"] == "linf" and saved["clean_accuracy"] == 1.0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "**RobustBench** Rebuffi2021Fixing_R18_ddpm (linf, eps 0.03137): clean 83.53%, AutoAttack 56.66%" in report
    assert "hfcjax on these 4 images: clean 100.00%" in report
    for extra, message in ((["--robustbench_model", "Nobody2099"], "is not in hfcjax's table"),
                           (["--robustbench_model", "Rebuffi2021Fixing_R18_ddpm", "--mean", "0.5,0.5,0.5"],
                            "DeepMind networks normalise inside"),
                           (["--robustbench_model", "Rebuffi2021Fixing_70_16_cutmix_extra"],
                            "is on the linf and l2 leaderboards: say which with --config.evals.autoattack.norm="),
                           (["--robustbench_model", "Rebuffi2021Fixing_R18_ddpm", "--config.evals.autoattack.norm=l2"],
                            "is on the linf leaderboard, not l2: say which")):
        code, _, err = run_cli(evaluate.main, *base, *extra)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and len(errors) == 1 and message in errors[0], err[-2000:]


def test_the_leaderboard_table_holds_both_threat_models():
    from hfcjax import robustbench

    l2 = robustbench.lookup("Rebuffi2021Fixing_R18_cutmix_ddpm")
    assert (l2.norm, l2.eps, l2.arch, l2.activation, l2.clean, l2.autoattack) == (
        "l2", 0.5, "dm_preact_resnet18", "swish", 90.33, 75.86)
    both = [robustbench.lookup("Rebuffi2021Fixing_70_16_cutmix_extra", norm) for norm in ("linf", "l2")]
    assert [(e.norm, e.autoattack) for e in both] == [("linf", 66.58), ("l2", 82.32)]
    names = [(e.name, e.norm) for e in robustbench.ENTRIES]
    assert len(names) == len(set(names)) and sum(e.norm == "l2" for e in robustbench.ENTRIES) == 7
    assert all(e.arch in torch_weights.ARCHS and e.eps == {"linf": 8 / 255, "l2": 0.5}[e.norm]
               for e in robustbench.ENTRIES)
