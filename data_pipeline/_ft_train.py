"""Child process that trains one fastText model: ``python -P -m ... ARGS_JSON PARENT_PID``.

The fasttext-numpy2 wheel leaves part of the model's memory uninitialised at train time, so
the same data and seed sometimes train a different model or abort with "Encountered NaN."
Training in a fresh process with ``MALLOC_PERTURB_=255`` (glibc then zero-fills every
allocation) makes it deterministic; ``classifier.train_classifier`` launches this module so.
The child dies with its parent (``children.die_with_parent``): a killed mining run leaves no
trainer writing into its iteration folder.
"""

import json
import sys

if __name__ == "__main__":
    from dsm_engine.data_pipeline.children import die_with_parent

    die_with_parent(int(sys.argv[2]))
    import fasttext

    args = json.loads(sys.argv[1])
    out = args.pop("output")
    fasttext.train_supervised(**args).save_model(out)
