"""The synthetic arithmetic task: disjoint splits, clean pretraining text, a usable tokenizer."""

from __future__ import annotations

from dsm_engine.tasks import arithmetic as ar


def test_splits_do_not_overlap():
    splits = {s: ar.make_problems(s, 3000, seed=0) for s in ar.SPLITS}
    keys = {s: {(p.template, p.a, p.b) for p in ps} for s, ps in splits.items()}
    texts = {s: {p.question for p in ps} for s, ps in splits.items()}
    for a in ar.SPLITS:
        assert len(splits[a]) > 300
        for b in ar.SPLITS:
            if a < b:
                assert not keys[a] & keys[b], (a, b)
                assert not texts[a] & texts[b], (a, b)
    for s, ps in splits.items():
        assert all(ar.split_of(p.template, p.a, p.b) == s for p in ps)


def test_pretraining_text_never_contains_train_or_heldout_problems():
    docs = "\n".join(ar.pretraining_texts(5000, seed=0))
    for split in ("train", "heldout"):
        for p in ar.make_problems(split, 300, seed=1):
            assert p.question not in docs


def test_answers_are_correct_and_noise_only_in_pretraining_text():
    for p in ar.make_problems("heldout", 200):
        assert p.answer == eval(f"{p.a}{p.op}{p.b}")  # operands are our own integers
        assert p.solution().endswith(f"\\boxed{{{p.answer}}}.")


def test_tokenizer_round_trips_and_loads_in_transformers(tmp_path):
    docs = ar.pretraining_texts(2000)
    path = ar.build_tokenizer(docs, tmp_path / "tok" / "tokenizer.json", vocab_size=384)
    tok = ar.load_tokenizer(path)
    assert len(tok) <= 384 and tok.eos_token_id == 2 and tok.pad_token_id == 0
    for d in docs[:50]:
        ids = tok(d, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == d
    digits = tok.convert_ids_to_tokens(tok("123", add_special_tokens=False)["input_ids"])
    assert digits == ["1", "2", "3"]
