import math

import pytest
import torch

import probcomp as pc
from probcomp import schedules as sched

ALL = [sched.linear(), sched.cosine(), sched.linear_discrete(), sched.cosine_discrete(200)]


@pytest.mark.parametrize("s", ALL, ids=repr)
def test_abar_monotone_and_in_range(s):
    t = torch.linspace(0, 1, 501, dtype=torch.float64)
    a = s.abar(t)
    assert torch.all(a[1:] <= a[:-1])
    assert torch.all((a > 0) & (a <= 1))
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))


@pytest.mark.parametrize("s", ALL, ids=repr)
def test_log_snr_inverse_round_trip(s):
    t = torch.linspace(0.01, 0.99, 97, dtype=torch.float64)
    back = s.t_of_log_snr(s.log_snr(t))
    torch.testing.assert_close(back, t, atol=1e-9, rtol=0)


def test_continuous_closed_forms():
    lin = sched.linear(0.1, 20.0)
    t = 0.3
    assert float(lin.abar(t)) == pytest.approx(math.exp(-(0.1 * t + 0.5 * 19.9 * t * t)), rel=1e-12)
    cos = sched.cosine()
    f = lambda u: math.cos(0.5 * math.pi * (u + 0.008) / 1.008) ** 2  # noqa: E731
    assert float(cos.abar(t)) == pytest.approx(f(t) / f(0), rel=1e-12)
    assert float(lin.abar(0.0)) == 1.0 and float(cos.sigma(0.0)) == 0.0


def test_discrete_matches_its_table_and_model_time():
    s = sched.linear_discrete(1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    table = torch.cumprod(1 - betas, 0)
    for i in (0, 10, 500, 999):
        assert float(s.abar(i / 999)) == pytest.approx(float(table[i]), rel=1e-10)
        assert float(s.model_time(i / 999)) == pytest.approx(i)


def test_match_equal_snr_across_schedules():
    lin, cos, disc = sched.linear(), sched.cosine(), sched.cosine_discrete(1000)
    for t in (0.1, 0.5, 0.9):
        for other in (cos, disc):
            u = sched.match(t, lin, other)
            assert float(other.log_snr(u)) == pytest.approx(float(lin.log_snr(t)), abs=1e-6)


def test_factors_with_different_schedules_compose_at_equal_snr():
    """A cosine-trained and a linear-trained copy of one Gaussian give the same target."""
    g_lin = pc.factors.Gaussian([0.5, -1.0], 0.7, schedule=sched.linear())
    g_cos = pc.factors.Gaussian([0.5, -1.0], 0.7, schedule=sched.cosine())
    g_disc = pc.factors.Gaussian([0.5, -1.0], 0.7, schedule=sched.linear_discrete())
    x = {"x": torch.randn(16, 2, dtype=torch.float64)}
    grads = []
    for f in (g_lin, g_cos, g_disc):
        sc = pc.Scene()
        sc.observe("y", sc.control("x", 2), factor=f)
        grads.append(pc.CompiledScene(sc, sched.linear()).target(x, 0.4).grad["x"])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(grads[0], grads[2], atol=1e-7, rtol=1e-6)


def test_from_config_round_trip():
    for s in ALL:
        assert sched.from_config(s.config()) == s
    with pytest.raises(pc.ScheduleError, match="unknown schedule kind"):
        sched.from_config({"kind": "nope"})


def test_bad_schedules():
    with pytest.raises(pc.ScheduleError):
        sched.linear(5.0, 1.0)
    with pytest.raises(pc.ScheduleError, match="strictly decreasing"):
        sched.discrete([0.5, 0.9])
    with pytest.raises(pc.ScheduleError):
        sched.time_grid(0)


@pytest.mark.parametrize("schedule", [sched.linear(), sched.cosine()])
def test_log_snr_spacing_takes_equal_steps_in_log_snr(schedule):
    ts = sched.time_grid(12, t_min=1e-3, spacing="log-snr", schedule=schedule)
    assert ts.shape == (13,) and float(ts[0]) == 1.0 and float(ts[-2]) == 1e-3 and float(ts[-1]) == 0.0
    lam = schedule.log_snr(ts[:-1]).to(torch.float64)
    steps = lam.diff()
    assert bool((steps > 0).all()) and torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-6)
    # the uniform grid's last interval is several times the even step in log-SNR
    uni = schedule.log_snr(sched.time_grid(12, t_min=1e-3)[:-1]).diff()
    assert float(uni[-1]) > 3 * float(steps.mean())


def test_bad_spacings_are_refused_by_name():
    with pytest.raises(pc.ScheduleError, match="spacing must be one of"):
        sched.time_grid(10, spacing="geometric")
    with pytest.raises(pc.ScheduleError, match="needs t_min > 0"):
        sched.time_grid(10, t_min=0.0, spacing="log-snr")
    from probcomp.inference import AnnealedMCMC

    with pytest.raises(pc.ScheduleError, match="spacing"):
        AnnealedMCMC(spacing="log")
    assert AnnealedMCMC(levels=5, spacing="log-snr").ts.shape == (6,)
