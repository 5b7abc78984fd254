"""The bundle manifest (``bundle.json``): typed msgspec structs, validated when a bundle is loaded.

The manifest pins everything needed to rebuild what was trained, whatever the code's defaults are
today: every factory argument of every model, the backbone and its preprocessing, the tokenizer and
text normalisation versions. It names files only by content-addressed names inside the bundle
(``FILE_NAME``), never paths, and holds no weights choice, so loading reads nothing outside the
bundle and downloads nothing. Numbers are bounded so that a hostile manifest cannot ask for
absurd allocations.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final, Literal

import msgspec

BUNDLE_FORMAT: Final = "fbml.bundle/2"
TOKENIZER: Final = "fbml.tokens/1"
NORMALISATION: Final = "fbml.ascii-nfkd/1"
FILE_NAME = r"^[a-z][a-z-]*-[0-9a-f]{16}\.(json|npy|safetensors|onnx|faiss)$"

FileName = Annotated[str, msgspec.Meta(pattern=FILE_NAME)]
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Width = Annotated[int, msgspec.Meta(ge=1, le=8192)]
Side = Annotated[int, msgspec.Meta(ge=8, le=1024)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)]
Stat = Annotated[float, msgspec.Meta(gt=-10.0, lt=10.0)]
Spread = Annotated[float, msgspec.Meta(gt=0.0, lt=10.0)]
Finite = Annotated[float, msgspec.Meta(ge=-1e6, le=1e6)]


class Role(enum.StrEnum):
    """A predictor's role: what it reads, and the endpoint (and Open Inference Protocol model) that serves it."""

    TEXT = "text"
    IMAGE = "image"
    COMBINED = "combined"

    @property
    def reads_text(self) -> bool:
        """Whether the predictor reads the listing's text."""
        return self is not Role.IMAGE

    @property
    def reads_photos(self) -> bool:
        """Whether the predictor reads a photo."""
        return self is not Role.TEXT

    @classmethod
    def reading(cls, *, text: bool, photo: bool) -> Role:
        """The role of a predictor that reads what a listing has: text, a photo or both."""
        if not (text or photo):
            raise ValueError("a listing has text, a photo or both")
        return cls.COMBINED if text and photo else cls.TEXT if text else cls.IMAGE


class ModelKind(enum.StrEnum):
    """The kinds of model a bundle holds."""

    IMAGE_CNN = "image-cnn"
    TEXT_CNN = "text-cnn"
    TEXT_LINEAR = "text-linear"
    COMBINED_NN = "combined-nn"

    @property
    def reads_text(self) -> bool:
        """Whether the model reads the listing's text."""
        return self is not ModelKind.IMAGE_CNN

    @property
    def reads_photos(self) -> bool:
        """Whether the model reads a photo."""
        return self in (ModelKind.IMAGE_CNN, ModelKind.COMBINED_NN)


class Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A manifest struct: immutable, and unknown fields are an error."""


class FileRef(Struct, frozen=True):
    """A file of the bundle by its content-addressed name, and the SHA-256 it must have."""

    file: FileName
    sha256: Digest


class ImageEntry(Struct, frozen=True):
    """How photos are prepared for the image branches: the backbone's preprocessing, at ``size``."""

    backbone: str
    size: Side
    mean: Annotated[list[Stat], msgspec.Meta(min_length=3, max_length=3)]
    std: Annotated[list[Spread], msgspec.Meta(min_length=3, max_length=3)]


class TextEntry(Struct, frozen=True):
    """How text is prepared for the text CNN: its vocabulary, word vectors and sequence length."""

    length: Annotated[int, msgspec.Meta(ge=1, le=4096)]
    vocabulary: FileRef
    words: FileRef
    vectors: FileRef
    tokenizer: Literal["fbml.tokens/1"] = TOKENIZER
    normalisation: Literal["fbml.ascii-nfkd/1"] = NORMALISATION


class ImageOptions(Struct, frozen=True):
    """Every argument of ``image_model`` but the starting weights (the bundle has its own)."""

    backbone: str
    trainable_stages: Annotated[int, msgspec.Meta(ge=0, le=16)]
    embedding_dim: Width
    dropout: Fraction


class TextCnnOptions(Struct, frozen=True):
    """Every argument of ``text_model`` (the embedding matrix's shape comes from the vocabulary and vectors)."""

    embedding_dim: Width
    kernel_sizes: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=16)]], msgspec.Meta(min_length=1, max_length=8)]
    channels: Width
    dropout: Fraction
    freeze_embeddings: bool
    normalise_embeddings: bool
    positions: Annotated[int, msgspec.Meta(ge=0, le=4096)]
    word_dropout: Fraction
    branch_scale: Annotated[float, msgspec.Meta(gt=0.0, le=100.0)]


class CombinedOptions(Struct, frozen=True):
    """The two branches of ``combined_model``."""

    image: ImageOptions
    text: TextCnnOptions


class OnnxEntry(Struct, frozen=True):
    """A network's ONNX graph (``fbml export-onnx``): the file, its opset, its input and output names."""

    graph: FileRef
    opset: Annotated[int, msgspec.Meta(ge=7, le=30)]
    inputs: Annotated[list[Literal["images", "tokens"]], msgspec.Meta(min_length=1, max_length=2)]
    outputs: list[Literal["logits", "embedding"]]


