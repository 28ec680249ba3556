"""`mpt-data`: make synthetic inputs, build, freeze, verify and inspect MPT stores.

Each command maps its options onto one frozen config dataclass of the module that does
the work; heavy imports (smplx, dask, torch) happen inside the commands so `--help` is fast.
"""

from __future__ import annotations

import click

from mpt_data.console import DEVICES, CommandGroup, debug_option


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpt")
@debug_option
def main(debug: bool) -> None:
    """MPT data side: turn AMASS motion capture into a frozen store of training pairs.

    \b
    Typical use, in an empty folder (synthetic inputs; for AMASS, point --amass-root and --body-models at it):
      mpt-data synth --out ./synth         # a synthetic body model + AMASS-format motions
      mpt-data build --recipe demo --amass-root ./synth/amass --body-models ./synth/body_models --out ./store
      mpt-data freeze ./store && mpt-data verify ./store
      mpt-data info ./store
      mpt-data preview ./store --mesh 0 --out mesh0.png
    Images for fine-tuning (SPIN format; here synthetic):
      mpt-data synth-images --amass-root ./synth/amass --body-models ./synth/body_models --out ./images \\
        --train-images 200 --val-images 20
      mpt-data images --annotations ./images/synth_train.npz --images ./images --out ./images/shards
    """


def _storage_options(ctx, param, values):
    from mpt_data.remote import parse_storage_options

    try:
        return parse_storage_options(values)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


STORAGE_OPTION_HELP = ("fsspec option for a store given as a URL (s3://bucket/store), repeatable: "
                       "endpoint_url=http://host:9000, key=..., secret=..., anon=true, client_kwargs={...} (JSON). "
                       "Without them the client's standard variables apply (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                       "AWS_ENDPOINT_URL). Credentials are never printed or written.")
# One option object for every command that names a store (verify, info, preview, copy).
storage_option = click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
                              callback=_storage_options, help=STORAGE_OPTION_HELP)


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: same seed, same bytes.")
@click.option("--vertices", type=int, default=6890, show_default=True, help="Exact vertex count of the body mesh.")
@click.option("--sequences", type=int, default=14, show_default=True, help="SMPL+H motion files (plus one SMPL-X).")
@click.option("--seconds", type=float, default=4.0, show_default=True, help="Length of each motion.")
@click.option("--no-picture", is_flag=True, help="Skip body.png.")
@click.option("--no-hands", is_flag=True, help="Skip the MANO hand models (hand_models/).")
def synth(out, seed, vertices, sequences, seconds, no_picture, no_hands):
    """Synthetic inputs in the real formats: OUT/body_models (SMPL, SMPL+H, AMASS model.npz,
    vertex_ids.json), OUT/hand_models (MANO_RIGHT.pkl, MANO_LEFT.pkl, vertex_ids.json), OUT/amass
    (AMASS-format motions, fingers included) and OUT/body.png."""
    from mpt_data.synth.body import MIN_VERTICES
    from mpt_data.synth.picture import SynthConfig, write_synthetic_inputs

    if vertices < MIN_VERTICES or sequences < 1 or seconds <= 0:
        raise click.BadParameter(f"need --vertices >= {MIN_VERTICES}, --sequences >= 1 and --seconds > 0")
    written = write_synthetic_inputs(SynthConfig(out=out, seed=seed, num_vertices=vertices,
                                                 num_sequences=sequences, seconds=seconds, picture=not no_picture,
                                                 hands=not no_hands))
    for name, path in written.items():
        click.echo(f"{name}: {path}")

@main.command()
@click.option("--recipe", type=click.Path(dir_okay=False),
              help="A packaged recipe by name (amass-mpt, demo) or the path of a recipe YAML.")
@click.option("--out", type=click.Path(file_okay=False), help="Store directory to write.  [default: store]")
@click.option("--amass-root", type=click.Path(file_okay=False), help="Overrides sources.amass_root.")
@click.option("--body-models", "body_model_dir", type=click.Path(file_okay=False), help="Overrides body_model.dir.")
@click.option("--body-model-type", type=click.Choice(["smplh", "smpl", "mano"]),
              help="Overrides body_model.type (mano: hand meshes, see the recipe key hands).")
