"""Object discovery by concept inversion (issue 6; dissertation §5.4.1, Table 5.1 analogue).

Each test image holds coloured blobs (:func:`probcomp.datasets.blobs`, objects 7 px
apart).  Its concepts are one ``(xy, colour)`` pair per object, and the scene composes
the zoo's ``blobs-composed-long`` model (composed training on 3-5 objects, Eq. 5.5) once per
object: ``K`` observables share the image, so their noise predictions add (Eq. 5.7).

Settings:

* ``in-distribution`` -- 3-5 objects, the training distribution;
* ``more-objects`` -- 6-8 objects, never seen in training;
* ``new-background`` -- 3-5 objects on a grey background (0.3, 0.3, 0.3) instead of black:
  the changed-appearance test (CLEVRTex's role).

Methods, all told the true count ``K`` (as in Table 5.1):

* ``ours`` -- :class:`~probcomp.inference.ConceptInversion`: the first restart by greedy
  matching pursuit with one backfitting sweep on an 8 x 8 grid of positions (colours
  relaxed to uniform class probabilities during the scan, then enumerated, or with
  ``--scan-colours`` enumerated at every grid point; 2 shared draws), five more random
  ones, 60 Adam steps with pruning of half the restarts every 10, colours by coordinate
  search, ``t`` in (0.02, 0.5), then two relocation rounds on the best restart (each
  object re-placed at the best of the grid's 4 best points, refined off the grid, if that
  beats its place on all 8 shared draws; 30 polishing steps; kept if the loss drops).  The
  defaults: ``--steps``, ``--restarts``, ``--grid``, ``--draws``, ``--relocate`` change them;
* ``ours-single-start`` -- the seed's Alg. 5 without multiple initialisation: one random
  start, the same 60 steps, no relocation (the "w/o multi-init" row);
* ``generative-classifier`` -- the non-compositional baseline of Table 5.1: the zoo's
  ``blobs-set``, one network conditioned on the whole set of centres (drawn as one heat
  map), trained on the same scenes; the set is one ``(K, 2)`` control, inverted with the
  same steps and restarts (random starts: matching pursuit needs one observable per
  concept, which is what a non-compositional model lacks);
* ``generative-classifier-long`` -- the same with about the network inputs ``ours`` spends
  on a 3-5 object image (32 random restarts, 200 steps, half the restarts pruned every 50):
  the comparison at equal work (not in the default ``--methods``);
* ``cnn`` -- a convolutional regressor of 5 coordinate slots trained here with a
  Hungarian-matched loss on the training distribution (the discriminative baseline;
  every one of its slots is matched, so it is never penalised for extra slots);
* ``detector`` -- the programmatic detector of :mod:`probcomp.detection`, which knows how
  the data is drawn: a reference, not a competitor.

Metrics (seed's definitions): perception rate, the share of true objects whose
Hungarian-matched prediction has mean squared coordinate error (coordinates in [0, 1])
below 0.002; estimation error, the mean of those squared errors over all objects; NFE and
wall time per image.  For ``ours``, ``misses`` sorts the images with a missed object by
cause: a *search* miss when the true concepts score a lower loss than the answer on the
run's own draws, a *model* miss otherwise.  With ``--count-images N`` the first N in-distribution images are
also inverted with ``K`` unknown in ``--k-range`` (default [2, 6]; Eq. 5.9): count accuracy and the perception
rate at the chosen ``K``.

Test images: image ``i`` of a setting is drawn from its own seed (:func:`test_set`), so
the first ``n`` images are the same whatever ``--images`` is.

Full run (one CPU thread: 20-60 s per image for ``ours`` at the default settings, so 100
images per setting take hours; ``--workers N`` runs the images as Ray tasks on N workers
(:mod:`probcomp.batch`: a local Ray instance, or the cluster named by ``RAY_ADDRESS``),
``--device cuda`` runs the networks on a GPU, and ``--time-limit`` stops starting new
images, every setting keeping the same images).  ``--log FILE`` appends every per-image
record to a JSONL file as it is made and reuses the records already there, so a run that
was stopped or killed resumes where it was, and ``--time-limit 0`` summarises a log::

    python benchmarks/object_discovery.py --workers 2 --log benchmarks/results/object_discovery_full.jsonl \
        --json --out benchmarks/results/object_discovery_full.json
    python benchmarks/object_discovery.py --device cuda --workers 10 --count-images 40 --json

Smoke test (2 images, tiny settings)::

    python benchmarks/object_discovery.py --quick --json
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from _output import emit  # benchmarks/ is on sys.path when a script runs
from scipy.optimize import linear_sum_assignment
from torch import nn

import probcomp as pc
from probcomp import batch, datasets
from probcomp.detection import detect
from probcomp.inference import ConceptInversion

SEPARATION = 7.0
SETTINGS = {
    "in-distribution": {"num_objects": (3, 5), "background": (0.0, 0.0, 0.0)},
    "more-objects": {"num_objects": (6, 8), "background": (0.0, 0.0, 0.0)},
    "new-background": {"num_objects": (3, 5), "background": (0.3, 0.3, 0.3)},
}
HIT_MSE = 0.002


def concept_scene(image: torch.Tensor, model: Any, k: int) -> pc.Scene:
    """``k`` objects, each an ``(xy, color)`` concept conditioning one copy of ``model`` on ``image``."""
    scene = pc.Scene()
    box = dist.Uniform(torch.full((2,), 0.05), torch.full((2,), 0.95)).to_event(1)
    for j in range(k):
        xy = scene.control(f"xy{j}", (2,), prior=box)
        color = scene.control(f"color{j}", (), prior=dist.Categorical(logits=torch.zeros(6)))
        scene.observe(f"object{j}", value=image, factor=model, condition={"xy": xy, "color": color})
    return scene


def match(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Squared errors (mean over x, y) of the Hungarian matching; unmatched true objects get 1.

    The seed matches predictions to objects with the Hungarian algorithm and counts an
    object as found when its squared error is below ``HIT_MSE``; it does not say what the
    assignment minimises.  Here it finds the most objects a one-to-one assignment can
    find, and among those assignments the one of least summed distance (cost: 1 per miss
    plus 1e-3 x distance).  Minimising summed *squared* error instead lets one far miss
    pull correct pairs apart: with a blob never visited and two slots on another, it
    prefers three medium errors to one large one, so one missed object reads as three
    (tests/test_benchmarks.py has the case, from a real inversion).
    """
    out = np.ones(len(true))
    if len(pred) and len(true):
        d = ((pred[:, None, :] - true[None, :, :]) ** 2).mean(-1)
        rows, cols = linear_sum_assignment((d >= HIT_MSE) + 1e-3 * np.sqrt(d))
        out[cols] = d[rows, cols]
    return out


