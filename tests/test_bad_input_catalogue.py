"""Bad input ends as a one-line probcomp error naming the culprit, never a traceback or a wrong answer.

Each row of the catalogue is an input, the probcomp exception it must raise and a substring of the
message that names the variable, factor, plate or file at fault.  Valid edge cases beside them must
keep working (and composites the library itself builds must not warn).

The catalogue continues at the engines' boundary in ``test_bad_input_engines.py`` (arguments,
factor exceptions and shapes, the runaway guard, convergence of concept inversion), at the
command line in ``test_cli.py`` (output paths, failed writes, Ctrl-C, usage errors) and as
property-based tests in ``test_properties.py``.
"""

from __future__ import annotations

import collections
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

import probcomp as pc
from probcomp import compose
from probcomp import schedules as sched
from probcomp.factors import Gaussian, GaussianMixture, ScoreFactor, check_output, exact_product
from probcomp.models import NetworkFactor, ResMLP, load, save
from probcomp.models.training import _resume

G2 = Gaussian(torch.zeros(2), 1.0, name="g")


def _scene_control(shape):
    return lambda: pc.Scene().control("x", shape)


def _observe(value, factor=G2):
    def go():
        sc = pc.Scene()
        sc.control("c", 2)
        sc.observe("img", value=value, factor=factor, condition="c")

    return go


def _plate(size, vectorised=True):
    def program():
        if vectorised:
            with pyro.plate("objs", size):
                x = pc.control("x", (2,))
        else:
            for _ in pyro.plate("objs", size):
                x = pc.control("x", (2,))
        pc.observe("y", x, factor=G2)

    return lambda: pc.scene_from_pyro(program)


def _pyro_observe_list():
    def program():
        pc.control("x", (2,))
        pc.observe("y", [1.0, 2.0], factor=G2)

    return lambda: pc.scene_from_pyro(program)


def _pyro_control(shape):
    def program():
        pc.observe("y", pc.control("x", shape), factor=G2)

    return lambda: pc.scene_from_pyro(program)


class _Broadcasting(ScoreFactor):
    """A user factor whose eps is (N, 1) for (N, 2) input: broadcast silently before."""

    def eps(self, y, t):
        return y.sum(1, keepdim=True)


# Gaussians sharing one covariance (guidance's premise), and a narrow / wide pair
_A = Gaussian([0.0, 0.0], 1.0, name="a")
_B = Gaussian([1.0, 0.0], 1.0, name="b")
_NARROW = Gaussian([0.0, 0.0], 0.3, name="narrow")
_WIDE = Gaussian([0.0, 0.0], 2.0, name="wide")
# a mixture whose components are long in crossing directions: its tail is widest on the diagonal
_CROSS = GaussianMixture(
    [[0.0, 0.0], [0.0, 0.0]], torch.tensor([[0.1, 10.0], [10.0, 0.1]]).sqrt(), name="cross"
)


CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # 1. control shapes: no silent truncation of floats, no string digits
    ("control float dim", _scene_control((2.5,)), pc.ShapeError, "control 'x'"),
    ("control string shape", _scene_control("23"), pc.ShapeError, "control 'x'"),
    ("control negative dim", _scene_control((2, -1)), pc.ShapeError, "control 'x'"),
    ("control zero dim", _scene_control((0,)), pc.ShapeError, "control 'x': shape must be positive"),
    ("control bool shape", _scene_control(True), pc.ShapeError, "control 'x'"),
    ("pyro control float dim", _pyro_control((2.5,)), pc.ShapeError, "control 'x'"),
    ("pyro control string shape", _pyro_control("23"), pc.ShapeError, "control 'x'"),
    # 2. observed values: numeric and finite, refused at observe time naming the observable
    ("value string", _observe("abc"), pc.SceneError, "observable 'img': value must be numeric"),
    ("value ragged", _observe([[1.0, 2.0], [3.0]]), pc.SceneError, "observable 'img': value must be numeric"),
    ("value dict", _observe({"a": 1}), pc.SceneError, "observable 'img': value must be numeric"),
    (
        "value bool",
        _observe(torch.tensor([True, False])),
        pc.SceneError,
        "observable 'img': value must be real",
    ),
    (
        "value NaN",
        _observe(torch.tensor([0.0, float("nan")])),
        pc.SceneError,
        "observable 'img': value holds 1 NaN",
    ),
    (
        "value inf",
        _observe(np.array([np.inf, 0.0])),
        pc.SceneError,
        "observable 'img': value holds 1 NaN or inf",
    ),
    ("pyro value list", _pyro_observe_list(), pc.SceneError, "observable 'y': value must be a tensor"),
    # 3. plates in Pyro programs
    ("plate size 0", _plate(0), pc.SceneError, "pyro.plate 'objs': size must be an integer >= 1"),
    (
        "sequential plate size 0",
        _plate(0, False),
        pc.SceneError,
        "pyro.plate 'objs': size must be an integer",
    ),
    ("plate size -1", _plate(-1), pc.SceneError, "pyro.plate 'objs': size must be an integer >= 1"),
    ("plate size 2.5", _plate(2.5), pc.SceneError, "pyro.plate 'objs': size must be an integer >= 1"),
    ("plate size string", _plate("3"), pc.SceneError, "pyro.plate 'objs': size must be an integer >= 1"),
    # 4. analytic factors built from ragged or non-numeric arguments
    (
        "ragged means",
        lambda: GaussianMixture([[0, 0], [1.0]], [1.0, 1.0]),
        pc.FactorError,
        "GaussianMixture: means",
    ),
    (
        "ragged scales",
        lambda: GaussianMixture([[0, 0], [1, 1]], [[1, 1], [1]]),
        pc.FactorError,
        "GaussianMixture: scales",
    ),
    (
        "ragged weights",
        lambda: GaussianMixture([[0, 0], [1, 1]], [1, 1], [[1], [1, 2]]),
        pc.FactorError,
        "GaussianMixture: weights",
    ),
    ("string mean", lambda: Gaussian("ab", name="gm"), pc.FactorError, "gm: mean must be numbers"),
    (
        "string event shape",
        lambda: GaussianMixture([[0, 0, 0, 0, 0, 0]], [1.0], event_shape="23", name="img"),
        pc.FactorError,
        "img: event_shape must be a tuple of positive integers",
    ),
    ("float event shape", lambda: _Broadcasting((2.5,), name="bad"), pc.FactorError, "bad: event_shape"),
    # 5. exact_product of something that is not a Gaussian mixture
    (
        "exact_product learned",
        lambda: exact_product([load("ring8"), G2]),
        pc.FactorError,
        "exact_product needs analytic Gaussian/GaussianMixture factors; 'ring8' is a learned model",
    ),
    (
        "exact_product learned second",
        lambda: exact_product([G2, load("bar")]),
        pc.FactorError,
        "'bar' is a learned model",
    ),
    (
        "exact_product non-factor",
        lambda: exact_product([G2, 3]),
        pc.FactorError,
        "3 is not a probcomp factor",
    ),
    (
        "exact_product weights",
        lambda: exact_product([G2, G2], [1, "x"]),
        pc.FactorError,
        "exact_product: weights",
    ),
    # 6. weighted sums of Gaussians that are not normalisable (refused at construction)
    (
        "weighted 1, -3",
        lambda: compose.weighted([_A, _B], [1, -3]),
        pc.FactorError,
        "weighted: prod_i p_i^w_i",
    ),
    (
        "weighted 1, -1",
        lambda: compose.weighted([_A, _B], [1, -1]),
        pc.FactorError,
        "weighted: prod_i p_i^w_i",
    ),
    (
        "negation of a wider",
        lambda: compose.negation(_WIDE, _NARROW, 0.5),
        pc.FactorError,
        "negation: prod_i",
    ),
    ("guidance wide cond", lambda: compose.guidance(_WIDE, _NARROW, 3.0), pc.FactorError, "guidance: prod_i"),
    (
        "projective narrow bg",
        lambda: compose.projective(_A, _B, background=_NARROW),
        pc.FactorError,
        "projective: prod_i p_i^w_i with weights {'narrow': -1",
    ),
    ("mixture tail", lambda: compose.weighted([G2, _CROSS], [1, -0.5]), pc.FactorError, "tail exponent"),
    (
        "network event shape",
        lambda: NetworkFactor(ResMLP(2, hidden=8, blocks=1), (3,), sched.linear(), name="net"),
        pc.FactorError,
        "factor 'net': event_shape (3,) does not match its network (a resmlp taking (2,))",
    ),
    # 8. a factor output that would broadcast against its input
    (
        "eps (N, 1)",
        lambda: _Broadcasting((2,), name="bad").score(torch.zeros(4, 2), 0.5),
        pc.ShapeError,
        "factor 'bad'",
    ),
    (
        "check_output",
        lambda: check_output(torch.zeros(4, 1), torch.zeros(4, 2), "factor 'f'"),
        pc.ShapeError,
        "factor 'f': score returned shape (4, 1) for a batch of shape (4, 2)",
    ),
]


