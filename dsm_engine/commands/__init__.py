"""The top layer: ``dsm`` subcommands that compose the loops and libraries below them.

A command here may import anything in the engine; nothing in the engine imports a command
(``tests/test_layers.py`` checks the direction). Trainers whose command is their own loop
(``dsm train pretrain``, ``sft``, ``rm``) keep their ``main`` beside the loop.
"""
