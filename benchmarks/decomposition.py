"""Decomp Diffusion against Slot-VAE on blob scenes: reconstruction, segmentation, recombination (issue 25).

Models, trained from scratch with seed 0 on 32x32 scenes of 2-3 blobs (``probcomp.datasets.blobs``,
objects at least 6 px apart), the Decomp Diffusion ones the same steps and batch each
(:class:`probcomp.models.Decomposition`, dissertation Eq. 4.9, with the min-SNR weighting of Hang
et al. 2023, gamma = 5):

* ``decomp x0`` -- ``K = 4`` latents of 16 numbers, x0 prediction, mean over components (the
  seed's best configuration, Table 4.3);
* ``single component`` -- the same with ``K = 1`` (Table 4.3's single-component ablation);
* ``decomp eps`` -- ``K = 4`` with eps prediction and the sum of Eq. 4.9 (the eps ablation);
* ``decomp x0 (global data)`` -- ``decomp x0`` trained on ``blobs_global`` (a background colour
  and a lighting gain per image), for the global and cross-model recombinations;
* ``slot-vae`` -- :class:`probcomp.models.SlotVAE` with 4 slots (dissertation ch. 3), the
  object-centric baseline, trained by :func:`probcomp.models.fit_slot_vae`.

On ``--test`` held-out images of one fixed seed:

* **reconstruction** -- Decomp Diffusion: all ``K`` components of each image in one scene
  (:func:`probcomp.models.recombination_scene`, one latent per particle), DDIM with
  ``--ddim-steps`` steps from fixed noise; Slot-VAE: the decoded posterior means.  Pixel MSE, and
  the project's detector (:mod:`probcomp.detection`) on the result: recall (objects found
  within 3 px) and precision;
* **segmentation** -- ARI over the objects' pixels (ARI-FG) against the true visible masks, of
  Slot-VAE's masks and of Decomp Diffusion's attributions (the component that paints each pixel,
  :meth:`~probcomp.models.Decomposition.attributions`);
* **local recombination** -- for image pairs (A, B): the component (slot) owning A's first object
  (most segmented pixels inside its mask) replaces one of B's that owns none of B's objects; the
  detector checks that exactly A's object and B's objects appear where they were (precision and
  recall, 3 px).  Decomp Diffusion composes the components in a scene; Slot-VAE swaps slot
  latents (both images encoded from the same initial slots) and decodes;
* **samples** (Slot-VAE) -- scene structure of images drawn from its prior: the share in which
  the detector finds as many objects as a training scene has (2-3), beside the same share on
  the real test images (the detector's own floor);
* **global recombination** (the global-data model) -- the component that carries the background
  is the one whose swap moves the background colour furthest towards the donor on 16
  calibration pairs; on test pairs (A, B) with different backgrounds, A's components with that one
  taken from B: the background colour of the result (mean over A's bare pixels) against the
  donor's and the recipient's (RGB distance in [0, 1] units, and the share of pairs closer to the
  donor);
* **cross-model recombination** (Section 4.5.4) -- the components of a black-background image A
  from ``decomp x0`` less the one that owns none of its objects, with the background component of
  an image B from the global-data model, in one scene: the background colour against B's, and
  A's objects found (against B's background colour) within 3 px;
* wall time and NFE per image;
* **the trend** (``--trend-steps 2000 4000 6000``) -- ``decomp x0`` scored as above after each of
  those training steps too: one run, each length resuming the shorter one's training state.  Does
  decomposition improve with training on this budget?

Run (about 3.5 h on 2 CPU cores, two trainings at a time through ``--only``; ``--cache DIR`` keeps
resumable training states, so a rerun reuses them)::

    python benchmarks/decomposition.py --out benchmarks/results/decomposition.json \\
        --figure benchmarks/results/decomposition.png --trend-steps 2000 4000 6000 \\
        --cache .cache/decomposition

``--save models/zoo/decomp-blobs`` also writes the longest-trained ``decomp x0`` model, the zoo's
``decomp-blobs``.  Smoke test: ``python benchmarks/decomposition.py --quick``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import probcomp as pc
from probcomp.detection import detect, score_detections
from probcomp.inference import ReverseDiffusion
from probcomp.metrics import adjusted_rand_index
from probcomp.models import Decomposition, SlotVAE, fit_slot_vae, recombination_scene, train

sys.path.insert(0, str(Path(__file__).parent))
from _output import emit

CONFIGS: dict[str, dict[str, Any]] = {
    "decomp x0": {"components": 4, "prediction": "x0", "reduce": "mean", "data": "blobs"},
    "single component": {"components": 1, "prediction": "x0", "reduce": "mean", "data": "blobs"},
    # no SNR floor for eps prediction: it would weigh the noisiest levels' eps loss by up to 1e5
    "decomp eps": {"components": 4, "prediction": "eps", "reduce": "sum", "data": "blobs", "snr_floor": None},
    "decomp x0 (global data)": {
        "components": 4,
        "prediction": "x0",
        "reduce": "mean",
        "data": "blobs_global",
    },
}
SLOT_VAE = {"num_slots": 4, "beta_global": 0.01}
DATA = {"num_objects": (2, 3), "min_separation": 6.0, "masks": True}
TRAIN = {"lr": 2e-3, "ema": 0.995, "t_min": 0.02, "min_snr": 5.0, "snr_floor": 1.0}
SLOT_TRAIN = {"lr": 4e-4, "warmup": 500}


def _data(n: int, seed: int, kind: str = "blobs") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    make = pc.datasets.blobs_global if kind == "blobs_global" else pc.datasets.blobs
    return make(n, torch.Generator().manual_seed(seed), **DATA)


def _state(cache: str | None, name: str) -> Path | None:
    return Path(cache) / f"{name.replace(' ', '-').replace('(', '').replace(')', '')}.pt" if cache else None


def fit(
    name: str, data: torch.Tensor, steps: int, batch: int, cache: str | None, state: str | None = None
) -> Any:
    """Train Decomp Diffusion model ``name`` of :data:`CONFIGS` from seed 0 (resumable in ``cache``,
    under the name ``state``, by default ``name``)."""
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = Decomposition(
        cfg["components"], 16, prediction=cfg["prediction"], reduce=cfg["reduce"], base=16, mults=(1, 2)
    )
    recipe = {**TRAIN, **{k: cfg[k] for k in TRAIN if k in cfg}}
    return train(
        model,
        data,
        steps=steps,
        batch=batch,
        progress=False,
        checkpoint=_state(cache, state or name),
        **recipe,
    )


def fit_trend(data: torch.Tensor, steps: list[int], batch: int, cache: str | None) -> dict[int, Any]:
    """``decomp x0`` trained for each of ``steps`` as one run: each length resumes the training
    state (weights, optimiser, EMA, RNG) of the next shorter one, so it is the run of that length.
    The states stay in ``cache``, or in a temporary folder without one."""
    with tempfile.TemporaryDirectory() as tmp:
        folder, out, before = cache or tmp, {}, None
        for n in sorted(set(steps)):
            name = f"decomp x0 ({n} steps)"
            here = _state(folder, name)
            assert here is not None
            if before is not None and not here.exists() and before.exists():
                shutil.copyfile(before, here)
            out[n] = fit("decomp x0", data, n, batch, folder, state=name)
            before = here
    return out


def fit_slots(data: torch.Tensor, steps: int, batch: int, cache: str | None) -> Any:
    torch.manual_seed(0)
    model = SlotVAE(**SLOT_VAE)
    return fit_slot_vae(
        model,
        data,
        steps=steps,
        batch=batch,
        progress=False,
        checkpoint=_state(cache, "slot-vae"),
        **SLOT_TRAIN,
    )


# Scores ------------------------------------------------------------------------------
def _run(factors: list, n: int, steps: int) -> tuple[torch.Tensor, dict[str, Any]]:
    engine = ReverseDiffusion(steps=steps, sampler="ddim", clip_x0=(-1.0, 1.0))
    res = engine.run(recombination_scene(factors), num_samples=n, seed=0)
    return res["x"], res.stats


def _owners(segments: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(N, J)``: the segment of ``segments`` ``(N, K, H, W)`` with most weight in each object's mask."""
    inside = (masks > 0.5).to(segments.dtype)  # (N, J, H, W)
    return torch.einsum("nkhw,njhw->njk", segments, inside).argmax(-1)