class ImageModelEntry(Struct, tag=ModelKind.IMAGE_CNN.value, frozen=True):
    """An image classifier's weights and factory arguments."""

    weights: FileRef
    options: ImageOptions
    report: dict[str, object] = {}
    onnx: OnnxEntry | None = None


class TextCnnEntry(Struct, tag=ModelKind.TEXT_CNN.value, frozen=True):
    """A word2vec text CNN's weights and factory arguments."""

    weights: FileRef
    options: TextCnnOptions
    report: dict[str, object] = {}
    onnx: OnnxEntry | None = None


class TextLinearEntry(Struct, tag=ModelKind.TEXT_LINEAR.value, frozen=True):
    """A TF-IDF linear text model: its vocabularies and calibration (JSON) and its arrays (safetensors)."""

    parameters: FileRef
    arrays: FileRef
    report: dict[str, object] = {}


class CombinedNnEntry(Struct, tag=ModelKind.COMBINED_NN.value, frozen=True):
    """The image and text branches joined by one linear layer: weights and both branches' arguments."""

    weights: FileRef
    options: CombinedOptions
    report: dict[str, object] = {}
    onnx: OnnxEntry | None = None


ModelEntry = ImageModelEntry | TextCnnEntry | TextLinearEntry | CombinedNnEntry


class Member(Struct, frozen=True):
    """A model of the bundle and the weight of its log-probabilities in an ensemble."""

    model: ModelKind
    weight: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]


class PredictorEntry(Struct, frozen=True):
    """What one endpoint serves: ``softmax(sum(weight * log p(model)) + bias)`` over its members."""

    members: Annotated[list[Member], msgspec.Meta(min_length=1, max_length=8)]
    bias: list[Finite]
    report: dict[str, object] = {}


class IndexEntry(Struct, frozen=True):
    """The similar-listings index: product vectors (``.npy``), the catalogue (JSON), how it was built, and
    for ``hnsw`` the graph (faiss' format) with its parameters (``fbml.bundle.vector_index``). An ``hnsw``
    index leaves ``vectors`` null: its graph holds them (each row's, and the removed rows' kept as tombstones),
    or, when ``vector_chunks`` names them, the graph is saved without them and they are those ``.npy`` files in turn.
    ``catalogue`` is null when ``catalogue_chunks`` names the catalogue's rows."""

    vectors: FileRef | None
    catalogue: FileRef | None
    method: Literal["exact", "hnsw"] = "exact"
    graph: FileRef | None = None
    parameters: dict[str, object] = {}
    report: dict[str, object] = {}
    removed: FileRef | None = None
    """The graph positions of removed listings (``.npy`` int64), which an HNSW graph keeps as tombstones."""
    vector_chunks: list[FileRef] | None = None
    """The HNSW graph's vectors in order of its nodes (``.npy`` float32), in append-only chunks: adding listings
    writes a new chunk, so a save rewrites the graph's links and writes the new rows only."""
    catalogue_chunks: list[FileRef] | None = None
    """The catalogue's rows in order, in append-only chunks (each a JSON array of rows, as a ``catalogue`` file is):
    adding listings writes a chunk of the new rows. A bundle saved before them names one ``catalogue`` file."""
    graph_patches: list[FileRef] | None = None
    """What each addition since the ``graph`` file was written changed in the graph's links (``.npy`` int64), in
    order: adding listings to a graph read from the bundle writes a patch, not the graph again."""

    def __post_init__(self) -> None:
        if (self.method == "hnsw") != (self.graph is not None):
            raise ValueError("an hnsw index names its graph file, and only an hnsw index does")
        if self.removed is not None and self.graph is None:
            raise ValueError("only an hnsw index names a file of removed rows")
        if self.vectors is None and self.graph is None:
            raise ValueError("an exact index names its vectors file")
        if self.vector_chunks is not None and (self.graph is None or self.vectors is not None):
            raise ValueError("only an hnsw index names vector chunks, and then no vectors file")
        if self.graph_patches is not None and self.vector_chunks is None:
            raise ValueError("only an hnsw graph saved beside its vector chunks names graph patches")
        if (self.catalogue is None) == (self.catalogue_chunks is None):
            raise ValueError("an index names its catalogue file or its catalogue chunks, one of them")


class SubcategoryEntry(Struct, frozen=True):
    """The subcategory model: its codec (``category / subcategory`` names, JSON) and its TF-IDF linear model."""

    codec: FileRef
    parameters: FileRef
    arrays: FileRef
    report: dict[str, object] = {}


class Manifest(Struct, frozen=True):
    """``bundle.json``: the codec, preparation settings, models, predictors and the index."""

    format: Literal["fbml.bundle/2"]
    codec: FileRef
    image: ImageEntry | None = None
    text: TextEntry | None = None
    models: dict[ModelKind, ModelEntry] = {}
    predictors: dict[Role, PredictorEntry] = {}
    index: IndexEntry | None = None
    subcategories: SubcategoryEntry | None = None
    profile: FileRef | None = None
    """The training profile (``fbml.bundle.profile``); absent in bundles trained before it existed."""
