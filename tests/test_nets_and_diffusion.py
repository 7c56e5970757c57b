"""Networks, schedules, the DDIM sampler and the registries."""

from __future__ import annotations

import pytest
import torch

from iddm_cli import choices
from iddm_cli.diffusion.oracle import GaussianOracle
from iddm_cli.diffusion.samplers import SAMPLERS, sample, timesteps
from iddm_cli.diffusion.schedule import PREDICTIONS, SCHEDULES, Diffusion
from iddm_cli.nets import NETWORKS, build_network, count_parameters
from iddm_cli.nets.layers import ACTIVATIONS, EmbProjection
from iddm_cli.train.objectives import LOSSES, LR_FUNCS, OPTIMIZERS


def test_registries_match_the_cli_choices():
    assert tuple(NETWORKS) == choices.NETWORKS
    assert tuple(ACTIVATIONS) == choices.ACTIVATIONS
    assert tuple(SCHEDULES) == choices.NOISE_SCHEDULES
    assert PREDICTIONS == choices.PREDICTIONS
    assert tuple(LOSSES) == choices.LOSSES
    assert tuple(OPTIMIZERS) == choices.OPTIMIZERS
    assert tuple(LR_FUNCS) == choices.LR_FUNCS


@pytest.mark.parametrize("name,expected", [("unet", 23_332_739), ("cspdarkunet", 7_641_955)])
def test_parameter_counts_match_iddm(name, expected):
    model = build_network(name, in_channels=3, out_channels=3, base_channels=64, num_classes=0, act="gelu")
    assert count_parameters(model) == expected
    conditional = build_network(name, in_channels=3, out_channels=3, base_channels=64, num_classes=10, act="gelu")
    assert count_parameters(conditional) == expected + 11 * 256  # 10 classes + the null class


@pytest.mark.parametrize("act", choices.ACTIVATIONS)
def test_every_activation_is_applied(act):
    torch.manual_seed(0)
    model = build_network("unet", in_channels=1, out_channels=1, base_channels=4, num_classes=0, act=act)
    kinds = {type(m) for name, m in model.named_modules() if ".emb.proj" not in name}
    expected = type(ACTIVATIONS[act]())
    assert expected in kinds
    others = {type(ACTIVATIONS[a]()) for a in choices.ACTIVATIONS if a != act} - {expected}
    assert not kinds & others
    # IDDM's time-embedding projections are SiLU -> Linear whatever the activation
    assert {type(m.proj[0]) for m in model.modules() if isinstance(m, EmbProjection)} == {torch.nn.SiLU}


def test_gray_and_rgb_shapes_and_null_class():
    model = build_network("unet", in_channels=1, out_channels=1, base_channels=4, num_classes=3, act="silu")
    x, t = torch.randn(2, 1, 16, 8), torch.tensor([0, 999])
    assert model(x, t, torch.tensor([0, 2])).shape == (2, 1, 16, 8)
    # no label means the learned null class (index 3)
    assert torch.equal(model(x, t), model(x, t, torch.tensor([3, 3])))


@pytest.mark.parametrize("name", choices.NOISE_SCHEDULES)
def test_schedules_are_valid(name):
    d = Diffusion(name, 1000)
    assert d.alpha_bar.shape == (1000,)
    assert torch.all(d.betas > 0) and torch.all(d.betas < 1)
    assert torch.all(d.alpha_bar[1:] < d.alpha_bar[:-1])  # strictly more noise at every step
    assert d.alpha_bar[0] > 0.97 and d.alpha_bar[-1] < 1e-2


def test_q_sample_matches_the_closed_form():
    d = Diffusion("linear", 1000)
    x0, noise, t = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([0, 999])
    out = d.q_sample(x0, t, noise)
    assert torch.allclose(out[:, 0, 0, 0], d.alpha_bar[t].sqrt())