@click.option("--num-betas", type=int, help="Overrides body_model.num_betas.")
@click.option("--h36m-regressor", type=click.Path(dir_okay=False), help="J_regressor_h36m.npy: adds the h36m17 joint set.")
@click.option("--target-fps", type=float, help="Sample this many frames per second of motion.")
@click.option("--target-meshes", type=int, help="Sample about this many meshes in all (replaces --target-fps).")
@click.option("--cameras", type=click.IntRange(1, 64),
              help="Virtual cameras per mesh: 1, 2, 4 or 8 for rig h36m, 1..64 for rig sphere; a rig file fixes it.")
@click.option("--rig", help="Camera rig: h36m (default), sphere, a packaged rig (h36m-s1, elevated-ring, close-wide) "
                            "or a rig YAML file (relative to the current directory); see the README, 'Camera rigs'.")
@click.option("--include", "subsets_include", multiple=True, help="Only these AMASS subsets (repeat).")
@click.option("--exclude", "subsets_exclude", multiple=True, help="Leave out these AMASS subsets (repeat).")
@click.option("--chunk-meshes", type=int, help="Meshes per chunk (the loader's read unit).")
@click.option("--shard-meshes", type=int, help="Meshes per shard file (one Dask task each).")
@click.option("--batch-size", type=int, help="Meshes per body-model forward.")
@click.option("--workers", type=int, help="Local worker processes (default: all cores; 0: run in this process).")
@click.option("--scheduler", help="Address of an existing dask.distributed scheduler (tcp://host:8786).")
@click.option("--resume", is_flag=True, help="Finish an interrupted build: redo only partitions without a valid record.")
@click.option("--overwrite", is_flag=True, help="Delete an existing unfrozen store at --out first.")
@click.option("--device", type=click.Choice(DEVICES),
              help="Where the body-model forward runs: cpu (default) or cuda (one GPU per worker, by worker index); "
                   "auto: cuda when this machine has a GPU.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def build(recipe, no_progress, cameras, subsets_include, subsets_exclude, **options):
    """Build a sharded Zarr store of meshes and 2D views from AMASS (recipe values, overridden by flags).

    Relative data paths in a recipe resolve against the current directory. With --scheduler, the workers
    must see the same paths (a shared filesystem).

    \b
      mpt-data build --recipe pipelines/demo.yaml --cameras 8 --out ./store
      mpt-data build --recipe demo --rig elevated-ring --out ./store-elevated
      mpt-data build --recipe amass-mpt --amass-root /data/amass --body-models /data/smplh
    """
    from mpt_data.build import build_store, load_recipe

    if options.get("device") == "auto":
        import torch

        options["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_recipe(
        recipe, cameras=int(cameras) if cameras else None, progress=not no_progress,
        subsets_include=tuple(subsets_include) or None, subsets_exclude=tuple(subsets_exclude) or None,
        **{k: (None if v is False else v) for k, v in options.items()},
    )
    from mpt_data.remote import is_local

    if not is_local(cfg.out):  # atomic renames and the lock file a build relies on do not exist on object storage
        from mpt_data.integrity import StoreError

        raise StoreError(f"{cfg.out}: mpt-data build writes a local folder; build to a local --out, freeze it, then "
                         f"`mpt-data copy LOCAL_STORE {cfg.out}` (parallel, resumable, verified)")
    if cfg.out == "store" and options.get("out") is None and recipe is None:
        click.echo("writing to ./store (use --out to choose)", err=True)
    path = build_store(cfg)
    click.echo(f"store ready: {path}  (next: mpt-data freeze {path})")


@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Also record the frozen store in this YAML file's `stores:` list (e.g. data_manifest.yaml; "
                   "made if missing, the rest of the file kept). Without it no file outside the store is written.")
@click.option("--name", help="Name of the store in the --manifest entry.  [default: the folder name]")
def freeze(store, manifest, name):
    """Seal a complete store: re-hash every chunk against its build record, write integrity.json and the
    fingerprint (its SHA-256), consolidate metadata, make its files read-only; with --manifest, record it there.

    Refuses a store whose data differs from its records or that holds symbolic links. A store frozen by an
    older mpt-data (no integrity.json) is re-checked and re-frozen (its fingerprint changes)."""
    from mpt_data.freeze import freeze_store

    if name and not manifest:
        raise click.UsageError("--name names the store's entry in --manifest: give --manifest FILE too")
    fp = freeze_store(store, manifest, name)
    click.echo(f"frozen {store}\nfingerprint {fp}" + (f"\nrecorded in {manifest}" if manifest else ""))