def summarise(errors: list[np.ndarray], times: list[float], nfe: list[int] | None = None) -> dict:
    e = np.concatenate(errors)
    out = {
        "perception_rate": round(float((e < HIT_MSE).mean()), 4),
        "estimation_error": float(f"{e.mean():.3g}"),
        "median_squared_error": float(f"{np.median(e):.3g}"),
        "images": len(errors),
        "objects": int(e.size),
        "seconds_per_image": round(float(np.mean(times)), 3),
    }
    if nfe is not None:
        out["nfe_per_image"] = round(float(np.mean(nfe)), 1)
    return out


class SlotRegressor(nn.Module):
    """A small CNN that regresses ``slots`` object centres (the discriminative baseline)."""

    def __init__(self, slots: int = 5) -> None:
        super().__init__()
        self.slots = slots
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(128 * 16, 256),
            nn.SiLU(),
            nn.Linear(256, 2 * slots),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x)).reshape(-1, self.slots, 2)


def train_cnn(steps: int, seed: int) -> tuple[SlotRegressor, dict]:
    """Train on the training distribution (3-5 objects, black background), Hungarian-matched MSE."""
    torch.manual_seed(seed)
    model = SlotRegressor()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 10_000)
    t0 = time.perf_counter()
    losses = []
    for _ in range(steps):
        x, lab = datasets.blobs(64, gen, num_objects=(3, 5), min_separation=SEPARATION)
        pred = model(x)
        with torch.no_grad():
            d = ((pred[:, :, None, :] - lab["xy"][:, None, :, :]) ** 2).mean(-1)  # (B, slots, 5)
            pi, ti = [], []
            for b in range(x.shape[0]):
                k = int(lab["count"][b])
                r, c = linear_sum_assignment(d[b, :, :k].numpy())
                pi.append(torch.as_tensor(r) + b * model.slots)
                ti.append(torch.as_tensor(c) + b * lab["xy"].shape[1])
        p = pred.reshape(-1, 2)[torch.cat(pi)]
        t = lab["xy"].reshape(-1, 2)[torch.cat(ti)]
        loss = (p - t).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return model, {
        "steps": steps,
        "final_loss": round(float(np.mean(losses[-50:])), 6),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }


METHODS = (
    "ours",
    "ours-single-start",
    "generative-classifier",
    "generative-classifier-long",
    "cnn",
    "detector",
)


def set_scene(image: torch.Tensor, model: Any, k: int) -> pc.Scene:
    """The generative classifier's scene: one ``(k, 2)`` control, the set of all centres, in one model."""
    scene = pc.Scene()
    box = dist.Uniform(torch.full((k, 2), 0.05), torch.full((k, 2), 0.95)).to_event(2)
    xys = scene.control("xys", (k, 2), prior=box)
    scene.observe("image", value=image, factor=model, condition={"xys": xys})
    return scene


def _frozen(name: str, device: str) -> Any:
    model = pc.models.load(name).to(device)
    for p in model.net.parameters():
        p.requires_grad_(False)
    return model


def test_image(name: str, i: int, seed: int) -> tuple[torch.Tensor, dict]:
    """Test image ``i`` of setting ``name`` (drawn from its own generator) and its labels."""
    spec = SETTINGS[name]
    gen = torch.Generator().manual_seed((seed + 1 + list(SETTINGS).index(name)) * 1_000_003 + i)
    return datasets.blobs(
        1,
        gen,
        num_objects=spec["num_objects"],
        min_separation=SEPARATION,
        background=spec["background"],
    )


def test_set(name: str, n: int, seed: int) -> tuple[torch.Tensor, dict, tuple]:
    """The first ``n`` test images of setting ``name``: ``(images, labels, background in [-1, 1])``.

    Image ``i`` is drawn from its own generator (seeded by ``seed``, the setting and ``i``),
    so it is the same image whatever ``n`` is: a run of 8 images is the prefix of a run of
    100, and a resumed run (``--log``) continues the same test set."""
    bg = tuple(2 * v - 1 for v in SETTINGS[name]["background"])
    if n == 0:
        return torch.zeros(0, 3, 32, 32), {"count": torch.zeros(0, dtype=torch.long)}, bg
    parts = [test_image(name, i, seed) for i in range(n)]
    lab = {k: torch.cat([p[1][k] for p in parts]) for k in ("count", "color", "xy")}
    return torch.cat([p[0] for p in parts]), lab, bg


LOGGED = ("model", "seed", "steps", "restarts", "grid", "draws", "scan_colours", "relocate")
LOGGED += ("cnn_steps", "k_range")


