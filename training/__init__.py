"""How the shipped reference models were made and how they are scored: not part of the engine.

The engine ships the trained weights and the paths to them (`omni_backend.reference`); this package
holds what produced them and what checks them, which only the tests, the benchmarks and a person
retraining need:

    train.py, train_edit.py            the two training commands (`python -m omni_diffusion_nodes.training.train`)
    dataset.py, edit_dataset.py        the procedural scenes and edits (seeded, rendered with numpy)
    components.py, edit_components.py  the untrained parts: tokenizers, frozen text encoders, configs
    vae_training.py, dit_training.py,  the training loops
    edit_training.py
    evaluate.py, edit_evaluate.py      prompt and edit following, scored on held-out combinations

It imports the engine (to build and score pipelines through the same code a user's folder takes);
nothing in the engine, the graph check, the nodes or the CLI imports it.
"""
