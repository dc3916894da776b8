"""`python -m pea.train.entry SUBMISSION_ID REQUEST`: the driver of a training job on the Ray cluster, as
pea.train.jobs submits it. It trains in this process, on the cluster it runs in, as `pea train` does with a
local profile (under the run's lock), and leaves how it ended in the run's folder (jobs.OUTCOME) for whoever
waits for the job."""

import logging
import os
import sys
import traceback
from collections.abc import Mapping
from dataclasses import asdict

from pea.errors import PeaError, redact
from pea.languages import get_language
from pea.layout import train_dir
from pea.presets import get_preset
from pea.profiles import Profile, load_profile
from pea.train.jobs import OUTCOME, JobRequest
from pea.train.run import train_adapter

REDACTED = ":***@"  # how pea.errors.redact writes a URI's password


def cluster_profile(submitted: dict, env: Mapping[str, str]) -> Profile:
    """The submitter's profile, run here. Its URIs came with their passwords as ***: each is taken from this
    cluster's own profile (PEA_PROFILE and the PEA_* variables of the Ray head, e.g. PEA_MLFLOW_TRACKING_URI
    from a secret), which must name the same URI. Ray is the cluster this job runs on, driven from here."""
    fields = dict(submitted)
    for key, value in submitted.items():
        if isinstance(value, str) and REDACTED in value:
            own = str(getattr(load_profile(env.get("PEA_PROFILE", submitted["name"]), env=env), key))
            if redact(own) != value:
                raise PeaError(f"the job's {key} {value} has a password, and the Ray head's profile does not have that "
                               f"URI ({redact(own)})",
                               f"set PEA_{key.upper()} on the Ray head (from a secret) to that URI with its password")
            fields[key] = own
    fields["ray"] = submitted["ray"] | {"address": "auto", "jobs_address": None}
    return Profile.model_validate(fields)


def main(argv: list[str]) -> int:
    """Train as asked; 0, or 2 for an error the user can fix (a PeaError), 1 for another."""
    submission_id, request = argv[0], JobRequest.model_validate_json(argv[1])
    storage = None

    def leave(**outcome) -> None:
        if storage is not None:
            storage.write_json({"submission_id": submission_id} | outcome,
                               *train_dir(request.lang, request.train.run_name, OUTCOME))

    try:
        profile = cluster_profile(request.profile, os.environ)
        storage = profile.storage()
        result = train_adapter(profile, get_language(request.lang), get_preset(request.preset), request.train,
                               request.switches, request.override_config)
    except PeaError as e:
        leave(error={"problem": e.problem, "fix": e.fix})
        print(f"error: {e.problem}" + (f"\n  fix: {e.fix}" if e.fix else ""), file=sys.stderr)
        return 2
    except Exception as e:
        print(redact(traceback.format_exc()), file=sys.stderr)  # MLflow's errors quote the URI, password included
        leave(error={"problem": redact(f"training job {submission_id} failed: {type(e).__name__}: {e}".splitlines()[0]),
                     "fix": "see the job's log; run again with the same run name to continue from the last checkpoint"})
        return 1
    leave(result=asdict(result))
    return 0


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pea").setLevel(logging.INFO)  # the job's log shows pea's progress lines
    sys.exit(main(sys.argv[1:]))
