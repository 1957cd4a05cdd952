"""The built-in model families, one module each, registering a `memplan.models.family.Family`.
A new family is one module here plus its import below, and its forward program in
memplan.programs (docs/contributing.md, "Adding a model family")."""

# isort: off
from memplan.models.families import (  # noqa: F401
    llama,
    opt,
    roberta,
    qwen,
    gpt_neox,
    gpt2,
    phi3,
    gemma,
    falcon,
)
# isort: on
