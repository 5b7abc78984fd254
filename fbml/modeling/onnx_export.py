"""Export a bundle's networks to ONNX (opset 17, dynamic batch) and check the graphs against torch."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import torch
from torch import Tensor, nn

from fbml.errors import FbmlError
from fbml.modeling.onnx_runtime import INPUTS, OUTPUTS, OnnxGraph, onnx_model

OPSET = 17
PARITY_TOLERANCE = 1e-4
CHECK_BATCH = 3


def example_inputs(kind: str, *, image_size: int, text_length: int, vocabulary_size: int, batch: int = 1,
                   seed: int = 0) -> tuple[Tensor, ...]:
    """Inputs of ``kind``'s network: normalised photos (B, 3, S, S) and/or token ids (B, L)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    tokens = torch.randint(0, vocabulary_size, (batch, text_length), generator=generator)
    tokens[:, text_length // 2 :] = 0  # padding, as short texts have it
    return {"image-cnn": (images,), "text-cnn": (tokens,), "combined-nn": (images, tokens)}[kind]


def export_graph(kind: str, module: nn.Module, inputs: tuple[Tensor, ...]) -> OnnxGraph:
    """``module`` (in eval mode) as an ONNX graph whose batch size is free."""
    names = INPUTS[kind]
    axes = {name: {0: "batch"} for name in (*names, *OUTPUTS)}
    buffer = BytesIO()
    torch.onnx.export(
        module.eval(), inputs, buffer,  # type: ignore[arg-type]  # a file object is accepted
        input_names=list(names), output_names=list(OUTPUTS), dynamic_axes=axes, opset_version=OPSET, dynamo=False,
    )
    return OnnxGraph(buffer.getvalue(), OPSET, names, OUTPUTS)


def parity(kind: str, module: nn.Module, graph: OnnxGraph, inputs: tuple[Tensor, ...]) -> float:
    """The largest difference between torch's and ONNX Runtime's class probabilities on ``inputs``."""
    session = onnx_model(kind, graph)
    with torch.inference_mode():
        expected = torch.softmax(module.eval()(*inputs).logits.float(), dim=1).numpy()
    logits, _ = session.run({name: tensor.numpy() for name, tensor in zip(INPUTS[kind], inputs, strict=True)})
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return float(np.abs(shifted / shifted.sum(axis=1, keepdims=True) - expected).max())


def checked_graph(kind: str, module: nn.Module, *, image_size: int, text_length: int, vocabulary_size: int) -> tuple[OnnxGraph, float]:
    """The exported graph and its parity on a batch other than the one it was traced with;
    ``FbmlError`` past ``PARITY_TOLERANCE``."""
    graph = export_graph(kind, module, example_inputs(kind, image_size=image_size, text_length=text_length,
                                                      vocabulary_size=vocabulary_size))
    check = example_inputs(kind, image_size=image_size, text_length=text_length, vocabulary_size=vocabulary_size,
                           batch=CHECK_BATCH, seed=1)
    difference = parity(kind, module, graph, check)
    if difference > PARITY_TOLERANCE:
        raise FbmlError(f"the {kind} ONNX graph differs from torch by {difference:.2e} in probability")
    return graph, difference