def _detect(images: torch.Tensor, labels: dict) -> list:
    """The detector against each image's own background (``blobs_global`` records one per image)."""
    if "background_rgb" not in labels:
        return detect(images)
    bg = ((labels["background_rgb"] * labels["gain"][:, None]).clamp(0, 1) * 2 - 1).tolist()
    return [detect(images[i : i + 1], background=tuple(bg[i]))[0] for i in range(images.shape[0])]


def _reconstruction(recon: torch.Tensor, x: torch.Tensor, labels: dict, wall: float, nfe: Any) -> dict:
    found = _detect(recon, labels)
    det = score_detections(found, labels["xy"], labels["mask"])
    hits = det["hit_rate"] * int(labels["mask"].sum())
    return {
        "mse": round(float((recon - x).square().mean()), 5),
        "recall": det["hit_rate"],
        "precision": round(hits / max(sum(d.count for d in found), 1), 4),
        "position_error_px": det["position_error_px"],
        "nfe_per_image": nfe,
        "seconds_per_image": round(wall / x.shape[0], 4),
    }


def _ari_fg(labels: dict, segments: torch.Tensor) -> float:
    fg = labels["masks"].sum(1) > 0.5
    return round(float(adjusted_rand_index(labels["masks"], segments, foreground=fg).mean()), 4)


