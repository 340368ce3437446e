import json

from probcomp.cli import main


def test_demo_json_reports_metrics_against_the_exact_product(tmp_path, capsys):
    png = tmp_path / "demo.png"
    assert main(["demo", "--analytic", "--json", "--samples", "400", "--steps", "60", "--png", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"exact (floor)", "ddpm summed scores", "ddim summed scores", "ddpm oracle score"}
    assert abs(sum(out["true_mode_weights"]) - 1) < 1e-3
    floor, summed, oracle = rows["exact (floor)"], rows["ddpm summed scores"], rows["ddpm oracle score"]
    # summing scores misplaces mass; the oracle score does not
    assert summed["w2"] > 2 * floor["w2"] and summed["mode_tv"] > 0.15
    assert oracle["mode_tv"] < 0.08
    assert summed["nfe"] == 2 * 60 and oracle["nfe"] == 60
    assert png.stat().st_size > 10_000


def test_demo_on_learned_zoo_models(capsys):
    assert main(["demo", "--json", "--samples", "300", "--steps", "50", "--png", ""]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"].startswith("learned ring8 x bar")
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"exact (floor)", "ddpm summed scores", "ddim summed scores"}
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
