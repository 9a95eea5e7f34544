"""Child process that trains one fastText model: ``python -m ... ARGS_JSON``.

The fasttext-numpy2 wheel leaves part of the model's memory uninitialised at train time, so
the same data and seed sometimes train a different model or abort with "Encountered NaN."
Training in a fresh process with ``MALLOC_PERTURB_=255`` (glibc then zero-fills every
allocation) makes it deterministic; ``classifier.train_classifier`` launches this module so.
"""

import json
import sys

if __name__ == "__main__":
    import fasttext

    args = json.loads(sys.argv[1])
    out = args.pop("output")
    fasttext.train_supervised(**args).save_model(out)