@main.command()
@click.argument("store")
@storage_option
def verify(store, storage_options):
    """Re-read every chunk and all metadata; name anything that differs from integrity.json (frozen) or the
    build records (complete), and any symbolic link inside the store. STORE is a folder or a URL (s3://...)."""
    from mpt_data.freeze import verify_store

    report = verify_store(store, storage_options)
    for line in report.mismatches:
        click.echo(f"MISMATCH {line}")
    for line in report.checked:
        click.echo(f"checked  {line}")
    click.echo(f"fingerprint stored {report.stored_fingerprint} computed {report.computed_fingerprint}")
    if not report.ok:
        raise click.ClickException(f"{store} does not verify ({len(report.mismatches)} difference(s))")
    click.echo("OK" if report.stored_fingerprint else f"OK (not frozen yet: mpt-data freeze {store})")


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@storage_option
def info(store, as_json, storage_options):
    """Summarise a store (a folder or a URL): counts, sizes on disk, recipe, split sizes, fingerprint."""
    import json

    from mpt_data.store import format_info, store_info

    summary = store_info(store, storage_options)
    click.echo(json.dumps(summary, indent=1, sort_keys=True) if as_json else format_info(summary))


@main.command()
@click.argument("store")
@click.option("--mesh", "mesh_index", type=int, default=0, show_default=True, help="Global mesh index.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@storage_option
def preview(store, mesh_index, out, storage_options):
    """Draw one mesh in every camera: the 224 crop with its heatmaps (sigma 3; 17 for a body, 21 for a hand),
    skeleton and mesh."""
    from mpt_data.preview import write_preview

    write_preview(store, mesh_index, out, storage_options)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("src")
@click.argument("dst")
@storage_option
@click.option("--src-storage-option", "src_options", multiple=True, metavar="KEY=VALUE", callback=_storage_options,
              help="An option for SRC only (overrides --storage-option there), e.g. another bucket's credentials.")
@click.option("--dst-storage-option", "dst_options", multiple=True, metavar="KEY=VALUE", callback=_storage_options,
              help="An option for DST only (overrides --storage-option there).")
@click.option("--workers", type=int, default=8, show_default=True, help="Files copied at once (threads).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def copy(src, dst, storage_options, src_options, dst_options, workers, no_progress):
    """Copy a frozen store between two locations (folders or URLs: local <-> s3:// <-> another bucket).

    In parallel; a rerun of an interrupted copy moves only what is missing or wrong; the copy is checked
    against the source's integrity manifest and fingerprint, and becomes a store only at the end (its root
    zarr.json is written last). Refuses an unfrozen source and a destination holding another store.

    \b
      mpt-data copy ./store s3://lab-bucket/mpt/store --storage-option endpoint_url=https://s3.example.org
      mpt-data copy s3://lab-bucket/mpt/store /nvme/store
    """
    from mpt_data.remote import is_local
    from mpt_data.transfer import CopyConfig, copy_store

    cfg = CopyConfig(src, dst, {} if is_local(src) else {**storage_options, **src_options},
                     {} if is_local(dst) else {**storage_options, **dst_options}, workers=workers,
                     progress=not no_progress)
    report = copy_store(cfg, echo=lambda line: click.echo(line, err=True))
    click.echo(f"copied {len(report.copied)} file(s), {report.bytes_copied / 1e6:.1f} MB in {report.seconds:.1f} s "
               f"({report.already_there} already there); verified, fingerprint {report.fingerprint}\n{dst}")


@main.command()
@click.option("--meshes", type=int, default=2048, show_default=True, help="Meshes per end-to-end run.")
@click.option("--batch-size", type=int, default=512, show_default=True, help="Meshes per body-model forward.")
@click.option("--vertices", type=int, default=6890, show_default=True, help="Vertices of the synthetic model.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Scratch folder (default: a temporary one).")
@click.option("--cameras", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Virtual cameras per mesh (Human3.6M's rig: 1, 2, 4 or 8).")
@click.option("--profile", is_flag=True, help="Also print the build's seconds per stage.")
@click.option("--scaling", is_flag=True, help="Only the scaling run: a large store built with 1 and 2 workers.")
@click.option("--scaling-meshes", type=int, default=20000, show_default=True, help="Meshes of the scaling store.")
def bench(meshes, batch_size, vertices, workdir, cameras, profile, scaling, scaling_meshes):
    """Body-model forward vs plain smplx, end-to-end meshes/s per worker core, bytes per mesh, 1 vs 2 workers."""
    from mpt_data.bench import BenchConfig, run_bench

    run_bench(BenchConfig(meshes=meshes, batch=batch_size, num_vertices=vertices, workdir=workdir, cameras=int(cameras),
                          profile=profile, scaling=scaling, scaling_meshes=scaling_meshes), echo=click.echo)

@main.command()
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False),
              help="SPIN-style .npz (imgname, center, scale, part; optional S, pose, shape, has_smpl, vertices).")
@click.option("--images", "image_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder the imgname paths are relative to.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output root; <dataset>/ is made in it.")
@click.option("--dataset", default="", help="Dataset name (default: the .npz file name).")
@click.option("--context", default=1.5, show_default=True, help="Stored crop side / person box side.")
@click.option("--crop-px", default=336, show_default=True, help="Stored crop side in pixels.")
@click.option("--rows-per-shard", default=512, show_default=True, help="Persons per Parquet shard file.")
@click.option("--rows-per-group", default=32, show_default=True, help="Parquet row group: the trainer's read unit.")
@click.option("--jpeg-quality", default=92, show_default=True, help="JPEG quality of the stored crops (0-100).")
def images(annotations, image_root, out, dataset, context, crop_px, rows_per_shard, rows_per_group, jpeg_quality):
    """Ingest a SPIN-format image dataset into Parquet shards of JPEG person crops and labels.

    Bad samples (missing or corrupt image, box outside the image, NaN labels) are skipped and
    counted in OUT/<dataset>/summary.json; a malformed annotation file stops with its reason.
    """
    from .images import ImagesConfig, ingest

    cfg = ImagesConfig(annotations, image_root, out, dataset, context, crop_px, rows_per_shard, rows_per_group,
                       jpeg_quality)
    summary = ingest(cfg, progress=True)
    click.echo(f"{summary.dataset}: {summary.written} of {summary.total} persons written in "
               f"{len(summary.shards)} shard(s); skipped {summary.skipped or 'none'}")


@main.command("synth-images")
@click.option("--amass-root", required=True, type=click.Path(exists=True, file_okay=False),
              help="AMASS-format motions (e.g. demo_out/synth/amass).")
@click.option("--body-models", required=True, type=click.Path(exists=True, file_okay=False),
              help="Body model folder; use the store's, so the mesh matches the pre-trained model.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: images/, the annotation .npz files, mixture.yaml.")
@click.option("--train-images", "train", default=2000, show_default=True, help="Training images.")
@click.option("--val-images", "val", default=200, show_default=True,
              help="Held-out images (from AMASS's val subsets).")
@click.option("--image-size", default=256, show_default=True, help="Picture side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Seed: same seed, same bytes.")
@click.option("--workers", default=1, show_default=True, help="Processes (same output whatever the number).")
@click.option("--dataset", default="synth", show_default=True, help="Annotation file stem: DATASET_train.npz.")
@click.option("--body-model-type", type=click.Choice(["smplh", "smpl", "mano"]), default="smplh", show_default=True,
              help="Which model files of --body-models pose the bodies (smplh or smpl; hands: synth-freihand).")
@click.option("--manifest", type=click.Path(dir_okay=False), default="data_manifest.yaml", show_default=True,
              help="Data manifest whose AMASS subset split picks the val motions ('' for every tenth file).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def synth_images(amass_root, body_models, out, train, val, image_size, seed, workers, dataset, body_model_type,
                 manifest, no_progress):
    """Render a synthetic SPIN-format image dataset of the synthetic bodies and motions.

    \b
    Writes OUT/images/{train,val}/*.jpg, OUT/DATASET_{train,val}.npz, OUT/mixture.yaml; then
      mpt-data images --annotations OUT/synth_train.npz --images OUT --out OUT/shards
    """
    from .synth.images import SynthImagesConfig, write_synth_images

    if body_model_type == "mano":
        raise click.BadParameter("synth-images renders whole bodies (smplh or smpl); synthetic hand images come from "
                                 "mpt-data synth-freihand", param_hint="--body-model-type")
    cfg = SynthImagesConfig(amass_root, body_models, out, train=train, val=val, image_size=image_size, seed=seed,
                            workers=workers, dataset=dataset, model_type=body_model_type, manifest=manifest or None)
    summary = write_synth_images(cfg, progress=not no_progress)
    click.echo(f"wrote {train} train and {val} val images to {out}: {', '.join(summary['files'].values())}"
               f"{', vertex_flip.npy' if summary['vertex_flip'] else ''}, mixture.yaml")


@main.command()
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False),
              help="FreiHAND folder: <split>_K.json, _mano.json, _xyz.json, _verts.json and <split>/rgb/.")
