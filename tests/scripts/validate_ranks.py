"""Each rank validates the same sources; only rank 0 reads the rows. Writes what each rank got and how many scans
it ran."""

import json
import os
import sys

import mixwise.validation as validation
from mixwise import DataError, Mixture, Source, validate_source
from mixwise.distributed import shutdown
from mixwise.toy import corrupt_rows, make_source

out_dir = sys.argv[1]
scans = []
real_scan = validation.run_scan


def counted(*args, **kwargs):
    scans.append(args[0].name)
    return real_scan(*args, **kwargs)


validation.run_scan = counted
bad = corrupt_rows(make_source("colour", 12, seed=3), image_row=4, empty_answer_row=7)
kept, report = validate_source(Source("colour", bad), on_error="skip", cache=False)
try:
    validate_source(Source("colour", bad), cache=False)  # raises on every rank, none waits forever
    raised = None
except DataError as err:
    raised = str(err)
mixture = Mixture({"colour": bad, "count": make_source("count", 5)}, budget=8, validate="skip", cache=False)
rank = int(os.environ["RANK"])
with open(f"{out_dir}/rank{rank}.json", "w") as f:
    json.dump(
        {
            "scans": scans,
            "report": report.to_dict(),
            "kept": list(kept.dataset["id"]),
            "raised": raised,
            "mixture": list(mixture.dataset["id"]),
            "fingerprint": mixture.dataset._fingerprint,
        },
        f,
    )
shutdown()
