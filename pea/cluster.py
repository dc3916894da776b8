"""The Ray cluster every distributed stage runs on (Ray Train for training, Ray Data for the data stages):
the profile's cluster, or a local Ray on loopback. One place connects, so every stage finds the same one."""

from pea.profiles import Profile


def connect(profile: Profile) -> None:
    """Connect to `profile.ray.address`, or start a local Ray on 127.0.0.1 (no-op when already connected)."""
    import ray

    if ray.is_initialized():
        return
    if profile.ray.address:
        ray.init(address=profile.ray.address, log_to_driver=True)
    else:  # a local Ray: on loopback only
        cpus = max(2, int(profile.ray.num_workers * profile.ray.cpus_per_worker))
        # the dashboard process serves the state API that Ray Train polls; it listens on 127.0.0.1
        ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
