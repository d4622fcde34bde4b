"""Test helpers shared by the test packages, built on the product's own code.

    processes    free ports, the pretrain command (``deepspeed`` launcher or plain ``python -m``),
                 process trees started in their own session and killed afterwards
    configs      the tiny pretraining YAML the launcher tests run
    shards       small synthetic shards written with bertscale.data_pipeline.schema
    checkpoints  step dirs written with bertscale.model_dir

Importable as ``helpers`` (pyproject: ``pythonpath = ["tests"]``).
"""