def _pairs(owners: torch.Tensor, labels: dict, k: int) -> list[tuple[int, int, int, int]]:
    """Pairs ``(a, b, owner of A's first object, a component of B owning none of B's objects)``
    over images ``(0, 1), (2, 3), ...`` (``owners`` ``(N, J)`` from :func:`_owners`)."""
    out = []
    for a in range(0, owners.shape[0] - 1, 2):
        b = a + 1
        owned = {int(owners[b, j]) for j in range(int(labels["count"][b]))}
        spare = [c for c in range(k) if c not in owned]
        if spare:
            out.append((a, b, int(owners[a, 0]), spare[0]))
    return out


def _recombination_scores(mixed: torch.Tensor, labels: dict, pairs: list) -> dict:
    want = torch.stack([torch.cat([labels["xy"][a, :1], labels["xy"][b]]) for a, b, _, _ in pairs])
    mask = torch.stack(
        [torch.cat([torch.ones(1, dtype=torch.bool), labels["mask"][b]]) for _, b, _, _ in pairs]
    )
    found = _detect(mixed, {k: v[[b for _, b, _, _ in pairs]] for k, v in labels.items()})  # B's background
    det = score_detections(found, want, mask)
    return {
        "pairs": len(pairs),
        "recall": det["hit_rate"],
        "precision": round(det["hit_rate"] * int(mask.sum()) / max(sum(d.count for d in found), 1), 4),
        "exact_count": det["count_accuracy"],
    }


def evaluate(model: Decomposition, x: torch.Tensor, labels: dict, steps: int) -> tuple[dict, dict]:
    """The scores of a Decomp Diffusion model and the images they were read from."""
    n = x.shape[0]
    t0 = time.perf_counter()
    recon, stats = _run(model.components_of(x), n, steps)
    nfe = sum(stats["nfe"].values()) if isinstance(stats.get("nfe"), dict) else None
    out: dict[str, Any] = {"reconstruction": _reconstruction(recon, x, labels, time.perf_counter() - t0, nfe)}
    attr = model.attributions(x)  # (N, K, H, W)
    out["segmentation_ari_fg"] = _ari_fg(labels, attr)
    images = {"recon": recon, "segments": attr}
    if model.components == 1:
        return out, images
    owners = _owners(attr, labels["masks"])
    pairs = _pairs(owners, labels, model.components)
    z = model.decompose(x)
    rows = torch.arange(len(pairs))
    za, zb = z[[a for a, *_ in pairs]], z[[b for _, b, *_ in pairs]]
    factors = [model.component(za[rows, torch.tensor([o for *_, o, _ in pairs])], name="A's object")]
    keep = [[c for c in range(model.components) if c != spare] for *_, spare in pairs]
    for slot in range(model.components - 1):
        factors.append(model.component(zb[rows, torch.tensor([c[slot] for c in keep])], name=f"B {slot}"))
    mixed, _ = _run(factors, len(pairs), steps)
    out["recombination"] = _recombination_scores(mixed, labels, pairs)
    images["mixed"] = mixed
    return out, images