def fingerprint(args: argparse.Namespace) -> dict:
    """The settings a logged record depends on; a log is resumed only under the same ones."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k in LOGGED}


def read_log(path: Path | None, args: argparse.Namespace) -> dict[tuple[str, int, str], list]:
    """Records of a ``--log`` file by ``(setting, image, method)``; refuses a log of other settings."""
    if path is None or not path.exists():
        return {}
    want, done = fingerprint(args), {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when a run was killed
            print(f"object_discovery: skipping unreadable line {n} of {path}", file=sys.stderr)
            continue
        if row["config"] != want:
            diff = sorted(k for k in set(want) | set(row["config"]) if want.get(k) != row["config"].get(k))
            raise SystemExit(
                f"object_discovery: log {path} line {n} was written with other settings ({', '.join(diff)}); "
                "use another --log file or the same settings"
            )
        done[(row["setting"], row["image"], row["method"])] = row["record"]
    return done


def image_records(args: argparse.Namespace, cnn_state: dict | None, i: int, keys: list) -> list[list]:
    """The records ``[setting, i, method, record]`` of image ``i`` for the ``(setting, method)``
    pairs in ``keys`` (``("count", "count")``: the choice of ``K``); one task of the run."""
    torch.set_num_threads(args.threads)
    dev = args.device
    methods = {m for _, m in keys}
    model = _frozen(args.model, dev)
    gc_model = _frozen("blobs-set", dev) if any(m.startswith("generative") for m in methods) else None
    common = dict(lr=0.01, prune_every=10, t_range=(0.02, 0.5), draws=args.draws, search_draws=2, device=dev)
    greedy = dict(init="greedy", grid=args.grid, greedy_relax=not args.scan_colours, greedy_sweeps=1)
    engines = {
        "ours": ConceptInversion(
            restarts=args.restarts, steps=args.steps, relocate=args.relocate, **greedy, **common
        ),
        "ours-single-start": ConceptInversion(init="random", restarts=1, steps=args.steps, **common),
        "generative-classifier": ConceptInversion(
            init="random", restarts=args.restarts, steps=args.steps, **common
        ),
        # about ours' network inputs per image: 32 restarts, 200 steps, halved every 50
        "generative-classifier-long": ConceptInversion(
            init="random", restarts=32, steps=200, **{**common, "prune_every": 50}
        ),
    }
    cnn = None
    if cnn_state is not None and "cnn" in methods:
        cnn = SlotRegressor()
        cnn.load_state_dict(cnn_state)
        cnn.eval()
    out = []
    for name, m in keys:
        if name == "count":
            img, lab = test_image("in-distribution", i, args.seed)
            k = int(lab["count"][0])
            counter = ConceptInversion(
                restarts=1, steps=args.steps, relocate=args.relocate, **greedy, **common
            )
            r = counter.choose_k(
                lambda kk, img=img[0]: concept_scene(img, model, kk), *args.k_range, seed=args.seed + i
            )
            pred = torch.stack([r[f"xy{j}"] for j in range(r.k)]).cpu().numpy()
            err = match(pred, lab["xy"][0, :k].numpy())
            out.append(["count", i, "count", [i, k, r.k, err.tolist(), r.stats["wall_time_all_k"]]])
            continue
        x, lab = test_image(name, i, args.seed)
        bg = tuple(2 * v - 1 for v in SETTINGS[name]["background"])
        k = int(lab["count"][0])
        true = lab["xy"][0, :k].numpy()
        t0, nfe, losses = time.perf_counter(), None, None
        if m in ("ours", "ours-single-start"):
            scene = concept_scene(x[0], model, k)
            r = engines[m].run(scene, seed=args.seed + i)
            pred = torch.stack([r[f"xy{j}"] for j in range(k)]).cpu().numpy()
            nfe = r.stats["nfe_total"]
        elif m.startswith("generative-classifier"):
            r = engines[m].run(set_scene(x[0], gc_model, k), seed=args.seed + i)
            pred, nfe = r["xys"].cpu().numpy(), r.stats["nfe_total"]
        elif m == "cnn":
            with torch.no_grad():
                pred = cnn(x)[0].numpy()
        else:
            pred = detect(x, background=bg)[0].xy
        seconds = time.perf_counter() - t0
        if m in ("ours", "ours-single-start"):  # the truth's loss, outside the timed part
            truth = {f"xy{j}": lab["xy"][0, j] for j in range(k)}
            truth.update({f"color{j}": lab["color"][0, j] for j in range(k)})
            losses = [r.loss, engines[m].loss(scene, truth, seed=args.seed + i)]
        err = match(pred, true).tolist()
        pred = np.asarray(pred).round(5).tolist()
        out.append([name, i, m, [i, err, seconds, nfe, pred, losses]])
    return out


class ImageTask:
    """``image_records`` of one ``(image, keys)`` item, as a picklable task for :mod:`probcomp.batch`."""

    def __init__(self, args: argparse.Namespace, cnn_state: dict | None) -> None:
        self.args, self.cnn_state = args, cnn_state

    def __call__(self, item: tuple[int, list]) -> list[list]:
        i, keys = item
        return image_records(self.args, self.cnn_state, i, [tuple(k) for k in keys])


def run(args: argparse.Namespace) -> dict:
    """Every image's records, unsummarised.

    Images are the items of a :func:`probcomp.batch.map_items` run: in this process with
    ``--workers 1``, else as Ray tasks on ``--workers`` workers (a local Ray instance, or the
    cluster of ``RAY_ADDRESS``; a worker that dies has its image retried elsewhere).  With
    ``args.log`` every record is appended to that JSONL file as soon as it arrives, and
    records already there (same settings) are reused instead of recomputed: a run stopped by
    its time limit or killed keeps what it did, and the same command resumes it."""
    torch.set_num_threads(args.threads)
    logged = read_log(args.log, args)
    stamp = fingerprint(args)

    def record(setting: str, i: int, method: str, rec: list) -> None:
        if args.log is not None:
            line = {"setting": setting, "image": i, "method": method, "record": rec, "config": stamp}
            with args.log.open("a") as f:  # one short write per line, by this process only
                f.write(json.dumps(line) + "\n")

    records: dict[str, Any] = {"settings": {}, "count": []}
    cnn_state = None
    if args.settings and "cnn" in args.methods:
        cnn, records["cnn_training"] = train_cnn(args.cnn_steps, args.seed)
        cnn_state = {k: v.detach().clone() for k, v in cnn.state_dict().items()}
    for name in args.settings:
        records["settings"][name] = {"per_image": {m: [] for m in args.methods}}
    got: dict[tuple[str, int, str], list] = {}
    items = []
    for i in range(max(args.images, args.count_images)):
        keys = [(name, m) for name in args.settings if i < args.images for m in args.methods]
        keys += [("count", "count")] if i < args.count_images else []
        got.update({(n, i, m): logged[(n, i, m)] for n, m in keys if (n, i, m) in logged})
        missing = [[n, m] for n, m in keys if (n, i, m) not in logged]
        if missing:
            items.append((i, missing))

    def collect(_: Any, recs: list[list]) -> None:
        for name, i, m, rec in recs:
            record(name, i, m, rec)
            got[(name, i, m)] = rec
        if args.verbose and recs:
            i = recs[0][1]
            for name in args.settings:
                hits = {m: int((np.asarray(got[(name, i, m)][1]) < HIT_MSE).sum()) for m in args.methods}
                k = len(got[(name, i, args.methods[0])][1])
                print(name, i, k, hits, file=sys.stderr, flush=True)

    task = ImageTask(args, cnn_state)
    if args.workers > 1:
        batch.map_items(
            task,
            items,
            keys=[i for i, _ in items],
            workers=args.workers,
            num_gpus=(args.gpus_per_task or 1 / args.workers) if args.device.startswith("cuda") else 0,
            time_limit=args.time_limit,
            progress=not args.json,
            desc="images",
            on_result=collect,
        )
    else:
        deadline = time.monotonic() + (args.time_limit if args.time_limit is not None else float("inf"))
        for item in items:  # images in order: a time limit keeps the same images in every setting
            if time.monotonic() > deadline:
                break
            collect(item[0], task(item))
    # past the time limit only finished images are collected
    for i in range(max(args.images, args.count_images)):
        keys = [(name, i, m) for name in args.settings if i < args.images for m in args.methods]
        keys += [("count", i, "count")] if i < args.count_images else []
        if not all(key in got for key in keys):
            continue
        for name, _, m in keys:
            if name == "count":
                records["count"].append(got[("count", i, "count")])
            else:
                records["settings"][name]["per_image"][m].append(got[(name, i, m)])
    return records


def miss_causes(recs: list[list]) -> dict:
    """Why images with a missed object missed it: the loss at the answer against the loss at the truth.

    Both are measured on the run's shared draws (:meth:`ConceptInversion.loss`).  A truth
    with a lower loss means the search stopped short of the minimum (a *search* miss);
    otherwise the model itself prefers a wrong answer (a *model* miss)."""
    missed = [r for r in recs if (np.asarray(r[1]) >= HIT_MSE).any()]
    search = sum(r[5][1] < r[5][0] for r in missed)
    ratio = [r[5][0] / max(r[5][1], 1e-12) for r in missed]
    return {
        "images": len(missed),
        "search": int(search),
        "model": len(missed) - int(search),
        "median_loss_over_truth_loss": round(float(np.median(ratio)), 3) if ratio else None,
    }


def summarise_records(shard_records: list[dict], args: argparse.Namespace) -> dict:
    """Merge shards' per-image records into the benchmark's summary."""
    out: dict[str, Any] = {
        "config": {
            "images_per_setting": args.images,
            "model": args.model,
            "seed": args.seed,
            "steps": args.steps,
            "restarts": args.restarts,
            "grid": args.grid,
            "draws": args.draws,
            "scan_colours": args.scan_colours,
            "relocate": args.relocate,
            "device": args.device,
            "workers": args.workers,
            "time_limit": args.time_limit,
            "threads": args.threads,
            "hit_mse": HIT_MSE,
            "command": " ".join(sys.argv),
        },
        "settings": {},
    }
    if "cnn_training" in shard_records[0]:
        out["cnn_training"] = shard_records[0]["cnn_training"]
    for name in shard_records[0]["settings"]:
        row: dict[str, Any] = {}
        for m in shard_records[0]["settings"][name]["per_image"]:
            recs = sorted(r for s in shard_records for r in s["settings"][name]["per_image"][m])
            nfe = [r[3] for r in recs] if recs and recs[0][3] is not None else None
            row[m] = summarise([np.asarray(r[1]) for r in recs], [r[2] for r in recs], nfe)
            if recs and recs[0][5] is not None:
                row[m]["misses"] = miss_causes(recs)
        first = row[next(iter(row))]
        row["mean_objects"] = round(first["objects"] / max(first["images"], 1), 3)
        out["settings"][name] = row
    if any(s["count"] for s in shard_records):
        rows = sorted(r for s in shard_records for r in s["count"])
        out["count"] = {
            "images": len(rows),
            "k_range": list(args.k_range),
            "count_accuracy": round(sum(r[1] == r[2] for r in rows) / len(rows), 4),
            "true_and_chosen_k": [[r[1], r[2]] for r in rows],
            **summarise([np.asarray(r[3]) for r in rows], [r[4] for r in rows]),
        }
    return out


def summarise_log(paths: list[Path]) -> dict:
    """Perception rates from the per-image lines of ``--verbose`` logs (for runs stopped early).

    Each line reads ``SETTING IMAGE K {method: hits}``; only perception rates can be
    recovered (no errors, times or NFE).  Lines of images seen twice count once.  With
    several logs (e.g. a new method against an older run's baselines) only the images in
    every log count, and each method is named ``method [log name]``."""
    logs = []
    for path in paths:
        seen: dict[tuple[str, int], tuple[int, dict]] = {}
        for line in path.read_text().splitlines():
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[0] in SETTINGS:
                seen[(parts[0], int(parts[1]))] = (int(parts[2]), ast.literal_eval(parts[3]))
        logs.append(seen)
    common = set.intersection(*(set(seen) for seen in logs))
    out: dict[str, Any] = {"logs": [str(p) for p in paths], "command": " ".join(sys.argv), "settings": {}}
    for name in SETTINGS:
        keys = sorted(key for key in common if key[0] == name)
        if not keys:
            continue
        counts = {key: {seen[key][0] for seen in logs} for key in keys}
        if any(len(c) > 1 for c in counts.values()):
            raise SystemExit(f"logs disagree on the object count of an image in {name}: not the same images")
        objects = sum(logs[0][key][0] for key in keys)
        rates = {}
        for path, seen in zip(paths, logs, strict=True):
            for m in seen[keys[0]][1]:
                label = m if len(paths) == 1 else f"{m} [{path.stem}]"
                rates[label] = round(sum(seen[key][1][m] for key in keys) / objects, 4)
        out["settings"][name] = {"images": len(keys), "objects": objects, "perception_rate": rates}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--restarts", type=int, default=6)
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--cnn-steps", type=int, default=1500)
    ap.add_argument("--count-images", type=int, default=0)
    ap.add_argument("--k-range", type=int, nargs=2, default=(2, 6))
    ap.add_argument(
        "--scan-colours",
        action="store_true",
        help="greedy scan over grid x colours (6x the scan cost) instead of relaxed colours",
    )
    ap.add_argument(
        "--relocate", type=int, default=2, help="relocation rounds after the descent (ours; steps/2 each)"
    )
    ap.add_argument("--draws", type=int, default=8, help="shared (t, eps) draws per step and per score")
    ap.add_argument("--model", default="blobs-composed-long", help="the composed-trained object model")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=[m for m in METHODS if m != "generative-classifier-long"],
        choices=METHODS,
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the CNN is trained on the CPU)")
    ap.add_argument("--time-limit", type=float, help="seconds; stop starting new images after it")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="images run as Ray tasks on this many workers (probcomp.batch; RAY_ADDRESS for a cluster)",
    )
    ap.add_argument(
        "--gpus-per-task",
        type=float,
        help="with --device cuda and --workers > 1 (default 1/workers: the workers share one GPU)",
    )
    ap.add_argument(
        "--summarise-log",
        type=Path,
        nargs="+",
        help="perception rates from --verbose logs (only images in all of them), then exit",
    )
    ap.add_argument(
        "--log",
        type=Path,
        help="JSONL file of per-image records, appended as they finish; records already in it are reused",
    )
    ap.add_argument("--quick", action="store_true", help="2 images, tiny settings (smoke test)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.images, args.steps, args.restarts, args.grid, args.cnn_steps = 2, 4, 2, 3, 20
        args.settings, args.count_images, args.k_range = ["in-distribution"], 1, (3, 4)
    if args.summarise_log:
        emit(summarise_log(args.summarise_log), args.out)
        return
    try:
        records = run(args)
    except pc.ProbcompError as e:
        raise SystemExit(f"object_discovery: {e}") from None
    emit(summarise_records([records], args), args.out)


if __name__ == "__main__":
    main()
