import json

import pytest

import probcomp as pc
from probcomp.cli import main


def test_demo_json_reports_metrics_against_the_exact_product(tmp_path, capsys):
    png = tmp_path / "demo.png"
    assert main(["demo", "--analytic", "--json", "--samples", "400", "--steps", "60", "--png", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {
        "exact (floor)",
        "ddpm summed scores",
        "ddim summed scores",
        "annealed HMC + AIS",
        "ddpm oracle score",
    }
    assert abs(sum(out["true_mode_weights"]) - 1) < 1e-3
    floor, summed, oracle = rows["exact (floor)"], rows["ddpm summed scores"], rows["ddpm oracle score"]
    # summing scores misplaces mass; the oracle score does not
    assert summed["w2"] > 2 * floor["w2"] and summed["mode_tv"] > 0.15
    assert oracle["mode_tv"] < 0.08
    assert summed["nfe"] == 2 * 60 and oracle["nfe"] == 60
    # the remedy: annealed HMC with importance weights puts the mass on the product's modes
    ours = rows["annealed HMC + AIS"]
    assert ours["mode_tv"] < 0.1 and ours["w2"] < 0.6 * summed["w2"], (ours, summed)
    assert png.stat().st_size > 10_000


def test_demo_on_learned_zoo_models(capsys):
    assert main(["demo", "--json", "--samples", "300", "--steps", "50", "--png", ""]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"].startswith("learned ring8 x bar")
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"exact (floor)", "ddpm summed scores", "ddim summed scores", "annealed HMC + AIS"}
    # only the two ring modes inside the bar carry mass
    assert sum(sorted(out["true_mode_weights"])[-2:]) > 0.999
    assert rows["ddpm summed scores"]["nfe"] == 100


def test_models_list_and_show(capsys):
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"ring8", "bar"} <= set(rows)
    assert rows["ring8"]["w2"] < 2 * rows["ring8"]["w2_floor"]
    assert main(["models", "show", "ring8"]) == 0
    assert json.loads(capsys.readouterr().out)["regenerate"] == "python -m probcomp.models.zoo train ring8"
    assert main(["models", "show", "nope"]) == 2


def test_demo_table_and_bad_input(capsys):
    assert main(["demo", "--analytic", "--samples", "50", "--steps", "5", "--png", ""]) == 0
    assert "ddpm summed scores" in capsys.readouterr().out
    assert main(["demo", "--samples", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probcomp: error:")


SCENE_FILE = """
import torch
import probcomp as pc

def program():
    x = pc.control("x", shape=(2,))
    pc.observe("a", x, factor=pc.factors.Gaussian(torch.tensor([0.5, 0.0]), 0.2))
    pc.observe("b", x, factor=pc.factors.Gaussian(torch.tensor([0.0, 0.5]), 0.3))
"""


def test_run_writes_netcdf_png_and_json(tmp_path, capsys):
    import arviz as az

    f = tmp_path / "scene.py"
    f.write_text(SCENE_FILE)
    nc, png = tmp_path / "r.nc", tmp_path / "r.png"
    argv = ["run", str(f), "--engine", "annealed-hmc", "--samples", "80", "--steps", "6"]
    assert (
        main(
            [*argv, "--steps-per-level", "2", "--chains", "4", "--out", str(nc), "--png", str(png), "--json"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["controls"]["x"]["shape"] == [2] and out["samples"] == 80 and out["nfe_total"] > 0
    idata = az.from_netcdf(nc)
    assert idata.posterior["x"].shape == (4, 20, 2) and "accept" in idata.sample_stats
    assert png.stat().st_size > 5_000
    assert (
        main(["run", str(f), "--engine", "per-step-em", "--samples", "10", "--steps", "4", "--no-progress"])
        == 0
    )
    assert "per-step-em" in capsys.readouterr().out


def test_run_and_bench_refuse_bad_input_in_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('oops')\n")
    good = tmp_path / "scene.py"
    good.write_text(SCENE_FILE)
    cases = [
        (["run", str(tmp_path / "missing.py")], "does not exist"),
        (["run", str(empty)], "defines neither"),
        (["run", str(broken)], "raised ValueError: oops"),
        (["run", str(good), "--engine", "nuts"], "unknown engine"),
        (["run", str(good), "--samples", "10", "--chains", "3"], "multiple of --chains"),
        (["bench", "nope"], "no benchmark 'nope'"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (argv, err)


@pytest.mark.slow
def test_bench_runs_a_benchmark_script():
    assert main(["bench", "mixture_negation", "--quick", "--json"]) == 0


def _scene_file(tmp_path):
    f = tmp_path / "scene.py"
    f.write_text(SCENE_FILE)
    return f


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_output_paths_are_checked_before_the_run(tmp_path, capsys, monkeypatch):
    from probcomp import query

    f = _scene_file(tmp_path)
    monkeypatch.setattr(query, "run_query", lambda *a, **k: pytest.fail("the run must not start"))
    cases = [
        (["--out", str(tmp_path / "r.csv")], "must end in .nc"),
        (["--out", str(tmp_path / "missing" / "r.nc")], "does not exist"),
        (["--out", str(tmp_path)], "must end in"),
        (["--png", str(tmp_path / "r.txt")], "must end in .png"),
        (["--png", str(tmp_path / "nope" / "r.png")], "does not exist"),
    ]
    for extra, msg in cases:
        assert main(["run", str(f), "--samples", "8", *extra]) == 2, extra
        assert msg in _err_line(capsys), extra


def test_a_failed_write_after_the_run_keeps_the_other_outputs(tmp_path, capsys, monkeypatch):
    """The run is done: --png is still written and the JSON summary printed, the failure is one line."""
    f = _scene_file(tmp_path)
    png = tmp_path / "r.png"

    def refuse(self):
        raise OSError("disk full")

    monkeypatch.setattr(pc.Result, "to_arviz", refuse)
    argv = ["run", str(f), "--samples", "16", "--steps", "3", "--steps-per-level", "1", "--json"]
    assert main([*argv, "--out", str(tmp_path / "r.nc"), "--png", str(png)]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["samples"] == 16 and png.stat().st_size > 1000
    err = out.err.strip().splitlines()
    assert len(err) == 1 and "could not write --out" in err[0] and "disk full" in err[0]


def test_ctrl_c_stops_with_one_line_and_exit_code_130(tmp_path, capsys, monkeypatch):
    from probcomp import query

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(query, "run_query", interrupted)
    assert main(["run", str(_scene_file(tmp_path))]) == 130
    assert _err_line(capsys) == "probcomp: interrupted"


def test_usage_errors_and_directories_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run"])
    assert e.value.code == 2 and "(see probcomp run --help)" in _err_line(capsys)
    assert main(["run", str(tmp_path)]) == 2
    assert "is a directory" in _err_line(capsys)