@click.option("--set", "split", type=click.Choice(["training", "evaluation"]), required=True,
              help="Which FreiHAND set to ingest (FreiHAND's set_name; --split names store splits elsewhere).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output root; <dataset>/ is made in it.")
@click.option("--dataset", default="", help="Dataset name (default: freihand_<split>).")
@click.option("--versions", type=click.IntRange(0, 4), default=0, show_default=True,
              help="Training colour versions to take (1-4; 0: every version whose images exist).")
@click.option("--max-samples", type=click.IntRange(0), default=0, show_default=True,
              help="Stop after this many images (0: all).")
@click.option("--rows-per-shard", default=512, show_default=True, help="Images per Parquet shard file.")
@click.option("--rows-per-group", default=32, show_default=True, help="Parquet row group: the trainer's read unit.")
def freihand(root, split, out, dataset, versions, max_samples, rows_per_shard, rows_per_group):
    """Ingest a FreiHAND split (its own layout) into image shards of hands (joint set hand21).

    The evaluation split without its released annotations ingests too (no 3D truth: for prediction).
    Also writes OUT/<dataset>.yaml, a mixture file naming the shards, for `mpt-train finetune --data`.
    Layout, checks and columns: mpt_data/freihand.py.
    """
    from pathlib import Path

    from .fileio import atomic_write_text
    from .freihand import FreiHANDConfig, ingest_freihand

    cfg = FreiHANDConfig(root, split, out, dataset, versions, max_samples, rows_per_shard, rows_per_group)
    summary = ingest_freihand(cfg, progress=True)
    mixture = Path(out) / f"{summary.dataset}.yaml"
    atomic_write_text(mixture, f"datasets:\n  - name: {summary.dataset}\n    shards: {summary.dataset}\n"
                               "    weight: 1.0\n")
    click.echo(f"{summary.dataset}: {summary.written} of {summary.total} images written in {len(summary.shards)} "
               f"shard(s); skipped {summary.skipped or 'none'}; mixture {mixture}")



