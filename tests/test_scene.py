import networkx as nx
import pyro.distributions as dist
import pytest
import torch

import probcomp as pc
from probcomp import ops
from probcomp.factors import Gaussian


def g(d=2, name=None):
    return Gaussian(torch.zeros(d), 1.0, name=name)


def test_graph_is_bipartite_with_node_attributes():
    sc = pc.Scene()
    x = sc.control("x", (4,))
    z = sc.control("z", 4, prior=dist.Normal(0.0, 1.0))
    sc.observe("a", x, factor=g(4, "fa"))
    sc.observe("w", x, factor=g(2), fn=ops.window(1, 2), weight=0.5, psi=0.1)
    sc.observe("c", x, z, factor=g(4), fn=ops.composite(torch.tensor([0, 1, 1, 0.0])))
    G = sc.graph
    assert isinstance(G, nx.DiGraph)
    assert nx.is_bipartite(G.to_undirected())
    assert G.nodes["x"]["kind"] == "control" and G.nodes["x"]["shape"] == (4,)
    assert G.nodes["a"]["kind"] == "observable" and G.nodes["a"]["factor"].name == "fa"
    assert G.nodes["w"]["weight"] == 0.5 and G.nodes["w"]["psi"] == 0.1
    assert repr(G.nodes["w"]["fn"]).startswith("window")
    assert set(G.predecessors("c")) == {"x", "z"}
    assert G.edges["z", "c"]["position"] == 1
    assert sc.controls == ["x", "z"] and sc.observables == ["a", "w", "c"]
    sc.validate()
    assert "observable w = window" in repr(sc)


def test_non_bipartite_edge_names_the_variable():
    sc = pc.Scene()
    x = sc.control("x", 2)
    y = sc.observe("y", x, factor=g())
    with pytest.raises(pc.SceneError, match="parent 'y' is an observable"):
        sc.observe("y2", y, factor=g())


def test_unknown_parent_and_duplicates():
    sc = pc.Scene()
    sc.control("x", 2)
    with pytest.raises(pc.SceneError, match="unknown parent 'q'"):
        sc.observe("y", "q", factor=g())
    with pytest.raises(pc.SceneError, match="duplicate variable name 'x'"):
        sc.control("x", 3)
    sc.observe("y", "x", factor=g())
    with pytest.raises(pc.SceneError, match="duplicate variable name 'y'"):
        sc.observe("y", "x", factor=g())


def test_shape_mismatch_is_found_at_compile_time():
    sc = pc.Scene()
    x = sc.control("x", (5,))
    sc.observe("win", x, factor=g(2), fn=ops.window(0, 3))  # builds fine: checked once, at compile
    with pytest.raises(pc.ShapeError, match=r"observable 'win'.*\(3,\).*event shape \(2,\)"):
        pc.CompiledScene(sc)


def test_failing_user_function_is_reported_with_shapes():
    sc = pc.Scene()
    x = sc.control("x", (3,))
    sc.observe("y", x, factor=g(2), fn=lambda v: v @ torch.ones(4, 2))
    with pytest.raises(pc.ShapeError, match=r"observable 'y'.*failed on a batch of parents x\(3,\)"):
        sc.validate()


def test_empty_and_unscored_scenes():
    with pytest.raises(pc.SceneError, match="empty"):
        pc.Scene().validate()
    sc = pc.Scene()
    sc.control("x", 2)
    with pytest.raises(pc.SceneError, match="no observables and no priors"):
        sc.validate()
    sc2 = pc.Scene()
    x = sc2.control("x", 2)
    sc2.control("lonely", 2)
    sc2.observe("y", x, factor=g())
    with pytest.raises(pc.SceneError, match="'lonely' is not observed"):
        sc2.validate()


def test_bad_arguments():
    sc = pc.Scene()
    x = sc.control("x", 2)
    with pytest.raises(pc.SceneError, match="psi must be positive"):
        sc.observe("y", x, factor=g(), psi=0.0)
    with pytest.raises(pc.SceneError, match="factor must be a probcomp factor"):
        sc.observe("y", x, factor=dist.Normal(0, 1))
    with pytest.raises(pc.SceneError, match="has no parents"):
        sc.observe("y", factor=g())
    with pytest.raises(pc.ShapeError, match="shape must be positive"):
        sc.control("bad", (0,))
    with pytest.raises(pc.SceneError, match="takes 2 parent"):
        sc.observe("c", x, factor=g(), fn=ops.composite(torch.ones(2)))
    with pytest.raises(pc.ShapeError, match="control 'p'.*cannot be broadcast"):
        sc.control("p", (3,), prior=dist.Normal(torch.zeros(2), 1.0))
    with pytest.raises(pc.SceneError, match="prior must be a pyro distribution"):
        sc.control("p2", (3,), prior="normal")


def test_condition_observables_are_represented_and_rejected_by_reverse_diffusion():
    from probcomp.inference import ReverseDiffusion

    sc = pc.Scene()
    c = sc.control("c", 2, prior=dist.Normal(0.0, 1.0))
    sc.observe("img", value=torch.zeros(2), factor=g(), condition=c)
    assert sc.graph.edges["c", "img"]["role"] == "condition"
    with pytest.raises(pc.SceneError, match="ConceptInversion"):
        ReverseDiffusion(steps=2).compile(sc)
    with pytest.raises(pc.ShapeError, match="value has shape"):
        sc.observe("img2", value=torch.zeros(3), factor=g(), condition=c)


def test_ops_window_composite_linear():
    x = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 4, 5)
    w = ops.window(1, 3)(x)
    torch.testing.assert_close(w, x[:, :, 1:4])
    w2 = ops.window((1, 2), (2, 3), axis=(0, 1))(x)
    torch.testing.assert_close(w2, x[:, 1:3, 2:5])
    with pytest.raises(pc.ShapeError, match="exceeds length 5"):
        ops.window(3, 3)(x)
    bg, obj = torch.zeros(2, 4), torch.ones(2, 4)
    m = torch.tensor([0.0, 1.0, 1.0, 0.0])
    torch.testing.assert_close(ops.composite(m)(bg, obj), m.expand(2, 4))
    a = torch.randn(3, 20)
    torch.testing.assert_close(ops.linear(a)(x), x.reshape(2, 20) @ a.T)
    with pytest.raises(pc.ShapeError, match="mask values"):
        ops.composite(torch.tensor([2.0]))