@pytest.mark.parametrize("call, error, part", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_one_line_probcomp_error(call, error, part):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, pc.ProbcompError)
    msg = str(info.value)
    assert part in msg, msg
    assert "\n" not in msg, msg


# 6. warnings: negative weights that cannot be decided, or a path that is not normalisable
WARN_CASES = [
    (
        "learned weights sum below 0",
        lambda: compose.weighted([load("ring8"), load("bar")], [1, -3]),
        "weighted: the weights {'ring8': 1, 'bar': -3} sum to -2 <= 0",
    ),
    ("learned negation 1", lambda: compose.negation(load("ring8"), load("bar"), 1.0), "sum to 0 <= 0"),
    (
        "noised path",
        lambda: compose.negation(_NARROW, _WIDE, 2.0),
        "negation: prod_i p_i^w_i with weights {'narrow': 1, 'wide': -2} is normalisable at t = 0, but not",
    ),
    ("undecided mixture", lambda: compose.weighted([G2, _CROSS], [1, -0.2]), "weighted: cannot decide"),
]


@pytest.mark.parametrize("call, part", [c[1:] for c in WARN_CASES], ids=[c[0] for c in WARN_CASES])
def test_undecidable_or_noised_non_normalisable_composites_warn(call, part):
    with pytest.warns(UserWarning) as rec:
        call()
    msgs = [str(r.message) for r in rec]
    assert any(part in m for m in msgs), msgs
    assert all("\n" not in m for m in msgs), msgs
    assert rec[0].filename == __file__  # the warning points at the user's line


def _coind():
    return load("coind-vanilla")


def _clusters(rows):
    return GaussianMixture(rows, torch.full((len(rows),), 0.2))


_SEEN = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]])


VALID_COMPOSITES = {
    "guidance shared covariance": lambda: compose.guidance(_A, _B, 3.0),
    "negation narrow of wide": lambda: compose.negation(_NARROW, _WIDE, 0.5),
    "projective shared covariance": lambda: compose.projective(_A, _B, background=Gaussian([0.0, 0.0], 1.0)),
    "projective Bayes background": lambda: compose.projective(
        *[Gaussian(torch.eye(7)[i], 0.05) for i in (0, 2, 4, 6)],
        background=GaussianMixture(torch.eye(7), torch.full((7,), 0.05)),
    ),
    "tutorial 04 clusters": lambda: compose.weighted(
        [_clusters(_SEEN[1:]), _clusters(_SEEN[:2]), _clusters(_SEEN)], [1.0, 1.0, -1.0]
    ),
    "negation cancels": lambda: compose.negation(_A, _A, 1.0),
    "learned guidance": lambda: compose.guidance(load("ring8"), load("bar"), 3.0),
    "learned projective": lambda: compose.projective(
        load("left-bar"), load("right-bar"), background=load("bar")
    ),
    "learned negation 0.5": lambda: compose.negation(load("box-0.7-energy"), load("box-0.3-energy"), 0.5),
    "attributes": lambda: compose.attributes(_coind(), {"c1": 1, "c2": 1}),
    "attributes joints": lambda: compose.attributes(
        _coind(), {"c1": 1, "c2": 1}, reference={"c1": 0, "c2": 0}
    ),
    "weighted seen joints": lambda: compose.weighted(
        [_coind().condition(c1=1), _coind().condition(c2=1), _coind()], [1.0, 1.0, -1.0]
    ),
    "mixed learned and Gaussian": lambda: compose.projective(
        load("left-bar"), load("right-bar"), background=Gaussian([0.0, 0.0], 0.01)
    ),
    "product": lambda: compose.product(_A, _NARROW, load("ring8")),
    "mixture with a wide negative component": lambda: compose.weighted(
        [G2, GaussianMixture([[0, 0], [3, 0]], [0.3, 2.0])], [1, -0.5]
    ),
}


