"""`mpt-train`: pre-train, fine-tune, evaluate and predict with the mesh regression transformer.

Each command maps its options onto the frozen config dataclasses of the trainer's
components; torch is imported inside the commands so `--help` is fast.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpt")
def main() -> None:
    """MPT trainer: pre-train on MoCap heatmaps from a store, fine-tune on images, evaluate.

    \b
    Typical use:
      mpt-train pretrain --shards ./store --preset tiny --out runs/pre
      mpt-train evaluate --checkpoint runs/pre/latest --shards ./store --split val
      mpt-train finetune --init runs/pre/latest --data mix.yaml --out runs/ft
      mpt-train predict --checkpoint runs/ft/latest --image person.jpg --out pred/
    Runs on CUDA when a GPU is present and on the CPU otherwise; use torchrun for many GPUs.
    """


# === section: pretrain (pretrain, evaluate, bench) ===
# === end section: pretrain ===

# === section: finetune (finetune, predict, image evaluation) ===
# === end section: finetune ===


if __name__ == "__main__":
    main()