def test_timesteps_spacing():
    d = Diffusion("linear", 20)
    assert timesteps(d, 50) == [float(t) for t in range(19, -1, -1)]  # every step when steps >= T
    grid = timesteps(Diffusion("linear", 1000), 5)
    assert grid[0] == 999 and grid[-1] == 0 and len(grid) == 5
    lams = [float(Diffusion("linear", 1000).lambda_at(t)) for t in grid]
    gaps = [b - a for a, b in zip(lams, lams[1:], strict=False)]
    assert max(gaps) - min(gaps) < 1e-6  # uniform in log-SNR


@pytest.mark.parametrize("schedule", ["cosine", "sqrt"])
def test_one_step_crosses_a_clamped_schedule_tail(schedule):
    # beta is clamped at 0.999 on the last step of these schedules: alpha_bar falls ~1000-fold between 998 and 999
    d = Diffusion(schedule, 1000)
    assert d.t_top == 998 and Diffusion("linear", 1000).t_top == 999
    grid = timesteps(d, 20)
    assert len(grid) == 20 and grid[:2] == [999.0, 998.0] and grid[-1] == 0
    assert sum(998 < t < 999 for t in grid) == 0  # was 4 (cosine), 7 (sqrt)
    assert timesteps(d, 3)[1] < 998 and timesteps(d, 4)[:2] == [999.0, 998.0]  # 3 steps: no move is spent there
    lams = [float(d.lambda_at(t)) for t in grid[1:]]
    gaps = [b - a for a, b in zip(lams, lams[1:], strict=False)]
    assert max(gaps) - min(gaps) < 1e-6  # uniform in log-SNR below the tail


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_recovers_a_gaussian(name, schedule):
    d, mu, s = Diffusion(schedule, 1000), 0.3, 0.2
    noise = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    out = sample(GaussianOracle(d, mu, s), d, noise, None, sampler=name)  # default step count
    assert abs(out.mean().item() - mu) < 0.02
    assert abs(out.std().item() / s - 1) < 0.06, out.std().item()


class PredictingOracle(GaussianOracle):
    """The exact predictor for Gaussian data, answering in v or x0 as a network trained for them would."""

    def __init__(self, diffusion: Diffusion, mu: float, s: float, prediction: str):
        super().__init__(diffusion, mu, s)
        self.prediction = prediction

    def forward(self, x, t, y=None):
        eps = super().forward(x, t, y)
        abar = self.d.abar_at(t).float().view(-1, *([1] * (x.dim() - 1)))
        a, s = abar.sqrt(), (1 - abar).sqrt()
        x0 = (x - s * eps) / a
        return a * eps - s * x0 if self.prediction == "v" else x0


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_recovers_a_gaussian_from_v_and_x0_predictions(name, prediction):
    d, mu, s = Diffusion("linear", 1000, prediction), 0.3, 0.2
    noise = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)  # the stochastic samplers' fresh noise
    out = sample(PredictingOracle(d, mu, s, prediction), d, noise, None, sampler=name)
    torch.manual_seed(0)
    reference = sample(GaussianOracle(d, mu, s), Diffusion("linear", 1000), noise, None, sampler=name)
    assert abs(out.mean().item() - mu) < 0.02 and abs(out.std().item() / s - 1) < 0.06
    assert torch.allclose(out, reference, atol=2e-3)  # the same sampler path as from the noise prediction


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_targets_convert_back_and_min_snr_weights_are_x0_errors(prediction):
    d = Diffusion("cosine", 1000, prediction)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    t = torch.tensor([0, 40, 500, 990])
    x_t = d.q_sample(x0, t, noise)
    target = d.target(x0, t, noise)
    assert torch.allclose(d.to_eps(target, x_t, t.double()), noise, atol=1e-3)
    # an x0 error e moves the target by a t-dependent factor; the weighted target error is min(SNR, 5) |e|^2
    e = 0.01 * torch.randn(x0.shape, generator=g)
    abar = d.alpha_bar[t].double()
    snr = abar / (1 - abar)
    a, s = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
    eps_wrong = (x_t.double() - a * (x0 + e).double()) / s  # the noise that x0 + e implies at x_t
    wrong = {"epsilon": eps_wrong, "x0": (x0 + e).double(), "v": a * eps_wrong - s * (x0 + e).double()}[prediction]
    target_error = (wrong - target.double()).pow(2).flatten(1).sum(1)
    weighted = d.min_snr_weight(t, 5.0).double() * target_error
    assert torch.allclose(weighted, snr.clamp(max=5) * e.double().pow(2).flatten(1).sum(1), rtol=1e-3)


