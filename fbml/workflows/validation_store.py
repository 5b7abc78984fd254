"""The validation predictions (and network weights) of models trained on the training split alone, and the
models that never saw the test split.

Fusion and the combined network are chosen on the first, so that refitting the branches on the validation
products afterwards does not leak them into the choice. The test split is scored with the second (trained on
the training and validation splits), so that shipping models trained on every product afterwards does not
leak the test products into a later training's test figures (the combined model's, over its branches).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import numpy as np
from torch import nn

from fbml.errors import FbmlError
from fbml.files import write_atomically
from fbml.modeling.distributed import World, on_main
from fbml.modeling.linear_text import LinearTextModel
from fbml.text.labels import LabelCodec

if TYPE_CHECKING:
    from fbml.modeling.subcategories import SubcategoryModel

SUBCATEGORIES = "subcategories"


@attrs.frozen
class ValidationStore:
    """Probabilities of some examples and models' weights kept in ``directory`` for a later step of the
    same training (see the module's docstring for the two stores training keeps)."""

    directory: Path
    world: World = World()

    def save(self, kind: str, keys: Sequence[str], probabilities: np.ndarray, model: nn.Module | None = None) -> None:
        """Keep ``kind``'s probabilities for the validation examples ``keys`` (product or photo ids): rank 0 writes
        them while the others wait, so that every rank then reads them."""
        on_main(self.world, lambda: self._write(kind, keys, probabilities, model))

    def _write(self, kind: str, keys: Sequence[str], probabilities: np.ndarray, model: nn.Module | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self.directory / f"{kind}.json", json.dumps(list(keys)).encode())
        buffer = BytesIO()
        np.save(buffer, np.asarray(probabilities, dtype=np.float32), allow_pickle=False)
        write_atomically(self.directory / f"{kind}.npy", buffer.getvalue())
        if model is not None:
            from safetensors.torch import save

            state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
            write_atomically(self.directory / f"{kind}.safetensors", save(state))

    def probabilities(self, kind: str, keys: Sequence[str]) -> np.ndarray:
        """``kind``'s validation probabilities of the examples ``keys`` (each key once or more, in order)."""
        try:
            known = json.loads((self.directory / f"{kind}.json").read_text(encoding="utf-8"))
            values = np.load(self.directory / f"{kind}.npy", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise FbmlError(f"{self.directory}: no validation predictions of the {kind} model ({type(error).__name__}); "
                            f"train it again with the same --work-dir") from None
        row_of = {key: row for row, key in enumerate(known)}
        missing = [key for key in keys if key not in row_of]
        if missing or values.shape[0] != len(known):
            raise FbmlError(f"{self.directory}: the {kind} model's validation predictions are not of these products "
                            f"({len(missing)} missing); train it again on this data")
        chosen: np.ndarray = values[[row_of[key] for key in keys]]
        return chosen

    def save_model(self, kind: str, model: nn.Module | LinearTextModel) -> None:
        """Keep ``kind``'s network weights, or its linear model (JSON and safetensors); rank 0 writes."""
        on_main(self.world, lambda: self._write_model(kind, model))

    def _write_model(self, kind: str, model: nn.Module | LinearTextModel) -> None:
        from safetensors.numpy import save as save_arrays
        from safetensors.torch import save

        self.directory.mkdir(parents=True, exist_ok=True)
        if isinstance(model, LinearTextModel):
            write_atomically(self.directory / f"{kind}.linear.json", json.dumps(model.to_json()).encode())
            write_atomically(self.directory / f"{kind}.safetensors", save_arrays(dict(model.arrays())))
            return
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
        write_atomically(self.directory / f"{kind}.safetensors", save(state))

    def save_subcategories(self, model: SubcategoryModel) -> None:
        """Keep the subcategory model (its codec and linear model)."""
        on_main(self.world, lambda: self._write_model(SUBCATEGORIES, model.model))
        on_main(self.world, lambda: write_atomically(self.directory / f"{SUBCATEGORIES}.codec.json",
                                                     json.dumps(model.codec.to_json()).encode()))

    def load_subcategories(self) -> SubcategoryModel:
        """The subcategory model ``save_subcategories`` kept."""
        from fbml.modeling.subcategories import SubcategoryModel

        path = self.directory / f"{SUBCATEGORIES}.codec.json"
        if not path.is_file():
            raise FbmlError(f"{self.directory}: no subcategory model kept here; train it again with the same --work-dir")
        codec = LabelCodec.from_json(json.loads(path.read_text(encoding="utf-8")))
        return SubcategoryModel(codec, self.load_linear(SUBCATEGORIES))

    def load_linear(self, kind: str) -> LinearTextModel:
        """The linear model ``save_model`` kept as ``kind``."""
        from safetensors.numpy import load_file

        path = self.directory / f"{kind}.linear.json"
        if not path.is_file():
            raise FbmlError(f"{self.directory}: no {kind} model kept here; train it again with the same --work-dir")
        return LinearTextModel.from_parts(json.loads(path.read_text(encoding="utf-8")), load_file(self.directory / f"{kind}.safetensors"))

    def load_weights(self, kind: str, model: nn.Module) -> nn.Module:
        """``model`` with the weights ``kind`` had when trained on the training split alone."""
        from safetensors.torch import load_file

        path = self.directory / f"{kind}.safetensors"
        if not path.is_file():
            raise FbmlError(f"{self.directory}: no weights of the {kind} model kept here; train it again with the same --work-dir")
        model.load_state_dict(load_file(path))
        return model
