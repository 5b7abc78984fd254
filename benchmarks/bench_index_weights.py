"""The index recipes' frontier on validation: for a finer grid of part weights than training tries, at each
probability power, the validation products' precision@10 among themselves (category, subcategory, tied share),
their vectors made by the models the training split alone made (kept in the work folder), and the recipes no
other beats on both figures.

    uv run python benchmarks/bench_index_weights.py --bundle BUNDLE --work-dir BUNDLE.work \\
        --products P.csv --images I.csv --image-dir DIR [--split-seed 0]

The bundle must have been trained (its combined model last) with that work folder and split seed. Validation only:
the test split is for the one figure training reports.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fbml.bundle.listings import PROBABILITY_POWERS, ListingRecipe, ListingWeights, alikeness
from fbml.bundle.store import load_bundle
from fbml.tables.clean import clean_tables
from fbml.workflows.index import MAX_TIED, MIN_CATEGORY_PRECISION, catalogue_parts
from fbml.workflows.inputs import training_data, with_photo_ids
from fbml.workflows.train import split_models

STEPS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)


def weightings() -> list[tuple[float, ...]]:
    """One weighting of each proportional family of ``STEPS``^4, the largest weight 1."""
    return sorted({tuple(round(value / max(values), 4) for value in values)
                   for values in itertools.product(STEPS, repeat=4) if any(values)})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--bundle", "--work-dir", "--products", "--images", "--image-dir"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args()
    tables = clean_tables(args.products, args.images)
    data = training_data(tables, args.image_dir, args.work_dir, split_seed=args.split_seed, progress=True)
    bundle = load_bundle(args.bundle)
    validation = with_photo_ids(data.splits.products.validation, tables)
    parts = catalogue_parts(split_models(bundle, data), tables, args.image_dir, validation, work_dir=args.work_dir, progress=True)
    paths, rows = validation["category_path"].to_numpy(), np.arange(validation.height)
    found = {(power, weights): alikeness(parts.vectors(ListingRecipe(ListingWeights(*weights), power)), paths, rows, rows)
             for power in PROBABILITY_POWERS for weights in weightings()}  # fmt: skip
    frontier = [recipe for recipe, one in found.items()
                if not any(other.category >= one.category and other.subcategory > one.subcategory
                           or other.category > one.category and other.subcategory >= one.subcategory for other in found.values())]
    print(f"{validation.height} validation products, {len(found)} recipes (power; text, image, classes, subcategories)")
    print(f"frontier (category >= {MIN_CATEGORY_PRECISION} and tied <= {MAX_TIED:.0%} is what training's choice asks):")
    for recipe in sorted(frontier, key=lambda recipe: -found[recipe].category):
        one = found[recipe]
        print(f"  {recipe}: category {one.category:.3f}  subcategory {one.subcategory:.3f}  path {one.path:.3f}  tied {one.tied:.1%}")
    report = bundle.search_index().report
    print(f"training chose {report['weights']} at power {report.get('probability_power', 0.5)}: validation {report.get('validation')}")


if __name__ == "__main__":
    main()
