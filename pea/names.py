"""Names that other people's scripts depend on (MLflow models and experiments, training run names), each
spelled once."""


def model_name(lang: str) -> str:
    """The registered model of a language's adapters, and the MLflow experiment of its training runs."""
    return f"pea-{lang}"


def run_name(lang: str, preset: str, suffix: str | None = None) -> str:
    """A training job's name (the same name resumes the job): per language and preset, plus a suffix such as
    the flow run's id when every flow run trains its own candidate."""
    return f"{model_name(lang)}-{preset}" + (f"-{suffix}" if suffix else "")
