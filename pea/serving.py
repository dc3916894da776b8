"""The registered model: a PEA adapter as an MLflow pyfunc. `predict` takes native prompts and returns the
conditioning a diffusers pipeline takes (`prompt_embeds`, and `pooled_prompt_embeds` on SDXL), so a
serving stack can feed any SD/SDXL pipeline of the adapter's family with it."""

from importlib import metadata

import mlflow.pyfunc

PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "pydantic")


def requirements() -> list[str]:
    """Pinned to what produced the model (so MLflow does not have to infer them)."""
    return [f"{p}=={metadata.version(p)}" for p in PACKAGES]


class PEAPyfunc(mlflow.pyfunc.PythonModel):
    """model_config: `lang`, `preset`, `model_cache` (where built-locally encoders live; a hub id needs none)."""

    def load_context(self, context):
        from pathlib import Path

        from pea.adapter import load_adapter
        from pea.conditioning import StudentConditioner
        from pea.inference import student_spec
        from pea.languages import get_language
        from pea.models.encoders import load_text_encoder
        from pea.presets import get_preset

        config = context.model_config
        language, preset = get_language(config["lang"]), get_preset(config["preset"])
        folder = Path(context.artifacts["adapter"])
        spec = student_spec(folder, language, preset)  # the encoder variant the adapter was trained on, if any
        adapter = load_adapter(folder, spec.hidden_size, language=language.code)
        encoder = load_text_encoder(spec, Path(config["model_cache"]))
        self.conditioner = StudentConditioner(encoder, adapter.eval(), zero_null=False)

    def predict(self, context, model_input: list[str], params=None):
        """The `list[str]` type hint is the model's input signature: MLflow validates the input against it and
        hands a one-column DataFrame (`{"prompt": [...]}`, as a serving endpoint sends it) over as its list."""
        import pandas as pd

        cond = self.conditioner(list(model_input))
        out = {"prompt_embeds": [c.tolist() for c in cond.context]}
        if cond.pooled is not None:
            out["pooled_prompt_embeds"] = [p.tolist() for p in cond.pooled]
        return pd.DataFrame(out)