@pytest.mark.parametrize("build", list(VALID_COMPOSITES.values()), ids=list(VALID_COMPOSITES))
def test_the_library_s_own_compositions_do_not_warn(build):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        comp = build()
    assert isinstance(comp, compose.Composite)


def test_a_refused_weighting_matches_exact_product():
    """``weighted`` refuses what ``exact_product`` refuses, and accepts what it accepts."""
    with pytest.raises(pc.FactorError, match="not normalisable"):
        exact_product([_A, _B], [1.0, -3.0])
    ok = exact_product([_NARROW, _WIDE], [1.0, -0.5])
    y = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        compose.weighted([_NARROW, _WIDE], [1.0, -0.5]).score(y, 0.0), ok.score(y, 0.0)
    )


# Valid edge cases --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, expect",
    [(3, (3,)), ([2, 3], (2, 3)), (torch.Size([2, 3]), (2, 3)), ((), ()), ((np.int64(2),), (2,))],
    ids=["int", "list", "torch.Size", "scalar", "numpy int"],
)
def test_valid_control_shapes(shape, expect):
    assert tuple(pc.Scene().control("x", shape).shape) == expect


def test_valid_observed_values_are_converted():
    factor = pc.factors.ConditionalGaussian((2,), 0.5)
    sc = pc.Scene()
    sc.control("c", 2)
    sc.observe("a", value=torch.tensor([1, 2]), factor=factor, condition="c")
    assert sc["a"]["value"].dtype == torch.get_default_dtype()
    torch.testing.assert_close(sc["a"]["value"], torch.tensor([1.0, 2.0]))
    sc.observe("b", value=np.array([0.5, 1.5]), factor=factor, condition="c")
    assert sc["b"]["value"].dtype == torch.float64  # a float array keeps its precision
    sc.observe("c2", value=[0.5, 1.5], factor=factor, condition="c")
    data = torch.tensor([0.1, 0.2])
    sc.observe("d", value=data, factor=factor, condition="c")
    assert sc["d"]["value"] is data  # float tensors pass through (observables sharing data group)


def test_valid_plates_and_pyro_controls():
    def program():
        with pyro.plate("objs", 3):
            x = pc.control("x", 2)
        pc.observe("y", x, factor=Gaussian(torch.zeros(3, 2), 1.0))

    scene = pc.scene_from_pyro(program)
    assert tuple(scene["x"]["shape"]) == (3, 2)


def test_valid_analytic_factors():
    m = GaussianMixture(np.zeros((2, 3)), torch.ones(2), [0.3, 0.7])
    assert m.num_components == 2 and m.dim == 3
    assert Gaussian(0.0).dim == 1 and Gaussian([[0.0, 1.0]]).event_shape == (1, 2)
    assert exact_product([_A, _B]).num_components == 1


# 7. checkpoints: the config is checked against the weights at load time, each cause its message
def _tiny(**kw):
    torch.manual_seed(0)
    return ResMLP(2, hidden=16, blocks=1, **kw)


def _edited(tmp_path: Path, edit: Callable[[dict], None], name: str = "m") -> Path:
    """A checkpoint whose JSON was edited after saving (its weights' checksum still matches)."""
    path = save(tmp_path / name, _tiny(), schedule=sched.linear(), event_shape=(2,))
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))
    return path


def _set(*keys_value):
    *keys, value = keys_value

    def edit(cfg):
        d = cfg
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return edit


