import pytest


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One cache of tiny built models for the whole session (building them takes a few seconds)."""
    return tmp_path_factory.mktemp("models")
