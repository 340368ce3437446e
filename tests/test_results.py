import arviz as az
import numpy as np
import torch

import probcomp as pc
from probcomp.inference import ReverseDiffusion


def test_to_arviz_posterior_and_sample_stats():
    sc = pc.Scene()
    x = sc.control("x", (2,))
    z = sc.control("z", (2, 3))
    sc.observe("a", x, factor=pc.factors.Gaussian([0.0, 1.0], 0.5))
    sc.observe("b", z, factor=pc.factors.Gaussian(torch.zeros(2, 3), 1.0))
    res = ReverseDiffusion(steps=20).run(sc, 400, seed=0, num_chains=4)
    assert res["x"].shape == (400, 2) and res["z"].shape == (400, 2, 3)
    idata = res.to_arviz()
    assert isinstance(idata, az.InferenceData)
    post = idata.posterior
    assert post["x"].shape == (4, 100, 2) and post["z"].shape == (4, 100, 2, 3)
    np.testing.assert_array_equal(post["x"].values.reshape(400, 2), res["x"].numpy())
    assert idata.sample_stats["grad_norm"].dims == ("chain", "draw", "level")
    summary = az.summary(idata, var_names=["x"])
    assert len(summary) == 2 and (summary["r_hat"] < 1.05).all()
    ess = az.ess(idata, var_names=["x"])["x"].values
    assert (ess > 200).all()  # independent particles: ESS near the number of draws


def test_result_errors():
    res = pc.Result({"x": torch.zeros(6, 2)}, {"nfe_total": 0})
    try:
        res["y"]
    except pc.SceneError as e:
        assert "'y'" in str(e)
    else:
        raise AssertionError
    try:
        pc.Result({"x": torch.zeros(5, 2)}, {}, num_chains=2)
    except pc.ShapeError as e:
        assert "chains" in str(e)
    else:
        raise AssertionError
