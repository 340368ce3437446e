import json

from probcomp.cli import main


def test_demo_json_reports_metrics_against_the_exact_product(tmp_path, capsys):
    png = tmp_path / "demo.png"
    assert main(["demo", "--json", "--samples", "400", "--steps", "60", "--png", str(png)]) == 0
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


def test_demo_table_and_bad_input(capsys):
    assert main(["demo", "--samples", "50", "--steps", "5", "--png", ""]) == 0
    assert "ddpm summed scores" in capsys.readouterr().out
    assert main(["demo", "--samples", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probcomp: error:")