def _evil_state(tmp_path: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    p = tmp_path / "state.pt"
    torch.save({"step": 1, "model": collections.OrderedDict(w=Evil())}, p)
    return p


def _nan_weights(tmp_path: Path) -> Path:
    net = _tiny()
    with torch.no_grad():
        net.inp.weight[0, 0] = float("nan")
    return save(tmp_path / "m", net, schedule=sched.linear(), event_shape=(2,))


def _json_only(d: Path) -> Path:
    path = save(d / "m", _tiny(), schedule=sched.linear(), event_shape=(2,))
    (d / "m.safetensors").unlink()
    return path


CHECKPOINT_CASES: list[tuple[str, Callable[[Path], object], str]] = [
    (
        "event_shape edited",
        lambda d: load(_edited(d, _set("event_shape", [3]))),
        "m.json': event_shape (3,) does not match the architecture (a resmlp of dim 2",
    ),
    (
        "event_shape not ints",
        lambda d: load(_edited(d, _set("event_shape", ["2"]))),
        "m.json': event_shape must be",
    ),
    (
        "input size edited",
        lambda d: load(
            _edited(d, lambda c: (_set("architecture", "dim", 3)(c), _set("event_shape", [3])(c)))
        ),
        "m.safetensors' do not match the architecture in 'm.json': tensor 'inp.weight' has shape (16, 2)",
    ),
    (
        "hidden edited",
        lambda d: load(_edited(d, _set("architecture", "hidden", 8))),
        "do not match the architecture",
    ),
    (
        "condition added",
        lambda d: load(_edited(d, _set("architecture", "attributes", {"a": 2}))),
        "tensor 'cond.tables.a.weight' (3, 16) is missing",
    ),
    ("blocks removed", lambda d: load(_edited(d, _set("architecture", "blocks", 0))), "is not part of it"),
    (
        "sigma_data",
        lambda d: load(_edited(d, lambda c: c.update(parameterisation="eps-precond", sigma_data=-1.0))),
        "sigma_data must be a positive",
    ),
    ("NaN weights", lambda d: load(_nan_weights(d)), "tensor 'inp.weight' holds NaN"),
    (
        "pickle file",
        lambda d: (torch.save(_tiny().state_dict(), d / "model.pt"), load(d / "model.pt")),
        "model.pt' is a pickled torch file: probcomp refuses to load it, because unpickling can execute code",
    ),
    (
        "weights without json",
        lambda d: (_edited(d, _set("x", 1)).unlink(), load(d / "m.safetensors")),
        "m.safetensors' has no config 'm.json' beside it",
    ),
    ("a directory", lambda d: load(d), "is a directory, not a checkpoint"),
    ("missing json path", lambda d: load(d / "none.json"), "none.json' does not exist"),
    ("missing stem", lambda d: load(d / "none"), "no checkpoint"),
    ("json without weights", lambda d: load(_json_only(d)), "m.safetensors' for"),
    ("unknown zoo name", lambda d: load("ring9"), "no checkpoint 'ring9': not a zoo model"),
    (
        "other file",
        lambda d: ((d / "notes.txt").write_text("hi"), load(d / "notes.txt")),
        "is not a probcomp checkpoint",
    ),
    ("not a path", lambda d: load(3), "a checkpoint is a zoo name or a path"),
    (
        "unsafe training state",
        lambda d: _resume(_evil_state(d), _tiny(), _tiny(), None, torch.Generator(), None),
        "state.pt': it holds objects other than tensors, and loading those would execute code",
    ),
]


@pytest.mark.parametrize(
    "call, part", [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES]
)
def test_bad_checkpoints_are_one_line_data_errors(tmp_path, call, part, capsys):
    with pytest.raises(pc.DataError) as info:
        call(tmp_path)
    msg = str(info.value)
    assert part in msg, msg
    assert "\n" not in msg and "weights_only" not in msg, msg
    assert "executed" not in capsys.readouterr().out  # nothing in a file ever runs


def test_distinct_causes_have_distinct_messages(tmp_path):
    messages = set()
    for _, call, _ in CHECKPOINT_CASES:
        d = tmp_path / str(len(messages))
        d.mkdir()
        with pytest.raises(pc.DataError) as info:
            call(d)
        messages.add(str(info.value).replace(str(d), "DIR"))
    assert len(messages) == len(CHECKPOINT_CASES)


def test_valid_checkpoints_load_by_every_spelling(tmp_path):
    path = save(tmp_path / "box-0.7", _tiny(), schedule=sched.linear(), event_shape=(2,))
    y = torch.randn(3, 2)
    ref = load(path).eps(y, 0.3)
    for spelling in (tmp_path / "box-0.7", str(tmp_path / "box-0.7.safetensors"), str(path)):
        assert torch.equal(load(spelling).eps(y, 0.3), ref)
    assert load("ring8").event_shape == (2,)