def evaluate_slot_vae(model: SlotVAE, x: torch.Tensor, labels: dict) -> tuple[dict, dict]:
    """The same scores for Slot-VAE: one encoder and one decoder pass per image."""
    t0 = time.perf_counter()
    with torch.no_grad():
        enc = model.encode(x, torch.Generator().manual_seed(0))
    out: dict[str, Any] = {
        "reconstruction": _reconstruction(enc["recon"], x, labels, time.perf_counter() - t0, 1),
        "segmentation_ari_fg": _ari_fg(labels, enc["masks"]),
    }
    # a swap needs A and B encoded from the same initial slots (slot order follows them)
    half = x.shape[0] // 2
    init = model.slot_attention.initial_slots(half, torch.Generator().manual_seed(1), x.device, x.dtype)
    init = init.repeat_interleave(2, 0)  # images 2i and 2i + 1 share one draw
    with torch.no_grad():
        paired = model.encode(x[: 2 * half], slots_init=init)
    owners = _owners(paired["masks"], labels["masks"][: 2 * half])
    pairs = _pairs(owners, labels, model.num_slots)
    z = paired["z"][[b for _, b, *_ in pairs]].clone()
    rows = torch.arange(len(pairs))
    z[rows, torch.tensor([s for *_, s in pairs])] = paired["z"][
        torch.tensor([a for a, *_ in pairs]), torch.tensor([o for *_, o, _ in pairs])
    ]
    mixed = model.decode(z)[0]
    out["recombination"] = _recombination_scores(mixed, labels, pairs)
    # scene structure of prior samples (Tables 3.2-3.3's question): as many objects as a scene has
    lo, hi = DATA["num_objects"]
    counts = [d.count for d in detect(model.sample(x.shape[0], torch.Generator().manual_seed(2)))]
    real = [d.count for d in detect(x)]
    out["samples"] = {
        "object_count_in_range": round(sum(lo <= c <= hi for c in counts) / len(counts), 4),
        "object_count_in_range_real_images": round(sum(lo <= c <= hi for c in real) / len(real), 4),
        "mean_objects": round(sum(counts) / len(counts), 3),
    }
    return out, {"recon": enc["recon"], "segments": enc["masks"], "mixed": mixed}


