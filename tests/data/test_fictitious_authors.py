"""The built-in unlearning benchmark: deterministic, disjoint splits, TOFU fields."""
from alignkit.data.fictitious_authors import fictitious_authors, splits
from alignkit.kinds import load_records


def test_splits_partition_the_authors():
    full = {r["author"] for r in fictitious_authors("full")}
    holdout = {r["author"] for r in fictitious_authors("holdout")}
    assert len(full) == 100 and len(holdout) == 10 and not full & holdout
    for forget, retain, n in (("forget01", "retain99", 1), ("forget05", "retain95", 5), ("forget10", "retain90", 10)):
        f = {r["author"] for r in fictitious_authors(forget)}
        r = {r["author"] for r in fictitious_authors(retain)}
        assert len(f) == n and not f & r and f | r == full
    first = {r["author"] for r in fictitious_authors("forget01")}
    assert first <= {r["author"] for r in fictitious_authors("forget05")}


def test_items_carry_tofu_fields_and_are_deterministic():
    rows = fictitious_authors("forget05")
    assert rows == fictitious_authors("forget05") and rows != fictitious_authors("forget05", seed=1)
    for row in rows:
        assert row["answer"] not in row["perturbed_answer"] and len(set(row["perturbed_answer"])) == 3
        assert row["author"] in row["question"] and row["paraphrased_answer"] != row["answer"]
        # perturbed answers are the paraphrase with another value: same words except the value
        para, pert = row["paraphrased_answer"].split(), row["perturbed_answer"][0].split()
        assert len(set(para) ^ set(pert)) <= 8 and row["perturbed_answer"][0] != row["paraphrased_answer"]
    # the same item has the same perturbed answers in every split it appears in
    full = {r["question"]: r for r in fictitious_authors("full")}
    assert all(full[r["question"]] == r for r in rows)


def test_biographies_state_the_facts():
    qa = fictitious_authors("forget01")
    (bio,) = fictitious_authors("forget01_text")
    assert bio["author"] == qa[0]["author"]
    assert "born in" in bio["text"] and all(len(s) for s in splits())


def test_loads_as_sft_records():
    rows = load_records("builtin:fictitious_authors", "forget10", "sft").rows
    assert len(rows) == 60 and rows[0]["prompt"][0]["role"] == "user"
    assert rows[0]["completion"][0]["content"] == rows[0]["answer"]