def test_ddim_is_deterministic_and_clips():
    d = Diffusion("cosine", 1000)
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample(GaussianOracle(d, 0.5, 0.0), d, noise, None, sampler="ddim", steps=10)
    assert torch.allclose(a, torch.full_like(a, 0.5), atol=1e-3)
    assert torch.equal(a, sample(GaussianOracle(d, 0.5, 0.0), d, noise, None, sampler="ddim", steps=10))
    # x0 is clipped to the data range: an oracle for 3.0 lands on 1.0, never beyond
    for name in SAMPLERS:
        assert sample(GaussianOracle(d, 3.0, 0.0), d, noise, None, sampler=name, steps=10).max() <= 1.0


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_declared_network_calls_match_the_real_ones(name):
    d = Diffusion("linear", 1000)
    calls = []

    class Counting(GaussianOracle):
        def forward(self, x, t, y=None):
            calls.append(1)
            return super().forward(x, t, y)

    for steps in (1, 2, 7):
        calls.clear()
        sample(Counting(d, 0.0, 0.5), d, torch.zeros(2, 1, 2, 2), None, sampler=name, steps=steps)
        assert len(calls) == SAMPLERS[name].nfe(len(timesteps(d, steps)))


@pytest.mark.parametrize(("name", "expected"), [("adm-xs", 1_772_707), ("adm-s", 6_998_339), ("adm-m", 39_691_139)])
def test_adm_sizes_are_named_and_fix_their_width(name, expected):
    # the size fixes every width: base_channels does not change the network
    for base in (4, 64):
        model = build_network(name, in_channels=3, out_channels=3, base_channels=base, num_classes=0, act="silu")
        assert count_parameters(model) == expected
    conditional = build_network(name, in_channels=3, out_channels=3, num_classes=10, act="silu")
    emb_dim = 4 * model.inc.out_channels
    assert count_parameters(conditional) == expected + 11 * emb_dim  # 10 classes + the null class


def test_adm_shapes_zero_start_null_class_and_low_resolution_attention():
    from iddm_cli.nets.adm import Attention

    torch.manual_seed(0)
    model = build_network("adm-xs", in_channels=1, out_channels=1, num_classes=3, act="silu")
    x, t = torch.randn(2, 1, 32, 16), torch.tensor([0, 999])
    out = model(x, t, torch.tensor([0, 2]))
    assert out.shape == (2, 1, 32, 16)
    assert torch.count_nonzero(out) == 0  # zero-initialised output convolution: the first prediction is 0
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-2:]))
             for m in model.modules() if isinstance(m, Attention)]
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    (model(x, t) - x).square().mean().backward()  # the gradient reaches the zero-initialised convolution
    assert model.out[-1].weight.grad.abs().sum() > 0
    for hook in hooks:
        hook.remove()
    assert seen and all(h <= 32 // 4 and w <= 16 // 4 for h, w in seen)  # attention at 1/4 resolution and below
    with torch.no_grad():
        for p in model.parameters():  # past the zero start, where every residual branch still adds nothing
            p.normal_(0, 0.1)
        assert torch.equal(model(x, t), model(x, t, torch.tensor([3, 3])))  # no label: the learned null class
        assert not torch.equal(model(x, t), model(x, t, torch.tensor([0, 1])))