def _background(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean colour ``(N, 3)`` in [0, 1] over the pixels no object covers (``masks`` ``(N, J, H, W)``)."""
    bare = (masks.sum(1) < 0.05).to(images.dtype)[:, None]
    return (((images + 1) / 2) * bare).sum((2, 3)) / bare.sum((2, 3)).clamp(min=1)


def global_recombination(
    model: Decomposition, calib: tuple, test: tuple, steps: int
) -> tuple[dict, int, torch.Tensor]:
    """Find the background component on ``calib`` pairs; score its swap on ``test`` pairs."""

    def swapped(x: torch.Tensor, labels: dict, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b = torch.arange(0, x.shape[0] - 1, 2), torch.arange(1, x.shape[0], 2)
        keep = (_background(x[a], labels["masks"][a]) - _background(x[b], labels["masks"][b])).norm(
            dim=1
        ) > 0.1
        a, b = a[keep], b[keep]
        z = model.decompose(x)
        za, zb = z[a], z[b]
        factors = [model.component(zb[:, c] if c == k else za[:, c]) for c in range(model.components)]
        mixed, _ = _run(factors, len(a), steps)
        got = _background(mixed, labels["masks"][a])
        return got, _background(x[b], labels["masks"][b]), _background(x[a], labels["masks"][a])

    moved = []
    for k in range(model.components):
        got, donor, recipient = swapped(*calib, k)
        moved.append(float(((got - recipient).norm(dim=1) - (got - donor).norm(dim=1)).mean()))
    k_star = int(torch.tensor(moved).argmax())
    got, donor, recipient = swapped(*test, k_star)
    d_donor, d_recipient = (got - donor).norm(dim=1), (got - recipient).norm(dim=1)
    return (
        {
            "background_component": k_star,
            "calibration_shift_towards_donor": [round(m, 4) for m in moved],
            "pairs": int(got.shape[0]),
            "distance_to_donor": round(float(d_donor.mean()), 4),
            "distance_to_recipient": round(float(d_recipient.mean()), 4),
            "donor_recipient_distance": round(float((donor - recipient).norm(dim=1).mean()), 4),
            "closer_to_donor": round(float((d_donor < d_recipient).double().mean()), 4),
        },
        k_star,
        got,
    )


def cross_model(
    local: Decomposition, glob: Decomposition, k_global: int, xa: tuple, xb: tuple, steps: int
) -> tuple[dict, torch.Tensor]:
    """A's object components from ``local`` with B's background component from ``glob``, one scene."""
    (x_a, lab_a), (x_b, lab_b) = xa, xb
    n = min(x_a.shape[0], x_b.shape[0], 32)
    owners = _owners(local.attributions(x_a[:n]), lab_a["masks"][:n])
    spare = []
    for i in range(n):
        owned = {int(owners[i, j]) for j in range(int(lab_a["count"][i]))}
        spare.append(next((c for c in range(local.components) if c not in owned), -1))
    use = torch.tensor([i for i in range(n) if spare[i] >= 0])
    za, zb = local.decompose(x_a[use]), glob.decompose(x_b[use])
    rows = torch.arange(len(use))
    keep = [[c for c in range(local.components) if c != spare[int(i)]] for i in use]
    factors = [
        local.component(za[rows, torch.tensor([c[slot] for c in keep])], name=f"A {slot}")
        for slot in range(local.components - 1)
    ]
    factors.append(glob.component(zb[:, k_global], name="B's background"))
    mixed, _ = _run(factors, len(use), steps)
    got = _background(mixed, lab_a["masks"][use])
    donor = _background(x_b[use], lab_b["masks"][use])
    found = [
        detect(mixed[i : i + 1], background=tuple((donor[i] * 2 - 1).tolist()))[0] for i in range(len(use))
    ]
    det = score_detections(found, lab_a["xy"][use], lab_a["mask"][use])
    return (
        {
            "pairs": len(use),
            "background_distance_to_donor": round(float((got - donor).norm(dim=1).mean()), 4),
            "background_distance_to_black": round(float(got.norm(dim=1).mean()), 4),
            "objects_recall": det["hit_rate"],
        },
        mixed,
    )


def pretrained_variant(steps: int, batch: int, n_test: int, ddim: int, cache: str | None) -> dict:
    """Sec. 4.5.5 at small scale: the zoo's diffusers ``shapes-unet`` fine-tuned as the denoiser of
    ``K = 2`` components on its own 16 px shape images, against the same U-Net from random weights
    trained the same way; reconstruction MSE of held-out images from all components (DDIM)."""
    from diffusers import UNet2DModel

    from probcomp.models.diffusers import from_diffusers, pretrained_decomposition

    factor = from_diffusers("shapes-unet")
    data = pc.datasets.shapes(
        20000 if steps > 10 else 64, torch.Generator().manual_seed(0), size=16, held_out=()
    )[0]
    x = pc.datasets.shapes(n_test, torch.Generator().manual_seed(1), size=16, held_out=())[0]
    out: dict[str, Any] = {"data": "probcomp.datasets.shapes(size=16, held_out=())", "components": 2}
    for name in ("pretrained", "random init"):
        torch.manual_seed(0)
        model = pretrained_decomposition(factor, components=2, latent=16, width=16)
        if name == "random init":
            model.denoiser.unet.load_state_dict(
                UNet2DModel.from_config(factor.core.unet.config).state_dict(), strict=False
            )  # every U-Net weight re-drawn; the latent embedding starts from zero
            model.denoiser.unet.class_embedding.null.data.zero_()
        before, _ = _run(model.components_of(x), n_test, ddim)
        res = train(
            model, data, steps=steps, batch=batch, lr=5e-4, ema=0.99, t_min=0.02, progress=False,
            checkpoint=_state(cache, f"shapes-unet-{name}"),
        )  # fmt: skip
        after, _ = _run(res.model.components_of(x), n_test, ddim)
        out[name] = {
            "reconstruction_mse_untrained": round(float((before - x).square().mean()), 5),
            "reconstruction_mse": round(float((after - x).square().mean()), 5),
            "train_seconds": round(res.wall_time, 1),
            "final_loss": round(res.losses[-1], 5),
        }
        print("pretrained denoiser", name, out[name], file=sys.stderr)
    out["steps"], out["batch"] = steps, batch
    return out


def figure(path: str, x: torch.Tensor, shown: dict[str, dict]) -> None:
    """Rows: the test images, then each model's reconstruction and segmentation (first 6 images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("test image", x)]
    for name, images in shown.items():
        rows.append((f"{name}: reconstruction", images["recon"]))
        seg = images["segments"].argmax(1, keepdim=True).float() / max(images["segments"].shape[1] - 1, 1)
        rows.append((f"{name}: segments", seg.expand(-1, 3, -1, -1) * 2 - 1))
    cols = 6
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols, 1.4 * len(rows)))
    for r, (label, imgs) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(((imgs[c].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _row(config: dict[str, Any], res: Any, scores: dict[str, Any]) -> dict[str, Any]:
    """One model's row: its settings, training wall time and final loss, and its scores."""
    return {
        "config": config,
        "train_seconds": round(res.wall_time, 1),
        "final_loss": round(res.losses[-1], 5),
        **scores,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8000, help="Decomp Diffusion training steps")
    ap.add_argument("--slot-steps", type=int, default=8000, help="Slot-VAE training steps")
    ap.add_argument("--pretrained-steps", type=int, default=1500, help="fine-tuning steps (Sec. 4.5.5)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--test", type=int, default=64)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="tiny throw-away run")
    ap.add_argument("--out")
    ap.add_argument("--figure", help="write the figure (PNG) here")
    ap.add_argument("--cache", help="a folder for resumable training states (a rerun resumes or reuses them)")
    ap.add_argument(
        "--trend-steps",
        nargs="*",
        type=int,
        default=[],
        help="also score decomp x0 after this many steps (the trend; one run, resumed)",
    )
    names = [*CONFIGS, "slot-vae", "pretrained denoiser"]
    ap.add_argument("--only", nargs="+", choices=names, help="train (and evaluate) only these models")
    ap.add_argument(
        "--save", help="write the longest-trained 'decomp x0' model to this checkpoint stem (the zoo's)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.slot_steps, args.pretrained_steps, args.test, args.ddim_steps = 3, 3, 3, 8, 3
    torch.set_num_threads(args.threads)
    n_train = 20000 if not args.quick else 64
    test = {kind: _data(args.test, 1, kind) for kind in ("blobs", "blobs_global")}
    rows: dict[str, Any] = {}
    trained: dict[str, Any] = {}
    decomp_x0: dict[int, Any] = {}  # training steps -> model (the main row and the trend)
    shown: dict[str, dict] = {}
    result: dict[str, Any] = {"models": rows}
    for name in args.only or names:
        if name == "decomp x0":  # the main row at --steps, and the trend at --trend-steps
            train_x = _data(n_train, 0, "blobs")[0]
            lengths = [args.steps, *args.trend_steps]
            rows[name] = {}  # (the main row first)
            for n, res in fit_trend(train_x, lengths, args.batch, args.cache).items():
                scores, images = evaluate(res.model, *test["blobs"], args.ddim_steps)
                decomp_x0[n] = res.model
                key = name if n == args.steps else f"decomp x0 ({n} steps)"
                if n == args.steps:
                    shown[name] = images
                elif n == max(lengths):
                    shown[f"decomp x0, {n} steps"] = images
                rows[key] = _row({**TRAIN, **CONFIGS[name], "steps": n}, res, scores)
                print(key, rows[key], file=sys.stderr)
            trained[name] = decomp_x0[args.steps]
            continue
        if name == "pretrained denoiser":
            result["pretrained_denoiser"] = pretrained_variant(
                args.pretrained_steps, 16, min(args.test, 32), args.ddim_steps, args.cache
            )
            continue
        kind = CONFIGS[name]["data"] if name in CONFIGS else "blobs"
        train_x = _data(n_train, 0, kind)[0]
        if name == "slot-vae":
            res = fit_slots(train_x, args.slot_steps, args.batch, args.cache)
            scores, images = evaluate_slot_vae(res.model, *test["blobs"])
            config: dict[str, Any] = {**SLOT_VAE, **SLOT_TRAIN, "steps": args.slot_steps}
        else:
            res = fit(name, train_x, args.steps, args.batch, args.cache)
            scores, images = evaluate(res.model, *test[kind], args.ddim_steps)
            config = {**TRAIN, **CONFIGS[name], "steps": args.steps}
        trained[name] = res.model
        if kind == "blobs":
            shown[name] = images
        rows[name] = _row(config, res, scores)
        print(name, rows[name], file=sys.stderr)
    if args.save and decomp_x0 and not args.quick:
        steps = max(decomp_x0)
        meta = {"recipe": {"data": "blobs", **DATA, "steps": steps, "batch": args.batch, "seed": 0}}
        meta["recipe"].update(num_objects=list(DATA["num_objects"]), **TRAIN)
        meta["regenerate"] = (
            f"python benchmarks/decomposition.py --only 'decomp x0' --steps {steps} "
            "--save models/zoo/decomp-blobs"
        )
        model = decomp_x0[steps]
        pc.models.save(args.save, model, schedule=model.schedule, event_shape=(3, 32, 32), meta=meta)
    glob = trained.get("decomp x0 (global data)")
    if glob is not None:
        calib = _data(32, 2, "blobs_global")
        rows["decomp x0 (global data)"]["global_recombination"], k_star, _ = global_recombination(
            glob, calib, test["blobs_global"], args.ddim_steps
        )
        if "decomp x0" in trained:
            result["cross_model"], _ = cross_model(
                trained["decomp x0"], glob, k_star, test["blobs"], test["blobs_global"], args.ddim_steps
            )
    if args.figure:
        figure(args.figure, test["blobs"][0], shown)
    if args.only:
        emit(result, None)
        return 0
    best = rows["decomp x0"]
    longest = max(decomp_x0, default=args.steps)
    longer_claim = {}
    if longest > args.steps:  # (--trend-steps past --steps): does the longest run place the objects?
        recall = rows[f"decomp x0 ({longest} steps)"]["recombination"]["recall"]
        longer_claim[f"the longest run ({longest} steps) places the chosen objects (recall >= 0.8)"] = (
            recall >= 0.8
        )
    result = {
        "command": (
            "python benchmarks/decomposition.py --out benchmarks/results/decomposition.json "
            "--figure benchmarks/results/decomposition.png"
            + (f" --trend-steps {' '.join(map(str, args.trend_steps))}" if args.trend_steps else "")
        ),
        "settings": {
            **{
                k: getattr(args, k)
                for k in (
                    "steps",
                    "slot_steps",
                    "pretrained_steps",
                    "trend_steps",
                    "batch",
                    "test",
                    "ddim_steps",
                )
            },
            "data": str(DATA),
        },
        **result,
        "claims": {
            "all components reconstruct better than one (Table 4.3)": best["reconstruction"]["mse"]
            < rows["single component"]["reconstruction"]["mse"],
            "recombination places the chosen objects (recall >= 0.8)": best["recombination"]["recall"] >= 0.8,
            "a global-factor swap moves the background to the donor's (>= 80% of pairs)": rows[
                "decomp x0 (global data)"
            ]["global_recombination"]["closer_to_donor"]
            >= 0.8,
            "Decomp Diffusion segments objects better than Slot-VAE (ARI-FG)": best["segmentation_ari_fg"]
            > rows["slot-vae"]["segmentation_ari_fg"],
            "a pretrained denoiser reconstructs better than one from random weights (equal steps)": (
                result["pretrained_denoiser"]["pretrained"]["reconstruction_mse"]
                < result["pretrained_denoiser"]["random init"]["reconstruction_mse"]
            ),
            **longer_claim,
        },
        "torch": torch.__version__,
    }
    emit(result, None if args.quick else args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
