"""`mpt-data`: make synthetic inputs, build, freeze, verify and inspect MPT stores.

Each command maps its options onto one frozen config dataclass of the module that does
the work; heavy imports (smplx, dask, torch) happen inside the commands so `--help` is fast.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpt")
def main() -> None:
    """MPT data side: turn AMASS motion capture into a frozen store of training pairs.

    \b
    Typical use:
      mpt-data synth --out ./synth                     # synthetic body model + AMASS-format motions
      mpt-data build --recipe pipelines/demo.yaml --out ./store --cameras 8
      mpt-data freeze ./store && mpt-data verify ./store
      mpt-data info ./store
      mpt-data preview ./store --mesh 0 --out mesh0.png
    """


# === section: synth (synthetic body model, motions, pictures) ===
# === end section: synth ===

# === section: build (build, freeze, verify, info, preview, bench) ===
# === end section: build ===

# === section: images (SPIN-format image datasets -> Parquet shards) ===
# === end section: images ===


if __name__ == "__main__":
    main()
