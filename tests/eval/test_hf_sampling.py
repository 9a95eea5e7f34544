"""Sampled evaluation with the transformers backend draws from the whole distribution, as
the vLLM backend does: no top-k that the generation config never asked for."""

from dsm_engine.eval.generation import GenerationConfig, HFGenerator


def test_sampling_is_not_cut_to_generates_default_top_k(tiny_hf_model):
    # a random tiny Llama is near-uniform over ~50k tokens: 300 draws give ~300 distinct
    # first tokens, where transformers' default top-k would allow at most 50
    gen = HFGenerator(tiny_hf_model, batch_size=1, device="cpu")
    config = GenerationConfig(max_new_tokens=1, temperature=1.0, top_p=1.0, num_samples=300)
    (samples,) = gen.generate(["The answer is"], config)
    assert len(samples) == 300
    assert len(set(samples)) > 150, len(set(samples))
