"""MLflow experiments and runs per language: experiment `pea-<lang>`, one run per training job (found again
by its `pea.train_run` tag). With a local SQLite store, artifacts go under the profile's artifact root
instead of MLflow's default ./mlruns in whatever folder the command ran from."""

TRAIN_RUN_TAG = "pea.train_run"
OUTPUT_ARTIFACTS = "adapter"  # a training run's final output among its MLflow artifacts (a student: its unet/ in it)


def client(tracking_uri: str):
    """The one way pea talks to MLflow: tracking and registry on the same URI (a bare MlflowClient(uri) would read
    the registry from the default ./mlflow.db of whatever folder the command runs in)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def experiment_name(lang: str) -> str:
    from pea.names import model_name

    return model_name(lang)


def experiment_id(tracking_uri: str, artifact_root: str | None, lang: str) -> str:
    mlflow = client(tracking_uri)
    name = experiment_name(lang)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = f"{artifact_root.rstrip('/')}/{name}" if artifact_root else None
    return mlflow.create_experiment(name, artifact_location=location)


def find_train_run(tracking_uri: str, lang: str, run_name: str):
    """The MLflow run of training job `run_name`, or None."""
    mlflow = client(tracking_uri)
    experiment = mlflow.get_experiment_by_name(experiment_name(lang))
    if experiment is None:
        return None
    found = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`{TRAIN_RUN_TAG}` = '{run_name}'",
                               max_results=1)
    return found[0] if found else None