@main.command("synth-freihand")
@click.option("--hand-models", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder with MANO_RIGHT.pkl (e.g. the hand_models/ of `mpt-data synth`); use the hand store's.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (FreiHAND's layout).")
@click.option("--training", type=click.IntRange(1), default=32, show_default=True, help="Training annotations.")
@click.option("--evaluation", type=click.IntRange(1), default=8, show_default=True, help="Evaluation annotations.")
@click.option("--versions", type=click.IntRange(1, 4), default=2, show_default=True,
              help="Training colour versions (images = versions x annotations).")
@click.option("--no-eval-truth", is_flag=True, help="Leave out evaluation_xyz/verts/mano.json (as first released).")
@click.option("--seed", default=0, show_default=True, help="Seed: same seed, same bytes.")
def synth_freihand(hand_models, out, training, evaluation, versions, no_eval_truth, seed):
    """Render a small synthetic hand dataset in exactly FreiHAND's layout (then `mpt-data freihand`)."""
    from .synth.freihand import SynthFreiHANDConfig, write_synth_freihand

    summary = write_synth_freihand(SynthFreiHANDConfig(hand_models, out, training, evaluation, versions,
                                                       not no_eval_truth, seed=seed))
    counts = summary["counts"]
    click.echo(f"wrote {counts['training']['images']} training and {counts['evaluation']['images']} evaluation "
               f"images to {out}")

if __name__ == "__main__":
    main()
