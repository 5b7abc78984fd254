"""The validation predictions (and network weights) of models trained on the training split alone.

Fusion and the combined network are chosen on these, so that refitting the branches on the validation
products afterwards does not leak them into the choice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import attrs
import numpy as np
from torch import nn

from fbml.errors import FbmlError
from fbml.files import write_atomically
from fbml.modeling.distributed import World, on_main


@attrs.frozen
class ValidationStore:
    """The validation-split probabilities (and, for networks, the weights) of models trained on the
    training split alone. Fusion and the combined network are chosen on these, so that refitting the
    branches on the validation products afterwards does not leak them into the choice."""

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

    def load_weights(self, kind: str, model: nn.Module) -> nn.Module:
        """``model`` with the weights ``kind`` had when trained on the training split alone."""
        from safetensors.torch import load_file

        path = self.directory / f"{kind}.safetensors"
        if not path.is_file():
            raise FbmlError(f"{self.directory}: no training-split weights of the {kind} model; train it again with the same --work-dir")
        model.load_state_dict(load_file(path))
        return model
