"""The pyfunc entry MLflow stores with every registered adapter ("models from code": no pickled object)."""

from mlflow.models import set_model

from pea.serving import PEAPyfunc

set_model(PEAPyfunc())
