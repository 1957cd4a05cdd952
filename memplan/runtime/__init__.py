"""The runnable side of a training step (torch imported by the submodules, never here).

- `memplan.runtime.step`: `Step` (model, batch, optimizers, autocast, phase marks) and the step
  functions several methods share (first-order, zeroth-order, inference);
- `memplan.runtime.context`: `RunContext`, what a method's `build` gets: the HF model with the
  workload's dtype, attention and checkpointing, the synthetic batch and the autocast context;
- `memplan.runtime.emulation`: modes that make cpu and meta runs behave like the CUDA run.

It sits beside `memplan.programs` (the estimator's side) below `memplan.methods`: methods build
their runnable steps from it; the measurement backends (`memplan.measure`) run those steps.
"""
