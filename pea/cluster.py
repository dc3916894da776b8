"""The Ray cluster every distributed stage runs on (Ray Train for training, Ray Data for the data stages):
the profile's cluster, or a local Ray on loopback. One place connects, so every stage finds the same one.

Ray's workers run in the Python environment that is already there: pea's image on a cluster, the driver's own
virtualenv on a machine. Ray (>= 2.43) would otherwise see a driver started by `uv run` (`uv run pea ...`, a
Prefect worker started with `uv run`, `uv run pytest`) and give every worker `uv run python` in a copy of the
current directory, which builds a virtualenv of its own there and installs the whole locked project into it,
the CUDA wheels included, on a worker's first start. RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 turns that off; a user's
own value wins.
"""

import os

from pea.errors import PeaError
from pea.profiles import Profile

UV_HOOK = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"
# set on import: Ray reads it when Ray is imported, and the processes Ray starts (a local Ray's workers, the
# drivers of Ray jobs) inherit it
os.environ.setdefault(UV_HOOK, "0")


def connect(profile: Profile) -> None:
    """Connect to `profile.ray.address`, or start a local Ray on 127.0.0.1 (no-op when already connected)."""
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return
    # Ray kept the switch's value from when it was imported, which may have been before this module set it (a
    # module that imports Ray first): this process's ray.init and Ray Client read that copy
    hook = ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = os.environ[UV_HOOK].lower() in ("1", "true")
    if profile.ray.address:
        ray.init(address=profile.ray.address, log_to_driver=True)
    else:  # a local Ray: on loopback only
        cpus = max(2, int(profile.ray.num_workers * profile.ray.cpus_per_worker))
        # the dashboard process serves the state API that Ray Train polls; it listens on 127.0.0.1
        ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    if not hook:
        _check_worker_python(ray)


def _check_worker_python(ray) -> None:
    """The switch is off, yet this job's workers would start through `uv run` (a Ray release that reads it
    elsewhere): stop here rather than let every worker install the project again."""
    executable = ray.get_runtime_context().runtime_env.get("py_executable") or ""
    if os.path.basename(executable.split(" ")[0]) == "uv":
        ray.shutdown()
        raise PeaError(f"Ray would start its workers with `{executable}` although {UV_HOOK} is off: each would install "
                       "pea's environment again", f"set {UV_HOOK}=0 in the environment before Ray is imported")
