"""Operator tools that talk HTTP to any running gateway: the model card's
performance tables (`seed`), its accuracy checks (`verify`), and a flood of
concurrent streams (`flood`). Nothing here imports the gateway's code."""
