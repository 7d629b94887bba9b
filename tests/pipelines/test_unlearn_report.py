"""What the unlearning report may claim: the relearning attack's split, the plumbing-check caveat, the plot's
labels."""
from alignkit.pipelines.unlearn import plumbing_caveat, relearn_split, shared_points


def _items(authors):
    return [{"question": f"q{i}", "answer": f"a{i}", "author": a} for i, a in enumerate(authors)]


def test_relearn_split_by_author_when_there_are_several():
    known, held, how = relearn_split(_items(["A", "A", "B", "B", "C", "C"]))
    assert {r["author"] for r in known} == {"A"} and {r["author"] for r in held} == {"B", "C"}
    assert "measured on the other 2 authors' 4 items" in how


def test_relearn_split_by_item_with_one_author():
    items = _items(["A"] * 6)
    known, held, how = relearn_split(items)
    assert len(known) == len(held) == 3 and not {id(r) for r in known} & {id(r) for r in held}
    assert "one author: split by item" in how


def test_relearn_on_a_single_item_says_it_measures_what_it_trained_on():
    known, held, how = relearn_split(_items(["A"]))
    assert known == held
    assert "same single forget item" in how and "not recovery of unseen ones" in how


def test_plumbing_caveat_when_the_target_never_learned_the_forget_set():
    assert "Plumbing check only" in plumbing_caveat({"target": {"forget/rouge": 0.0}, "unlearned": {}})
    assert plumbing_caveat({"target": {"forget/rouge": 0.99}}) is None


def test_models_at_the_same_point_share_one_label():
    rows = {"target": {"forget/rouge": 0.0, "utility": 0.0}, "retain": {"forget/rouge": 1e-9, "utility": 0.0},
            "unlearned": {"forget/rouge": 0.5, "utility": 0.2}}
    assert shared_points(rows, "forget/rouge") == {(0.0, 0.0): ["target", "retain"], (0.5, 0.2): ["unlearned"]}
